"""Legalization: integer division keeps its meaning (x / 0 == 0, x / -1 ==
-x) on every emitter, which only ever sees the guarded hardware divide."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.loops import Store, walk_stmts
from minicomp.passes.legalize import legalize_expr


def test_integer_division_becomes_guarded_tdiv():
    a, b = ex.Var("a", dtypes.int32), ex.Var("b", dtypes.int32)
    out = legalize_expr(a / b)
    ops = {n.op for n in ex.walk(out) if isinstance(n, ex.BinOp)}
    assert "tdiv" in ops and "div" not in ops
    assert ex.format_expr(legalize_expr(a / ex.const(4, dtypes.int32))) == "tdiv(a, 4:i32)"
    x = ex.Var("x", dtypes.float32)
    assert legalize_expr(x / x).op == "div"  # float division is the hardware's already


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_compiled_integer_division_by_zero_and_minus_one(dtype):
    g = mc.GraphBuilder()
    x, y = g.input("x", (8,), dtype), g.input("y", (8,), dtype)
    g.output(x / y)
    graph = g.build()
    model = mc.compile(graph)
    for k in model.kernels:
        for s in walk_stmts(k.body):
            if isinstance(s, Store):
                assert not any(isinstance(n, ex.BinOp) and n.op == "div" for n in ex.walk(s.value))
    info = np.iinfo(dtype)
    xs = np.array([7, -7, 7, -7, 5, info.min, info.min, 0], dtype)
    ys = np.array([2, 2, 0, -1, -1, -1, 3, 0], dtype)
    (got,) = model(xs, ys)
    np.testing.assert_array_equal(got, mc.run_reference(graph, xs, ys)[0])
    np.testing.assert_array_equal(got[:4], np.array([3, -3, 0, 7], dtype))
    assert got[5] == info.min  # -INT_MIN wraps
