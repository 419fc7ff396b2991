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


SPECIAL = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -1.5, 2.5e9, -2.5e9, 3e19, -3e19, 127.9,
                    -128.9, 255.5, 65535.9, 2147483520.0, -2147483648.0, 9.2e18, 1e-40], np.float32)


@pytest.mark.parametrize("target", ["llvm", "c", "cuda-emu"])
@pytest.mark.parametrize("src", ["float32", "float64", "float16"])
def test_written_out_numeric_rules_give_the_bits_of_the_native_ones(target, src):
    """NaN-propagating max/min and saturating casts, written out as selects for C and CUDA and spelled
    natively by LLVM, give numpy's bits on NaN, signed zeros, infinities and values beyond every range."""
    with np.errstate(over="ignore"):  # beyond float16's range: its infinities
        a = SPECIAL.astype(src)
    b = np.roll(a, 3)
    g = mc.GraphBuilder()
    x, y = g.input("x", a.shape, src), g.input("y", a.shape, src)
    ints = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    g.output(g.maximum(x, y), g.minimum(x, y), g.maximum(x, x * 0.0), g.max(x, axes=[0]),
             *(x.astype(d) for d in ints))
    graph = g.build()
    model = mc.compile(graph, target=target, cache=False)
    for got, want in zip(model(a, b), mc.run_reference(graph, a, b), strict=True):
        np.testing.assert_array_equal(got, want)
        if got.dtype.kind == "f":  # the sign of zero too (a NaN's sign is nobody's promise)
            real = ~np.isnan(want)
            np.testing.assert_array_equal(np.signbit(got[real]), np.signbit(want[real]))
    written_out = "in_range(" in model.stages["loops"]
    assert written_out == (target != "llvm")


def test_a_backend_names_the_rules_it_spells_and_legalization_writes_out_the_rest():
    x, y = ex.Var("x", dtypes.float32), ex.Var("y", dtypes.float32)
    e = ex.cast(dtypes.int32, ex.maximum(x, y))
    assert legalize_expr(e) is e  # by default every rule is native: nothing to write out
    out = ex.format_expr(legalize_expr(e, native=frozenset()))
    assert "max(" not in out and "i32_in_range(" in out and "(x != x)" in out
    kept = ex.format_expr(legalize_expr(e, native=frozenset({"saturating_cast"})))
    assert "max(" not in kept and "in_range" not in kept


def test_legalize_is_a_pass_the_instruments_see_and_a_short_pipeline_gets_it():
    import contextlib
    import io

    g = mc.GraphBuilder()
    x = g.input("x", (4,))
    g.output(g.maximum(x, x * 2.0))
    graph = g.build()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model = mc.compile(graph, target="c", pipeline="simplify,fuse", print_after=["legalize"])
    printed = out.getvalue()
    assert "after legalize" in printed and "select(" in printed and "max(" not in printed.split("after legalize")[1]
    assert [name for name, _ in model.pass_timings][1:6] == ["simplify", "fuse", "lower", "plan", "legalize"]
    with pytest.raises(mc.MinicompError, match="must be the last"):
        mc.compile(graph, pipeline="simplify,fuse,lower,legalize,plan")
