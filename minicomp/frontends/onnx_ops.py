"""Importers for the standard ONNX ops (domain ai.onnx), opsets 6 to 28.

Each importer maps one ONNX node onto minicomp ops through the import
context. Attributes that older opsets give as attributes and newer ones as
inputs (axes, pads, split, starts/ends, min/max) are read from either.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.compose import moments
from minicomp.frontends.onnx import ONNX_DTYPES, ImportContext, register_onnx_importer
from minicomp.ir.compute import reduce_identity
from minicomp.ir.opdefs.reduce import reduced_shape
from minicomp.ir.ops import broadcast_shapes


def _simple(op_type: str, op: str, **fixed):
    register_onnx_importer(op_type)(lambda ctx, node: [ctx.op(op, *ctx.inputs(), **fixed)])


def _legacy_broadcast(ctx: ImportContext, a, b):
    """Opset < 7 Add/Sub/Mul/Div with broadcast=1: B aligns with A at ``axis``."""
    if ctx.opset < 7 and ctx.attr("broadcast", 0) and ctx.attr("axis") is not None and a.ndim > b.ndim:
        axis = ctx.attr("axis") % a.ndim
        trailing = a.ndim - axis - b.ndim
        if trailing > 0:
            b = ctx.op("reshape", b, shape=b.shape + (1,) * trailing)
    return a, b


def _binary(op_type: str, op: str):
    @register_onnx_importer(op_type)
    def imp(ctx, node):
        a, b = _legacy_broadcast(ctx, ctx.input(0), ctx.input(1))
        return [ctx.op(op, a, b)]


for _t, _o in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"), ("Equal", "equal"),
               ("Less", "less"), ("Greater", "greater"), ("LessOrEqual", "less_equal"),
               ("GreaterOrEqual", "greater_equal")):
    _binary(_t, _o)
for _t, _o in (("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"), ("Sqrt", "sqrt"), ("Exp", "exp"),
               ("Log", "log"), ("Neg", "neg"), ("Abs", "abs"), ("Reciprocal", "reciprocal"), ("Erf", "erf"),
               ("Floor", "floor")):
    _simple(_t, _o)


@register_onnx_importer("Mod")
def _mod(ctx, node):
    a, b = _legacy_broadcast(ctx, ctx.input(0), ctx.input(1))
    if ctx.attr("fmod", 0):
        return [ctx.op("fmod", a, b)]  # C's fmod: the sign of the dividend
    return [ctx.op("mod", a, b)]  # Python's %: the sign of the divisor


@register_onnx_importer("Identity")
def _identity(ctx, node):
    return [ctx.input(0)]


@register_onnx_importer("Dropout")
def _dropout(ctx, node):
    x = ctx.input(0)
    if ctx.input(2) is not None:  # training_mode (opset 12+): random masks are not inference
        training = ctx.constant(2)
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise UnsupportedError(f"{node.describe()}: Dropout in training mode is random; minicomp compiles "
                                   f"inference (training_mode must be a constant false)")
    mask = None
    if len(node.outputs) > 1 and node.outputs[1]:
        mask = ctx.const(np.ones(x.shape, dtype=bool))
    return [x, mask]


@register_onnx_importer("Pow")
def _pow(ctx, node):
    x, y = ctx.input(0), ctx.input(1)
    if x.dtype.is_int:  # the result has X's type: a power in float64, truncated back
        wide = ctx.op("pow", ctx.op("cast", x, dtype="float64"), ctx.op("cast", y, dtype="float64"))
        return [ctx.op("cast", wide, dtype=x.dtype.name)]
    if y.dtype != x.dtype:
        y = ctx.op("cast", y, dtype=x.dtype.name)
    return [ctx.op("pow", x, y)]


@register_onnx_importer("Where")
def _where(ctx, node):
    return [ctx.op("where", ctx.input(0), ctx.input(1), ctx.input(2))]


def _variadic(op_type: str, op: str):
    @register_onnx_importer(op_type)
    def imp(ctx, node):
        xs = ctx.inputs()
        out = xs[0]
        for x in xs[1:]:
            out = ctx.op(op, out, x)
        return [out]


_variadic("Sum", "add")
_variadic("Max", "maximum")
_variadic("Min", "minimum")


@register_onnx_importer("Mean")
def _mean(ctx, node):
    xs = ctx.inputs()
    out = xs[0]
    for x in xs[1:]:
        out = ctx.op("add", out, x)
    return [ctx.op("div", out, ctx.const(np.array(len(xs), dtype=out.dtype.numpy)))]


@register_onnx_importer("LeakyRelu")
def _leaky(ctx, node):
    return [ctx.op("leaky_relu", ctx.input(0), alpha=float(ctx.attr("alpha", 0.01)))]


def _scalar(ctx, value, like):
    return ctx.const(np.array(value, dtype=like.dtype.numpy))


@register_onnx_importer("Elu")
def _elu(ctx, node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    neg = ctx.op("mul", ctx.op("sub", ctx.op("exp", x), _scalar(ctx, 1.0, x)), _scalar(ctx, alpha, x))
    return [ctx.op("where", ctx.op("greater", x, _scalar(ctx, 0.0, x)), x, neg)]


@register_onnx_importer("Selu")
def _selu(ctx, node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    neg = ctx.op("mul", ctx.op("sub", ctx.op("exp", x), _scalar(ctx, 1.0, x)), _scalar(ctx, alpha, x))
    y = ctx.op("where", ctx.op("greater", x, _scalar(ctx, 0.0, x)), x, neg)
    return [ctx.op("mul", y, _scalar(ctx, gamma, x))]


@register_onnx_importer("Softplus")
def _softplus(ctx, node):
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x.
    x = ctx.input(0)
    tail = ctx.op("log", ctx.op("add", ctx.op("exp", ctx.op("neg", ctx.op("abs", x))), _scalar(ctx, 1.0, x)))
    return [ctx.op("add", ctx.op("relu", x), tail)]


@register_onnx_importer("Softsign")
def _softsign(ctx, node):
    x = ctx.input(0)
    return [ctx.op("div", x, ctx.op("add", ctx.op("abs", x), _scalar(ctx, 1.0, x)))]


@register_onnx_importer("PRelu")
def _prelu(ctx, node):
    x, slope = ctx.input(0), ctx.input(1)
    if slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] and slope.shape[0] != x.shape[-1]:
        # A per-channel slope given as [C] for (N, C, ...) inputs (as older exporters write it).
        slope = ctx.op("reshape", slope, shape=(slope.shape[0],) + (1,) * (x.ndim - 2))
    return [ctx.op("where", ctx.op("less", x, _scalar(ctx, 0.0, x)), ctx.op("mul", x, slope), x)]


@register_onnx_importer("Sign")
def _sign(ctx, node):
    x = ctx.input(0)
    pos = ctx.op("cast", ctx.op("greater", x, _scalar(ctx, 0, x)), dtype=x.dtype.name)
    neg = ctx.op("cast", ctx.op("less", x, _scalar(ctx, 0, x)), dtype=x.dtype.name)
    return [ctx.op("sub", pos, neg)]


@register_onnx_importer("Shrink")
def _shrink(ctx, node):
    x = ctx.input(0)
    lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
    low = ctx.op("where", ctx.op("less", x, _scalar(ctx, -lambd, x)), ctx.op("add", x, _scalar(ctx, bias, x)),
                 _scalar(ctx, 0, x))
    return [ctx.op("where", ctx.op("greater", x, _scalar(ctx, lambd, x)), ctx.op("sub", x, _scalar(ctx, bias, x)),
                   low)]


@register_onnx_importer("HardSigmoid")
def _hard_sigmoid(ctx, node):
    x = ctx.input(0)
    y = ctx.op("add", ctx.op("mul", x, _scalar(ctx, float(ctx.attr("alpha", 0.2)), x)),
               _scalar(ctx, float(ctx.attr("beta", 0.5)), x))
    return [ctx.op("clip", y, min=0.0, max=1.0)]


@register_onnx_importer("Gelu")
def _gelu(ctx, node):
    return [ctx.op("gelu", ctx.input(0), approximate=ctx.attr("approximate", "none"))]


@register_onnx_importer("Clip")
def _clip(ctx, node):
    x = ctx.input(0)
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    else:
        lo_a, hi_a = ctx.constant(1), ctx.constant(2)
        if (ctx.input(1) is not None and lo_a is None) or (ctx.input(2) is not None and hi_a is None):
            lo_t, hi_t = ctx.input(1), ctx.input(2)
            y = x if lo_t is None else ctx.op("maximum", x, lo_t)
            return [y if hi_t is None else ctx.op("minimum", y, hi_t)]
        lo = None if lo_a is None else lo_a.reshape(-1)[0].item()
        hi = None if hi_a is None else hi_a.reshape(-1)[0].item()
    return [ctx.op("clip", x, min=lo, max=hi)]


@register_onnx_importer("Cast")
def _cast(ctx, node):
    to = int(ctx.attr("to"))
    if to not in ONNX_DTYPES:
        raise UnsupportedError(f"cast to ONNX type {to} is not supported")
    return [ctx.op("cast", ctx.input(0), dtype=ONNX_DTYPES[to])]


@register_onnx_importer("BitCast")
def _bitcast(ctx, node):
    to = int(ctx.attr("to"))
    if to not in ONNX_DTYPES:
        raise UnsupportedError(f"{node.describe()}: bitcast to ONNX type {to} is not supported")
    return [ctx.op("bitcast", ctx.input(0), dtype=ONNX_DTYPES[to])]


# -- softmax family --------------------------------------------------------------------


def _softmax_like(op: str):
    def imp(ctx, node):
        x = ctx.input(0)
        if ctx.opset >= 13:
            return [ctx.op(op, x, axis=int(ctx.attr("axis", -1)))]
        # Before opset 13: flatten to 2-D at ``axis`` and normalize each row.
        axis = int(ctx.attr("axis", 1)) % max(x.ndim, 1)
        if axis == x.ndim - 1:
            return [ctx.op(op, x, axis=-1)]
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        flat = ctx.op("reshape", x, shape=(rows, -1))
        return [ctx.op("reshape", ctx.op(op, flat, axis=1), shape=x.shape)]

    return imp


register_onnx_importer("Softmax")(_softmax_like("softmax"))
register_onnx_importer("LogSoftmax")(_softmax_like("log_softmax"))

# -- matmul family --------------------------------------------------------------------


@register_onnx_importer("MatMul")
def _matmul(ctx, node):
    return [ctx.op("matmul", ctx.input(0), ctx.input(1))]


@register_onnx_importer("Gemm")
def _gemm(ctx, node):
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    if ctx.attr("transA", 0):
        a = ctx.op("transpose", a, perm=(1, 0))
    if ctx.attr("transB", 0):
        b = ctx.op("transpose", b, perm=(1, 0))
    y = ctx.op("matmul", a, b)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if alpha != 1.0:
        y = ctx.op("mul", y, _scalar(ctx, alpha, y))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.op("mul", c, _scalar(ctx, beta, c))
        y = ctx.op("add", y, c)
    return [y]


# -- windows -------------------------------------------------------------------------


def _auto_pads(ctx, x_shape, kernel, strides, dilations):
    """Explicit pads (begins + ends) from ``pads`` or ``auto_pad``."""
    R = len(kernel)
    mode = ctx.attr("auto_pad", "NOTSET")
    if mode in ("NOTSET", "", None):
        pads = list(ctx.attr("pads", [0] * (2 * R)))
        return tuple(pads)
    if mode == "VALID":
        return (0,) * (2 * R)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for d in range(R):
            size = x_shape[2 + d]
            out = -(-size // strides[d])
            total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        return tuple(begins + ends)
    raise UnsupportedError(f"auto_pad={mode!r} is not supported")


def _window_common(ctx, x, kernel):
    R = len(kernel)
    strides = tuple(ctx.attr("strides", [1] * R))
    dilations = tuple(ctx.attr("dilations", [1] * R))
    return strides, dilations, _auto_pads(ctx, x.shape, kernel, strides, dilations)


def _rank_of(ctx, x, what):
    R = x.ndim - 2
    if R not in (1, 2, 3):
        raise UnsupportedError(f"{what} over {R} spatial axes (input rank {x.ndim}) is not supported; "
                               f"1 to 3 spatial axes are")
    return R


@register_onnx_importer("Conv")
def _conv(ctx, node):
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    R = _rank_of(ctx, x, "Conv")
    kernel = tuple(ctx.attr("kernel_shape", w.shape[2:]))
    strides, dilations, pads = _window_common(ctx, x, kernel)
    args = [x, w] + ([b] if b is not None else [])
    return [ctx.op(f"conv{R}d", *args, strides=strides, padding=pads, dilations=dilations,
                   groups=int(ctx.attr("group", 1)))]


@register_onnx_importer("ConvTranspose")
def _conv_transpose(ctx, node):
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    R = _rank_of(ctx, x, "ConvTranspose")
    kernel = tuple(ctx.attr("kernel_shape", w.shape[2:]))
    strides = tuple(ctx.attr("strides", [1] * R))
    dilations = tuple(ctx.attr("dilations", [1] * R))
    out_pad = list(ctx.attr("output_padding", [0] * R))
    group = int(ctx.attr("group", 1))
    output_shape = ctx.attr("output_shape")
    mode = ctx.attr("auto_pad", "NOTSET")
    if output_shape is not None or mode in ("SAME_UPPER", "SAME_LOWER"):
        spatial = list(output_shape)[-R:] if output_shape is not None else [x.shape[2 + d] * strides[d]
                                                                             for d in range(R)]
        begins, ends = [], []
        for d in range(R):
            total = (strides[d] * (x.shape[2 + d] - 1) + out_pad[d] + (kernel[d] - 1) * dilations[d] + 1
                     - spatial[d])
            if total < 0:
                out_pad[d] += -total
                total = 0
            first = total // 2 if mode != "SAME_LOWER" else total - total // 2
            begins.append(first)
            ends.append(total - first)
        pads = tuple(begins + ends)
    elif mode == "VALID":
        pads = (0,) * (2 * R)
    else:
        pads = tuple(ctx.attr("pads", [0] * (2 * R)))
    args = [x, w] + ([b] if b is not None else [])
    return [ctx.op(f"conv_transpose{R}d", *args, strides=strides, padding=pads, dilations=dilations,
                   groups=group, output_padding=tuple(out_pad))]


def _pool(kind):
    def imp(ctx, node):
        x = ctx.input(0)
        R = _rank_of(ctx, x, f"{kind.title()}Pool")
        if len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedError("MaxPool's Indices output is not supported")
        if int(ctx.attr("storage_order", 0)) != 0:
            raise UnsupportedError("MaxPool with storage_order=1 is not supported")
        kernel = tuple(ctx.attr("kernel_shape"))
        strides, dilations, pads = _window_common(ctx, x, kernel)
        attrs = dict(kernel=kernel, strides=strides, padding=pads, dilations=dilations,
                     ceil_mode=bool(ctx.attr("ceil_mode", 0)))
        if kind == "avg":
            attrs["count_include_pad"] = bool(ctx.attr("count_include_pad", 0))
        return [ctx.op(f"{kind}_pool{R}d", x, **attrs)]

    return imp


register_onnx_importer("MaxPool")(_pool("max"))
register_onnx_importer("AveragePool")(_pool("avg"))


@register_onnx_importer("LpPool")
def _lp_pool(ctx, node):
    """(sum of |x|^p over each window)^(1/p): an average pool counting the
    padding (whose zeros add nothing), times the window size."""
    x = ctx.input(0)
    R = _rank_of(ctx, x, "LpPool")
    p = float(ctx.attr("p", 2))
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, dilations, pads = _window_common(ctx, x, kernel)
    powered = ctx.op("mul", x, x) if p == 2 else ctx.op("pow", ctx.op("abs", x), _scalar(ctx, p, x))
    mean = ctx.op(f"avg_pool{R}d", powered, kernel=kernel, strides=strides, padding=pads, dilations=dilations,
                  ceil_mode=bool(ctx.attr("ceil_mode", 0)), count_include_pad=True)
    total = ctx.op("mul", mean, _scalar(ctx, float(np.prod(kernel)), x))
    return [ctx.op("sqrt", total) if p == 2 else ctx.op("pow", total, _scalar(ctx, 1.0 / p, x))]


@register_onnx_importer("GlobalAveragePool")
def _gap(ctx, node):
    return [ctx.op("global_avg_pool", ctx.input(0))]


@register_onnx_importer("GlobalMaxPool")
def _gmp(ctx, node):
    x = ctx.input(0)
    return [ctx.op("max", x, axes=list(range(2, x.ndim)), keepdims=True)]


# -- normalization -------------------------------------------------------------------


@register_onnx_importer("BatchNormalization")
def _batch_norm(ctx, node):
    if ctx.attr("training_mode", 0):
        raise UnsupportedError("BatchNormalization in training mode is not supported (inference only)")
    x, scale, bias, mean, var = (ctx.input(i) for i in range(5))
    return [ctx.op("batch_norm", x, scale, bias, mean, var, epsilon=float(ctx.attr("epsilon", 1e-5)))]


@register_onnx_importer("LayerNormalization")
def _layer_norm(ctx, node):
    args = ctx.inputs()
    x = args[0]
    axis = int(ctx.attr("axis", -1)) % x.ndim
    eps = float(ctx.attr("epsilon", 1e-5))
    y = ctx.op("layer_norm", *args, axis=axis, epsilon=eps)
    if not any(node.outputs[1:]):
        return [y]
    # The optional Mean and InvStdDev outputs (kept dims), computed beside the normalization.
    mean, _, var = moments(ctx, x, list(range(axis, x.ndim)))
    inv = ctx.op("rsqrt", ctx.op("add", var, _scalar(ctx, eps, x)))
    return [y, mean, inv]


@register_onnx_importer("RMSNormalization")
def _rms_normalization(ctx, node):
    x, scale = ctx.input(0), ctx.input(1)
    return [ctx.op("rms_norm", x, scale, axis=int(ctx.attr("axis", -1)), epsilon=float(ctx.attr("epsilon", 1e-5)))]


@register_onnx_importer("InstanceNormalization")
def _instance_norm(ctx, node):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    axes = list(range(2, x.ndim))
    eps = float(ctx.attr("epsilon", 1e-5))
    _, d, var = moments(ctx, x, axes)
    y = ctx.op("div", d, ctx.op("sqrt", ctx.op("add", var, _scalar(ctx, eps, x))))
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)
    y = ctx.op("mul", y, ctx.op("reshape", scale, shape=per_channel))
    return [ctx.op("add", y, ctx.op("reshape", bias, shape=per_channel))]


@register_onnx_importer("LRN")
def _lrn(ctx, node):
    return [ctx.op("lrn", ctx.input(0), size=int(ctx.attr("size")), alpha=float(ctx.attr("alpha", 1e-4)),
                   beta=float(ctx.attr("beta", 0.75)), bias=float(ctx.attr("bias", 1.0)))]


# -- reductions ------------------------------------------------------------------------


def _reduce(op_type: str, op: str, axes_input_since: int, before=None, after=None):
    """A reduction importer; ``before``/``after`` wrap the reduced op (ReduceL2 = sqrt(sum(x * x)))."""
    @register_onnx_importer(op_type)
    def imp(ctx, node):
        x = ctx.input(0)
        keepdims = bool(ctx.attr("keepdims", 1))
        if before is not None or after is not None:
            return _composite_reduce(ctx, x, keepdims, op, axes_input_since, before, after)
        axes = _reduce_axes(ctx, axes_input_since)
        if axes is None and ctx.opset >= axes_input_since and ctx.attr("noop_with_empty_axes", 0):
            return [x]
        if op in ("max", "min") and _reduces_nothing(x, axes):
            # ONNX: the max of nothing is the lowest value (min: the highest), shaped as reduced.
            axes_set = tuple(a % x.ndim for a in axes) if axes is not None else tuple(range(x.ndim))
            shape = reduced_shape(x.shape, axes_set, keepdims)
            return [ctx.const(np.full(shape, reduce_identity(op, x.dtype).value, dtype=x.dtype.numpy))]
        if op in ("max", "min") and x.dtype.is_bool:  # any / all
            wide = ctx.op(op, ctx.op("cast", x, dtype="uint8"), axes=axes, keepdims=keepdims)
            return [ctx.op("cast", wide, dtype="bool")]
        return [ctx.op(op, x, axes=axes, keepdims=keepdims)]


_reduce("ReduceSum", "sum", 13)
_reduce("ReduceMean", "mean", 18)
_reduce("ReduceMax", "max", 18)
_reduce("ReduceMin", "min", 18)
_reduce("ReduceProd", "prod", 18)


def _reduces_nothing(x, axes) -> bool:
    """Does a reduction over ``axes`` (None: every axis) see no element?"""
    return any(x.shape[a] == 0 for a in (axes if axes is not None else range(x.ndim)))


def _reduce_axes(ctx, axes_input_since):
    if ctx.opset >= axes_input_since:
        arr = ctx.constant(1)
        if ctx.input(1) is not None and arr is None:
            raise UnsupportedError("reduction axes must be constant")
        return None if arr is None or arr.size == 0 else [int(a) for a in arr.reshape(-1)]
    return ctx.attr("axes")


def _composite_reduce(ctx, x, keepdims, op, since, before, after):
    axes = _reduce_axes(ctx, since)
    if axes is None and ctx.attr("noop_with_empty_axes", 0):
        y = before(ctx, x) if before else x
        return [after(ctx, y, x, None, True) if after else y]
    y = ctx.op(op, before(ctx, x) if before else x, axes=axes, keepdims=keepdims)
    return [after(ctx, y, x, axes, keepdims) if after else y]


def _square(ctx, x):
    return ctx.op("mul", x, x)


def _log_sum_exp(ctx, x):
    return x  # the shift by the maximum happens in _finish_log_sum_exp


def _finish_log_sum_exp(ctx, total, x, axes, keepdims):
    """log(sum(exp(x - max))) + max, stable for large x (-inf over nothing)."""
    if _reduces_nothing(x, axes):
        return ctx.const(np.full(total.shape, -np.inf, dtype=x.dtype.numpy))
    top = ctx.op("max", x, axes=axes, keepdims=True)
    shifted = ctx.op("exp", ctx.op("sub", x, top))
    out = ctx.op("add", ctx.op("log", ctx.op("sum", shifted, axes=axes, keepdims=True)), top)
    if not keepdims:
        out = ctx.op("reshape", out, shape=total.shape)
    return out


_reduce("ReduceSumSquare", "sum", 18, before=_square)
_reduce("ReduceL1", "sum", 18, before=lambda ctx, x: ctx.op("abs", x))
_reduce("ReduceL2", "sum", 18, before=_square, after=lambda ctx, y, x, axes, keep: ctx.op("sqrt", y))
_reduce("ReduceLogSum", "sum", 18, after=lambda ctx, y, x, axes, keep: ctx.op("log", y))
_reduce("ReduceLogSumExp", "sum", 18, before=_log_sum_exp, after=_finish_log_sum_exp)

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
    zero = ctx.op("equal", norm, _scalar(ctx, 0.0, x))
    return [ctx.op("where", zero, _scalar(ctx, 0.0, x), ctx.op("div", x, norm))]


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


# -- ops added with the builder's: Sin, Cos, ArgMax/ArgMin, CumSum, Trilu, Range -------------

_simple("Sin", "sin")
_simple("Cos", "cos")


def _arg_extreme(op: str):
    def imp(ctx, node):
        return [ctx.op(op, ctx.input(0), axis=int(ctx.attr("axis", 0)), keepdims=bool(ctx.attr("keepdims", 1)),
                       select_last=bool(ctx.attr("select_last_index", 0)))]
    return imp


register_onnx_importer("ArgMax")(_arg_extreme("argmax"))
register_onnx_importer("ArgMin")(_arg_extreme("argmin"))


def _cumulative(op: str):
    def imp(ctx, node):
        axis = ctx.required_constant(1, "axis")
        return [ctx.op(op, ctx.input(0), axis=int(np.asarray(axis).reshape(-1)[0]),
                       exclusive=bool(ctx.attr("exclusive", 0)), reverse=bool(ctx.attr("reverse", 0)))]
    return imp


register_onnx_importer("CumSum")(_cumulative("cumsum"))
register_onnx_importer("CumProd")(_cumulative("cumprod"))


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


@register_onnx_importer("Einsum")
def _einsum(ctx, node):
    eq = ctx.attr("equation")
    if not isinstance(eq, str):
        raise ShapeError(f"{node.describe()}: Einsum needs its equation attribute")
    return [ctx.builder.einsum(eq, *ctx.inputs())]


@register_onnx_importer("TopK")
def _topk(ctx, node):
    if ctx.opset < 10:
        k = ctx.attr("k")
    else:
        k = int(np.asarray(ctx.required_constant(1, "K")).reshape(-1)[0])
    values, indices = ctx.op("topk", ctx.input(0), k=int(k), axis=int(ctx.attr("axis", -1)),
                             largest=bool(ctx.attr("largest", 1)))
    return [values, indices]  # sorted=0 allows any order: sorted is one of them



# -- logical and bitwise ops, CastLike -----------------------------------------------------------

for _t, _o in (("And", "logical_and"), ("Or", "logical_or"), ("Xor", "logical_xor"), ("BitwiseAnd", "bitwise_and"),
               ("BitwiseOr", "bitwise_or"), ("BitwiseXor", "bitwise_xor")):
    _binary(_t, _o)
_simple("Not", "logical_not")
_simple("BitwiseNot", "bitwise_not")


@register_onnx_importer("BitShift")
def _bit_shift(ctx, node):
    direction = ctx.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise ShapeError(f"{node.describe()}: direction must be LEFT or RIGHT, got {direction!r}")
    return [ctx.op("shift_left" if direction == "LEFT" else "shift_right", ctx.input(0), ctx.input(1))]


@register_onnx_importer("CastLike")
def _cast_like(ctx, node):
    return [ctx.op("cast", ctx.input(0), dtype=ctx.input(1).dtype.name)]


# -- losses -------------------------------------------------------------------------------------


def _nll(ctx, log_prob, target, weight, reduction: str, ignore_index):
    """NegativeLogLikelihoodLoss from builder ops: gather each sample's class
    log-probability, weight it, drop ignored targets, reduce."""
    if reduction not in ("none", "sum", "mean"):
        raise UnsupportedError(f"{ctx.node.describe()}: unknown reduction {reduction!r}")
    t = ctx.op("unsqueeze", target, axes=[1])
    mask = None
    if ignore_index is not None:
        mask = ctx.op("equal", t, ctx.const(np.array(ignore_index, dtype=target.dtype.numpy)))
        t = ctx.op("where", mask, ctx.const(np.array(0, dtype=target.dtype.numpy)), t)
    picked = ctx.op("squeeze", ctx.op("gather_elements", log_prob, t, axis=1), axes=[1])
    loss = ctx.op("neg", picked)
    flat_t = ctx.op("squeeze", t, axes=[1])
    w = ctx.op("take", weight, flat_t, axis=0) if weight is not None else \
        ctx.op("broadcast_to", _scalar(ctx, 1.0, log_prob), shape=loss.shape)
    if mask is not None:
        keep = ctx.op("logical_not", ctx.op("squeeze", mask, axes=[1]))
        w = ctx.op("where", keep, w, _scalar(ctx, 0.0, log_prob))
    loss = ctx.op("mul", loss, w)
    if reduction == "none":
        return loss
    total = ctx.op("sum", loss, axes=None, keepdims=False)
    if reduction == "sum":
        return total
    return ctx.op("div", total, ctx.op("sum", w, axes=None, keepdims=False))


@register_onnx_importer("NegativeLogLikelihoodLoss")
def _nll_loss(ctx, node):
    return [_nll(ctx, ctx.input(0), ctx.input(1), ctx.input(2), ctx.attr("reduction", "mean"),
                 ctx.attr("ignore_index"))]


@register_onnx_importer("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx, node):
    log_prob = ctx.op("log_softmax", ctx.input(0), axis=1)
    loss = _nll(ctx, log_prob, ctx.input(1), ctx.input(2), ctx.attr("reduction", "mean"), ctx.attr("ignore_index"))
    return [loss, log_prob] if len(node.outputs) > 1 and node.outputs[1] else [loss]


@register_onnx_importer("Upsample")
def _upsample(ctx, node):
    """Resize's predecessor (opsets 7 to 9): scales, asymmetric coordinates, nearest floors."""
    x = ctx.input(0)
    scales = ctx.attr("scales") if ctx.opset < 9 else ctx.required_constant(1, "scales")
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(scales) != x.ndim:
        raise ShapeError(f"{node.describe()}: {len(scales)} scales for rank {x.ndim}")
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise UnsupportedError(f"{node.describe()}: mode {mode!r} is not supported")
    sizes = [int(np.floor(d * s)) for d, s in zip(x.shape, scales)]
    return [ctx.op("resize", x, sizes=sizes, scales=scales, mode=mode, coordinate_mode="asymmetric",
                   nearest_mode="floor")]


@register_onnx_importer("Resize")
def _resize(ctx, node):
    x = ctx.input(0)
    if ctx.opset < 11:
        raise UnsupportedError(f"{node.describe()}: Resize before opset 11 is not supported")
    mode = ctx.attr("mode", "nearest")
    coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if ctx.attr("antialias", 0):
        raise UnsupportedError(f"{node.describe()}: antialiased Resize is not supported")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise UnsupportedError(f"{node.describe()}: keep_aspect_ratio_policy {policy!r} is not supported")
    axes = ctx.attr("axes")
    axes = [int(a) % x.ndim for a in axes] if axes is not None else list(range(x.ndim))
    roi = None
    if coord == "tf_crop_and_resize":  # the region: starts then ends (fractions of each axis), for ``axes``
        given = ctx.required_constant(1, "roi").reshape(-1).astype(np.float64)
        if given.size != 2 * len(axes):
            raise ShapeError(f"{node.describe()}: roi has {given.size} values for {len(axes)} axes")
        roi = [0.0] * x.ndim + [1.0] * x.ndim
        for k, a in enumerate(axes):
            roi[a], roi[x.ndim + a] = float(given[k]), float(given[len(axes) + k])
    scales_in = ctx.constant(2) if ctx.input(2) is not None else None
    sizes_in = ctx.constant(3) if ctx.input(3) is not None else None
    if ctx.input(2) is not None and scales_in is None or ctx.input(3) is not None and sizes_in is None:
        raise UnsupportedError(f"{node.describe()}: scales and sizes must be constants known at import time")
    scales, sizes = [1.0] * x.ndim, list(x.shape)
    if sizes_in is not None and sizes_in.size and policy != "stretch":
        # One scale for every resized axis, the smallest or largest the sizes ask for.
        ratios = [int(s) / x.shape[a] for a, s in zip(axes, sizes_in.reshape(-1))]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        for a in axes:
            sizes[a], scales[a] = int(scale * x.shape[a] + 0.5), scale
    elif sizes_in is not None and sizes_in.size:
        for a, s in zip(axes, sizes_in.reshape(-1)):
            sizes[a] = int(s)
            scales[a] = sizes[a] / x.shape[a] if x.shape[a] else 1.0
    elif scales_in is not None and scales_in.size:
        for a, s in zip(axes, scales_in.reshape(-1)):
            scales[a] = float(s)
            extent = (roi[x.ndim + a] - roi[a]) if roi is not None else 1.0
            sizes[a] = int(np.floor(x.shape[a] * extent * float(s)))
    else:
        raise UnsupportedError(f"{node.describe()}: Resize needs scales or sizes")
    return [ctx.op("resize", x, sizes=sizes, scales=scales, mode=mode, coordinate_mode=coord,
                   nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor"),
                   cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                   exclude_outside=bool(ctx.attr("exclude_outside", 0)), roi=roi,
                   extrapolation_value=float(ctx.attr("extrapolation_value", 0.0)))]
