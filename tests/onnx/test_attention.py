"""ONNX Attention against the onnx package's reference implementation, over
random shapes and the op's variants (3-D and 4-D inputs, grouped heads, past
key/value, boolean and float masks, causal, sliding window, softcap, the
qk_matmul_output modes, per-batch key lengths)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicomp as mc

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference, single_node_model  # noqa: E402


@st.composite
def attention_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    batch, kv_heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    heads = kv_heads * draw(st.sampled_from([1, 2]))
    q_len, kv_len, size = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.sampled_from([2, 4]))
    three_d = draw(st.booleans())
    past = draw(st.integers(1, 2)) if draw(st.booleans()) else None
    attrs = {}
    if three_d:
        attrs.update(q_num_heads=heads, kv_num_heads=kv_heads)
    if draw(st.booleans()):
        attrs["is_causal"] = 1
    if draw(st.booleans()):
        attrs["softcap"] = 2.0
    if draw(st.booleans()):
        attrs["scale"] = 0.3
    mode = draw(st.sampled_from([None, 0, 2, 3]))
    if mode is not None:
        attrs["qk_matmul_output_mode"] = mode
    if draw(st.booleans()):
        attrs["left_window_size"] = draw(st.integers(0, 2))

    def shaped(h, n, d):
        return (batch, n, h * d) if three_d else (batch, h, n, d)

    feeds = {"Q": rng.standard_normal(shaped(heads, q_len, size)).astype(np.float32),
             "K": rng.standard_normal(shaped(kv_heads, kv_len, size)).astype(np.float32),
             "V": rng.standard_normal(shaped(kv_heads, kv_len, size)).astype(np.float32)}
    names = ["Q", "K", "V", "", "", "", ""]
    total = kv_len + (past or 0)
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind is not None:
        cols = draw(st.integers(1, total))  # shorter masks are padded to the key length
        if mask_kind == "bool":
            mask = rng.integers(0, 2, size=(q_len, cols)).astype(bool)
            mask[:, 0] = True
        else:
            mask = rng.standard_normal((q_len, cols)).astype(np.float32)
        feeds["mask"], names[3] = mask, "mask"
    if past is not None:
        feeds["past_key"] = rng.standard_normal((batch, kv_heads, past, size)).astype(np.float32)
        feeds["past_value"] = rng.standard_normal((batch, kv_heads, past, size)).astype(np.float32)
        names[4], names[5] = "past_key", "past_value"
    elif draw(st.booleans()):
        feeds["nonpad"] = rng.integers(1, kv_len + 1, size=(batch,)).astype(np.int64)
        names[6] = "nonpad"
    while names and names[-1] == "":
        names.pop()
    outputs = ["Y", "present_key", "present_value", "qk"] if mode is not None else ["Y"]
    return feeds, names, outputs, attrs


def _model(feeds, names, outputs, attrs):
    return single_node_model("Attention", feeds, names, outputs, attrs, opset=24)


@given(attention_cases())
def test_attention_matches_onnx_reference(case):
    feeds, names, outputs, attrs = case
    check_against_reference("Attention", feeds, names, outputs, attrs, opset=24)


def test_attention_3d_needs_head_counts():
    q = np.zeros((1, 2, 4), np.float32)
    model = _model({"Q": q, "K": q, "V": q}, ["Q", "K", "V"], ["Y"], {})
    with pytest.raises(mc.MinicompError, match="q_num_heads"):
        mc.from_onnx(model)
