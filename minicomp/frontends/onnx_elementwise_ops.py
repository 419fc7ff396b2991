"""ONNX importers for elementwise ops: arithmetic with ONNX's broadcasting (and opset 6's),
activations, clip, casts, logical and bitwise ops."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import ONNX_DTYPES, ImportContext, register_onnx_importer


def simple(op_type: str, op: str, **fixed):
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
    simple(_t, _o)


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


def scalar(ctx, value, like):
    return ctx.const(np.array(value, dtype=like.dtype.numpy))


@register_onnx_importer("Elu")
def _elu(ctx, node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    neg = ctx.op("mul", ctx.op("sub", ctx.op("exp", x), scalar(ctx, 1.0, x)), scalar(ctx, alpha, x))
    return [ctx.op("where", ctx.op("greater", x, scalar(ctx, 0.0, x)), x, neg)]


@register_onnx_importer("Selu")
def _selu(ctx, node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    neg = ctx.op("mul", ctx.op("sub", ctx.op("exp", x), scalar(ctx, 1.0, x)), scalar(ctx, alpha, x))
    y = ctx.op("where", ctx.op("greater", x, scalar(ctx, 0.0, x)), x, neg)
    return [ctx.op("mul", y, scalar(ctx, gamma, x))]


@register_onnx_importer("Softplus")
def softplus(ctx, node):
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x.
    x = ctx.input(0)
    tail = ctx.op("log", ctx.op("add", ctx.op("exp", ctx.op("neg", ctx.op("abs", x))), scalar(ctx, 1.0, x)))
    return [ctx.op("add", ctx.op("relu", x), tail)]


@register_onnx_importer("Softsign")
def _softsign(ctx, node):
    x = ctx.input(0)
    return [ctx.op("div", x, ctx.op("add", ctx.op("abs", x), scalar(ctx, 1.0, x)))]


@register_onnx_importer("PRelu")
def _prelu(ctx, node):
    x, slope = ctx.input(0), ctx.input(1)
    if slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] and slope.shape[0] != x.shape[-1]:
        # A per-channel slope given as [C] for (N, C, ...) inputs (as older exporters write it).
        slope = ctx.op("reshape", slope, shape=(slope.shape[0],) + (1,) * (x.ndim - 2))
    return [ctx.op("where", ctx.op("less", x, scalar(ctx, 0.0, x)), ctx.op("mul", x, slope), x)]


@register_onnx_importer("Sign")
def _sign(ctx, node):
    x = ctx.input(0)
    pos = ctx.op("cast", ctx.op("greater", x, scalar(ctx, 0, x)), dtype=x.dtype.name)
    neg = ctx.op("cast", ctx.op("less", x, scalar(ctx, 0, x)), dtype=x.dtype.name)
    return [ctx.op("sub", pos, neg)]


@register_onnx_importer("Shrink")
def _shrink(ctx, node):
    x = ctx.input(0)
    lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
    low = ctx.op("where", ctx.op("less", x, scalar(ctx, -lambd, x)), ctx.op("add", x, scalar(ctx, bias, x)),
                 scalar(ctx, 0, x))
    return [ctx.op("where", ctx.op("greater", x, scalar(ctx, lambd, x)), ctx.op("sub", x, scalar(ctx, bias, x)),
                   low)]


@register_onnx_importer("HardSigmoid")
def _hard_sigmoid(ctx, node):
    x = ctx.input(0)
    y = ctx.op("add", ctx.op("mul", x, scalar(ctx, float(ctx.attr("alpha", 0.2)), x)),
               scalar(ctx, float(ctx.attr("beta", 0.5)), x))
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


# -- ops added with the builder's: Sin, Cos, ArgMax/ArgMin, CumSum, Trilu, Range -------------

simple("Sin", "sin")
simple("Cos", "cos")



# -- logical and bitwise ops, CastLike -----------------------------------------------------------

for _t, _o in (("And", "logical_and"), ("Or", "logical_or"), ("Xor", "logical_xor"), ("BitwiseAnd", "bitwise_and"),
               ("BitwiseOr", "bitwise_or"), ("BitwiseXor", "bitwise_xor")):
    _binary(_t, _o)
simple("Not", "logical_not")
simple("BitwiseNot", "bitwise_not")


@register_onnx_importer("BitShift")
def _bit_shift(ctx, node):
    direction = ctx.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise ShapeError(f"{node.describe()}: direction must be LEFT or RIGHT, got {direction!r}")
    return [ctx.op("shift_left" if direction == "LEFT" else "shift_right", ctx.input(0), ctx.input(1))]


@register_onnx_importer("CastLike")
def _cast_like(ctx, node):
    return [ctx.op("cast", ctx.input(0), dtype=ctx.input(1).dtype.name)]
