"""Kernel execution order for memory: the order decides which buffers are live
together, hence the smallest arena any offset plan can reach.

An :class:`OrderProblem` is the program's kernels with their dependency edges,
the intermediate buffers each writes and reads, their sizes, and each kernel's
workspace bytes (live during its own step only). Model inputs, outputs and
constants are not in the arena and do not count.

Orders considered (:func:`choose_order`):

- ``fusion``: the topological order fusion left (the baseline);
- ``greedy``: a list scheduler: among the ready kernels, run the one that
  keeps the peak lowest, looking one kernel ahead, then the one that leaves
  the fewest bytes live (it frees most and allocates least);
- ``exact``: dynamic programming over the sets of executed kernels (only the
  sets a topological order can reach), the least peak; used while the number
  of such sets stays small (graphs up to about 20 kernels, more when they are
  chain-like).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minicomp.passes.memory import align

ORDERS = ("auto", "fusion", "greedy", "exact")
EXACT_STATE_LIMIT = 100_000


@dataclass
class OrderProblem:
    """Kernels ``0..n-1`` (in fusion's order), their edges and buffers."""

    names: list[str]
    preds: list[set[int]]
    writes: list[list]  # buffer keys each kernel writes
    reads: list[list]  # buffer keys each kernel reads (intermediates only)
    size: dict  # buffer key -> aligned bytes
    workspace: list[int]  # aligned bytes of each kernel's workspaces
    consumers: dict = field(default_factory=dict)  # buffer key -> set of kernels reading it

    def __post_init__(self):
        self.consumers = {b: set() for ws in self.writes for b in ws}
        for k, rs in enumerate(self.reads):
            for b in rs:
                self.consumers.setdefault(b, set()).add(k)

    @property
    def n(self) -> int:
        return len(self.names)


def order_problem(program) -> OrderProblem:
    """The order problem of a lowered program (groups and kernels in fusion's order)."""
    graph = program.graph
    external = set(graph.inputs) | set(graph.constants) | set(graph.outputs)
    producer = {}
    for i, g in enumerate(program.groups):
        for v in g.outputs:
            producer.setdefault(v, i)
    preds, writes, reads, size = [], [], [], {}
    for i, g in enumerate(program.groups):
        preds.append({producer[v] for v in g.inputs if v in producer and producer[v] != i})
        writes.append([v for v in dict.fromkeys(g.outputs) if v not in external])
        reads.append([v for v in dict.fromkeys(g.inputs) if v not in external and v in producer])
        for v in writes[-1]:
            size[v] = align(v.type.max_bytes)
    ws = [sum(align(b.max_bytes) for b in k.workspace) for k in program.kernels]
    return OrderProblem([k.name for k in program.kernels], preds, writes, reads, size, ws)


def is_topological(problem: OrderProblem, order: list[int]) -> bool:
    """Does ``order`` run every kernel once, each after its predecessors?"""
    if sorted(order) != list(range(problem.n)):
        return False
    at = {k: i for i, k in enumerate(order)}
    return all(at[p] < at[k] for k in range(problem.n) for p in problem.preds[k])


class _Live:
    """Bytes live while kernels run in some order (the state every search steps)."""

    def __init__(self, problem: OrderProblem):
        self.p = problem
        self.left = {b: len(c) for b, c in problem.consumers.items()}
        self.live = 0

    def step_peak(self, k: int) -> int:
        """Live bytes while ``k`` runs: what is live, plus its outputs and workspaces."""
        return self.live + sum(self.p.size[b] for b in self.p.writes[k]) + self.p.workspace[k]

    def freed_by(self, k: int) -> int:
        """Bytes that die when ``k`` has run: inputs it reads last, outputs nobody reads."""
        return sum(self.p.size[b] for b in self.p.reads[k] if self.left[b] == 1) + sum(
            self.p.size[b] for b in self.p.writes[k] if not self.p.consumers[b])

    def run(self, k: int) -> None:
        p = self.p
        self.live += sum(p.size[b] for b in p.writes[k])
        for b in p.writes[k]:
            if not p.consumers[b]:  # never read: dead at once
                self.live -= p.size[b]
        for b in p.reads[k]:
            self.left[b] -= 1
            if self.left[b] == 0:
                self.live -= p.size[b]


def peak_of(problem: OrderProblem, order: list[int]) -> int:
    """The most bytes live at one step when kernels run in ``order`` (no offset
    plan for this order can use less)."""
    state, peak = _Live(problem), 0
    for k in order:
        peak = max(peak, state.step_peak(k))
        state.run(k)
    return peak


def greedy_order(problem: OrderProblem, lookahead: bool = True) -> list[int]:
    """The list scheduler (see the module docs)."""
    n, state = problem.n, _Live(problem)
    done, order, peak = set(), [], 0
    waiting = [len(problem.preds[k]) for k in range(n)]
    succs = [[] for _ in range(n)]
    for k in range(n):
        for p in problem.preds[k]:
            succs[p].append(k)
    ready = {k for k in range(n) if not waiting[k]}
    while ready:
        def key(k):
            here = max(peak, state.step_peak(k))
            after = state.live + sum(problem.size[b] for b in problem.writes[k]) - state.freed_by(k)
            ahead = here
            if lookahead:
                nxt = [s for s in succs[k] if waiting[s] == 1] + [r for r in ready if r != k]
                if nxt:  # the cheapest next step once k has run
                    extra = min(sum(problem.size[b] for b in problem.writes[s]) + problem.workspace[s] for s in nxt)
                    ahead = max(here, after + extra)
            return (ahead, here, after, k)

        k = min(ready, key=key)
        peak = max(peak, state.step_peak(k))
        state.run(k)
        order.append(k)
        done.add(k)
        ready.discard(k)
        for s in succs[k]:
            waiting[s] -= 1
            if not waiting[s]:
                ready.add(s)
    return order


def exact_order(problem: OrderProblem, state_limit: int = EXACT_STATE_LIMIT) -> list[int] | None:
    """An order of least peak, by dynamic programming over executed sets (breadth
    first, one layer per step); None when more than ``state_limit`` sets are reachable."""
    n = problem.n
    pred_mask = [sum(1 << p for p in problem.preds[k]) for k in range(n)]
    writes_size = [sum(problem.size[b] for b in problem.writes[k]) for k in range(n)]
    consumer_mask = {b: sum(1 << k for k in c) for b, c in problem.consumers.items()}
    # best[mask] = (peak, live, previous mask, kernel)
    layer = {0: (0, 0)}
    back: dict[int, tuple[int, int]] = {}
    seen = 1
    for _ in range(n):
        nxt: dict[int, tuple[int, int]] = {}
        for mask, (peak, live) in layer.items():
            for k in range(n):
                bit = 1 << k
                if mask & bit or (pred_mask[k] & ~mask):
                    continue
                step = live + writes_size[k] + problem.workspace[k]
                new = mask | bit
                after = live + writes_size[k]
                for b in problem.writes[k]:
                    if not consumer_mask[b]:
                        after -= problem.size[b]
                for b in set(problem.reads[k]):
                    if consumer_mask[b] & ~new == 0:
                        after -= problem.size[b]
                cand = (max(peak, step), after)
                old = nxt.get(new)
                if old is None or cand < old:
                    nxt[new] = cand
                    back[new] = (mask, k)
        seen += len(nxt)
        if seen > state_limit:
            return None
        layer = nxt
    order, mask = [], (1 << n) - 1
    while mask:
        mask, k = back[mask]
        order.append(k)
    return order[::-1]


@dataclass
class OrderChoice:
    """The chosen order and the figures that justify it."""

    order: list[int]
    strategy: str
    peak: int
    baseline_peak: int
    exact: bool  # the chosen peak is known to be the least possible
    peaks: dict  # strategy -> peak of its order


def choose_order(problem: OrderProblem, strategy: str = "auto", budget: int | None = None) -> OrderChoice:
    """Run the strategies asked for and keep the order of least peak (fusion's
    order on ties). With a ``budget``, fusion's order is kept whenever its peak
    fits, since it keeps producers next to their consumers."""
    from minicomp.errors import MinicompError

    if strategy not in ORDERS:
        raise MinicompError(f"unknown memory order {strategy!r}; choose one of {', '.join(ORDERS)}")
    baseline = list(range(problem.n))
    candidates = {"fusion": baseline}
    if strategy in ("auto", "greedy"):
        candidates["greedy"] = greedy_order(problem)
    if strategy in ("auto", "exact"):
        exact = exact_order(problem)
        if exact is not None:
            candidates["exact"] = exact
        elif strategy == "exact":
            raise MinicompError(f"the exact order search gave up after {EXACT_STATE_LIMIT:,} reachable sets of "
                                f"kernels ({problem.n} kernels); use memory order 'greedy' or 'auto'")
    peaks = {name: peak_of(problem, order) for name, order in candidates.items()}
    if strategy == "fusion":
        name = "fusion"
    elif budget is not None and peaks["fusion"] <= budget:
        name = "fusion"
    elif strategy in ("greedy", "exact") and strategy in peaks:
        name = strategy
    else:
        name = min(peaks, key=lambda s: (peaks[s], s != "fusion"))
    return OrderChoice(candidates[name], name, peaks[name], peaks["fusion"], "exact" in peaks and
                       peaks[name] == peaks["exact"], peaks)
