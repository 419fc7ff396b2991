"""index_copy: slices of a tensor replaced at positions known only at run time.

``index_copy(data, index, updates, axis)`` is ``data`` with slice
``index[j]`` along ``axis`` replaced by slice ``j`` of ``updates``: a key/value
cache taking a step's keys at the step's positions. The index is a tensor,
so the positions are read when the kernel runs.

As a compute definition (for any target, and for a result in a buffer of
its own) each position finds the last ``j`` that writes it, a reduction over
the index, and takes that slice of ``updates`` or keeps ``data``'s. Where the
result goes back into ``data``'s own memory (a graph input the model writes,
``GraphBuilder.write``), lowering instead stores only the updated slices
(:func:`minicomp.passes.lower_scatter.lower_index_copy_in_place`): a step
costs its updates, not the cache.

Negative positions count from the end (as torch's ``index_put``); a
position outside the axis writes nothing, and the model's call reports it: the op's ``runtime_checks``,
which the graph builder turns into a check of the call (``Graph.checks``).
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute, reduce, reduce_axis
from minicomp.ir.ops import OPAQUE, OpDef, normalize_axis_attr, register_op


def _index_copy_infer(types, a):
    data, index, updates = types
    axis = a["axis"]
    if not index.dtype.is_int:
        raise ShapeError(f"index must be int32 or int64, got {index.dtype.name}")
    if index.rank != 1:
        raise ShapeError(f"index must be a vector of positions, got rank {index.rank}")
    want = data.shape[:axis] + (index.shape[0],) + data.shape[axis + 1:]
    if tuple(updates.shape) != tuple(want):
        raise ShapeError(f"updates must have data's shape with index's length along axis {axis}: "
                         f"{list(want)}, got {list(updates.shape)}")
    if updates.dtype != data.dtype:
        raise ShapeError(f"updates ({updates.dtype.name}) and data ({data.dtype.name}) differ in dtype")
    return [data]


def wrapped_position(index, j, length):
    """Position ``index[j]`` as int64, a negative one counted from the end of an axis of ``length``."""
    raw = ex.cast("int64", index[(j,)])
    return ex.select(ex.lt(raw, 0), raw + length, raw)


def _index_copy_compute(data, index, updates, axis):
    length, n = data.shape[axis], index.shape[0]
    r, _ = raxis = reduce_axis(n, "j")
    # writer[p]: the last j whose position is p, or -1 where none writes p.
    writer = compute((length,), lambda p: reduce(
        "max", ex.select(ex.eq(wrapped_position(index, r, length), p), r, ex.const(-1, dtypes.int64)), [raxis]),
        "writer")

    def fn(*i):
        j = writer[(i[axis],)]
        src = i[:axis] + (ex.maximum(j, ex.const(0, dtypes.int64)),) + i[axis + 1:]
        return ex.select(ex.ge(j, ex.const(0, dtypes.int64)), updates[src], data[i])

    return compute(data.shape, fn, "index_copy")


def _index_copy_reference(data, index, updates, axis):
    length = data.shape[axis]
    out = np.array(data, copy=True)
    positions = np.where(index < 0, index + length, index).astype(np.int64)
    for j, p in enumerate(positions.tolist()):  # in order: the last write to a position wins
        if 0 <= p < length:
            dst = (slice(None),) * axis + (p,)
            out[dst] = np.take(updates, j, axis=axis)
    return out


def _index_copy_checks(types, a):
    length = types[0].shape[a["axis"]]
    if not isinstance(length, int):
        return []  # (a symbolic axis: positions outside it still write nothing)
    return [(1, -length, length, f"a position lies outside axis {a['axis']} of the data, [{-length}, {length})")]


register_op(OpDef(
    "index_copy", _index_copy_infer, _index_copy_reference, _index_copy_compute, attrs={"axis": 0},
    normalize=normalize_axis_attr, num_inputs=3, pattern=OPAQUE, runtime_checks=_index_copy_checks,
    doc="``data`` with slice ``index[j]`` along ``axis`` replaced by slice ``j`` of ``updates`` (positions read at "
        "run time; negative ones count from the end; the last write to a position wins; one outside the axis "
        "writes nothing). Written back into a graph input, only the updated slices are stored.",
))
