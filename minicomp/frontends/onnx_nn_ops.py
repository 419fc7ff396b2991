"""ONNX importers for the network layers: softmax, matrix products and Einsum, convolutions and pools,
normalizations, losses."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.compose import moments
from minicomp.frontends.onnx import register_onnx_importer
from minicomp.frontends.onnx_elementwise_ops import scalar

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
        y = ctx.op("mul", y, scalar(ctx, alpha, y))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.op("mul", c, scalar(ctx, beta, c))
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
def conv(ctx, node):
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
    powered = ctx.op("mul", x, x) if p == 2 else ctx.op("pow", ctx.op("abs", x), scalar(ctx, p, x))
    mean = ctx.op(f"avg_pool{R}d", powered, kernel=kernel, strides=strides, padding=pads, dilations=dilations,
                  ceil_mode=bool(ctx.attr("ceil_mode", 0)), count_include_pad=True)
    total = ctx.op("mul", mean, scalar(ctx, float(np.prod(kernel)), x))
    return [ctx.op("sqrt", total) if p == 2 else ctx.op("pow", total, scalar(ctx, 1.0 / p, x))]


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
    inv = ctx.op("rsqrt", ctx.op("add", var, scalar(ctx, eps, x)))
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
    y = ctx.op("div", d, ctx.op("sqrt", ctx.op("add", var, scalar(ctx, eps, x))))
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)
    y = ctx.op("mul", y, ctx.op("reshape", scale, shape=per_channel))
    return [ctx.op("add", y, ctx.op("reshape", bias, shape=per_channel))]


@register_onnx_importer("LRN")
def _lrn(ctx, node):
    return [ctx.op("lrn", ctx.input(0), size=int(ctx.attr("size")), alpha=float(ctx.attr("alpha", 1e-4)),
                   beta=float(ctx.attr("beta", 0.75)), bias=float(ctx.attr("bias", 1.0)))]


@register_onnx_importer("Einsum")
def _einsum(ctx, node):
    eq = ctx.attr("equation")
    if not isinstance(eq, str):
        raise ShapeError(f"{node.describe()}: Einsum needs its equation attribute")
    return [ctx.builder.einsum(eq, *ctx.inputs())]


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
        ctx.op("broadcast_to", scalar(ctx, 1.0, log_prob), shape=loss.shape)
    if mask is not None:
        keep = ctx.op("logical_not", ctx.op("squeeze", mask, axes=[1]))
        w = ctx.op("where", keep, w, scalar(ctx, 0.0, log_prob))
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
