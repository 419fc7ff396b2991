"""bfloat16: stored as 16 bits, computed in float32, rounded to nearest even
at every store and cast; compiled for llvm and for CUDA (run on the CPU)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicomp as mc

BF16 = np.dtype(ml_dtypes.bfloat16)
TARGETS = [("llvm", None), ("c", None), ("cuda", "emu")]


def _compile(graph, target, device):
    return mc.compile(graph, target=target, device=device) if device else mc.compile(graph, target=target)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint16)


@pytest.mark.parametrize("target,device", TARGETS)
def test_casts_round_to_nearest_even_like_ml_dtypes(target, device):
    # Ties both ways, values that carry into the exponent, the largest finite
    # values, infinities and NaN.
    specials = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -(1.0 + 2**-8), 255.5, 3.3895e38,
                         3.4e38, np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -1e-45], np.float32)
    x = np.concatenate([specials, np.random.default_rng(0).standard_normal(200).astype(np.float32) * 1e3])
    g = mc.GraphBuilder("to_bf16")
    t = g.input("x", x.shape)
    g.output(g.cast(t, dtype="bfloat16"))
    (got,) = _compile(g.build(), target, device)(x)
    want = x.astype(BF16)
    nan = np.isnan(want.astype(np.float32))
    assert got.dtype == BF16
    np.testing.assert_array_equal(_bits(got)[~nan], _bits(want)[~nan])
    assert np.isnan(got[nan].astype(np.float32)).all()


@pytest.mark.parametrize("target,device", TARGETS)
@given(data=st.data())
def test_bf16_graph_matches_float32_arithmetic_rounded(target, device, data):
    """matmul, bias, relu, softmax and a sum in bfloat16: within a few bfloat16
    units of the same graph computed in float32 (each store rounds once)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    m, k, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    a = rng.standard_normal((m, k)).astype(BF16)
    w = rng.standard_normal((k, n)).astype(BF16)

    def build(dtype):
        g = mc.GraphBuilder("mlp")
        x = g.input("x", (m, k), dtype)
        y = g.relu(g.add(g.matmul(x, g.constant(w.astype(dtype))), g.constant(np.full(n, 0.25, dtype))))
        g.output(g.softmax(y, axis=-1), g.sum(y, axes=[1]))
        return g.build()

    got = _compile(build("bfloat16"), target, device)(a)
    want = mc.compile(build("float32"))(a.astype(np.float32))
    reference = mc.run_reference(build("bfloat16"), a)
    for g_, w_, r_ in zip(got, want, reference, strict=True):
        assert g_.dtype == BF16
        g32 = g_.astype(np.float32)
        np.testing.assert_allclose(g32, w_, rtol=3 * 2.0**-8, atol=3 * 2.0**-8 * np.abs(w_).max())
        np.testing.assert_allclose(g32, r_.astype(np.float32), rtol=3 * 2.0**-8,
                                   atol=3 * 2.0**-8 * np.abs(w_).max())


def test_onnx_and_torch_name_the_type():
    assert mc.ir.dtypes.as_dtype(BF16) is mc.ir.dtypes.bfloat16
    assert mc.ir.dtypes.as_dtype("bf16").is_narrow_float
