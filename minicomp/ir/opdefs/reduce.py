"""Reductions over any set of axes, with ``keepdims``: sum, prod, mean, max, min; arg-extremes,
running sums and products, top-k."""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import TensorLike, compute, reduce, reduce_axis, reduce_identity
from minicomp.ir.dims import Size
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import REQUIRED, OpDef, normalize_axis, normalize_axis_attr, register_op


def normalize_axes(types, a):
    """Axes as a sorted tuple of non-negative ints (None means every axis)."""
    rank = types[0].rank
    axes = a["axes"]
    if axes is None:
        axes = tuple(range(rank))
    elif isinstance(axes, int):
        axes = (axes,)
    norm = sorted(normalize_axis(int(x), rank, "axis") for x in axes)
    if len(set(norm)) != len(norm):
        raise ShapeError(f"axes {list(axes)} repeat an axis")
    a["axes"] = tuple(norm)
    a["keepdims"] = bool(a["keepdims"])
    return a


def reduced_shape(shape, axes, keepdims) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if k in axes else d for k, d in enumerate(shape))
    return tuple(d for k, d in enumerate(shape) if k not in axes)


def reduce_stage(op: str, x: TensorLike, axes, keepdims: bool, name: str, body=None):
    """A stage reducing ``body(x_element)`` (default: the element) with ``op``."""
    out_shape = reduced_shape(x.shape, axes, keepdims)
    raxes = {k: reduce_axis(x.shape[k], f"r{k}_") for k in axes}

    def fn(*out_idx):
        idx = []
        pos = 0
        for k in range(len(x.shape)):
            if k in raxes:
                idx.append(raxes[k][0])
                if keepdims:
                    pos += 1
            else:
                idx.append(out_idx[pos])
                pos += 1
        elem = x[tuple(idx)]
        return reduce(op, body(elem) if body else elem, [raxes[k] for k in axes])

    return compute(out_shape, fn, name)


def _infer(kind: str):
    def infer(types, a):
        t = types[0]
        if kind == "float" and not t.dtype.is_float:
            raise ShapeError(f"input has dtype {t.dtype.name}, but this op needs a float dtype")
        if t.dtype.is_bool:
            raise ShapeError("input has dtype bool, but this op needs a numeric dtype")
        if kind == "nonempty" and any(t.shape[k] == 0 for k in a["axes"]):
            raise ShapeError(f"cannot reduce over an empty axis (axes {list(a['axes'])})")
        return [TensorType(reduced_shape(t.shape, a["axes"], a["keepdims"]), t.dtype)]

    return infer


def _mean_compute(x, axes, keepdims):
    total = reduce_stage("sum", x, axes, keepdims, "mean_sum")
    n = math.prod(x.shape[k] for k in axes)
    if isinstance(n, Size):  # a count known at the call: divide by it as a float
        return compute(total.shape, lambda *i: total[i] / ex.cast(x.dtype, ex.size_expr(n)), "mean")
    return compute(total.shape, lambda *i: total[i] / ex.const(n, x.dtype) if n else total[i] * np.nan, "mean")


def _np_reduce(fn):
    def reference(x, axes, keepdims):
        return np.asarray(fn(x, axis=axes, keepdims=keepdims)).astype(x.dtype)

    return reference


_ATTRS = {"axes": None, "keepdims": False}
for _name, _fn, _kind in (("sum", np.sum, "numeric"), ("prod", np.prod, "numeric"), ("max", np.max, "nonempty"),
                          ("min", np.min, "nonempty")):
    register_op(OpDef(
        _name, _infer(_kind), _np_reduce(_fn),
        (lambda op: lambda x, axes, keepdims: reduce_stage(op, x, axes, keepdims, op))(_name),
        attrs=dict(_ATTRS), normalize=normalize_axes,
        doc=f"{_name} over ``axes`` (all when None), keeping them as size 1 when ``keepdims``.",
    ))


def _mean_np(x, axes, keepdims):
    with np.errstate(all="ignore"):
        return np.asarray(np.mean(x, axis=axes, keepdims=keepdims)).astype(x.dtype)


register_op(OpDef("mean", _infer("float"), _mean_np, _mean_compute, attrs=dict(_ATTRS),
                  normalize=normalize_axes, doc="Arithmetic mean over ``axes``."))


# -- argmax / argmin, cumsum ------------------------------------------------------------


def _arg_infer(types, a):
    t = types[0]
    if t.dtype.is_bool:
        raise ShapeError("input has dtype bool, but this op needs a numeric dtype")
    if t.rank == 0:
        raise ShapeError("a 0-d tensor has no axis to take the arg-extreme along")
    if t.shape[a["axis"]] == 0:
        raise ShapeError(f"cannot take the arg-extreme of an empty axis {a['axis']}")
    return [TensorType(reduced_shape(t.shape, (a["axis"],), a["keepdims"]), dtypes.int64)]


def _arg_compute(op):
    """The first (or, with ``select_last``, the last) index of the extreme along
    ``axis``: the extreme by one reduction, then the least (greatest) index
    holding it (or holding a NaN, as numpy)."""
    def comp(x, axis, keepdims, select_last=False):
        extreme = reduce_stage(op, x, (axis,), True, f"arg{op}_value")
        n = x.shape[axis]
        r, _ = raxis = reduce_axis(n, "r")

        def fn(*out):
            full = list(out) if keepdims else list(out[:axis]) + [None] + list(out[axis:])
            at = tuple(r if k == axis else full[k] for k in range(len(x.shape)))
            best = tuple(0 if k == axis else full[k] for k in range(len(x.shape)))
            v = x[at]
            hit = ex.eq(v, extreme[best])
            if x.dtype.is_float:
                hit = ex.BinOp("or", hit, ex.binop("ne", v, v))
            if select_last:
                return reduce("max", ex.select(hit, r, ex.const(-1, dtypes.int64)), [raxis])
            return reduce("min", ex.select(hit, r, ex.const(n, dtypes.int64)), [raxis])

        return compute(reduced_shape(x.shape, (axis,), keepdims), fn, f"arg{op}")
    return comp


def _arg_np(fn):
    def reference(x, axis, keepdims, select_last=False):
        if select_last:  # numpy picks the first: flip the axis and map the index back
            out = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            out = fn(x, axis=axis)
        return (np.expand_dims(out, axis) if keepdims else np.asarray(out)).astype(np.int64)
    return reference


for _name, _op, _fn in (("argmax", "max", np.argmax), ("argmin", "min", np.argmin)):
    register_op(OpDef(_name, _arg_infer, _arg_np(_fn), _arg_compute(_op),
                      attrs={"axis": 0, "keepdims": False, "select_last": False}, normalize=normalize_axis_attr,
                      doc=f"The first (``select_last``: last) index of the {_op}imum along ``axis`` (int64; NaN "
                          f"counts as the extreme)."))


def _cumulative_compute(op: str):
    """out[i] = the ``op`` (sum, prod) of x[j] for j <= i along ``axis`` (j < i
    when exclusive; from the end when reverse): a masked reduction, quadratic in
    the axis length."""
    def comp(x, axis, exclusive, reverse):
        r, _ = raxis = reduce_axis(x.shape[axis], "r")

        def fn(*i):
            src = tuple(r if k == axis else i[k] for k in range(len(i)))
            a, b = (i[axis], r) if reverse else (r, i[axis])
            keep = ex.lt(a, b) if exclusive else ex.le(a, b)
            return reduce(op, ex.select(keep, x[src], reduce_identity(op, x.dtype)), [raxis])

        return compute(x.shape, fn, f"cum{op}")

    return comp


def _cumulative_np(fn, identity: int):
    def reference(x, axis, exclusive, reverse):
        y = np.flip(x, axis) if reverse else x
        out = fn(y, axis=axis, dtype=x.dtype)
        if exclusive:  # shift by one along the axis, the identity first
            first = np.full_like(np.take(out, [0], axis=axis), identity)
            out = np.concatenate([first, np.delete(out, -1, axis=axis)], axis=axis) if out.shape[axis] else out
        return np.flip(out, axis) if reverse else out

    return reference


def _cumulative_infer(types, a):
    if types[0].dtype.is_bool:
        raise ShapeError("input has dtype bool, but this op needs a numeric dtype")
    return [types[0]]


for _name, _fn, _identity, _what in (("cumsum", np.cumsum, 0, "sum"), ("cumprod", np.cumprod, 1, "product")):
    register_op(OpDef(_name, _cumulative_infer, _cumulative_np(_fn, _identity), _cumulative_compute(_name[3:]),
                      attrs={"axis": 0, "exclusive": False, "reverse": False}, normalize=normalize_axis_attr,
                      doc=f"Running {_what} along ``axis`` (ONNX Cum{_name[3:].capitalize()}: ``exclusive`` "
                          f"leaves each element out, ``reverse`` runs from the end)."))


# -- topk ------------------------------------------------------------------------------------


def _topk_infer(types, a):
    t = types[0]
    n = t.shape[a["axis"]]
    if t.dtype.is_bool:
        raise ShapeError("input has dtype bool, but topk needs a numeric dtype")
    if not 0 <= a["k"] <= n:
        raise ShapeError(f"k={a['k']} is outside 0..{n}, the length of axis {a['axis']}")
    shape = t.shape[:a["axis"]] + (a["k"],) + t.shape[a["axis"] + 1:]
    return [TensorType(shape, t.dtype), TensorType(shape, dtypes.int64)]


def _topk_compute(x, k, axis, largest):
    """Rank every element (how many come before it: larger, or equal at a lower
    index), then gather the element of each rank below k: two masked sums,
    quadratic in the axis length."""
    n = x.shape[axis]
    j, _ = jaxis = reduce_axis(n, "j")

    def at(idx, pos):
        return tuple(pos if d == axis else idx[d] for d in range(len(idx)))

    def rank_fn(*i):
        a, b = x[at(i, j)], x[i]
        better = ex.gt(a, b) if largest else ex.lt(a, b)
        same = ex.eq(a, b)
        if x.dtype.is_float:  # NaN ranks above every number (ONNX), and NaNs tie with each other
            a_nan, b_nan = ex.binop("ne", a, a), ex.binop("ne", b, b)
            first = a_nan if largest else b_nan  # a comes first when it is NaN (largest) or b is (smallest)
            better = ex.BinOp("or", ex.logical_and(better, ex.binop("eq", b_nan, a_nan)),
                              ex.logical_and(first, ex.binop("ne", b_nan, a_nan)))
            same = ex.BinOp("or", same, ex.logical_and(a_nan, b_nan))
        before = ex.BinOp("or", better, ex.logical_and(same, ex.lt(j, i[axis])))
        return reduce("sum", ex.select(before, ex.const(1, dtypes.int64), ex.const(0, dtypes.int64)), [jaxis])

    rank = compute(x.shape, rank_fn, "topk_rank")
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]

    def pick(value):
        def fn(*p):
            r, _ = raxis = reduce_axis(n, "r")
            src = at(p, r)
            hit = ex.eq(rank[src], ex.cast(dtypes.int64, p[axis]))
            v = value(src, r)
            # One element has the rank: a max over the others' identity (-inf, the integer minimum)
            # gives it back untouched, -0.0 included (a sum with 0.0 made it +0.0).
            fill = reduce_identity("max", v.dtype)
            return reduce("max", ex.select(hit, v, fill), [raxis])
        return fn

    values = compute(shape, pick(lambda src, r: x[src]), "topk_values")
    indices = compute(shape, pick(lambda src, r: r), "topk_indices")
    return [values, indices]


def _topk_np(x, k, axis, largest):
    xd = x.astype(np.float64)
    nan = np.isnan(xd)
    # NaN ranks above every number; lexsort is stable, so ties keep the lower index first.
    primary = ~nan if largest else nan
    order = np.lexsort((np.where(nan, 0.0, -xd if largest else xd), primary), axis=axis)
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, idx, axis=axis), idx


register_op(OpDef("topk", _topk_infer, _topk_np, _topk_compute, attrs={"k": REQUIRED, "axis": -1, "largest": True},
                  normalize=normalize_axis_attr,
                  doc="The k largest (or smallest) elements along ``axis`` and their indices, sorted; ties keep "
                      "the lower index first (ONNX TopK, sorted=1). Quadratic in the axis length."))
