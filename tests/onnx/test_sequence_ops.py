"""RotaryEmbedding, CausalConvWithState and LinearAttention against the onnx
package's reference implementation, over random shapes and variants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference  # noqa: E402
from tests.onnx.reference_check import drawn_rng as _rng  # noqa: E402


def _check(op, feeds, names, outputs, attrs, opset=27):
    check_against_reference(op, feeds, names, outputs, attrs, opset)


@given(st.data())
def test_rotary_embedding(data):
    d = data.draw
    rng = _rng(d)
    batch, seq, heads = d(st.integers(1, 2)), d(st.integers(1, 4)), d(st.integers(1, 3))
    size = d(st.sampled_from([4, 8]))
    dim = d(st.sampled_from([0, size, size // 2]))
    half = (dim or size) // 2
    attrs = {"interleaved": int(d(st.booleans()))}
    if dim:
        attrs["rotary_embedding_dim"] = dim
    if d(st.booleans()):
        x = rng.standard_normal((batch, seq, heads * size)).astype(np.float32)
        attrs["num_heads"] = heads
    else:
        x = rng.standard_normal((batch, heads, seq, size)).astype(np.float32)
    feeds, names = {"x": x}, ["x", "cos", "sin"]
    if d(st.booleans()):
        n_pos = seq + 3
        feeds["cos"] = rng.standard_normal((n_pos, half)).astype(np.float32)
        feeds["sin"] = rng.standard_normal((n_pos, half)).astype(np.float32)
        feeds["pos"] = rng.integers(0, n_pos, size=(batch, seq)).astype(np.int64)
        names.append("pos")
    else:
        feeds["cos"] = rng.standard_normal((batch, seq, half)).astype(np.float32)
        feeds["sin"] = rng.standard_normal((batch, seq, half)).astype(np.float32)
    _check("RotaryEmbedding", feeds, names, ["y"], attrs, opset=23)


@given(st.data())
def test_causal_conv_with_state(data):
    d = data.draw
    rng = _rng(d)
    batch, channels, length, k = d(st.integers(1, 2)), d(st.integers(1, 4)), d(st.integers(1, 6)), d(st.integers(2, 4))
    feeds = {"x": rng.standard_normal((batch, channels, length)).astype(np.float32),
             "w": rng.standard_normal((channels, 1, k)).astype(np.float32)}
    names = ["x", "w", "", ""]
    if d(st.booleans()):
        feeds["b"], names[2] = rng.standard_normal(channels).astype(np.float32), "b"
    if d(st.booleans()):
        feeds["past"], names[3] = rng.standard_normal((batch, channels, k - 1)).astype(np.float32), "past"
    while names[-1] == "":
        names.pop()
    attrs = {"activation": d(st.sampled_from(["none", "silu"]))}
    _check("CausalConvWithState", feeds, names, ["y", "state"], attrs)


@given(st.data())
def test_linear_attention(data):
    d = data.draw
    rng = _rng(d)
    rule = d(st.sampled_from(["linear", "gated", "delta", "gated_delta"]))
    batch, seq, kv_heads, group = d(st.integers(1, 2)), d(st.integers(1, 4)), d(st.integers(1, 2)), d(st.integers(1, 2))
    heads, dk, dv = kv_heads * group, d(st.sampled_from([2, 4])), d(st.sampled_from([2, 3]))
    feeds = {"q": rng.standard_normal((batch, seq, heads * dk)).astype(np.float32),
             "k": rng.standard_normal((batch, seq, kv_heads * dk)).astype(np.float32) * 0.5,
             "v": rng.standard_normal((batch, seq, kv_heads * dv)).astype(np.float32)}
    names = ["q", "k", "v", "", "", ""]
    if d(st.booleans()):
        feeds["past"], names[3] = rng.standard_normal((batch, kv_heads, dk, dv)).astype(np.float32), "past"
    if rule in ("gated", "gated_delta"):
        width = d(st.sampled_from([kv_heads, kv_heads * dk]))
        feeds["decay"], names[4] = -rng.uniform(0, 1, (batch, seq, width)).astype(np.float32), "decay"
    if rule in ("delta", "gated_delta"):
        feeds["beta"], names[5] = rng.uniform(0, 1, (batch, seq, kv_heads)).astype(np.float32), "beta"
    while names[-1] == "":
        names.pop()
    attrs = {"update_rule": rule, "q_num_heads": heads, "kv_num_heads": kv_heads}
    _check("LinearAttention", feeds, names, ["y", "state"], attrs)
