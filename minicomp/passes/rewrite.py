"""A small helper for passes that rewrite a graph node by node.

    rw = Rewriter(graph)              # works on a clone; ``graph`` is untouched
    for node in rw.nodes():           # inputs already renamed by earlier replacements
        if is_x_times_one(node):
            rw.replace(node.output, node.inputs[0])   # drop the node
        else:
            rw.keep(node)
    new_graph = rw.finish()
"""

from __future__ import annotations

import numpy as np

from minicomp.ir.dtypes import as_dtype
from minicomp.ir.graph import Graph, Node, TensorType, Value
from minicomp.ir.ops import get_op


class Rewriter:
    """Rebuilds a graph's node list while passes keep, drop or replace nodes."""

    def __init__(self, graph: Graph):
        self.graph = graph.clone()
        self._old_nodes = list(self.graph.nodes)
        self.graph.nodes = []
        self._map: dict[Value, Value] = {}
        self._names = {v.name for v in self.graph.values()} | {n.name for n in self._old_nodes}
        for n in self._old_nodes:
            self._names.update(v.name for v in n.outputs)

    def resolve(self, v: Value) -> Value:
        while v in self._map:
            v = self._map[v]
        return v

    def nodes(self):
        """The original nodes in order, with inputs pointing at current values."""
        for node in self._old_nodes:
            node.inputs = tuple(self.resolve(v) for v in node.inputs)
            yield node

    def keep(self, node: Node) -> None:
        self.graph.nodes.append(node)

    def replace(self, old: Value, new: Value) -> None:
        """Readers of ``old`` read ``new`` from now on (``old``'s node is dropped unless kept)."""
        if old is not new:
            self._map[old] = new

    def release(self, node: Node) -> None:
        """Free a dropped node's names so that its replacement can take them."""
        self._names.discard(node.name)
        for v in node.outputs:
            self._names.discard(v.name)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def add(self, op: str, inputs, name: str, **attrs) -> Value:
        """Append a new node of ``op``; returns its (single) output."""
        opdef = get_op(op)
        node_name = self.fresh(name)
        types = [v.type for v in inputs]
        frozen = opdef.make_attrs(types, attrs, node_name)
        (out_t,) = opdef.infer_types(types, frozen, node_name)
        out = Value(node_name, out_t)
        self.graph.nodes.append(Node(op, tuple(self.resolve(v) for v in inputs), frozen, (out,), node_name))
        return out

    def constant(self, array, name: str, dtype=None) -> Value:
        arr = np.array(array, dtype=as_dtype(dtype).numpy if dtype is not None else None, order="C")
        v = Value(self.fresh(name), TensorType(arr.shape, as_dtype(arr.dtype)))
        self.graph.constants[v] = arr
        return v

    def finish(self) -> Graph:
        """The rewritten graph, with outputs renamed; unused constants stay (DCE removes them)."""
        self.graph.outputs = [self.resolve(v) for v in self.graph.outputs]
        return self.graph
