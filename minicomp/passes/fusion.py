"""Operator fusion: group graph nodes into kernels.

Each node has a pattern kind, derived from its compute definition
(:func:`minicomp.ir.ops.derive_pattern`). Walking the nodes in topological
order, the pass tries to merge each producer's group into its consumer's
group, under these rules:

- a group of layout ops only (reshape, transpose, slice...) merges into
  anything: lowering turns it into index arithmetic on the reader's loads;
  except a transpose that gives a matmul its right operand with another
  axis last (K^T in attention): copied once, its columns load as vectors;
  and a chain that joins inputs and moves axes (a concat, then a channel
  shuffle) into a convolution's data input: copied once, in plain order;
- other elementwise/broadcast/injective producers merge into any consumer
  group, except into a matmul/conv's own inputs (they would be recomputed for
  every multiply-add); but casts of integer constants (int8 weights,
  ``passes/quantize.py``) merge into a matmul's operand, each weight widened
  as it is read;
- reductions take elementwise prologues and epilogues and other reductions
  (so softmax and layer norm arrive decomposed and leave as one kernel), up
  to ``max_reductions`` per group;
- a matmul/conv takes elementwise/broadcast epilogues (bias, activation,
  residual add) and, with ``reduction_epilogue``, reductions of its result
  (attention scores followed by softmax);
- at most one matmul/conv per group, except sibling matmuls/convs reading the
  same input, which merge side by side (``horizontal``), and a matmul whose
  left operand ends a chain of reductions over the product's axis that derives
  to one pass (softmax, then a product by V: attention; ``reduction_chains``,
  docs/attention.md);
- limits: ``max_group_nodes`` nodes and ``max_params`` buffers per group.

Every merge keeps each group convex: no path may leave a group and come back
into it. That is the property TVM's post-dominator analysis guarantees; here
it is checked directly on the group graph, so that groups never form a cycle.

Every edge that stays a group boundary records why, for
``minicomp compile --explain-fusion``.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass, field

from minicomp.errors import MinicompError
from minicomp.ir.graph import Graph, Node
from minicomp.ir.ops import BROADCAST, ELEMENTWISE, OPAQUE, OUT_ELEMENTWISE_FUSABLE, REDUCTION, get_op
from minicomp.passes.lower import Group, kernel_name
from minicomp.passes.manager import register_pass

LAYOUT_OPS = frozenset({"reshape", "transpose", "squeeze", "unsqueeze", "slice", "broadcast_to", "concat"})


@dataclass
class FusionOptions:
    """Knobs of the fusion pass (``compile(..., fusion={...})``)."""

    max_group_nodes: int = 64
    max_params: int = 32
    max_reductions: int = 4
    horizontal: bool = True
    reduction_epilogue: bool = True
    reduction_chains: bool = True
    chain_tiles: tuple | None = None  # (rows, elements) a step of a chain kernel: the rule's when None


@dataclass
class Boundary:
    """An edge between two groups and the reason it was not fused."""

    producer: str
    consumer: str
    value: str
    reason: str


@dataclass
class FusionResult:
    groups: list[Group]
    boundaries: list[Boundary] = field(default_factory=list)

    def explain(self) -> str:
        """Readable account: each group, then each boundary with its reason."""
        n = len(self.groups)
        lines = [f"{n} kernel{'s' if n != 1 else ''}"]
        for g in self.groups:
            lines.append(f"  {g.name}: {', '.join(n.name for n in g.nodes)}" + (f"  ({g.reason})" if g.reason else ""))
        if self.boundaries:
            lines.append("boundaries:")
            for b in self.boundaries:
                lines.append(f"  {b.producer} -> {b.consumer} (%{b.value}): {b.reason}")
        return "\n".join(lines) + "\n"


class _UnionFind:
    def __init__(self, items):
        self.parent = {x: x for x in items}

    def find(self, x):
        while self.parent[x] is not x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra
        return ra


def _moves_last_axis(producer: Node, matmul: Node) -> bool:
    """Does ``producer`` (a transpose) give ``matmul`` its right operand with
    that operand's last axis taken from another axis of its source? Then the
    product's columns, the vector lanes of its register tile, would read
    that source with a long stride. Attention's Q @ K^T read K with stride
    768, so the schedule fell back to one 64-long dot product per score;
    copying K^T first costs a small kernel and saves more than it costs
    (docs/measurements.md)."""
    if producer.op != "transpose" or len(matmul.inputs) < 2 or matmul.inputs[1] is not producer.output:
        return False
    perm = producer.attrs["perm"]
    return perm is not None and len(perm) >= 2 and perm[-1] != len(perm) - 1


def _shuffles_into_convolution(layout_nodes: list, producer: Node, conv: Node) -> bool:
    """Does a layout chain that both joins inputs and moves axes (a concat, then a channel shuffle:
    reshape, transpose, reshape) give ``conv`` its data input? Read through such a chain, every
    multiply-add of the convolution pays a select between the joined inputs and div/mod index arithmetic,
    and its reduction runs scalar: ShuffleNet v2's 1x1 convolutions took 3.7-4.1 ms each, the last one
    25 ms, of a model torch runs in 13 ms. Copied once, the data is in plain order and the convolution
    gets register tiles. A shuffle alone (ShuffleNet v1's, into a depthwise convolution) reads well
    enough: copying it made that model 3-7% slower (docs/measurements.md)."""
    ops = {n.op for n in layout_nodes}
    return (conv.op.startswith("conv") and bool(conv.inputs) and conv.inputs[0] is producer.output
            and "transpose" in ops and "concat" in ops)


class _Fuser:
    def __init__(self, graph: Graph, options: FusionOptions):
        self.graph = graph
        self.opt = options
        self.chains: set[Node] = set()  # roots of groups lowered as one pass over a reduction chain
        self.constants = graph.constants
        self.index = {n: i for i, n in enumerate(graph.nodes)}
        self.pattern = {n: get_op(n.op).pattern_kind([v.type for v in n.inputs], n.attrs) for n in graph.nodes}
        self.users = graph.consumers()
        self.uf = _UnionFind(graph.nodes)
        self.members = {n: [n] for n in graph.nodes}
        self.reasons: dict[tuple[Node, Node], str] = {}
        self.group_reason: dict[Node, str] = {}

    # -- group facts ----------------------------------------------------------
    def group(self, n: Node) -> Node:
        return self.uf.find(n)

    def nodes_of(self, root: Node) -> list[Node]:
        return self.members[root]

    def anchors(self, root) -> list[Node]:
        return [n for n in self.nodes_of(root) if self.pattern[n] == OUT_ELEMENTWISE_FUSABLE]

    def reductions(self, root) -> list[Node]:
        return [n for n in self.nodes_of(root) if self.pattern[n] == REDUCTION]

    def layout_only(self, root) -> bool:
        return all(n.op in LAYOUT_OPS for n in self.nodes_of(root))

    def widens_weights(self, root) -> bool:
        """Is the group only casts of integer constants (weights stored as int8, ``quantize``)? A matmul
        reads them where it multiplies, each weight once a row: one byte a weight streamed, not four."""
        return all(n.op == "cast" and n.inputs[0] in self.constants and n.inputs[0].dtype.is_int
                   for n in self.nodes_of(root))

    def successors(self, root) -> set:
        out = set()
        for n in self.nodes_of(root):
            for v in n.outputs:
                for c in self.users.get(v, []):
                    g = self.group(c)
                    if g is not root:
                        out.add(g)
        return out

    def params(self, nodes) -> int:
        inside = set(nodes)
        produced = {v for n in nodes for v in n.outputs}
        ins = {v for n in nodes for v in n.inputs if v not in produced}
        graph_outs = set(self.graph.outputs)
        outs = {v for v in produced if v in graph_outs or any(c not in inside for c in self.users.get(v, []))}
        return len(ins) + len(outs)

    def reaches(self, start_groups, target, exclude) -> bool:
        """Is ``target`` reachable from any of ``start_groups`` without passing ``exclude``?"""
        seen, stack = set(), list(start_groups)
        while stack:
            g = stack.pop()
            if g is target:
                return True
            if g in seen or g in exclude:
                continue
            seen.add(g)
            stack.extend(self.successors(g))
        return False

    # -- rules -------------------------------------------------------------------
    def why_not(self, gp, gc, producer: Node, consumer: Node) -> str | None:
        """None if the producer's group may merge into the consumer's, else the reason."""
        if OPAQUE in (self.pattern[producer], self.pattern[consumer]):
            return "opaque op"
        nodes = self.nodes_of(gp) + self.nodes_of(gc)
        if len(nodes) > self.opt.max_group_nodes:
            return f"limit: more than {self.opt.max_group_nodes} nodes per group"
        ap, ac = self.anchors(gp), self.anchors(gc)
        rp, rc = self.reductions(gp), self.reductions(gc)
        if not self.layout_only(gp) and not (self.widens_weights(gp) and ac and not ap):
            feeds_anchor = any(v in a.inputs for a in ac for n in self.nodes_of(gp) for v in n.outputs)
            if feeds_anchor:
                return f"the inputs of {ac[0].op} '{ac[0].name}' must be in memory (only layout ops fuse into them)"
            if ap and ac:
                return "a group holds at most one matmul/conv in a chain"
            if rp and ac:
                return f"reductions do not fuse into the group of {ac[0].op} '{ac[0].name}'"
            if ap and (rc or self.pattern[consumer] == REDUCTION):
                if not self.opt.reduction_epilogue:
                    return "reduction epilogues of matmul/conv are disabled"
            elif ap and self.pattern[consumer] not in (ELEMENTWISE, BROADCAST):
                return (f"the epilogue of {ap[0].op} '{ap[0].name}' must be elementwise "
                        f"({consumer.op} is {self.pattern[consumer]})")
            if len(rp) + len(rc) > self.opt.max_reductions:
                return f"limit: more than {self.opt.max_reductions} reductions per group"
        if self.layout_only(gp) and consumer.op == "matmul" and _moves_last_axis(producer, consumer):
            return (f"a transposed right operand of matmul '{consumer.name}' is copied once, so that the "
                    f"product's columns load as vectors")
        if self.layout_only(gp) and _shuffles_into_convolution(self.nodes_of(gp), producer, consumer):
            return (f"the input of {consumer.op} '{consumer.name}' passes a transpose: it is copied once, so that "
                    f"the convolution's tiles read it in plain order")
        if self.params(nodes) > self.opt.max_params:
            return f"limit: more than {self.opt.max_params} buffers per kernel"
        others = self.successors(gp) - {gc}
        if self.reaches(others, gc, exclude={gp}):
            return "fusing would create a cycle (a path leaves the group and comes back)"
        return None

    def merge(self, ga, gb):
        if self.group(ga) is self.group(gb):
            return self.group(ga)
        root = self.uf.union(ga, gb)
        other = gb if root is ga else ga
        self.members[root] = sorted(self.members[root] + self.members.pop(other), key=self.index.get)
        return root

    # -- driver ------------------------------------------------------------------
    def run(self) -> FusionResult:
        for consumer in self.graph.nodes:
            for v in consumer.inputs:
                producer = v.producer
                if producer is None or producer not in self.index:
                    continue
                gp, gc = self.group(producer), self.group(consumer)
                if gp is gc:
                    continue
                reason = self.why_not(gp, gc, producer, consumer)
                if reason is None:
                    self.merge(gp, gc)
                else:
                    self.reasons[(producer, consumer)] = reason
        if self.opt.reduction_chains:
            self.fuse_chains()
        if self.opt.horizontal:
            self.fuse_siblings()
        return self.result()

    def fuse_chains(self):
        """Merge a matmul into the group that makes its left operand when together they are a chain
        of reductions over the product's axis that runs in one pass (softmax, then a product by V:
        attention). The derivation (``ir/reduction_chains.py``) decides; a refusal is the boundary's
        reason."""
        from minicomp.ir.reduction_chains import ChainRefusedError
        from minicomp.passes.lower import _Lowerer
        from minicomp.passes.lower_chain import find_chain, why_not_one_pass

        graph_outs = set(self.graph.outputs)
        for node in self.graph.nodes:
            if node.op != "matmul" or node.inputs[0].producer is None:
                continue
            producer, operand = node.inputs[0].producer, node.inputs[0]
            gp, gc = self.group(producer), self.group(node)
            if gp is gc or gp in self.chains or not self.reductions(gp):
                continue
            if any(n is not node and n.op not in LAYOUT_OPS for n in self.nodes_of(gc)):
                continue  # the product, and layout ops that give it an operand
            if operand in graph_outs or any(c is not node for c in self.users.get(operand, [])):
                continue
            if self.reaches(self.successors(gp) - {gc}, gc, exclude={gp}):
                continue
            # What the producer's group also gives other groups (a mask every layer reads) stays a
            # group of its own, with what it needs: the chain reads it.
            shared = self.shared_part(gp, operand)
            own = [n for n in self.nodes_of(gp) if n not in shared]
            if not any(self.pattern[n] == REDUCTION for n in own):
                continue
            trial = self.as_group(sorted(own + self.nodes_of(gc), key=self.index.get))
            try:
                chain = find_chain(_Lowerer(trial, "trial", self.constants))
            except ChainRefusedError as exc:
                self.note_chain(producer, node, f"not fused as a reduction chain: {exc}")
                continue
            why = why_not_one_pass(chain)
            if why is not None:
                self.note_chain(producer, node, f"a reduction chain, kept stage by stage: {why}")
                continue
            if shared:
                gp = self.split(gp, shared)
                if self.reaches(self.successors(gp) - {gc}, gc, exclude={gp}):
                    self.merge(gp, self.group(shared[0]))
                    continue
            root = self.take_key_copies(self.merge(gp, gc))
            self.chains.add(root)
            rules = sorted({r for lp in chain.plan.links for r in lp.rules})
            self.group_reason[root] = (f"a chain of reductions over one axis, in one pass ({len(chain.links)} "
                                       f"links; rules: {', '.join(rules)})")

    def take_key_copies(self, root):
        """Merge into a chain's group the copies of K^T that only it reads: the chain reads K as it
        is, copying each step's keys once for a job's rows (``lower_chain._pack``), or with few query
        rows (decoding) taking each score as a dot product along K's rows; a whole copy of K^T first
        would be S x d a head in the arena, written and read once more than the chain reads K."""
        inside = set(self.nodes_of(root))
        for v in self.as_group(self.nodes_of(root)).inputs:
            p = v.producer
            if p is None or self.group(p) is root or not self.layout_only(self.group(p)):
                continue
            readers = self.users.get(v, [])
            if not all(c in inside for c in readers) or not any(_moves_last_axis(p, c) for c in readers):
                continue
            gt = self.group(p)
            if not self.reaches(self.successors(gt) - {root}, root, exclude={gt}):
                root = self.merge(root, gt)
                inside = set(self.nodes_of(root))
        return root

    def note_chain(self, producer, consumer, text: str):
        """Add why a chain did not fuse to the boundary's reason."""
        before = self.reasons.get((producer, consumer))
        self.reasons[(producer, consumer)] = (f"{before}; " if before else "") + text

    def shared_part(self, root, operand) -> list:
        """The nodes of group ``root`` that make values read outside it (other than ``operand``) or
        returned, and the nodes of the group they need, in graph order."""
        inside = set(self.nodes_of(root))
        graph_outs = set(self.graph.outputs)
        stack = [n for n in inside for v in n.outputs if v is not operand and (
            v in graph_outs or any(c not in inside for c in self.users.get(v, [])))]
        found = set()
        while stack:
            n = stack.pop()
            if n in found:
                continue
            found.add(n)
            stack.extend(v.producer for v in n.inputs if v.producer in inside)
        return sorted(found, key=self.index.get)

    def split(self, root, part: list):
        """Make ``part`` (nodes of group ``root``) a group of its own; the root of the rest is returned."""
        rest = [n for n in self.nodes_of(root) if n not in set(part)]
        self.members.pop(root)
        reason = self.group_reason.pop(root, "")
        for nodes in (part, rest):
            for n in nodes:
                self.uf.parent[n] = nodes[0]
            self.members[nodes[0]] = nodes
        if reason:
            self.group_reason[rest[0]] = reason
        return rest[0]

    def as_group(self, nodes) -> Group:
        """The group of ``nodes``, with the values that cross its boundary."""
        inside = set(nodes)
        produced = [v for n in nodes for v in n.outputs]
        inputs = list(dict.fromkeys(v for n in nodes for v in n.inputs if v not in set(produced)))
        graph_outs = set(self.graph.outputs)
        outputs = [v for v in produced if v in graph_outs or any(c not in inside for c in self.users.get(v, []))]
        return Group(nodes, inputs, outputs)

    def fuse_siblings(self):
        """Merge groups whose matmul/conv read the same value and produce outputs
        that differ at most in their last axis (Q, K and V projections; a
        SwiGLU's gate and up projections, or grouped-query K/V narrower than Q):
        one kernel reads the shared input for all of them."""
        def rows(node):
            return node.outputs[0].shape[:-1]

        for v, readers in self.users.items():
            roots = []
            for r in readers:
                g = self.group(r)
                if (self.pattern[r] == OUT_ELEMENTWISE_FUSABLE and g not in roots and g not in self.chains
                        and r.outputs[0].shape
                        and (not roots or rows(r) == rows(self.anchors(roots[0])[0]))):
                    roots.append(g)
            while len(roots) > 1:
                a, b = roots[0], roots[1]
                nodes = self.nodes_of(a) + self.nodes_of(b)
                ok = (len(nodes) <= self.opt.max_group_nodes and self.params(nodes) <= self.opt.max_params
                      and not self.reaches(self.successors(a), b, exclude=set())
                      and not self.reaches(self.successors(b), a, exclude=set()))
                if ok:
                    root = self.merge(a, b)
                    self.group_reason[root] = f"siblings reading %{v.name} fused side by side"
                    roots = [root] + roots[2:]
                else:
                    roots = [a] + roots[2:]

    def result(self) -> FusionResult:
        roots = list(dict.fromkeys(self.group(n) for n in self.graph.nodes))
        order = ordered_groups(roots, self.successors, lambda r: self.index[self.nodes_of(r)[0]])
        groups = []
        for i, root in enumerate(order):
            g = self.as_group(self.nodes_of(root))
            g.reason, g.chain = self.group_reason.get(root, ""), root in self.chains
            g.chain_tiles = self.opt.chain_tiles if g.chain else None
            g.name = kernel_name(g, i)
            groups.append(g)
        boundaries = []
        group_of = {n: g for g in groups for n in g.nodes}
        for (p, c), reason in self.reasons.items():
            if group_of[p] is not group_of[c]:
                v = next(v for v in p.outputs if v in c.inputs)
                boundaries.append(Boundary(p.name, c.name, v.name, reason))
        return FusionResult(groups, boundaries)


def fuse_graph(graph: Graph, options: FusionOptions | dict | None = None) -> FusionResult:
    """Group ``graph``'s nodes into kernels; see the module docstring."""
    if isinstance(options, dict):
        options = FusionOptions(**options)
    return _Fuser(graph, options or FusionOptions()).run()


def single_node_groups(graph: Graph) -> FusionResult:
    """One group per node: what a pipeline without 'fuse' lowers."""
    groups = []
    for i, node in enumerate(graph.nodes):
        g = Group([node], list(dict.fromkeys(node.inputs)), list(node.outputs), reason="fusion disabled")
        g.name = kernel_name(g, i)
        groups.append(g)
    return FusionResult(groups)


def print_fused_graph(graph: Graph, groups) -> str:
    """The graph text with each node's group as a trailing comment."""
    from minicomp.ir.text import print_graph

    where = {n: g.name for g in groups for n in g.nodes}
    return print_graph(graph, annotate=lambda n: f"group {where.get(n, '?')}")


@register_pass("fuse", kind="program")
def fuse_pass(program, ctx):
    """Group nodes into kernels (options: ctx.options['fusion'])."""
    options = ctx.options.get("fusion")
    if isinstance(options, dict):
        known = [f.name for f in dataclasses.fields(FusionOptions)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise MinicompError(f"unknown fusion option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        options = FusionOptions(**options)
    options = options or FusionOptions()
    result = fuse_graph(program.graph, options)
    program.groups = result.groups
    program.fusion_result = result
    return program


def ordered_groups(roots: list, successors, key) -> list:
    """The groups in a topological order, the smallest ``key`` (the first
    node's place in the graph) first among those ready: Kahn's algorithm with
    a heap, as networkx's ``lexicographical_topological_sort``. Written here
    because importing networkx costs every compiling process 16 MB."""
    indegree = {r: 0 for r in roots}
    after = {r: [s for s in successors(r) if s in indegree] for r in roots}
    for r in roots:
        for s in after[r]:
            indegree[s] += 1
    rank = {r: (key(r), i) for i, r in enumerate(roots)}
    ready = [(rank[r], i) for i, r in enumerate(roots) if indegree[r] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(roots[i])
        for s in after[roots[i]]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(ready, (rank[s], rank[s][1]))
    if len(order) != len(roots):
        raise MinicompError("fusion made groups that depend on each other in a cycle")
    return order
