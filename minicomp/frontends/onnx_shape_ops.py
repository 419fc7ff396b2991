"""ONNX importers that move, pick or make elements: EyeLike, SpaceToDepth and
DepthToSpace, OneHot, Compress (its condition a constant), CenterCropPad and
ReverseSequence (its lengths constants)."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import ONNX_DTYPES, register_onnx_importer


@register_onnx_importer("EyeLike")
def _eye_like(ctx, node):
    x = ctx.input(0)
    if x.ndim != 2:
        raise ShapeError(f"{node.describe()}: EyeLike needs a 2-D input, got shape {list(x.shape)}")
    to = ctx.attr("dtype")
    if to is not None and int(to) not in ONNX_DTYPES:
        raise UnsupportedError(f"{node.describe()}: dtype {to} is not supported")
    dtype = ONNX_DTYPES[int(to)] if to is not None else x.dtype.name
    return [ctx.const(np.eye(x.shape[0], x.shape[1], k=int(ctx.attr("k", 0))).astype(dtype))]


def _blocks_to_depth(ctx, x, size: int, to_depth: bool, mode: str):
    """SpaceToDepth / DepthToSpace: a reshape, a transpose and a reshape."""
    n, c, h, w = x.shape
    if to_depth:
        if h % size or w % size:
            raise ShapeError(f"{ctx.node.describe()}: height {h} and width {w} must divide by blocksize {size}")
        t = ctx.op("reshape", x, shape=(n, c, h // size, size, w // size, size))
        # DCR: output channels ordered (row in block, column in block, channel); CRD: channel first.
        t = ctx.op("transpose", t, perm=(0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4))
        return ctx.op("reshape", t, shape=(n, c * size * size, h // size, w // size))
    if c % (size * size):
        raise ShapeError(f"{ctx.node.describe()}: {c} channels do not divide by blocksize {size} squared")
    depth = c // (size * size)
    if mode == "DCR":
        t = ctx.op("reshape", x, shape=(n, size, size, depth, h, w))
        t = ctx.op("transpose", t, perm=(0, 3, 4, 1, 5, 2))
    else:
        t = ctx.op("reshape", x, shape=(n, depth, size, size, h, w))
        t = ctx.op("transpose", t, perm=(0, 1, 4, 2, 5, 3))
    return ctx.op("reshape", t, shape=(n, depth, h * size, w * size))


def _depth_importer(to_depth: bool):
    def imp(ctx, node):
        x = ctx.input(0)
        if x.ndim != 4:
            raise ShapeError(f"{node.describe()}: needs a 4-D (N, C, H, W) input, got shape {list(x.shape)}")
        mode = ctx.attr("mode", "DCR")
        if mode not in ("DCR", "CRD"):
            raise ShapeError(f"{node.describe()}: mode must be DCR or CRD, got {mode!r}")
        return [_blocks_to_depth(ctx, x, int(ctx.attr("blocksize")), to_depth, mode)]
    return imp


register_onnx_importer("SpaceToDepth")(_depth_importer(True))
register_onnx_importer("DepthToSpace")(_depth_importer(False))


@register_onnx_importer("OneHot")
def _one_hot(ctx, node):
    indices, values = ctx.input(0), ctx.input(2)
    depth = int(np.asarray(ctx.required_constant(1, "depth")).reshape(-1)[0])
    if depth <= 0:
        raise ShapeError(f"{node.describe()}: depth must be positive, got {depth}")
    axis = int(ctx.attr("axis", -1)) % (indices.ndim + 1)
    if indices.dtype.is_float:
        indices = ctx.op("cast", indices, dtype="int64")
    idx = ctx.op("cast", indices, dtype="int64")
    # Negative indices count from the end; the depth positions line up along ``axis``.
    idx = ctx.op("where", ctx.op("less", idx, ctx.const(np.array(0, np.int64))),
                 ctx.op("add", idx, ctx.const(np.array(depth, np.int64))), idx)
    idx = ctx.op("unsqueeze", idx, axes=[axis])
    positions = ctx.const(np.arange(depth, dtype=np.int64).reshape(
        [depth if k == axis else 1 for k in range(indices.ndim + 1)]))
    off = ctx.op("slice", values, starts=[0], ends=[1], axes=[0])
    on = ctx.op("slice", values, starts=[1], ends=[2], axes=[0])
    return [ctx.op("where", ctx.op("equal", idx, positions), ctx.op("reshape", on, shape=()),
                   ctx.op("reshape", off, shape=()))]


@register_onnx_importer("Compress")
def _compress(ctx, node):
    x = ctx.input(0)
    condition = np.asarray(ctx.required_constant(1, "the condition")).reshape(-1).astype(bool)
    axis = ctx.attr("axis")
    if axis is None:
        x, axis = ctx.op("reshape", x, shape=(int(np.prod(x.shape, dtype=np.int64)),)), 0
    axis = int(axis) % x.ndim
    keep = np.nonzero(condition[: x.shape[axis]])[0].astype(np.int64)
    return [ctx.op("take", x, ctx.const(keep), axis=axis)]


@register_onnx_importer("CenterCropPad")
def _center_crop_pad(ctx, node):
    """Crop each named axis to its target length around the centre, or pad it
    with zeros evenly (the extra element of an odd difference at the end)."""
    x = ctx.input(0)
    target = [int(v) for v in np.asarray(ctx.required_constant(1, "shape")).reshape(-1)]
    axes = ctx.attr("axes")
    axes = [int(a) % x.ndim for a in axes] if axes is not None else list(range(x.ndim))
    if len(axes) != len(target):
        raise ShapeError(f"{node.describe()}: {len(target)} target lengths for {len(axes)} axes")
    begins, ends = [0] * x.ndim, [0] * x.ndim
    starts, stops = [0] * x.ndim, list(x.shape)
    for a, want in zip(axes, target):
        have = x.shape[a]
        if want < have:
            starts[a] = (have - want) // 2
            stops[a] = starts[a] + want
        else:
            begins[a] = (want - have) // 2
            ends[a] = want - have - begins[a]
    y = ctx.op("slice", x, starts=starts, ends=stops, axes=list(range(x.ndim)))
    return [ctx.op("pad", y, pads=begins + ends) if any(begins + ends) else y]


@register_onnx_importer("ReverseSequence")
def _reverse_sequence(ctx, node):
    """Reverse the first ``length`` steps of each sequence along the time axis."""
    x = ctx.input(0)
    lengths = np.asarray(ctx.required_constant(1, "sequence_lens")).reshape(-1).astype(np.int64)
    batch_axis, time_axis = int(ctx.attr("batch_axis", 1)) % x.ndim, int(ctx.attr("time_axis", 0)) % x.ndim
    steps = x.shape[time_axis]
    if lengths.shape != (x.shape[batch_axis],) or lengths.min(initial=0) < 0 or lengths.max(initial=0) > steps:
        raise ShapeError(f"{node.describe()}: sequence_lens {lengths.tolist()} do not fit input {list(x.shape)}")
    t = np.arange(steps).reshape(1, steps)
    source = np.where(t < lengths.reshape(-1, 1), lengths.reshape(-1, 1) - 1 - t, t)  # (batch, time)
    if batch_axis > time_axis:
        source = source.T
    shape = [1] * x.ndim
    shape[batch_axis], shape[time_axis] = x.shape[batch_axis], steps
    index = np.broadcast_to(source.reshape(shape), x.shape).astype(np.int64)
    return [ctx.op("gather_elements", x, ctx.const(np.ascontiguousarray(index)), axis=time_axis)]
