"""ONNX quantization importers: QuantizeLinear and DequantizeLinear (per
tensor, per axis and blocked), DynamicQuantizeLinear, MatMulInteger,
ConvInteger, QLinearMatMul and QLinearConv.

Everything is composed from minicomp ops: integer products are exact int32
matmuls and convolutions of the zero-point-shifted inputs, scales are applied
in float32, and quantizing rounds half to even and saturates to the output
type (the cast's rule).
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import ONNX_DTYPES, register_onnx_importer
from minicomp.frontends.onnx_nn_ops import conv


def _along(ctx, param, x, axis: int, block: int):
    """A scale or zero point shaped to broadcast against ``x``: one value, one
    per index of ``axis``, or (``block`` > 0) one per block of ``axis``."""
    if param.ndim == 0 or (param.ndim == 1 and param.shape[0] == 1 and not block):
        return ctx.op("reshape", param, shape=())
    axis %= x.ndim
    if block:
        if param.ndim != x.ndim:
            raise ShapeError(f"{ctx.node.describe()}: blocked parameters need rank {x.ndim}, got {param.ndim}")
        picks = np.arange(x.shape[axis], dtype=np.int64) // block
        return ctx.op("take", param, ctx.const(picks), axis=axis)
    if param.ndim != 1 or param.shape[0] != x.shape[axis]:
        raise ShapeError(f"{ctx.node.describe()}: a per-axis parameter of shape {list(param.shape)} does not fit "
                         f"axis {axis} of {list(x.shape)}")
    return ctx.op("reshape", param, shape=[x.shape[axis] if k == axis else 1 for k in range(x.ndim)])


def _f32(ctx, t):
    return t if t.dtype.name == "float32" else ctx.op("cast", t, dtype="float32")


def dequantize(ctx, x, scale, zero_point, axis: int = 1, block: int = 0, dtype: str | None = None):
    """(x - zero_point) * scale, in float32, then in ``dtype`` (the scale's type by default)."""
    shifted = _f32(ctx, x)
    if zero_point is not None:
        shifted = ctx.op("sub", shifted, _f32(ctx, _along(ctx, zero_point, x, axis, block)))
    y = ctx.op("mul", shifted, _f32(ctx, _along(ctx, scale, x, axis, block)))
    dtype = dtype or scale.dtype.name
    return y if dtype == "float32" else ctx.op("cast", y, dtype=dtype)


def quantize(ctx, x, scale, zero_point, dtype: str, axis: int = 1, block: int = 0):
    """round_half_even(x / scale) + zero_point, saturated to ``dtype``."""
    q = ctx.op("round", ctx.op("div", _f32(ctx, x), _f32(ctx, _along(ctx, scale, x, axis, block))))
    if zero_point is not None:
        q = ctx.op("add", q, _f32(ctx, _along(ctx, zero_point, x, axis, block)))
    return ctx.op("cast", q, dtype=dtype)  # float-to-integer casts saturate


def _output_dtype(ctx, zero_point, default: str) -> str:
    to = int(ctx.attr("output_dtype", 0) or 0)
    if to:
        if to not in ONNX_DTYPES:
            raise UnsupportedError(f"{ctx.node.describe()}: output_dtype {to} is not supported")
        return ONNX_DTYPES[to]
    return zero_point.dtype.name if zero_point is not None else default


@register_onnx_importer("DequantizeLinear")
def _dequantize_linear(ctx, node):
    x, scale, zp = ctx.input(0), ctx.input(1), ctx.input(2)
    to = int(ctx.attr("output_dtype", 0) or 0)
    if to and to not in ONNX_DTYPES:
        raise UnsupportedError(f"{node.describe()}: output_dtype {to} is not supported")
    return [dequantize(ctx, x, scale, zp, int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0)),
                       ONNX_DTYPES[to] if to else None)]


@register_onnx_importer("QuantizeLinear")
def _quantize_linear(ctx, node):
    x, scale, zp = ctx.input(0), ctx.input(1), ctx.input(2)
    dtype = _output_dtype(ctx, zp, "uint8")
    if not ctx.attr("saturate", 1):
        raise UnsupportedError(f"{node.describe()}: saturate=0 applies to float8 outputs, which are not supported")
    return [quantize(ctx, x, scale, zp, dtype, int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0)))]


@register_onnx_importer("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx, node):
    """uint8 with the scale and zero point that map [min(x, 0), max(x, 0)] onto [0, 255]."""
    x = _f32(ctx, ctx.input(0))
    zero = ctx.const(np.array(0.0, np.float32))
    low = ctx.op("minimum", ctx.op("min", x, axes=None, keepdims=False), zero)
    high = ctx.op("maximum", ctx.op("max", x, axes=None, keepdims=False), zero)
    scale = ctx.op("div", ctx.op("sub", high, low), ctx.const(np.array(255.0, np.float32)))
    zp = ctx.op("cast", ctx.op("round", ctx.op("sub", zero, ctx.op("div", low, scale))), dtype="uint8")
    return [quantize(ctx, x, scale, zp, "uint8"), scale, zp]


def _shifted(ctx, t, zero_point, axis: int | None = None):
    """``t - zero_point`` as exact int32 (a per-row or per-column zero point along ``axis``)."""
    t32 = ctx.op("cast", t, dtype="int32")
    if zero_point is None:
        return t32
    zp = ctx.op("cast", zero_point, dtype="int32")
    if zp.ndim == 1 and zp.shape[0] > 1 and axis is not None:
        zp = ctx.op("reshape", zp, shape=[zp.shape[0] if k == axis % t.ndim else 1 for k in range(t.ndim)])
    elif zp.ndim:
        zp = ctx.op("reshape", zp, shape=()) if zp.shape == (1,) else zp
    return ctx.op("sub", t32, zp)


@register_onnx_importer("MatMulInteger")
def _matmul_integer(ctx, node):
    a, b = ctx.input(0), ctx.input(1)
    return [ctx.op("matmul", _shifted(ctx, a, ctx.input(2), -2 if a.ndim > 1 else None),
                   _shifted(ctx, b, ctx.input(3), -1))]


@register_onnx_importer("QLinearMatMul")
def _qlinear_matmul(ctx, node):
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = (ctx.input(i) for i in range(8))
    acc = ctx.op("matmul", _shifted(ctx, a, a_zp, -2 if a.ndim > 1 else None), _shifted(ctx, b, b_zp, -1))
    return [_requantize(ctx, acc, a_scale, b_scale, y_scale, y_zp, b.ndim, -1)]


def _requantize(ctx, acc, a_scale, b_scale, y_scale, y_zp, b_rank: int, b_axis: int):
    """int32 products scaled by a_scale * b_scale / y_scale, rounded, shifted, saturated."""
    b_scale = _f32(ctx, b_scale)
    if b_scale.ndim == 1 and b_scale.shape[0] > 1:  # one scale per output channel of b
        b_scale = ctx.op("reshape", b_scale, shape=[b_scale.shape[0] if k == b_axis % acc.ndim else 1
                                                    for k in range(acc.ndim)])
    factor = ctx.op("div", ctx.op("mul", _f32(ctx, a_scale), b_scale), _f32(ctx, y_scale))
    q = ctx.op("round", ctx.op("mul", ctx.op("cast", acc, dtype="float32"), factor))
    if y_zp is not None:
        q = ctx.op("add", q, _f32(ctx, y_zp))
    return ctx.op("cast", q, dtype=y_zp.dtype.name if y_zp is not None else "uint8")


class _ShiftedInputs:
    """The import context with Conv's inputs replaced (ConvInteger and
    QLinearConv reuse the Conv importer on zero-point-shifted int32 tensors)."""

    def __init__(self, ctx, inputs):
        self._ctx, self._inputs = ctx, inputs

    def input(self, i):
        return self._inputs[i] if i < len(self._inputs) else None

    def __getattr__(self, name):
        return getattr(self._ctx, name)


@register_onnx_importer("ConvInteger")
def _conv_integer(ctx, node):
    x, w = ctx.input(0), ctx.input(1)
    shifted = [_shifted(ctx, x, ctx.input(2)), _shifted(ctx, w, ctx.input(3), 0)]
    return conv(_ShiftedInputs(ctx, shifted), node)


@register_onnx_importer("QLinearConv")
def _qlinear_conv(ctx, node):
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias = (ctx.input(i) for i in range(9))
    shifted = [_shifted(ctx, x, x_zp), _shifted(ctx, w, w_zp, 0)]
    if bias is not None:
        shifted.append(ctx.op("cast", bias, dtype="int32"))
    (acc,) = conv(_ShiftedInputs(ctx, shifted), node)
    return [_requantize(ctx, acc, x_scale, w_scale, y_scale, y_zp, w.ndim, 1)]
