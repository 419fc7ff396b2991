"""Kernels of the same structure (a transformer's layers) share one compiled function."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.loops import Buffer, For, Kernel, Store, kernel_functions, structure_key


def scaled(name: str, n: int = 16, factor: float = 2.0, dtype=dtypes.float32) -> Kernel:
    """``out[i] = a[i] * factor``, with buffers and loop variable named after ``name``."""
    a, out = Buffer(f"{name}_a", (n,), dtype), Buffer(f"{name}_out", (n,), dtype)
    i = ex.Var(f"{name}_i")
    body = For(i, n, Store(out, (i,), ex.Load(a, (i,)) * ex.Const(factor, dtype)))
    return Kernel(name, [a], [out], body)


def test_the_key_ignores_names_and_sees_everything_else():
    key = structure_key(scaled("one"))
    assert structure_key(scaled("two")) == key
    assert structure_key(scaled("two", n=17)) != key
    assert structure_key(scaled("two", factor=3.0)) != key
    assert structure_key(scaled("two", dtype=dtypes.float64)) != key
    in_place = scaled("two")
    in_place.in_place = [(in_place.outputs[0].name, in_place.inputs[0].name)]
    assert structure_key(in_place) != key  # its pointers may alias: other code


def test_each_kernel_runs_the_first_identical_kernel_s_function():
    kernels = [scaled("a"), scaled("b", factor=3.0), scaled("c"), scaled("d", factor=3.0), scaled("e", n=8)]
    assert kernel_functions(kernels) == ["k_a", "k_b", "k_a", "k_b", "k_e"]


def layers(scales) -> mc.Graph:
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder("layers")
    h = g.input("x", (8, 32))
    for s in scales:
        w = g.constant(rng.standard_normal((32, 32)).astype(np.float32) / 6)
        h = g.tanh(h @ w) * s
    g.output(h)
    return g.build()


@pytest.mark.parametrize("target", ["llvm", "c"])
def test_identical_layers_compile_once_and_each_computes_its_own(target, tmp_path):
    graph = layers([0.5, 0.5, 0.5, 2.0, 0.5])
    model = mc.compile(graph, target=target)
    x = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    np.testing.assert_allclose(model(x)[0], mc.run_reference(graph, x)[0], rtol=1e-5, atol=1e-6)
    functions = [c.function for c in model.layout.calls]
    assert len(set(functions)) < len(functions)  # the weights differ, the code does not
    assert len(model.profile(x, repeat=1)) == len(model.layout.calls)  # timed kernel by kernel still
    if target == "llvm":
        assert model.stages["llvm"].count("define void @k_") == len(set(functions))
        model.save(tmp_path / "m.mcm")
        np.testing.assert_array_equal(mc.load(tmp_path / "m.mcm")(x)[0], model(x)[0])
    else:
        assert model.stages["c"].count("void k_") == len(set(functions))
