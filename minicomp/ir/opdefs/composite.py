"""Composite ops defined by several stages: softmax, log_softmax, layer_norm,
batch_norm (inference) and local response normalization (LRN).

Each is one op with a multi-stage compute definition; lowering emits a single
kernel for it (its reductions get small buffers, the rest is inlined).
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute, reduce, reduce_axis
from minicomp.ir.opdefs.reduce import reduce_stage
from minicomp.ir.ops import OpDef, broadcast_index, normalize_axis_attr, register_op


def _float_input(types, a):
    if not types[0].dtype.is_float:
        raise ShapeError(f"input has dtype {types[0].dtype.name}, but this op needs a float dtype")
    return [types[0]]


def _keep(idx, axes):
    """Indices into a keepdims reduction of the axes in ``axes``."""
    return tuple(0 if k in axes else i for k, i in enumerate(idx))


# -- softmax and log_softmax ------------------------------------------------------------


def _softmax_stages(x, axis, log):
    m = reduce_stage("max", x, (axis,), True, "softmax_max")
    shifted = compute(x.shape, lambda *i: x[i] - m[_keep(i, (axis,))], "softmax_shift")
    # exp is its own stage so that lowering can keep it in a row buffer
    # instead of computing it twice (once for the sum, once for the output).
    e = compute(x.shape, lambda *i: ex.call("exp", shifted[i]), "softmax_exp")
    s = reduce_stage("sum", e, (axis,), True, "softmax_sum")
    if log:
        return compute(x.shape, lambda *i: shifted[i] - ex.call("log", s[_keep(i, (axis,))]), "log_softmax")
    return compute(x.shape, lambda *i: e[i] / s[_keep(i, (axis,))], "softmax")


def _softmax_np(x, axis, log=False):
    xd = x.astype(np.float64)
    shifted = xd - xd.max(axis=axis, keepdims=True)
    total = np.exp(shifted).sum(axis=axis, keepdims=True)
    out = shifted - np.log(total) if log else np.exp(shifted) / total
    return out.astype(x.dtype)


register_op(OpDef("softmax", _float_input, lambda x, axis: _softmax_np(x, axis),
                  lambda x, axis: _softmax_stages(x, axis, False),
                  attrs={"axis": -1}, normalize=normalize_axis_attr,
                  doc="exp(x - max) / sum(exp(x - max)) along ``axis``."))
register_op(OpDef("log_softmax", _float_input, lambda x, axis: _softmax_np(x, axis, log=True),
                  lambda x, axis: _softmax_stages(x, axis, True),
                  attrs={"axis": -1}, normalize=normalize_axis_attr,
                  doc="x - max - log(sum(exp(x - max))) along ``axis``."))

# -- layer_norm ------------------------------------------------------------------------


def _layer_norm_infer(types, a):
    x = types[0]
    _float_input(types, a)
    norm_shape = x.shape[a["axis"]:]
    for name, t in zip(("scale", "bias"), types[1:]):
        if t.dtype != x.dtype:
            raise ShapeError(f"{name} has dtype {t.dtype.name}, input has {x.dtype.name}")
        off = len(norm_shape) - t.rank
        if off < 0 or any(d not in (1, norm_shape[off + k]) for k, d in enumerate(t.shape)):
            raise ShapeError(f"{name} shape {list(t.shape)} does not broadcast to the normalized "
                             f"shape {list(norm_shape)}")
    return [x]


def _layer_norm_compute(x, scale=None, bias=None, axis=-1, epsilon=1e-5):
    axes = tuple(range(axis, len(x.shape)))
    n = int(np.prod(x.shape[axis:], dtype=np.int64))
    total = reduce_stage("sum", x, axes, True, "ln_sum")
    centered = compute(x.shape, lambda *i: x[i] - total[_keep(i, axes)] / ex.const(n, x.dtype), "ln_center")
    sq = reduce_stage("sum", centered, axes, True, "ln_sqsum", body=lambda v: v * v)

    def fn(*i):
        inv = 1.0 / ex.call("sqrt", sq[_keep(i, axes)] / ex.const(n, x.dtype) + epsilon)
        y = centered[i] * inv
        tail = i[axis:]
        if scale is not None:
            y = y * scale[broadcast_index(tail, scale.shape, x.shape[axis:])]
        if bias is not None:
            y = y + bias[broadcast_index(tail, bias.shape, x.shape[axis:])]
        return y

    return compute(x.shape, fn, "layer_norm")


def _layer_norm_np(x, scale=None, bias=None, axis=-1, epsilon=1e-5):
    xd = x.astype(np.float64)
    axes = tuple(range(axis, x.ndim))
    mu = xd.mean(axis=axes, keepdims=True)
    var = ((xd - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (xd - mu) / np.sqrt(var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


register_op(OpDef(
    "layer_norm", _layer_norm_infer, _layer_norm_np, _layer_norm_compute,
    attrs={"axis": -1, "epsilon": 1e-5}, num_inputs=(1, 3),
    normalize=lambda types, a: dict(normalize_axis_attr(types, a), epsilon=float(a["epsilon"])),
    doc="Normalize over axes [axis, rank) to zero mean and unit variance, then scale and shift.",
))

# -- batch_norm ------------------------------------------------------------------------


def _batch_norm_infer(types, a):
    x = types[0]
    _float_input(types, a)
    if x.rank < 2:
        raise ShapeError("batch_norm needs an input of rank >= 2 (N, C, ...)")
    for name, t in zip(("scale", "bias", "mean", "var"), types[1:]):
        if t.shape != (x.shape[1],) or t.dtype != x.dtype:
            raise ShapeError(f"{name} must be {x.dtype.short}[{x.shape[1]}], got {t}")
    return [x]


def _batch_norm_compute(x, scale, bias, mean, var, epsilon):
    def fn(*i):
        c = i[1]
        inv = scale[c] / ex.call("sqrt", var[c] + epsilon)
        return (x[i] - mean[c]) * inv + bias[c]

    return compute(x.shape, fn, "batch_norm")


def _batch_norm_np(x, scale, bias, mean, var, epsilon):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    r = lambda v: v.astype(np.float64).reshape(shape)  # noqa: E731
    y = (x - r(mean)) / np.sqrt(r(var) + epsilon) * r(scale) + r(bias)
    return y.astype(x.dtype)


register_op(OpDef(
    "batch_norm", _batch_norm_infer, _batch_norm_np, _batch_norm_compute,
    attrs={"epsilon": 1e-5}, num_inputs=5,
    normalize=lambda types, a: dict(a, epsilon=float(a["epsilon"])),
    doc="Inference batch normalization over channel axis 1: inputs x, scale, bias, mean, var.",
))

# -- LRN ------------------------------------------------------------------------


def _lrn_normalize(types, a):
    a["size"] = int(a["size"])
    if a["size"] < 1:
        raise ShapeError(f"size must be >= 1, got {a['size']}")
    for k in ("alpha", "beta", "bias"):
        a[k] = float(a[k])
    return a


def _lrn_infer(types, a):
    if types[0].rank < 3:
        raise ShapeError("lrn needs an input of rank >= 3 (N, C, spatial...)")
    return _float_input(types, a)


def _lrn_compute(x, size, alpha, beta, bias):
    C = x.shape[1]
    before = (size - 1) // 2
    r = reduce_axis(size, "rc")

    def sq(*i):
        c = i[1] + r[0] - before
        inside = ex.logical_and(ex.ge(c, 0), ex.lt(c, C))
        v = x[(i[0], ex.minimum(ex.maximum(c, 0), C - 1)) + i[2:]]
        return reduce("sum", ex.select(inside, v * v, ex.const(0, x.dtype)), [r])

    total = compute(x.shape, sq, "lrn_sqsum")
    return compute(x.shape, lambda *i: x[i] / ex.binop(
        "pow", total[i] * (alpha / size) + bias, ex.const(beta, x.dtype)), "lrn")


def _lrn_np(x, size, alpha, beta, bias):
    xd = x.astype(np.float64)
    C = x.shape[1]
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.zeros_like(xd)
    for c in range(C):
        lo, hi = max(0, c - before), min(C, c + after + 1)
        sq[:, c] = (xd[:, lo:hi] ** 2).sum(axis=1)
    return (xd / (bias + alpha / size * sq) ** beta).astype(x.dtype)


register_op(OpDef(
    "lrn", _lrn_infer, _lrn_np, _lrn_compute,
    attrs={"size": None, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}, normalize=_lrn_normalize,
    doc="Local response normalization across channels (axis 1), as in ONNX LRN.",
))


# -- rms_norm -------------------------------------------------------------------------------


def _rms_norm_infer(types, a):
    x, scale = types
    _float_input(types, a)
    norm_shape = x.shape[a["axis"]:]
    off = len(norm_shape) - scale.rank
    if scale.dtype != x.dtype or off < 0 or any(d not in (1, norm_shape[off + k]) for k, d in enumerate(scale.shape)):
        raise ShapeError(f"scale {scale} does not match the normalized part {list(norm_shape)} of {x}")
    return [x]


def _rms_norm_compute(x, scale, axis, epsilon):
    axes = tuple(range(axis, len(x.shape)))
    n = int(np.prod([x.shape[k] for k in axes]))
    sq = reduce_stage("sum", x, axes, True, "rms_norm_sq", body=lambda v: v * v)

    def fn(*i):
        rms = ex.call("sqrt", sq[_keep(i, axes)] / ex.const(n, x.dtype) + ex.const(epsilon, x.dtype))
        return x[i] / rms * scale[broadcast_index(i, scale.shape, x.shape)]
    return compute(x.shape, fn, "rms_norm")


def _rms_norm_np(x, scale, axis, epsilon):
    axes = tuple(range(axis, x.ndim))
    xd = x.astype(np.float64)
    return (xd / np.sqrt((xd * xd).mean(axis=axes, keepdims=True) + epsilon) * scale).astype(x.dtype)


register_op(OpDef("rms_norm", _rms_norm_infer, _rms_norm_np, _rms_norm_compute, num_inputs=2,
                  attrs={"axis": -1, "epsilon": 1e-6}, normalize=normalize_axis_attr,
                  doc="x / sqrt(mean(x^2 over the axes from ``axis``) + epsilon) * scale (RMSNorm, as in LLaMA)."))
