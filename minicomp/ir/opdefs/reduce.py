"""Reductions over any set of axes, with ``keepdims``: sum, mean, max, min."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import expr as ex
from minicomp.ir.compute import TensorLike, compute, reduce, reduce_axis
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import OpDef, normalize_axis, register_op


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
    n = int(np.prod([x.shape[k] for k in axes], dtype=np.int64))
    return compute(total.shape, lambda *i: total[i] / ex.const(n, x.dtype) if n else total[i] * np.nan, "mean")


def _np_reduce(fn):
    def reference(x, axes, keepdims):
        return np.asarray(fn(x, axis=axes, keepdims=keepdims)).astype(x.dtype)

    return reference


_ATTRS = {"axes": None, "keepdims": False}
for _name, _fn, _kind in (("sum", np.sum, "numeric"), ("max", np.max, "nonempty"), ("min", np.min, "nonempty")):
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
