"""ONNX importers for reductions (Reduce*, their composites such as LogSumExp), ArgMax/ArgMin, CumSum
and TopK."""

from __future__ import annotations

import numpy as np

from minicomp.errors import UnsupportedError
from minicomp.frontends.onnx import register_onnx_importer
from minicomp.ir.compute import reduce_identity
from minicomp.ir.opdefs.reduce import reduced_shape

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


@register_onnx_importer("TopK")
def _topk(ctx, node):
    if ctx.opset < 10:
        k = ctx.attr("k")
    else:
        k = int(np.asarray(ctx.required_constant(1, "K")).reshape(-1)[0])
    values, indices = ctx.op("topk", ctx.input(0), k=int(k), axis=int(ctx.attr("axis", -1)),
                             largest=bool(ctx.attr("largest", 1)))
    return [values, indices]  # sorted=0 allows any order: sorted is one of them
