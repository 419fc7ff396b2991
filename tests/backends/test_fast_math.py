"""Float answers that fast-math flags must not change: only the combining
step of an accumulation may reassociate, and nothing uses approximate
reciprocals, so IEEE special values and cancellation guards survive."""

import numpy as np
import pytest

import minicomp as mc


def _compiled(build, *inputs):
    g = mc.GraphBuilder()
    xs = [g.input(f"x{k}", a.shape, str(a.dtype)) for k, a in enumerate(inputs)]
    g.output(build(g, *xs))
    graph = g.build()
    (got,) = mc.compile(graph, num_threads=1)(*inputs)
    (want,) = mc.run_reference(graph, *inputs)
    return got, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reciprocal_square_root_keeps_zero_inf_and_denormals(dtype):
    tiny = np.finfo(dtype).tiny / 4  # a denormal
    x = np.array([0.0, np.inf, tiny, 4.0, 1.0, 2.0, 1e-30, 1e30], dtype)
    with np.errstate(divide="ignore"):
        expected = (1.0 / np.sqrt(x.astype(np.float64))).astype(dtype)
    for build in (lambda g, v: 1.0 / g.sqrt(v), lambda g, v: g.rsqrt(v)):
        got, want = _compiled(build, x)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e6, 1e8])
def test_log_softmax_keeps_cancellation_guard_on_large_inputs(scale):
    x = (scale + np.array([[0.0, 0.25, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])).astype(np.float32)
    got, want = _compiled(lambda g, v: g.log_softmax(v, axis=-1), x)
    shifted = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got[1], np.full(4, -np.log(4.0)), atol=1e-6)


def test_reductions_still_vectorize_with_reassociation():
    from minicomp.backends.llvm_codegen import FMF_ACCUMULATE

    g = mc.GraphBuilder()
    x = g.input("x", (64, 1024))
    g.output(g.sum(x, axes=[1]))
    model = mc.compile(g.build(), num_threads=1)
    assert f"fadd {FMF_ACCUMULATE}" in model.stages["llvm"]
    assert "<16 x float>" in model.stages["llvm_opt"] or "<8 x float>" in model.stages["llvm_opt"]
    xs = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    np.testing.assert_allclose(model(xs)[0], xs.sum(axis=1), rtol=1e-4, atol=1e-4)
