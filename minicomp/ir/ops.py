"""The op registry: one :class:`OpDef` per op, and everything derives from it.

An OpDef gives an op's attributes (with defaults), its type rule (``infer``),
its numpy semantics (``reference``) and its tensor-expression definition
(``compute``). Lowering, fusion and both code generators read ``compute``;
the fusion pattern kind is derived from it unless an op states one.

Registering a new op::

    register_op(OpDef(
        name="square",
        infer=same_as_input(0),
        reference=lambda x: x * x,
        compute=lambda x: compute(x.shape, lambda *i: x[i] * x[i], "square"),
    ))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from minicomp.errors import MinicompError, ShapeError, UnsupportedError, describe_types
from minicomp.ir import expr as ex
from minicomp.ir.compute import Placeholder, Stage, stage_dag
from minicomp.ir.dims import Size, SymbolicSizeError
from minicomp.ir.graph import FrozenAttrs, TensorType
from minicomp.registries import LazyRegistry
from minicomp.wording import count

# Fusion pattern kinds, from most to least fusable (as in TVM's OpPatternKind).
ELEMENTWISE = "elementwise"
BROADCAST = "broadcast"
INJECTIVE = "injective"
REDUCTION = "reduction"
OUT_ELEMENTWISE_FUSABLE = "out_elementwise_fusable"
OPAQUE = "opaque"
PATTERN_ORDER = (ELEMENTWISE, BROADCAST, INJECTIVE, REDUCTION, OUT_ELEMENTWISE_FUSABLE, OPAQUE)

REQUIRED = object()  # marks an attribute without a default


# Attributes whose values are integers or lists of integers, whatever their default.
INT_LIST_ATTRS = {"axes", "perm", "shape", "starts", "ends", "steps", "pads", "strides", "dilations",
                  "kernel_shape", "repeats", "output_padding", "split", "sizes"}


def _is_int(v) -> bool:
    """An integer, or a symbolic size (mc.Dim arithmetic), which stands wherever a size goes."""
    return isinstance(v, (int, np.integer, Size)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_attr(op: str, node: str, key: str, default, value):
    """``value`` checked against the kind of ``default`` (an int attribute takes
    an integer, a bool one a bool, a float one a number, a string one a string;
    the integer-list attributes integers). A mismatch is a ShapeError: values
    are never coerced (``axis=1.7`` is not 1)."""
    def bad(want):
        return ShapeError(f"node '{node}' (op {op}): attribute {key}={value!r} must be {want}")

    if isinstance(default, bool):
        if isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1)):
            return bool(value)
        raise bad("true or false")
    if key in INT_LIST_ATTRS or _is_int(default):
        items = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and (not all(_is_int(v) for v in items) or (not isinstance(value, (list, tuple))
                                                                           and not _is_int(default))):
            raise bad("an integer" if _is_int(default) else "a list of integers")
        return value
    if isinstance(default, float) or key in ("min", "max", "alpha", "beta", "epsilon", "value"):
        if value is not None and not _is_number(value):
            raise bad("a number")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    return value


@dataclass
class OpDef:
    """Everything minicomp knows about one op.

    - ``infer(input_types, attrs) -> [TensorType]`` raises ShapeError with a
      short reason when the inputs do not fit (the registry adds the node name,
      op and shapes);
    - ``reference(*arrays, **attrs)`` computes the op in numpy;
    - ``compute(*placeholders, **attrs)`` returns the output Stage (or a list);
    - ``attrs`` lists allowed attribute names with their defaults;
    - ``normalize(input_types, attrs) -> attrs`` canonicalizes attributes
      (negative axes, defaults that depend on shapes) before anything else;
    - ``num_inputs`` is an int or an inclusive ``(min, max)`` range, max None
      for variadic ops.
    """

    name: str
    infer: Callable
    reference: Callable
    compute: Callable
    attrs: dict = field(default_factory=dict)
    normalize: Callable | None = None
    num_inputs: int | tuple = 1
    pattern: str | None = None
    doc: str = ""
    # check_constants(arrays, attrs): values the op refuses in inputs known at
    # build time (arrays[i] is None for inputs that are not constants).
    check_constants: Callable | None = None
    # runtime_checks(input_types, attrs) -> [(input position, low, high, reason)]: integer inputs whose
    # values are known only at run time and must lie in [low, high) (positions to write at). The graph
    # builder adds each as a check of the call (Graph.checks), which raises the reason, naming the node.
    runtime_checks: Callable | None = None

    def check_arity(self, n: int, node: str):
        lo, hi = (self.num_inputs, self.num_inputs) if isinstance(self.num_inputs, int) else self.num_inputs
        if n < lo or (hi is not None and n > hi):
            want = count(lo, "input") if lo == hi else f"{lo} to {hi if hi is not None else 'any number of'} inputs"
            raise ShapeError(f"node '{node}' (op {self.name}): takes {want}, got {n}")

    def make_attrs(self, input_types, attrs, node: str = "?") -> FrozenAttrs:
        """Check attribute names, fill defaults and normalize; return frozen attrs."""
        self.check_arity(len(input_types), node)
        attrs = dict(attrs)
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise ShapeError(
                f"node '{node}' (op {self.name}): unknown attribute(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(self.attrs)) or 'none'}"
            )
        full = {}
        for k, default in self.attrs.items():
            if k in attrs:
                full[k] = check_attr(self.name, node, k, default, attrs[k])
            elif default is REQUIRED:
                raise ShapeError(f"node '{node}' (op {self.name}): attribute '{k}' is required")
            else:
                full[k] = default
        if self.normalize is not None:
            try:
                full = self.normalize(list(input_types), full)
            except ShapeError as exc:
                raise self._wrap(exc, input_types, node) from None
            except SymbolicSizeError as exc:
                raise self._wrap(ShapeError(f"this op needs a static size here: {exc}"), input_types,
                                 node) from None
            except (TypeError, ValueError) as exc:
                raise ShapeError(
                    f"node '{node}' (op {self.name}): bad attributes {full}: {exc}"
                ) from None
        return FrozenAttrs(full)

    def infer_types(self, input_types, attrs, node: str = "?") -> list[TensorType]:
        """Output types for these inputs; errors name the node, op and shapes."""
        self.check_arity(len(input_types), node)
        try:
            out = self.infer(list(input_types), dict(attrs))
        except ShapeError as exc:
            raise self._wrap(exc, input_types, node) from None
        except SymbolicSizeError as exc:
            raise self._wrap(ShapeError(f"this op needs a static size here: {exc}"), input_types, node) from None
        except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            # An op's type rule that did not foresee these inputs (a 0-d tensor, say) still answers in the
            # user's terms, never with a bare IndexError.
            raise self._wrap(ShapeError(f"these inputs do not fit the op ({type(exc).__name__}: {exc})"),
                             input_types, node) from None
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def _wrap(self, exc, input_types, node):
        return ShapeError(
            f"node '{node}' (op {self.name}, inputs {describe_types(input_types)}): {exc}"
        )

    def build_compute(self, inputs: list, attrs) -> list[Stage]:
        """Call ``compute`` on tensor-likes; always returns a list of stages."""
        out = self.compute(*inputs, **dict(attrs))
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def pattern_kind(self, input_types, attrs) -> str:
        """The fusion pattern of this op on these input types."""
        if self.pattern is not None:
            return self.pattern
        placeholders = [Placeholder(f"in{i}", t.shape, t.dtype) for i, t in enumerate(input_types)]
        return derive_pattern(self.build_compute(placeholders, attrs))


def derive_pattern(outputs: list[Stage]) -> str:
    """Classify a compute definition the way TVM's FuseOps does.

    - one stage, every load indexed by exactly the output axes: elementwise;
    - one stage, loads index a subset of the axes in order (or constants):
      broadcast;
    - no reduction at all: injective;
    - a reduction whose body multiplies two different inputs (matmul, conv):
      out-elementwise-fusable;
    - any other reduction: reduction.
    """
    stages = stage_dag(outputs)
    reductions = [s for s in stages if s.reduce is not None]
    if reductions:
        for s in reductions:
            loads = [n for n in ex.walk(s.body.body) if isinstance(n, ex.Load)]
            sources = {id(ld.tensor) for ld in loads}
            if len(sources) >= 2 and any(isinstance(n, ex.BinOp) and n.op == "mul"
                                         for n in ex.walk(s.body.body)):
                return OUT_ELEMENTWISE_FUSABLE
        return REDUCTION
    if len(stages) == 1:
        st = stages[0]
        kinds = set()
        for n in ex.walk(st.body):
            if isinstance(n, ex.Load):
                kinds.add(_load_kind(n, st.axes))
        if kinds <= {ELEMENTWISE}:
            return ELEMENTWISE
        if kinds <= {ELEMENTWISE, BROADCAST}:
            return BROADCAST
    return INJECTIVE


def _load_kind(load: ex.Load, axes) -> str:
    idx = load.indices
    if len(idx) == len(axes) and all(a is b for a, b in zip(idx, axes)):
        return ELEMENTWISE
    # Broadcast: each index is an axis (in increasing order) or the constant 0.
    pos = -1
    for i in idx:
        if isinstance(i, ex.Const) and i.value == 0:
            continue
        if isinstance(i, ex.Var) and any(i is a for a in axes):
            k = next(j for j, a in enumerate(axes) if a is i)
            if k <= pos:
                return INJECTIVE
            pos = k
            continue
        return INJECTIVE
    return BROADCAST


def _load_builtin_ops():
    from minicomp.ir.opdefs import load_all

    load_all()


_REGISTRY = LazyRegistry("op", _load_builtin_ops)


def user_ops() -> set[str]:
    """The ops whose code is not minicomp's (a user's, registered by them)."""
    return _REGISTRY.foreign_keys(lambda op: (op.infer, op.reference, op.compute, op.normalize,
                                              op.check_constants, op.runtime_checks))


def register_op(opdef: OpDef, *, replace: bool = False) -> OpDef:
    """Add an op to the registry (``replace=True`` to override one, built-in or not)."""
    params = inspect.signature(opdef.reference).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) is False:
        missing = [a for a in opdef.attrs if a not in params]
        if missing:
            raise MinicompError(f"op {opdef.name}: reference lacks attribute parameters {missing}")
    _REGISTRY.register(opdef.name, opdef, replace=replace)
    return opdef


def get_op(name: str, node: str | None = None) -> OpDef:
    """The OpDef called ``name``; a clear error if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        where = f"node '{node}': " if node else ""
        raise UnsupportedError(f"{where}unknown op '{name}'") from None


def all_ops() -> dict[str, OpDef]:
    """Every registered op by name."""
    return _REGISTRY.as_dict()


# -- helpers shared by op definitions -------------------------------------------

def same_as_input(i: int = 0):
    """An ``infer`` that returns input ``i``'s type."""
    return lambda types, attrs: [types[i]]


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """A non-negative axis, or ShapeError if it is out of range."""
    if not -rank <= axis < max(rank, 1) or (rank == 0 and axis not in (0, -1)):
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def normalize_axis_attr(types, attrs):
    """A normalizer for ops with one ``axis`` attribute over input 0."""
    attrs["axis"] = normalize_axis(int(attrs["axis"]), types[0].rank)
    return attrs


def broadcast_shapes(*shapes) -> tuple[int, ...]:
    """numpy broadcasting of shapes, or ShapeError naming them."""
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(
                "shapes " + ", ".join(str(list(s)) for s in shapes) + " do not broadcast"
            )
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcast_index(axes, in_shape, out_shape) -> tuple:
    """Indices into a tensor of ``in_shape`` broadcast to ``out_shape``."""
    off = len(out_shape) - len(in_shape)
    return tuple(ex.Const(0, ex.dtypes.int64) if d == 1 and out_shape[off + k] != 1 else axes[off + k]
                 for k, d in enumerate(in_shape))
