"""ONNX importers for math functions, activations, normalizations and window
functions, each composed from minicomp ops (or a C math-library op)."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.compose import group_norm
from minicomp.frontends.onnx import ONNX_DTYPES, register_onnx_importer
from minicomp.frontends.onnx_elementwise_ops import scalar, simple, softplus

for _t in ("Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Ceil", "Round"):
    simple(_t, _t.lower())


@register_onnx_importer("IsNaN")
def _is_nan(ctx, node):
    x = ctx.input(0)
    return [ctx.op("not_equal", x, x)]  # NaN is the one value unequal to itself


@register_onnx_importer("IsInf")
def _is_inf(ctx, node):
    x = ctx.input(0)
    found = []
    if ctx.attr("detect_positive", 1):
        found.append(ctx.op("equal", x, scalar(ctx, np.inf, x)))
    if ctx.attr("detect_negative", 1):
        found.append(ctx.op("equal", x, scalar(ctx, -np.inf, x)))
    if not found:
        return [ctx.op("broadcast_to", ctx.const(np.array(False)), shape=x.shape)]
    return [found[0] if len(found) == 1 else ctx.op("logical_or", *found)]


@register_onnx_importer("Swish")
def _swish(ctx, node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    return [ctx.op("mul", x, ctx.op("sigmoid", ctx.op("mul", x, scalar(ctx, alpha, x))))]


@register_onnx_importer("SwiGLU")
def _swiglu(ctx, node):
    """a * sigmoid(alpha * a) * b: the gated unit of LLaMA-style feed-forward layers."""
    a, b = ctx.input(0), ctx.input(1)
    if a.shape != b.shape:
        raise ShapeError(f"{node.describe()}: SwiGLU needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    alpha = float(ctx.attr("alpha", 1.0))
    gate = ctx.op("mul", a, ctx.op("sigmoid", ctx.op("mul", a, scalar(ctx, alpha, a))))
    return [ctx.op("mul", gate, b)]


@register_onnx_importer("HardSwish")
def _hard_swish(ctx, node):
    x = ctx.input(0)
    gate = ctx.op("clip", ctx.op("add", ctx.op("mul", x, scalar(ctx, 1 / 6, x)), scalar(ctx, 0.5, x)),
                  min=0.0, max=1.0)
    return [ctx.op("mul", x, gate)]


@register_onnx_importer("Mish")
def _mish(ctx, node):
    x = ctx.input(0)
    soft = softplus(ctx, node)[0]
    return [ctx.op("mul", x, ctx.op("tanh", soft))]


@register_onnx_importer("Celu")
def _celu(ctx, node):
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    inner = ctx.op("sub", ctx.op("exp", ctx.op("div", x, scalar(ctx, alpha, x))), scalar(ctx, 1.0, x))
    neg = ctx.op("minimum", ctx.op("mul", inner, scalar(ctx, alpha, x)), scalar(ctx, 0.0, x))
    return [ctx.op("add", ctx.op("relu", x), neg)]


@register_onnx_importer("ThresholdedRelu")
def _thresholded_relu(ctx, node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    return [ctx.op("where", ctx.op("greater", x, scalar(ctx, alpha, x)), x, scalar(ctx, 0.0, x))]


@register_onnx_importer("GroupNormalization")
def _group_normalization(ctx, node):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    groups, channels = int(ctx.attr("num_groups")), x.shape[1]
    if groups <= 0 or channels % groups:
        raise ShapeError(f"{node.describe()}: {channels} channels do not split into {groups} groups")
    if ctx.opset < 21 and groups != channels:  # opset 18 scales and shifts per group: repeat per channel
        scale, bias = (ctx.op("reshape", ctx.op("broadcast_to", ctx.op("reshape", t, shape=(groups, 1)),
                                                shape=(groups, channels // groups)), shape=(channels,))
                       for t in (scale, bias))
    return [group_norm(ctx, x, groups, float(ctx.attr("epsilon", 1e-5)), scale, bias)[0]]


@register_onnx_importer("MeanVarianceNormalization")
def _mean_variance_normalization(ctx, node):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9): the variance as ONNX's function body spells it
    (not the centred form), so that results agree where the two round differently."""
    x = ctx.input(0)
    axes = [int(a) % x.ndim for a in ctx.attr("axes", [0, 2, 3])]
    mean = ctx.op("mean", x, axes=axes, keepdims=True)
    mean_sq = ctx.op("mean", ctx.op("mul", x, x), axes=axes, keepdims=True)
    std = ctx.op("sqrt", ctx.op("sub", mean_sq, ctx.op("mul", mean, mean)))
    return [ctx.op("div", ctx.op("sub", x, mean), ctx.op("add", std, scalar(ctx, 1e-9, x)))]


def _window(coefficients):
    """Hann, Hamming and Blackman windows: a constant of the size given."""
    def imp(ctx, node):
        size = int(np.asarray(ctx.required_constant(0, "the window size")).reshape(-1)[0])
        if size < 0:
            raise ShapeError(f"{node.describe()}: window size {size} is negative")
        to = int(ctx.attr("output_datatype", 1))
        if to not in ONNX_DTYPES:
            raise UnsupportedError(f"{node.describe()}: output_datatype {to} is not supported")
        n = size if ctx.attr("periodic", 1) else size - 1
        k = np.arange(size, dtype=np.float64) * (2 * np.pi / max(n, 1))
        window = sum(c * np.cos(j * k) for j, c in enumerate(coefficients))
        return [ctx.const(window.astype(ONNX_DTYPES[to]))]
    return imp


register_onnx_importer("HannWindow")(_window((0.5, -0.5)))
register_onnx_importer("HammingWindow")(_window((25 / 46, -21 / 46)))
register_onnx_importer("BlackmanWindow")(_window((0.42, -0.5, 0.08)))
