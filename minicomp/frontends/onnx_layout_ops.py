"""ONNX importers for shapes and layout: Reshape, Transpose, Concat, Slice, Split, Pad, Gather, Trilu,
constants, Shape, Range."""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import register_onnx_importer
from minicomp.frontends.onnx_elementwise_ops import scalar
from minicomp.ir.ops import broadcast_shapes

# -- shapes and layout ------------------------------------------------------------------


@register_onnx_importer("Reshape")
def _reshape(ctx, node):
    x = ctx.input(0)
    shape = [int(d) for d in (ctx.attr("shape") if ctx.opset < 5 else ctx.required_constant(1, "the shape"))]
    if not ctx.attr("allowzero", 0):
        shape = [x.shape[k] if d == 0 else d for k, d in enumerate(shape)]
    return [ctx.op("reshape", x, shape=shape)]


@register_onnx_importer("Flatten")
def _flatten(ctx, node):
    x = ctx.input(0)
    axis = int(ctx.attr("axis", 1))
    if not -x.ndim <= axis <= x.ndim:
        raise ShapeError(f"{node.describe()}: axis {axis} is outside [-{x.ndim}, {x.ndim}] for shape {list(x.shape)}")
    axis = axis + x.ndim if axis < 0 else axis  # ONNX counts a negative axis from the rank
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [ctx.op("reshape", x, shape=(rows, int(np.prod(x.shape[axis:], dtype=np.int64))))]


@register_onnx_importer("Transpose")
def _transpose(ctx, node):
    perm = ctx.attr("perm")
    return [ctx.op("transpose", ctx.input(0), perm=tuple(perm) if perm is not None else None)]


@register_onnx_importer("Concat")
def _concat(ctx, node):
    return [ctx.op("concat", *ctx.inputs(), axis=int(ctx.attr("axis")))]


def _axes_arg(ctx, since: int, what="axes"):
    if ctx.opset >= since:
        arr = ctx.constant(1)
        if ctx.input(1) is not None and arr is None:
            raise UnsupportedError(f"{what} must be constant")
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    return ctx.attr("axes")


@register_onnx_importer("Squeeze")
def _squeeze(ctx, node):
    return [ctx.op("squeeze", ctx.input(0), axes=_axes_arg(ctx, 13))]


@register_onnx_importer("Unsqueeze")
def _unsqueeze(ctx, node):
    return [ctx.op("unsqueeze", ctx.input(0), axes=_axes_arg(ctx, 13))]


@register_onnx_importer("Expand")
def _expand(ctx, node):
    x = ctx.input(0)
    target = [int(d) for d in ctx.required_constant(1, "the shape")]
    shape = broadcast_shapes(x.shape, tuple(target))
    return [ctx.op("broadcast_to", x, shape=shape)]


@register_onnx_importer("Tile")
def _tile(ctx, node):
    reps = ctx.required_constant(1, "repeats")
    return [ctx.op("tile", ctx.input(0), repeats=[int(r) for r in reps.reshape(-1)])]


@register_onnx_importer("Slice")
def _slice(ctx, node):
    x = ctx.input(0)
    if ctx.opset < 10:
        starts, ends, axes = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes")
        steps = None
    else:
        starts = [int(v) for v in ctx.required_constant(1, "starts")]
        ends = [int(v) for v in ctx.required_constant(2, "ends")]
        axes_arr, steps_arr = ctx.constant(3), ctx.constant(4)
        axes = None if axes_arr is None else [int(v) for v in axes_arr]
        steps = None if steps_arr is None else [int(v) for v in steps_arr]
    # ONNX uses INT64 extremes for "to the end"; clamp them for Python slicing.
    big = 1 << 62
    starts = [max(min(int(s), big), -big) for s in starts]
    ends = [max(min(int(e), big), -big) for e in ends]
    return [ctx.op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)]


@register_onnx_importer("Split")
def _split(ctx, node):
    x = ctx.input(0)
    axis = int(ctx.attr("axis", 0)) % x.ndim
    n = len(node.outputs)
    if ctx.opset >= 13:
        given = ctx.input(1) is not None  # sizes as an input (opset 13+); absent: equal parts
        sizes = [int(v) for v in ctx.required_constant(1, "split sizes").reshape(-1)] if given else None
    else:
        sizes = ctx.attr("split")
    if not sizes:
        d = x.shape[axis]
        chunk = -(-d // n)
        sizes = [min(chunk, d - k * chunk) for k in range(n)]
    if sum(sizes) != x.shape[axis] or len(sizes) != n:
        raise ShapeError(f"split sizes {sizes} do not fit axis {axis} of size {x.shape[axis]} into {n} outputs")
    outs, start = [], 0
    for size in sizes:
        outs.append(ctx.op("slice", x, starts=[start], ends=[start + size], axes=[axis]))
        start += size
    return outs


@register_onnx_importer("Pad")
def _pad(ctx, node):
    x = ctx.input(0)
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads = list(ctx.attr("pads", ctx.attr("paddings")))
        value = float(ctx.attr("value", 0.0))
    else:
        pads = [int(v) for v in ctx.required_constant(1, "pads")]
        cv = ctx.constant(2)
        if ctx.input(2) is not None and cv is None:
            raise UnsupportedError("the constant_value of Pad must be constant")
        value = 0.0 if cv is None or cv.size == 0 else float(cv.reshape(-1)[0])
        axes_arr = ctx.constant(3)
        if axes_arr is not None:
            axes = [int(a) % x.ndim for a in axes_arr]
            full = [0] * (2 * x.ndim)
            for k, a in enumerate(axes):
                full[a], full[x.ndim + a] = pads[k], pads[len(axes) + k]
            pads = full
    if mode == "wrap":  # each padded position repeats the input from the other end
        for a in range(x.ndim):
            before, after, n = pads[a], pads[x.ndim + a], x.shape[a]
            if before or after:
                picks = np.arange(-before, n + after, dtype=np.int64) % max(n, 1)
                x = ctx.op("take", x, ctx.const(picks), axis=a)
        return [x]
    if mode not in ("constant", "reflect", "edge"):
        raise UnsupportedError(f"Pad mode {mode!r} is not supported")
    return [ctx.op("pad", x, pads=pads, value=value, mode=mode)]


@register_onnx_importer("Gather")
def _gather(ctx, node):
    return [ctx.op("take", ctx.input(0), ctx.input(1), axis=int(ctx.attr("axis", 0)))]


@register_onnx_importer("GatherElements")
def _gather_elements(ctx, node):
    return [ctx.op("gather_elements", ctx.input(0), ctx.input(1), axis=int(ctx.attr("axis", 0)))]


@register_onnx_importer("Hardmax")
def _hardmax(ctx, node):
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    x = ctx.input(0)
    axis = int(ctx.attr("axis", -1 if ctx.opset >= 13 else 1)) % max(x.ndim, 1)
    if ctx.opset < 13:
        raise UnsupportedError(f"{node.describe()}: Hardmax before opset 13 (over flattened axes) is not supported")
    best = ctx.op("argmax", x, axis=axis, keepdims=True)
    positions = ctx.const(np.arange(x.shape[axis], dtype=np.int64).reshape(
        [x.shape[axis] if k == axis else 1 for k in range(x.ndim)]))
    return [ctx.op("cast", ctx.op("equal", positions, best), dtype=x.dtype.name)]


@register_onnx_importer("LpNormalization")
def _lp_normalization(ctx, node):
    x = ctx.input(0)
    axis, p = int(ctx.attr("axis", -1)), int(ctx.attr("p", 2))
    if p not in (1, 2):
        raise UnsupportedError(f"{node.describe()}: p={p}; only the L1 and L2 norms are defined")
    mag = ctx.op("abs", x) if p == 1 else ctx.op("mul", x, x)
    norm = ctx.op("sum", mag, axes=[axis], keepdims=True)
    if p == 2:
        norm = ctx.op("sqrt", norm)
    zero = ctx.op("equal", norm, scalar(ctx, 0.0, x))
    return [ctx.op("where", zero, scalar(ctx, 0.0, x), ctx.op("div", x, norm))]


# -- constants and shapes ------------------------------------------------------------


@register_onnx_importer("Constant")
def _constant(ctx, node):
    attrs = node.attrs
    if "value" in attrs:
        arr = np.asarray(attrs["value"])
    elif "value_float" in attrs:
        arr = np.array(attrs["value_float"], dtype=np.float32)
    elif "value_floats" in attrs:
        arr = np.array(attrs["value_floats"], dtype=np.float32)
    elif "value_int" in attrs:
        arr = np.array(attrs["value_int"], dtype=np.int64)
    elif "value_ints" in attrs:
        arr = np.array(attrs["value_ints"], dtype=np.int64)
    else:
        raise UnsupportedError(f"Constant with attributes {sorted(attrs)} is not supported")
    return [ctx.const(arr)]


@register_onnx_importer("Shape")
def _shape(ctx, node):
    shape = np.array(ctx.input(0).shape, dtype=np.int64)
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return [ctx.const(shape[start:end])]


@register_onnx_importer("Size")
def _size(ctx, node):
    return [ctx.const(np.array(int(np.prod(ctx.input(0).shape, dtype=np.int64)), dtype=np.int64))]


@register_onnx_importer("ConstantOfShape")
def _constant_of_shape(ctx, node):
    shape = tuple(int(d) for d in ctx.required_constant(0, "the shape").reshape(-1))
    value = ctx.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if math.prod(shape) > (1 << 28):
        raise UnsupportedError(f"ConstantOfShape of {list(shape)} is too large")
    return [ctx.const(np.full(shape, fill[0], dtype=fill.dtype))]


@register_onnx_importer("Trilu")
def _trilu(ctx, node):
    k = ctx.required_constant(1, "k") if ctx.input(1) is not None else np.array(0)
    return [ctx.op("trilu", ctx.input(0), k=int(np.asarray(k).reshape(-1)[0]), upper=bool(ctx.attr("upper", 1)))]


@register_onnx_importer("Range")
def _range(ctx, node):
    start, limit, delta = (ctx.required_constant(i, name) for i, name in enumerate(("start", "limit", "delta")))
    if float(delta) == 0:
        raise ShapeError(f"{node.describe()}: delta is 0")
    return [ctx.const(np.arange(start, limit, delta, dtype=np.asarray(start).dtype))]
