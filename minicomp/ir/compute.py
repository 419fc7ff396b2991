"""Tensor-expression compute definitions (in the style of TVM's ``te``).

An op's ``compute`` takes :class:`Placeholder`-like tensors and returns the
:class:`Stage` (or stages) that produce its outputs. A stage maps output index
variables to a scalar expression over loads of other tensors; a stage whose
body is a :class:`~minicomp.ir.expr.Reduce` reduces over its axes.

Stages form a small DAG. Lowering walks that DAG: stages without a reduction
are inlined into their readers, reductions get a buffer, an init and an
update. Fusion builds one DAG across several ops by passing one op's output
stage as the next op's input, so the same mechanism inlines across ops.
"""

from __future__ import annotations

import itertools

import numpy as np

from minicomp.errors import MinicompError
from minicomp.ir import expr as ex
from minicomp.ir.dims import static_or_symbolic
from minicomp.ir.dtypes import DType

_stage_ids = itertools.count()


class TensorLike:
    """Something a Load can read: has ``name``, ``shape``, ``dtype``."""

    name: str
    shape: tuple[int, ...]
    dtype: DType

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, indices) -> ex.Load:
        if not isinstance(indices, tuple):
            indices = (indices,)
        if len(indices) != len(self.shape):
            raise MinicompError(
                f"load of {self.name} with {len(indices)} indices, but it has rank {len(self.shape)}"
            )
        return ex.Load(self, tuple(ex.as_expr(i) for i in indices))


class Placeholder(TensorLike):
    """An input of a compute definition (a graph value, when lowering)."""

    def __init__(self, name: str, shape, dtype: DType):
        self.name = name
        self.shape = static_or_symbolic(shape)
        self.dtype = dtype

    def __repr__(self):
        return f"Placeholder({self.name}, {self.shape}, {self.dtype})"


class Stage(TensorLike):
    """One computed tensor: ``self[axes] = body``."""

    def __init__(self, name: str, shape, axes: tuple[ex.Var, ...], body: ex.Expr):
        self.name = name
        self.shape = static_or_symbolic(shape)
        self.axes = tuple(axes)
        self.body = body
        self.dtype = body.dtype
        self.uid = next(_stage_ids)

    @property
    def reduce(self) -> ex.Reduce | None:
        return self.body if isinstance(self.body, ex.Reduce) else None

    def inputs(self) -> list[TensorLike]:
        return ex.loaded_tensors(self.body)

    def __repr__(self):
        return f"Stage({self.name}{list(self.shape)} = {ex.format_expr(self.body)})"


def compute(shape, fn, name: str = "t") -> Stage:
    """A stage of ``shape`` whose element at ``idx`` is ``fn(*idx)``."""
    shape = static_or_symbolic(shape)
    axes = tuple(ex.fresh_var(f"{name[:1] or 'i'}{k}_") for k in range(len(shape)))
    body = ex.as_expr(fn(*axes))
    if isinstance(body, ex.Reduce) is False and any(isinstance(n, ex.Reduce) for n in ex.walk(body)):
        raise MinicompError(f"stage {name}: a reduction may only be the whole body")
    return Stage(name, shape, axes, body)


def reduce_axis(extent: int, name: str = "r") -> tuple[ex.Var, int]:
    """A reduction axis ``(var, extent)`` for :func:`reduce`."""
    return (ex.fresh_var(name), static_or_symbolic([extent])[0])


def reduce(op: str, body, axes) -> ex.Reduce:
    """``op`` (sum, max, min) of ``body`` over ``axes`` (from :func:`reduce_axis`)."""
    assert op in ex.REDUCE_OPS, op
    return ex.Reduce(op, ex.as_expr(body), tuple(axes))


def reduce_identity(op: str, dtype: DType) -> ex.Const:
    """The starting value of a reduction (0 for sum, -inf/min-int for max...)."""
    if op == "sum":
        return ex.const(0, dtype)
    if op == "prod":
        return ex.const(1, dtype)
    if dtype.is_float:
        return ex.const(-np.inf if op == "max" else np.inf, dtype)
    if dtype.is_bool:
        return ex.const(op == "min", dtype)
    info = np.iinfo(dtype.numpy)
    return ex.const(info.min if op == "max" else info.max, dtype)


def stage_dag(outputs) -> list[Stage]:
    """All stages reachable from ``outputs``, producers before consumers."""
    order: list[Stage] = []
    seen: set[int] = set()

    def visit(t):
        if not isinstance(t, Stage) or id(t) in seen:
            return
        seen.add(id(t))
        for inp in t.inputs():
            visit(inp)
        order.append(t)

    for o in outputs:
        visit(o)
    return order
