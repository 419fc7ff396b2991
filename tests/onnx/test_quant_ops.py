"""Quantization importers and LpPool against the onnx package's
ReferenceEvaluator: per-tensor, per-axis and blocked scales, every integer
type a zero point may have, and the integer and QLinear products."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference  # noqa: E402
from tests.onnx.reference_check import drawn_rng as _rng  # noqa: E402

QTYPES = [np.int8, np.uint8, np.int16, np.uint16]


def _q(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(int(info.min), int(info.max), size=shape, endpoint=True).astype(dtype)


def _params(d, rng, x_shape, dtype):
    """Scale and zero point per tensor, per axis or per block; returns (feeds, attrs)."""
    kind = d(st.sampled_from(["tensor", "axis", "block"]))
    axis = d(st.integers(0, len(x_shape) - 1))
    if kind == "tensor":
        shape, attrs = (), {}
    elif kind == "axis":
        shape, attrs = (x_shape[axis],), {"axis": axis}
    else:
        block = d(st.integers(1, 3))
        shape = tuple(-(-n // block) if k == axis else n for k, n in enumerate(x_shape))
        attrs = {"axis": axis, "block_size": block}
    scale = rng.uniform(0.01, 0.5, size=shape).astype(np.float32)
    return {"scale": scale, "zp": _q(rng, shape, dtype) // 4}, attrs


def _quant_case(d):
    """A drawn generator, quantized type, input shape, and the scale/zero-point feeds and attributes."""
    rng = _rng(d)
    dtype = d(st.sampled_from(QTYPES))
    shape = tuple(d(st.integers(1, 4)) for _ in range(d(st.integers(1, 3))))
    feeds, attrs = _params(d, rng, shape, dtype)
    return rng, dtype, shape, feeds, attrs


@given(st.data())
def test_dequantize_linear(data):
    rng, dtype, shape, feeds, attrs = _quant_case(data.draw)
    feeds = {"x": _q(rng, shape, dtype), **feeds}
    check_against_reference("DequantizeLinear", feeds, ["x", "scale", "zp"], ["y"], attrs, 21)


@given(st.data())
def test_quantize_linear_rounds_half_to_even_and_saturates(data):
    rng, _, shape, feeds, attrs = _quant_case(data.draw)
    x = np.round(rng.uniform(-300, 300, shape) * 2) / 2  # halves: ties
    feeds = {"x": (x * 0.5).astype(np.float32), **feeds}
    check_against_reference("QuantizeLinear", feeds, ["x", "scale", "zp"], ["y"], attrs, 21)


@given(st.data())
def test_dynamic_quantize_linear(data):
    d = data.draw
    x = _rng(d).uniform(-5, 5, (d(st.integers(1, 4)), 3)).astype(np.float32)
    check_against_reference("DynamicQuantizeLinear", {"x": x}, ["x"], ["y", "scale", "zp"], {}, 11)


@given(st.data())
def test_integer_and_qlinear_matmul(data):
    d = data.draw
    rng = _rng(d)
    m, k, n = (d(st.integers(1, 5)) for _ in range(3))
    dtype = d(st.sampled_from([np.int8, np.uint8]))
    a, b = _q(rng, (m, k), dtype), _q(rng, (k, n), dtype)
    azp, bzp = _q(rng, (), dtype) // 8, _q(rng, (), dtype) // 8
    check_against_reference("MatMulInteger", {"a": a, "b": b, "azp": azp, "bzp": bzp}, ["a", "b", "azp", "bzp"],
                            ["y"], {}, 10)
    scales = {name: np.float32(rng.uniform(0.01, 0.1)) for name in ("sa", "sb")}
    feeds = {"a": a, "sa": np.array(scales["sa"]), "azp": azp, "b": b, "sb": np.array(scales["sb"]), "bzp": bzp,
             "sy": np.array(np.float32(rng.uniform(0.5, 4.0))), "yzp": _q(rng, (), dtype) // 8}
    check_against_reference("QLinearMatMul", feeds, list(feeds), ["y"], {}, 21)


@given(st.data())
def test_integer_and_qlinear_conv(data):
    d = data.draw
    rng = _rng(d)
    cin, cout, size, kernel = d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(3, 6)), d(st.integers(1, 3))
    x, w = _q(rng, (1, cin, size, size), np.uint8), _q(rng, (cout, cin, kernel, kernel), np.uint8)
    attrs = {"pads": [1, 1, 1, 1]} if d(st.booleans()) else {}
    xzp = np.array(rng.integers(0, 10), np.uint8)
    check_against_reference("ConvInteger", {"x": x, "w": w, "xzp": xzp}, ["x", "w", "xzp"], ["y"], attrs, 10)
    feeds = {"x": x, "sx": np.array(np.float32(0.02)), "xzp": xzp, "w": w,
             "sw": rng.uniform(0.01, 0.03, cout).astype(np.float32), "wzp": np.zeros(cout, np.uint8),
             "sy": np.array(np.float32(rng.uniform(2, 8))), "yzp": np.array(rng.integers(0, 20), np.uint8),
             "bias": rng.integers(-500, 500, cout).astype(np.int32)}
    check_against_reference("QLinearConv", feeds, list(feeds), ["y"], attrs, 10)


@given(st.data())
def test_lp_pool(data):
    d = data.draw
    x = _rng(d).standard_normal((1, 2, d(st.integers(3, 6)), d(st.integers(3, 6)))).astype(np.float32)
    attrs = {"kernel_shape": [d(st.integers(1, 3)), d(st.integers(1, 3))], "p": d(st.sampled_from([1, 2, 3])),
             "strides": [d(st.integers(1, 2))] * 2}
    if min(attrs["kernel_shape"]) > 1 and d(st.booleans()):  # padding must be smaller than the window
        attrs["pads"] = [1, 0, 1, 0]
    check_against_reference("LpPool", {"x": x}, ["x"], ["y"], attrs, 18)
