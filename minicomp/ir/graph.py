"""The graph IR: typed SSA values, nodes, and the graph that holds them.

A :class:`Graph` owns its inputs, its constants (numpy arrays), its nodes in a
valid topological order, and its outputs. Values are compared by identity;
names are for people and for the text format, and are unique in a graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from minicomp.errors import ShapeError, VerifyError, describe_types
from minicomp.ir.dims import Size, bounds, symbolic_dims, upper
from minicomp.ir.dtypes import DType, as_dtype

MAX_TENSOR_BYTES = 1 << 47  # 128 TiB: past any address space a model's buffers can live in


def check_shape(shape) -> tuple:
    """``shape`` as a tuple of non-negative Python ints and symbolic sizes
    (:mod:`minicomp.ir.dims`, never below 0 in their ranges); anything else (a
    negative, fractional, boolean or non-numeric dimension) is a ShapeError."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"a shape must be a sequence of dimensions, got {shape!r}") from None
    for d in dims:
        if isinstance(d, Size):
            if bounds(d)[0] < 0:
                raise ShapeError(f"shape {list(dims)!r}: dimension {d} can be negative")
        elif isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ShapeError(f"shape {list(dims)!r}: dimensions must be integers >= 0, got {d!r}")
    return tuple(d if isinstance(d, Size) else int(d) for d in dims)


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: a shape (tuple of ints) and a dtype."""

    shape: tuple[int, ...]
    dtype: DType

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape))
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        if self.max_bytes > MAX_TENSOR_BYTES:
            raise ShapeError(f"shape {list(self.shape)} of {self.dtype.name} needs {self.max_bytes:,} "
                             f"bytes, more than any machine can address")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:  # Python ints: no wrapping past 2**63
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def max_bytes(self) -> int:
        """The bytes of the largest tensor of this type (its ``nbytes`` when the shape is static)."""
        return upper(self.size) * self.dtype.itemsize

    @property
    def is_symbolic(self) -> bool:
        return any(isinstance(d, Size) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.short}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(eq=False)
class Value:
    """A typed SSA value: a graph input, a constant, or one output of a node."""

    name: str
    type: TensorType
    producer: Node | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


def freeze_attr(value):
    """Make an attribute value immutable: lists become tuples, arrays are refused."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attr(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, Size)):
        return value
    raise VerifyError(f"attribute value {value!r} is not a plain Python value")


class FrozenAttrs(Mapping):
    """An immutable, hashable mapping of attribute names to plain values."""

    def __init__(self, items: Mapping | Iterable = ()):
        data = dict(items)
        self._data = {k: freeze_attr(v) for k, v in sorted(data.items())}
        self._hash = None

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(tuple(self._data.items()))
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self):
        return f"FrozenAttrs({self._data!r})"


@dataclass(eq=False)
class Node:
    """One operation: ``outputs = op(inputs, attrs)``, with a stable name."""

    op: str
    inputs: tuple[Value, ...]
    attrs: FrozenAttrs
    outputs: tuple[Value, ...]
    name: str

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        self.outputs = tuple(self.outputs)
        if not isinstance(self.attrs, FrozenAttrs):
            self.attrs = FrozenAttrs(self.attrs)
        for out in self.outputs:
            out.producer = self

    @property
    def output(self) -> Value:
        """The single output of a one-output node."""
        if len(self.outputs) != 1:
            raise VerifyError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def describe(self) -> str:
        """Short text for error messages: name, op and input/output shapes."""
        ins = describe_types([v.type for v in self.inputs])
        outs = describe_types([v.type for v in self.outputs])
        return f"node '{self.name}' (op {self.op}, inputs {ins} -> {outs})"

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


@dataclass(eq=False)
class Graph:
    """A tensor program: inputs, constants, nodes in topological order, outputs."""

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    constants: dict[Value, np.ndarray | None] = field(default_factory=dict)
    # State the model updates: output position -> the position of the input that holds the
    # output's value after each call (a key/value cache). Such an output is not returned by a call:
    # it is written into the caller's array (``GraphBuilder.write``). Positions, not Values, so
    # that passes which replace values keep it as it is.
    writes: dict[int, int] = field(default_factory=dict)
    # Values checked at each call: output position -> (low, high, message). Every element of that
    # integer output must lie in [low, high), or the call raises the message naming the value found
    # (positions read at run time, such as a cache slot). Such an output is not returned either.
    checks: dict[int, tuple] = field(default_factory=dict)

    # -- lookups -------------------------------------------------------------
    def values(self) -> list[Value]:
        """Every value in definition order: inputs, constants, node outputs."""
        vals = list(self.inputs) + list(self.constants)
        for node in self.nodes:
            vals.extend(node.outputs)
        return vals

    def value(self, name: str) -> Value:
        """The value called ``name`` (without the ``%``)."""
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self) -> dict[Value, list[Node]]:
        """Map each value to the nodes that read it, in order."""
        users: dict[Value, list[Node]] = {v: [] for v in self.values()}
        for node in self.nodes:
            for v in node.inputs:
                users.setdefault(v, [])
                if node not in users[v]:
                    users[v].append(node)
        return users

    def dims(self) -> list[tuple]:
        """The symbolic dimensions ``(name, min, max)`` of the inputs' shapes, by name: a call gives
        each a size (``mc.Dim``; empty for a static graph)."""
        return symbolic_dims([d for v in self.inputs for d in v.shape])

    def is_constant(self, value: Value) -> bool:
        return value in self.constants

    def returned_outputs(self) -> list[Value]:
        """The outputs a call returns: every output but those written back into inputs or checked."""
        return [v for k, v in enumerate(self.outputs) if k not in self.writes and k not in self.checks]

    def written_inputs(self) -> list[tuple[Value, Value]]:
        """``(input, value)`` for each input the model writes: after a call the input holds the value."""
        return [(self.inputs[i], self.outputs[o]) for o, i in sorted(self.writes.items())]

    def unique_name(self, prefix: str) -> str:
        """A value/node name starting with ``prefix`` that is not used yet."""
        taken = {v.name for v in self.values()} | {n.name for n in self.nodes}
        if prefix not in taken:
            return prefix
        i = 1
        while f"{prefix}_{i}" in taken:
            i += 1
        return f"{prefix}_{i}"

    def to_networkx(self):
        """A networkx DiGraph view: one vertex per node, edges follow values.

        Graph inputs and constants are not vertices. Edge attribute ``value``
        holds the Value. The IR is never stored in networkx; this is a view for
        graph algorithms (orders, dominators, cycles).
        """
        import networkx as nx

        dg = nx.DiGraph()
        for node in self.nodes:
            dg.add_node(node)
        for node in self.nodes:
            for v in node.inputs:
                if v.producer is not None and v.producer in dg:
                    dg.add_edge(v.producer, node, value=v)
        return dg

    # -- copying and rewriting -------------------------------------------------
    def clone(self) -> Graph:
        """A copy with new Values and Nodes (constant arrays are shared, never mutated)."""
        vmap: dict[Value, Value] = {}

        def cp(v: Value) -> Value:
            if v not in vmap:
                vmap[v] = Value(v.name, v.type)
            return vmap[v]

        g = Graph(self.name)
        g.inputs = [cp(v) for v in self.inputs]
        g.constants = {cp(v): arr for v, arr in self.constants.items()}
        for node in self.nodes:
            g.nodes.append(Node(node.op, tuple(cp(v) for v in node.inputs), node.attrs,
                                tuple(cp(v) for v in node.outputs), node.name))
        g.outputs = [cp(v) for v in self.outputs]
        g.writes = dict(self.writes)
        g.checks = dict(self.checks)
        digests = getattr(self, "constant_digests", None)
        if digests:
            g.constant_digests = {vmap[v]: d for v, d in digests.items() if v in vmap}
        return g

    # -- checking ------------------------------------------------------------
    def verify(self) -> Graph:
        """Check the graph's invariants; raise VerifyError naming the culprit.

        Checks: unique value and node names; every value defined before use and
        produced once; registered ops with the right arity and attributes;
        output types equal to what the op infers; constants whose arrays match
        their types; graph outputs defined. Returns the graph.
        """
        from minicomp.ir import ops as op_registry

        seen_names: set[str] = set()
        defined: set[Value] = set()

        def define(v: Value, where: str):
            if not isinstance(v, Value):
                raise VerifyError(f"{where}: {v!r} is not a Value")
            if v.name in seen_names:
                raise VerifyError(f"{where}: value name %{v.name} is defined twice")
            if v in defined:
                raise VerifyError(f"{where}: value %{v.name} is produced twice")
            seen_names.add(v.name)
            defined.add(v)

        for v in self.inputs:
            define(v, f"graph input %{v.name}")
            if v.producer is not None:
                raise VerifyError(f"graph input %{v.name} also has producer {v.producer.name}")
        for v, arr in self.constants.items():
            define(v, f"constant %{v.name}")
            if arr is not None:
                if tuple(arr.shape) != v.shape or arr.dtype != v.dtype.numpy:
                    raise VerifyError(
                        f"constant %{v.name} is declared {v.type} but holds "
                        f"{arr.dtype}{list(arr.shape)}"
                    )
        node_names: set[str] = set()
        for node in self.nodes:
            if node.name in node_names:
                raise VerifyError(f"node name '{node.name}' is used twice")
            node_names.add(node.name)
            for i, v in enumerate(node.inputs):
                if v not in defined:
                    where = "later in the graph" if v.producer in self.nodes else "nowhere in the graph"
                    raise VerifyError(
                        f"{node.describe()}: input {i} %{v.name} is used before it is defined "
                        f"(it is defined {where})"
                    )
            opdef = op_registry.get_op(node.op, node=node.name)
            expected = opdef.infer_types([v.type for v in node.inputs], node.attrs, node.name)
            actual = [v.type for v in node.outputs]
            if expected != actual:
                raise VerifyError(
                    f"{node.describe()}: declared output types {describe_types(actual)} "
                    f"but op {node.op} infers {describe_types(expected)}"
                )
            for out in node.outputs:
                if out.producer is not node:
                    raise VerifyError(f"{node.describe()}: output %{out.name} names another producer")
                define(out, node.describe())
        for i, v in enumerate(self.outputs):
            if v not in defined:
                raise VerifyError(f"graph output {i} %{v.name} is not defined in the graph")
        self._verify_writes()
        return self

    def _verify_writes(self) -> None:
        written: set[int] = set()
        for o, i in self.writes.items():
            if not (0 <= o < len(self.outputs) and 0 <= i < len(self.inputs)):
                raise VerifyError(f"a write names output {o} and input {i}, but the graph has "
                                  f"{len(self.outputs)} outputs and {len(self.inputs)} inputs")
            src, dst = self.outputs[o], self.inputs[i]
            if i in written:
                raise VerifyError(f"input %{dst.name} is written twice")
            written.add(i)
            if src.type != dst.type:
                raise VerifyError(f"output %{src.name} ({src.type}) cannot be written into input %{dst.name} "
                                  f"({dst.type}): their types differ")
        for o, check in self.checks.items():
            if not 0 <= o < len(self.outputs) or o in self.writes:
                raise VerifyError(f"a check names output {o}, which is not an output of its own")
            if not self.outputs[o].dtype.is_int or len(check) != 3 or not all(isinstance(b, int) for b in check[:2]):
                raise VerifyError(f"a check of output %{self.outputs[o].name} needs integers and a range "
                                  f"(low, high, message), got {self.outputs[o].type} and {check!r}")

    def __str__(self) -> str:
        from minicomp.ir.text import print_graph

        return print_graph(self)


def drop_unused_constants(graph: Graph) -> Graph:
    """Remove the constants nothing reads (folded shape tensors, replaced
    weights); returns the same graph. The frontends call it after import."""
    used = set(graph.outputs) | {v for n in graph.nodes for v in n.inputs}
    graph.constants = {v: a for v, a in graph.constants.items() if v in used}
    return graph
