"""ONNX importers whose element moves are fixed by constant indices:
ScatterElements, ScatterND, GatherND, Col2Im and TensorScatter.

With the indices known at import, every output element's sources are known
too: a table of ``slots`` (output position x source positions, -1 where a
position has fewer sources) is computed in numpy, and the graph gathers the
sources with one ``take`` and reduces them (sum, product, max, min, or the
last writer for plain scatters). Indices that are not constants get a clear
error.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import register_onnx_importer
from minicomp.ir.compute import reduce_identity

_REDUCE = {"add": "sum", "mul": "prod", "max": "max", "min": "min"}
_COMBINE = {"add": "add", "mul": "mul", "max": "maximum", "min": "minimum"}


def _slots(targets: np.ndarray, out_size: int, last_only: bool) -> np.ndarray:
    """For each output position, the source positions writing it (in order), padded with -1."""
    sources: list[list[int]] = [[] for _ in range(out_size)]
    for src, dst in enumerate(targets.reshape(-1).tolist()):
        sources[dst].append(src)
    if last_only:  # a plain scatter: the last write wins (the ONNX reference's order)
        sources = [s[-1:] for s in sources]
    width = max((len(s) for s in sources), default=0) or 1
    table = np.full((out_size, width), -1, np.int64)
    for k, s in enumerate(sources):
        table[k, : len(s)] = s
    return table


def gather_reduce(ctx, source, slots: np.ndarray, op: str, axis: int):
    """Along ``axis`` of ``source``: out[..., k, ...] = ``op`` (sum, prod, max,
    min) of source[..., slots[k, j], ...] over the j that are not -1."""
    n = source.shape[axis]
    identity = reduce_identity(op, source.dtype).value
    pad_shape = [1 if k == axis else d for k, d in enumerate(source.shape)]
    pad = ctx.const(np.full(pad_shape, identity, dtype=source.dtype.numpy))
    extended = ctx.op("concat", source, pad, axis=axis)  # position n is the identity
    picked = ctx.op("take", extended, ctx.const(np.where(slots < 0, n, slots)), axis=axis)
    if slots.shape[1] == 1:  # one source per position: nothing to reduce
        return ctx.op("squeeze", picked, axes=[axis + 1])
    return ctx.op(op, picked, axes=[axis + 1], keepdims=False)


def _scatter(ctx, data, updates, targets: np.ndarray, reduction: str):
    """``data`` with ``updates`` (flattened) written at the flat ``targets``, combined by ``reduction``."""
    if reduction not in ("none", *_REDUCE):
        raise UnsupportedError(f"{ctx.node.describe()}: reduction {reduction!r} is not supported")
    size = int(np.prod(data.shape, dtype=np.int64))
    flat_data = ctx.op("reshape", data, shape=(size,))
    flat_updates = ctx.op("reshape", updates, shape=(int(np.prod(updates.shape, dtype=np.int64)),))
    slots = _slots(targets, size, reduction == "none")
    written = slots[:, 0] >= 0
    if reduction == "none":
        picked = gather_reduce(ctx, flat_updates, slots, "max", 0)  # one source each: taken as it is
        out = ctx.op("where", ctx.const(written), picked, flat_data)
    else:
        merged = gather_reduce(ctx, flat_updates, slots, _REDUCE[reduction], 0)
        out = ctx.op("where", ctx.const(written), ctx.op(_COMBINE[reduction], flat_data, merged), flat_data)
    return ctx.op("reshape", out, shape=data.shape)


def _check_range(ctx, idx: np.ndarray, bound: int, what: str) -> np.ndarray:
    if idx.size and (idx.min() < -bound or idx.max() >= bound):
        raise ShapeError(f"{ctx.node.describe()}: {what} {int(idx.min())}..{int(idx.max())} are outside "
                         f"[-{bound}, {bound})")
    return np.where(idx < 0, idx + bound, idx)


@register_onnx_importer("ScatterElements")
@register_onnx_importer("Scatter")  # its name before opset 11
def _scatter_elements(ctx, node):
    data, updates = ctx.input(0), ctx.input(2)
    indices = np.asarray(ctx.required_constant(1, "indices")).astype(np.int64)
    axis = int(ctx.attr("axis", 0)) % data.ndim
    if indices.shape != updates.shape:
        raise ShapeError(f"{node.describe()}: indices {list(indices.shape)} and updates "
                         f"{list(updates.shape)} differ in shape")
    coords = list(np.indices(indices.shape))
    coords[axis] = _check_range(ctx, indices, data.shape[axis], "indices")
    targets = np.ravel_multi_index(coords, data.shape) if indices.size else np.zeros(0, np.int64)
    return [_scatter(ctx, data, updates, targets, ctx.attr("reduction", "none"))]


def _nd_starts(ctx, data_shape, indices: np.ndarray, batch_dims: int = 0) -> np.ndarray:
    """The flat position, in ``data_shape[:batch_dims + k]``, of each index tuple."""
    k = indices.shape[-1]
    lead = data_shape[: batch_dims + k]
    tuples = indices.reshape(-1, k)
    coords = [_check_range(ctx, tuples[:, j], data_shape[batch_dims + j], "indices") for j in range(k)]
    batch = np.indices(indices.shape[:-1]).reshape(len(indices.shape) - 1, -1)[:batch_dims] if batch_dims else []
    return np.ravel_multi_index(list(batch) + coords, lead).reshape(indices.shape[:-1]) if tuples.size else \
        np.zeros(indices.shape[:-1], np.int64)


@register_onnx_importer("ScatterND")
def _scatter_nd(ctx, node):
    data, updates = ctx.input(0), ctx.input(2)
    indices = np.asarray(ctx.required_constant(1, "indices")).astype(np.int64)
    k = indices.shape[-1]
    if k > data.ndim or updates.shape != indices.shape[:-1] + data.shape[k:]:
        raise ShapeError(f"{node.describe()}: updates {list(updates.shape)} do not fit indices "
                         f"{list(indices.shape)} into data {list(data.shape)}")
    inner = int(np.prod(data.shape[k:], dtype=np.int64))
    starts = _nd_starts(ctx, data.shape, indices).reshape(-1, 1) * inner
    targets = starts + np.arange(inner, dtype=np.int64).reshape(1, -1)
    return [_scatter(ctx, data, updates, targets, ctx.attr("reduction", "none"))]


@register_onnx_importer("GatherND")
def _gather_nd(ctx, node):
    data = ctx.input(0)
    indices = np.asarray(ctx.required_constant(1, "indices")).astype(np.int64)
    b, k = int(ctx.attr("batch_dims", 0)), indices.shape[-1]
    if b + k > data.ndim or indices.shape[:b] != data.shape[:b]:
        raise ShapeError(f"{node.describe()}: indices {list(indices.shape)} with batch_dims={b} do not fit data "
                         f"{list(data.shape)}")
    lead = int(np.prod(data.shape[: b + k], dtype=np.int64))
    rows = ctx.op("reshape", data, shape=(lead,) + tuple(data.shape[b + k:]))
    return [ctx.op("take", rows, ctx.const(_nd_starts(ctx, data.shape, indices, b)), axis=0)]


@register_onnx_importer("Col2Im")
def _col2im(ctx, node):
    """Sum each column's block back into the image: (N, C * prod(block), L) -> (N, C, *image)."""
    x = ctx.input(0)
    image = [int(v) for v in np.asarray(ctx.required_constant(1, "image_shape")).reshape(-1)]
    block = [int(v) for v in np.asarray(ctx.required_constant(2, "block_shape")).reshape(-1)]
    r = len(image)
    dil = list(ctx.attr("dilations", [1] * r))
    pads = list(ctx.attr("pads", [0] * (2 * r)))
    strides = list(ctx.attr("strides", [1] * r))
    n, cb, length = x.shape
    per_block = int(np.prod(block))
    if cb % per_block:
        raise ShapeError(f"{node.describe()}: {cb} rows do not divide into blocks of {per_block}")
    counts = [(image[d] + pads[d] + pads[r + d] - dil[d] * (block[d] - 1) - 1) // strides[d] + 1 for d in range(r)]
    if int(np.prod(counts)) != length:
        raise ShapeError(f"{node.describe()}: {length} columns, but the image and block give {counts}")
    targets = np.full((per_block, length), -1, np.int64)  # image position each (block offset, column) adds to
    for b_idx, offset in enumerate(np.ndindex(*block)):
        for col, where in enumerate(np.ndindex(*counts)):
            pos = [where[d] * strides[d] + offset[d] * dil[d] - pads[d] for d in range(r)]
            if all(0 <= pos[d] < image[d] for d in range(r)):
                targets[b_idx, col] = np.ravel_multi_index(pos, image)
    pixels = int(np.prod(image))
    keep = targets.reshape(-1) >= 0
    slots = _slots(np.where(keep, targets.reshape(-1), pixels), pixels + 1, False)[:pixels]
    channels = ctx.op("reshape", x, shape=(n, cb // per_block, per_block * length))
    summed = gather_reduce(ctx, channels, slots, "sum", 2)
    return [ctx.op("reshape", summed, shape=(n, cb // per_block, *image))]


@register_onnx_importer("TensorScatter")
def _tensor_scatter(ctx, node):
    """A key/value cache update: each batch's ``update`` written at its write index along ``axis``
    (wrapping around the cache in circular mode)."""
    cache, update = ctx.input(0), ctx.input(1)
    axis = int(ctx.attr("axis", -2)) % cache.ndim
    mode = ctx.attr("mode", "linear")
    if mode not in ("linear", "circular"):
        raise UnsupportedError(f"{node.describe()}: mode {mode!r} is not supported")
    starts = np.zeros(cache.shape[0], np.int64) if ctx.input(2) is None else \
        np.asarray(ctx.required_constant(2, "write_indices")).reshape(-1).astype(np.int64)
    length = cache.shape[axis]
    if any(update.shape[k] != cache.shape[k] for k in range(cache.ndim) if k != axis) or update.shape[axis] > length:
        raise ShapeError(f"{node.describe()}: update {list(update.shape)} does not fit cache {list(cache.shape)}")
    coords = list(np.indices(update.shape))
    steps = starts[coords[0]] + coords[axis]
    if mode == "circular":
        steps %= length
    elif steps.size and steps.max() >= length:
        raise ShapeError(f"{node.describe()}: write indices {starts.tolist()} run past the cache's {length} steps")
    coords[axis] = steps
    targets = np.ravel_multi_index(coords, cache.shape) if math.prod(update.shape) else np.zeros(0, np.int64)
    return [_scatter(ctx, cache, update, targets, "none")]
