"""Wrong answers found by outside probes, each pinned on every target that runs here.

- a float16/bfloat16 op result kept in a register inside a fused kernel is
  rounded to 16 bits, as numpy and the reference round it;
- an expression a kernel computes in several places gives the same bits in
  each (no FMA contraction outside accumulations);
- the sign of zero of max/min/relu/topk is numpy's;
- the reference itself casts bfloat16 to integers by the documented rule.
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicomp as mc

TARGETS = ["llvm", "c", "cuda-emu"]
BF16 = ml_dtypes.bfloat16


def compiled_and_reference(build, arrays, target):
    g = mc.GraphBuilder("probe")
    ins = [g.input(f"x{i}", a.shape, mc.ir.dtypes.as_dtype(a.dtype).name) for i, a in enumerate(arrays)]
    out = build(g, *ins)
    g.output(*(out if isinstance(out, tuple) else (out,)))
    graph = g.build()
    return mc.compile(graph, target=target, cache=False)(*arrays), mc.run_reference(graph, *arrays)


def assert_same_bits(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True), f"{got} != {want}"
    if got.dtype.kind == "f" or got.dtype == BF16:
        assert np.array_equal(np.signbit(got.astype(np.float32)), np.signbit(want.astype(np.float32))), \
            f"signs of zero differ: {got} != {want}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name, build, arrays", [
    ("f16 overflow inside a kernel", lambda g, x: (x * 2.0) / 2.0, [np.array([40000, 1, -50000], np.float16)]),
    ("bf16 rsqrt is a bf16 value", lambda g, x: g.rsqrt(x).astype("float32"),
     [np.array([0.37, 1.3, 2, 5], BF16)]),
    ("floor of a rounded exp", lambda g, x: g.floor(g.exp(x)), [np.array([0.6929, 0.5, 1.1], np.float16)]),
    ("a difference that overflows", lambda g, a, b: (a - b) / (a - b),
     [np.array([60000, 3], np.float16), np.array([-60000, 1], np.float16)]),
    ("f16 to uint64 of an overflowed value", lambda g, x: (x * 4.0).astype("uint64"),
     [np.array([30000, 2.5], np.float16)]),
])
def test_16_bit_results_are_rounded_inside_fused_kernels(target, name, build, arrays):
    (got,), (want,) = compiled_and_reference(build, arrays, target)
    assert_same_bits(got, want)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("row", [[-61, 26.4, 123.456], [-61, 26.4, 1.7e19], [3.3, 3.3000002, -1e-3]])
def test_softmax_of_a_recomputed_expression_stays_a_distribution(target, dtype, row):
    x = np.array([row], dtype)
    (got,), (want,) = compiled_and_reference(lambda g, x: g.softmax(x * x, axis=1), [x], target)
    assert np.all(got <= 1) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
@given(data=st.data())
def test_an_expression_computed_in_two_loops_gives_the_same_bits(target, data):
    # max over a row of t, then t - max(t) in another loop: the largest element minus the max is exactly 0
    # only if both loops computed t to the same bits (t is inlined into both).
    ops = data.draw(st.lists(st.sampled_from(["mul", "add", "sub"]), min_size=1, max_size=4))
    scale = data.draw(st.sampled_from([1.0, 1e3, 1e15]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((3, 17)) * scale).astype(np.float32)
    y = (rng.standard_normal((3, 17)) * scale).astype(np.float32)

    def build(g, a, b):
        t = a
        for op in ops:
            t = {"mul": lambda t: t * b, "add": lambda t: t + a * b, "sub": lambda t: t - a * a}[op](t)
        shifted = t - g.max(t, axes=[1], keepdims=True)
        return g.max(shifted, axes=[1], keepdims=True)

    (got,), _ = compiled_and_reference(build, [x, y], target)
    finite = np.isfinite(got)
    assert np.all(got[finite] == 0), f"{ops}: {got.ravel()}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_the_sign_of_zero_is_numpys(target, dtype):
    n = 40  # long enough for vector loops
    a = np.array([0.0, -0.0] * (n // 2), dtype)
    b = np.array([-0.0, 0.0] * (n // 2), dtype)
    for build, arrays in [(lambda g, x, y: g.maximum(x, y), [a, b]), (lambda g, x, y: g.minimum(x, y), [a, b]),
                          (lambda g, x: g.relu(x), [b]),
                          (lambda g, x: g.topk(x, k=4, axis=1)[0], [np.array([[0, -0.0, -0.0, 0, 1, -1]], dtype)])]:
        (got,), (want,) = compiled_and_reference(build, arrays, target)
        assert_same_bits(got, want)


def test_the_reference_casts_bfloat16_to_integers_by_the_rule():
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.5, -2.5, 300], BF16)
    g = mc.GraphBuilder("c")
    g.output(g.input("x", (7,), "bfloat16").astype("int8"))
    graph = g.build()
    want = np.array([0, 0, 127, -128, 1, -2, 127], np.int8)
    np.testing.assert_array_equal(mc.run_reference(graph, x)[0], want)
    for target in TARGETS:
        np.testing.assert_array_equal(mc.compile(graph, target=target)(x)[0], want)
