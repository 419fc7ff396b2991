"""Layout ops: reshape, transpose, concat, slice, pad, broadcast_to, squeeze, unsqueeze.

They move elements without arithmetic, so each compute definition is an index
mapping; fusion inlines them into their neighbours for free.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute
from minicomp.ir.dims import Size, SymbolicSizeError, static_or_symbolic
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import REQUIRED, OpDef, broadcast_index, normalize_axis, normalize_axis_attr, register_op


def row_major_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


# -- reshape ------------------------------------------------------------------------

def _reshape_normalize(types, a):
    size = types[0].size
    shape = list(static_or_symbolic(a["shape"]))  # (symbolic sizes compare and divide exactly, or refuse)
    if shape.count(-1) > 1:
        raise ShapeError(f"shape {shape} has more than one -1")
    if any(d < -1 for d in shape):
        raise ShapeError(f"shape {shape} has a negative dimension")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot infer -1 in shape {shape} for {size} elements")
        shape[shape.index(-1)] = size // known
    if math.prod(shape) != size:
        raise ShapeError(f"cannot reshape {size} elements into shape {shape}")
    a["shape"] = tuple(shape)
    return a


def _reshape_compute(x, shape):
    out_strides = row_major_strides(shape)
    in_strides = row_major_strides(x.shape)

    def fn(*idx):
        flat = ex.const(0, "int64")
        for i, s in zip(idx, out_strides):
            flat = flat + i * s
        return x[tuple((flat // s) % d for s, d in zip(in_strides, x.shape))]

    return compute(shape, fn, "reshape")


register_op(OpDef(
    "reshape", lambda types, a: [TensorType(a["shape"], types[0].dtype)],
    lambda x, shape: x.reshape(shape), _reshape_compute,
    attrs={"shape": None}, normalize=_reshape_normalize,
    doc="Same elements in a new shape (row-major); one dimension may be -1.",
))

# -- transpose ------------------------------------------------------------------------


def _transpose_normalize(types, a):
    rank = types[0].rank
    perm = a["perm"]
    perm = tuple(reversed(range(rank))) if perm is None else tuple(normalize_axis(int(p), rank) for p in perm)
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"perm {list(a['perm'])} is not a permutation of {rank} axes")
    a["perm"] = perm
    return a


def _transpose_compute(x, perm):
    shape = tuple(x.shape[p] for p in perm)

    def fn(*idx):
        src = [None] * len(perm)
        for k, p in enumerate(perm):
            src[p] = idx[k]
        return x[tuple(src)]

    return compute(shape, fn, "transpose")


register_op(OpDef(
    "transpose",
    lambda types, a: [TensorType(tuple(types[0].shape[p] for p in a["perm"]), types[0].dtype)],
    lambda x, perm: np.transpose(x, perm), _transpose_compute,
    attrs={"perm": None}, normalize=_transpose_normalize,
    doc="Permute axes: output axis k is input axis perm[k] (default: reverse).",
))

# -- concat ------------------------------------------------------------------------


def _concat_infer(types, a):
    first, axis = types[0], a["axis"]
    for k, t in enumerate(types[1:], 1):
        if t.dtype != first.dtype:
            raise ShapeError(f"input {k} has dtype {t.dtype.name}, input 0 has {first.dtype.name}")
        if t.rank != first.rank or any(d != e for j, (d, e) in enumerate(zip(t.shape, first.shape)) if j != axis):
            raise ShapeError(f"input {k} shape {list(t.shape)} does not match {list(first.shape)} "
                             f"outside axis {axis}")
    total = sum(t.shape[axis] for t in types)
    return [TensorType(first.shape[:axis] + (total,) + first.shape[axis + 1:], first.dtype)]


def _concat_compute(*xs, axis):
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    parts = [x for x in xs if x.shape[axis] > 0] or list(xs[:1])

    def fn(*idx):
        # Start from the last part and wrap earlier ones in selects.
        offsets = np.cumsum([0] + [p.shape[axis] for p in parts])
        result = None
        for p, off in reversed(list(zip(parts, offsets[:-1]))):
            local = ex.minimum(ex.maximum(idx[axis] - int(off), 0), max(p.shape[axis] - 1, 0))
            load = p[idx[:axis] + (local,) + idx[axis + 1:]]
            result = load if result is None else ex.select(ex.lt(idx[axis], int(off + p.shape[axis])), load, result)
        return result

    return compute(tuple(shape), fn, "concat")


register_op(OpDef(
    "concat", _concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_compute,
    attrs={"axis": 0}, normalize=normalize_axis_attr, num_inputs=(1, None),
    doc="Join tensors along an existing axis.",
))

# -- slice ------------------------------------------------------------------------


def _slice_normalize(types, a):
    shape = types[0].shape
    rank = len(shape)
    starts, ends = list(a["starts"]), list(a["ends"])
    axes = list(a["axes"]) if a["axes"] is not None else list(range(len(starts)))
    steps = list(a["steps"]) if a["steps"] is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError("starts, ends, axes and steps must have the same length")
    full_s, full_e, full_st = [0] * rank, list(shape), [1] * rank
    seen = set()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = normalize_axis(int(ax), rank)
        if ax in seen:
            raise ShapeError(f"axis {ax} is sliced twice")
        seen.add(ax)
        if int(st) == 0:
            raise ShapeError(f"step on axis {ax} is 0")
        if any(isinstance(v, Size) for v in (s, e, shape[ax])):
            full_s[ax], full_e[ax] = _symbolic_bounds(shape[ax], s, e, int(st))
            continue
        # Python slice semantics clamp out-of-range starts and ends, as ONNX does.
        r = range(*slice(int(s), int(e), int(st)).indices(shape[ax]))
        if len(r) == 0:
            r = range(0, 0, 1)  # one spelling for every empty slice keeps normalizing idempotent
        full_s[ax], full_st[ax] = r.start, r.step
        full_e[ax] = r.stop if r.stop >= 0 else -(shape[ax] + 1)
    a.update(starts=tuple(full_s), ends=tuple(full_e), axes=tuple(range(rank)), steps=tuple(full_st))
    return a


def _symbolic_bounds(size, start, end, step: int) -> tuple:
    """(start, end) of a unit-step slice of an axis of ``size`` where a size or a bound is symbolic:
    negative ints count from the end, and the bounds must lie inside the axis at every size in the
    ranges (clamping would depend on the size)."""
    if step != 1:
        raise SymbolicSizeError(f"a slice with step {step} of an axis of {size} elements")

    def place(b):
        b = size + b if isinstance(b, int) and b < 0 else b
        b = size if isinstance(b, int) and not isinstance(size, int) and b >= (1 << 62) else b
        if not (b >= 0 and b <= size):  # decided by the ranges, or SymbolicSizeError
            raise ShapeError(f"slice bound {b} is outside an axis of {size} elements")
        return b

    start, end = place(start), place(end)
    if not end >= start:
        raise ShapeError(f"slice {start}:{end} of an axis of {size} elements is empty at some sizes")
    return start, end


def _slice_shape(shape, starts, ends, steps):
    return tuple(e - s if any(isinstance(v, Size) for v in (d, s, e)) else len(range(*slice(s, e, st).indices(d)))
                 for d, s, e, st in zip(shape, starts, ends, steps))


def _slice_reference(x, starts, ends, axes, steps):
    return x[tuple(slice(s, e, st) for s, e, st in zip(starts, ends, steps))]


register_op(OpDef(
    "slice",
    lambda types, a: [TensorType(_slice_shape(types[0].shape, a["starts"], a["ends"], a["steps"]), types[0].dtype)],
    _slice_reference,
    lambda x, starts, ends, axes, steps: compute(
        _slice_shape(x.shape, starts, ends, steps),
        lambda *idx: x[tuple(i * st + s for i, s, st in zip(idx, starts, steps))], "slice"),
    attrs={"starts": None, "ends": None, "axes": None, "steps": None}, normalize=_slice_normalize,
    doc="Python-style slicing per axis (out-of-range bounds clamp; steps may be negative).",
))

# -- pad ------------------------------------------------------------------------


PAD_MODES = ("constant", "reflect", "edge")


def _pad_normalize(types, a):
    shape = types[0].shape
    rank = len(shape)
    pads = tuple(int(p) for p in a["pads"])
    if len(pads) != 2 * rank:
        raise ShapeError(f"pads needs {2 * rank} values (all begins, then all ends), got {len(pads)}")
    if a["mode"] not in PAD_MODES:
        raise ShapeError(f"mode must be one of {', '.join(PAD_MODES)}, got {a['mode']!r}")
    if a["mode"] != "constant":
        if min(pads) < 0:
            raise ShapeError(f"{a['mode']} padding cannot crop (negative pads {list(pads)})")
        for k, d in enumerate(shape):
            limit = d - 1 if a["mode"] == "reflect" else (1 << 62 if d > 0 else 0)
            if max(pads[k], pads[rank + k]) > limit:
                raise ShapeError(f"{a['mode']} padding of axis {k} (size {d}) by {pads[k]}, {pads[rank + k]} "
                                 f"needs pads of at most {limit}")
    a["pads"] = pads
    a["value"] = float(a["value"])
    return a


def _pad_shape(shape, pads):
    rank = len(shape)
    return tuple(d + pads[k] + pads[rank + k] for k, d in enumerate(shape))


def _pad_infer(types, a):
    shape = _pad_shape(types[0].shape, a["pads"])
    if min(shape, default=0) < 0:
        raise ShapeError(f"pads {list(a['pads'])} crop more than the input has")
    if types[0].dtype.is_bool:
        raise ShapeError("pad needs a numeric dtype, got bool")
    return [TensorType(shape, types[0].dtype)]


def _pad_reference(x, pads, value, mode="constant"):
    rank = x.ndim
    if mode != "constant":
        return np.pad(x, [(pads[k], pads[rank + k]) for k in range(rank)], mode=mode)
    out = np.full(_pad_shape(x.shape, pads), ex.const(value, dtypes.as_dtype(x.dtype)).value, dtype=x.dtype)
    src, dst = [], []
    for k in range(rank):
        b, e, d = pads[k], pads[rank + k], x.shape[k]
        lo, hi = max(0, -b), min(d, d + e)  # the part of x that survives cropping
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo + b, lo + b + max(0, hi - lo)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def _pad_compute(x, pads, value, mode="constant"):
    shape = _pad_shape(x.shape, pads)

    def fn(*idx):
        if 0 in x.shape:
            return ex.const(value, x.dtype)
        if mode != "constant":
            src = []
            for k, i in enumerate(idx):
                j, last = i - pads[k], x.shape[k] - 1
                if mode == "edge":
                    src.append(ex.minimum(ex.maximum(j, 0), last))
                else:  # reflect about the first and last element, without repeating them
                    j = ex.call("abs", j)
                    src.append(last - ex.call("abs", last - j))
            return x[tuple(src)]
        inside, src = ex.const(True, "bool"), []
        for k, i in enumerate(idx):
            j = i - pads[k]
            inside = ex.logical_and(inside, ex.logical_and(ex.ge(j, 0), ex.lt(j, x.shape[k])))
            src.append(ex.minimum(ex.maximum(j, 0), x.shape[k] - 1))
        return ex.select(inside, x[tuple(src)], ex.const(value, x.dtype))

    return compute(shape, fn, "pad")


register_op(OpDef(
    "pad", _pad_infer, _pad_reference, _pad_compute,
    attrs={"pads": None, "value": 0.0, "mode": "constant"}, normalize=_pad_normalize,
    doc="Padding (mode constant, reflect or edge); pads = (begins..., ends...); negative pads crop.",
))

# -- broadcast_to, squeeze, unsqueeze ---------------------------------------------------


def _broadcast_to_infer(types, a):
    src, dst = types[0].shape, a["shape"]
    off = len(dst) - len(src)
    if off < 0 or any(d != 1 and d != dst[off + k] for k, d in enumerate(src)):
        raise ShapeError(f"cannot broadcast shape {list(src)} to {list(dst)}")
    return [TensorType(dst, types[0].dtype)]


register_op(OpDef(
    "broadcast_to", _broadcast_to_infer, lambda x, shape: np.broadcast_to(x, shape).copy(),
    lambda x, shape: compute(shape, lambda *i: x[broadcast_index(i, x.shape, shape)], "broadcast_to"),
    attrs={"shape": None},
    normalize=lambda types, a: dict(a, shape=static_or_symbolic(a["shape"])),
    doc="Repeat size-1 (and missing leading) axes up to ``shape``.",
))


def _squeeze_normalize(types, a):
    shape = types[0].shape
    axes = a["axes"]
    if axes is None:
        axes = [k for k, d in enumerate(shape) if d == 1]
    axes = sorted({normalize_axis(int(k), len(shape)) for k in axes})
    for k in axes:
        if shape[k] != 1:
            raise ShapeError(f"cannot squeeze axis {k} of size {shape[k]}")
    a["axes"] = tuple(axes)
    return a


def _squeeze_compute(x, axes):
    shape = tuple(d for k, d in enumerate(x.shape) if k not in axes)

    def fn(*idx):
        it = iter(idx)
        return x[tuple(0 if k in axes else next(it) for k in range(len(x.shape)))]

    return compute(shape, fn, "squeeze")


register_op(OpDef(
    "squeeze",
    lambda types, a: [TensorType(tuple(d for k, d in enumerate(types[0].shape) if k not in a["axes"]),
                                 types[0].dtype)],
    lambda x, axes: np.squeeze(x, axis=axes) if axes else x.copy(), _squeeze_compute,
    attrs={"axes": None}, normalize=_squeeze_normalize,
    doc="Remove size-1 axes (all of them when axes is None).",
))


def _unsqueeze_normalize(types, a):
    rank = types[0].rank + len(a["axes"])
    axes = sorted(normalize_axis(int(k), rank) for k in a["axes"])
    if len(set(axes)) != len(axes):
        raise ShapeError(f"axes {list(a['axes'])} repeat an axis")
    a["axes"] = tuple(axes)
    return a


def _unsqueeze_shape(shape, axes):
    it = iter(shape)
    return tuple(1 if k in axes else next(it) for k in range(len(shape) + len(axes)))


register_op(OpDef(
    "unsqueeze",
    lambda types, a: [TensorType(_unsqueeze_shape(types[0].shape, a["axes"]), types[0].dtype)],
    lambda x, axes: x.reshape(_unsqueeze_shape(x.shape, axes)),
    lambda x, axes: compute(_unsqueeze_shape(x.shape, axes),
                            lambda *idx: x[tuple(i for k, i in enumerate(idx) if k not in axes)], "unsqueeze"),
    attrs={"axes": None}, normalize=_unsqueeze_normalize,
    doc="Insert size-1 axes at the given output positions.",
))


# -- tile and take ---------------------------------------------------------------


def _tile_normalize(types, a):
    reps = tuple(int(r) for r in a["repeats"])
    if len(reps) != types[0].rank or min(reps, default=1) < 0:
        raise ShapeError(f"repeats needs {types[0].rank} non-negative values, got {list(reps)}")
    a["repeats"] = reps
    return a


register_op(OpDef(
    "tile",
    lambda types, a: [TensorType(tuple(d * r for d, r in zip(types[0].shape, a["repeats"])), types[0].dtype)],
    lambda x, repeats: np.tile(x, repeats) if x.ndim else x.copy(),
    lambda x, repeats: compute(tuple(d * r for d, r in zip(x.shape, repeats)),
                               lambda *i: x[tuple(j % d for j, d in zip(i, x.shape))], "tile"),
    attrs={"repeats": None}, normalize=_tile_normalize,
    doc="Repeat the whole tensor ``repeats[k]`` times along each axis k.",
))


def _take_infer(types, a):
    x, idx = types
    if not idx.dtype.is_int:
        raise ShapeError(f"indices must be int32 or int64, got {idx.dtype.name}")
    if x.shape[a["axis"]] == 0:
        raise ShapeError(f"cannot take from axis {a['axis']} of size 0")
    axis = a["axis"]
    return [TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)]


def _take_compute(x, indices, axis):
    d = x.shape[axis]
    shape = x.shape[:axis] + indices.shape + x.shape[axis + 1:]
    k = len(indices.shape)

    def fn(*i):
        raw = ex.cast("int64", indices[i[axis:axis + k]])
        j = ex.select(ex.lt(raw, 0), raw + d, raw)
        j = ex.minimum(ex.maximum(j, 0), d - 1)  # out-of-range indices clamp: never read outside x
        return x[i[:axis] + (j,) + i[axis + k:]]

    return compute(shape, fn, "take")


def _take_reference(x, indices, axis):
    d = x.shape[axis]
    idx = np.where(indices < 0, indices + d, indices)
    return np.take(x, idx, axis=axis, mode="clip")


def _take_check(arrays, a):
    x, indices = arrays
    if indices is None or a.get("_dim") is None:
        return
    d = a["_dim"]
    bad = indices[(indices < -d) | (indices >= d)] if indices.size else indices
    if bad.size:
        raise ShapeError(f"index {int(bad.reshape(-1)[0])} is out of range for axis {a['axis']} of size {d} "
                         f"(indices must lie in [-{d}, {d - 1}])")


register_op(OpDef(
    "take", _take_infer, _take_reference, _take_compute, attrs={"axis": 0}, normalize=normalize_axis_attr,
    num_inputs=2,
    doc="Gather slices of x along ``axis`` at integer ``indices`` (negative counts from the end). Constant "
        "indices out of range are refused when the graph is built; at run time they clamp to the axis.",
    check_constants=_take_check,
))


# -- trilu ---------------------------------------------------------------------------------


def _trilu_infer(types, a):
    if types[0].rank < 2:
        raise ShapeError(f"trilu needs a matrix (rank >= 2), got rank {types[0].rank}")
    return [types[0]]


def _trilu_compute(x, k, upper):
    def fn(*i):
        diff = i[-1] - i[-2]  # column - row
        keep = ex.ge(diff, ex.const(k, dtypes.int64)) if upper else ex.le(diff, ex.const(k, dtypes.int64))
        return ex.select(keep, x[i], ex.const(0, x.dtype))
    return compute(x.shape, fn, "trilu")


register_op(OpDef(
    "trilu", _trilu_infer, lambda x, k, upper: (np.triu(x, k) if upper else np.tril(x, k)).astype(x.dtype),
    _trilu_compute, attrs={"k": 0, "upper": True},
    doc="The upper (``upper``) or lower triangle of the last two axes from diagonal ``k``; zeros elsewhere.",
))


# -- gather_elements ------------------------------------------------------------------------


def _gather_elements_infer(types, a):
    x, idx = types
    if not idx.dtype.is_int:
        raise ShapeError(f"indices must be int32 or int64, got {idx.dtype.name}")
    if idx.rank != x.rank:
        raise ShapeError(f"indices have rank {idx.rank}, x has rank {x.rank}; they must match")
    if x.shape[a["axis"]] == 0 and idx.size:
        raise ShapeError(f"cannot gather from axis {a['axis']} of size 0")
    return [TensorType(idx.shape, x.dtype)]


def _gather_elements_compute(x, indices, axis):
    d = x.shape[axis]

    def fn(*i):
        raw = ex.cast(dtypes.int64, indices[i])
        j = ex.select(ex.lt(raw, 0), raw + d, raw)
        j = ex.minimum(ex.maximum(j, 0), d - 1)  # out-of-range indices clamp, as take's do
        return x[tuple(j if k == axis else i[k] for k in range(len(i)))]

    return compute(indices.shape, fn, "gather_elements")


def _gather_elements_np(x, indices, axis):
    d = x.shape[axis]
    idx = np.clip(np.where(indices < 0, indices + d, indices), 0, max(d - 1, 0)).astype(np.int64)
    return np.take_along_axis(x, idx, axis=axis)


register_op(OpDef(
    "gather_elements", _gather_elements_infer, _gather_elements_np, _gather_elements_compute,
    attrs={"axis": 0}, normalize=normalize_axis_attr, num_inputs=2, check_constants=_take_check,
    doc="out[i] = x[i with its ``axis`` coordinate replaced by indices[i]] (ONNX GatherElements; negative "
        "indices count from the end; constant indices out of range are refused, others clamp).",
))

# -- iota ---------------------------------------------------------------------------


def _iota_normalize(types, a):
    a["dtype"] = dtypes.as_dtype(a["dtype"]).name
    if not isinstance(a["length"], (int, Size)) or (isinstance(a["length"], int) and a["length"] < 0):
        raise ShapeError(f"length must be a size >= 0, got {a['length']!r}")
    if not isinstance(a["start"], (int, Size)) or not isinstance(a["step"], int):
        raise ShapeError(f"start must be an integer or a size and step an integer, got {a['start']!r}, "
                         f"{a['step']!r}")
    return a


register_op(OpDef(
    "iota",
    lambda types, a: [TensorType((a["length"],), dtypes.as_dtype(a["dtype"]))],
    lambda length, start, step, dtype: (start + np.arange(length, dtype=np.int64) * step).astype(
        dtypes.as_dtype(dtype).numpy),
    lambda length, start, step, dtype: compute(
        (length,), lambda i: ex.cast(dtypes.as_dtype(dtype), i * step + start), "iota"),
    attrs={"length": REQUIRED, "start": 0, "step": 1, "dtype": "int64"}, normalize=_iota_normalize,
    num_inputs=0,
    doc="start, start + step, ... (length values): numpy's arange, whose length and start may be symbolic "
        "(mc.Dim) where a constant could not be (iota(length=1, start=n) holds the size n at the call).",
))
