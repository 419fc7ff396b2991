"""Memory planning: live intervals of intermediate buffers and their offsets
in one arena (the execution order is chosen first: ``memory_order.py``).

Every intermediate value (and every kernel workspace) lives from the kernel
that writes it to the last kernel that reads it. Two buffers whose intervals
overlap must not share bytes. Offsets come from greedy placements in two
orders — by size, and by breadth (widest steps first; Pisarchyk and Lee) —
and a short local search over the placement order; the smallest arena wins.

An elementwise kernel may write its output over an input that dies there
(:func:`writes_over`): the two become one buffer of the plan, live from the
input's first write to the output's last read (``MemoryPlan.aliases``).

The figures reported: the naive sum of all buffers, the peak of fusion's
order, the peak of the chosen order (the lower bound: the largest set of
bytes live at one time), and the arena planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minicomp.ir.loops import DIM_SIZES
from minicomp.wording import count

ALIGNMENT = 64  # bytes: a cache line, and enough for any vector load


def align(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


def arena_base(address: int) -> int:
    """Where the arena starts in memory allocated at ``address`` (with :data:`ALIGNMENT` bytes to spare):
    the first aligned byte. Every runtime, host or device, places the plan's offsets from there."""
    return align(address)


@dataclass
class Lifetime:
    """One buffer to place: written at step ``start``, last read at ``end``."""

    key: object
    name: str
    nbytes: int
    start: int
    end: int

    def overlaps(self, other: Lifetime) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class MemoryPlan:
    """Offsets of buffers in one arena, and the figures that judge the plan.

    ``lower_bound_bytes`` is the peak of live bytes in the execution order
    used (no offsets can do better for it); ``baseline_peak_bytes`` the peak of
    fusion's order; ``order`` the kernels in execution order and
    ``order_strategy``/``offset_strategy`` what chose them.
    """

    offsets: dict = field(default_factory=dict)
    lifetimes: list[Lifetime] = field(default_factory=list)
    arena_bytes: int = 0
    naive_bytes: int = 0
    lower_bound_bytes: int = 0
    baseline_peak_bytes: int | None = None
    order: list[str] = field(default_factory=list)
    order_strategy: str = "fusion"
    offset_strategy: str = "size"
    plan_seconds: float = 0.0
    order_is_optimal: bool = False
    aliases: dict = field(default_factory=dict)  # a buffer written in place -> the buffer whose memory it takes
    # A graph output computed in the memory of the input it is written back into (passes/lower_scatter.py)
    # -> that input: they share one table slot, the caller's array.
    written_in_place: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line: naive sum, peaks of the baseline and chosen orders, planned arena, time."""
        base = self.lower_bound_bytes if self.baseline_peak_bytes is None else self.baseline_peak_bytes
        ratio = self.arena_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0
        return (f"memory plan: {count(len(self.lifetimes), 'buffer')}, naive {self.naive_bytes:,} B, "
                f"fusion order peak {base:,} B, chosen order ({self.order_strategy}) peak "
                f"{self.lower_bound_bytes:,} B{', optimal' if self.order_is_optimal else ''} (lower bound), "
                f"arena {self.arena_bytes:,} B ({ratio:.3f}x the bound, offsets by {self.offset_strategy}), "
                f"{len(self.aliases)} written in place, planned in {self.plan_seconds * 1e3:.1f} ms")

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.order:
            lines.append(f"  order: {', '.join(self.order)}")
        for lt in sorted(self.lifetimes, key=lambda x: self.offsets[x.key]):
            lines.append(f"  [{self.offsets[lt.key]:>10,} .. {self.offsets[lt.key] + lt.nbytes:>10,})  "
                         f"steps {lt.start}-{lt.end}  {lt.name}")
        for out, inp in self.written_in_place.items():
            lines.append(f"  %{out.name} is written in place into input %{inp.name} (the caller's array)")
        return "\n".join(lines)

    def live_bytes(self) -> list[int]:
        """Bytes live at each step."""
        last = max((lt.end for lt in self.lifetimes), default=-1)
        return [sum(align(lt.nbytes) for lt in self.lifetimes if lt.start <= t <= lt.end) for t in range(last + 1)]

    def draw(self, path: str) -> None:
        """Draw the plan to ``path`` (.png, .svg, .pdf): buffers as rectangles,
        steps across and arena offset up, the live-bytes curve and the bound."""
        from minicomp.passes.memory_viz import draw_plan

        draw_plan(self, path)


def lower_bound(lifetimes: list[Lifetime]) -> int:
    """The most bytes live at any one step (no plan can use less)."""
    if not lifetimes:
        return 0
    last = max(lt.end for lt in lifetimes)
    return max(sum(align(lt.nbytes) for lt in lifetimes if lt.start <= t <= lt.end) for t in range(last + 1))


def place(order: list[Lifetime], best_fit: bool = False) -> tuple[dict, int]:
    """Place buffers in ``order``, each at the lowest offset (or, with
    ``best_fit``, in the smallest gap) where it overlaps no placed buffer live
    at the same time; returns offsets and the arena size."""
    placed: list[tuple[int, int, Lifetime]] = []
    offsets: dict = {}
    for lt in order:
        size = align(lt.nbytes)  # empty buffers take no bytes (they are never read)
        busy = sorted((off, sz) for off, sz, o in placed if sz and o.overlaps(lt))
        offset, best, best_gap = 0, None, None
        for off, sz in busy:
            if offset + size <= off:
                gap = off - offset
                if not best_fit:
                    break
                if best_gap is None or gap < best_gap:
                    best, best_gap = offset, gap
            offset = max(offset, off + sz)
        if best_fit and best is not None:
            offset = best
        offsets[lt.key] = offset
        placed.append((offset, size, lt))
    return offsets, max((off + sz for off, sz, _ in placed), default=0)


def by_size(lifetimes: list[Lifetime]) -> list[Lifetime]:
    """Greedy by size: biggest first (ties: earlier, then by name)."""
    return sorted(lifetimes, key=lambda x: (-x.nbytes, x.start, x.name))


def by_breadth(lifetimes: list[Lifetime]) -> list[Lifetime]:
    """Greedy by breadth (Pisarchyk and Lee): steps by their live bytes, widest
    first; within a step its buffers biggest first."""
    if not lifetimes:
        return []
    last = max(lt.end for lt in lifetimes)
    live = [0] * (last + 1)
    for lt in lifetimes:
        for t in range(lt.start, lt.end + 1):
            live[t] += align(lt.nbytes)
    out, seen = [], set()
    for t in sorted(range(last + 1), key=lambda t: (-live[t], t)):
        for lt in by_size([x for x in lifetimes if x.start <= t <= x.end]):
            if id(lt) not in seen:
                seen.add(id(lt))
                out.append(lt)
    return out


OFFSET_STRATEGIES = ("best", "size", "breadth", "search")


def plan_arena(lifetimes: list[Lifetime], strategy: str = "best", search_seconds: float = 0.1) -> MemoryPlan:
    """Offsets for ``lifetimes``. ``size`` and ``breadth`` place greedily in
    their orders (first fit, and best fit); ``search`` starts from the better
    of the two and tries swaps of its placement order for ``search_seconds``
    (deterministically), keeping those that do not grow the arena; ``best``
    runs all and keeps the smallest arena."""
    import random
    import time

    from minicomp.errors import MinicompError

    if strategy not in OFFSET_STRATEGIES:
        raise MinicompError(f"unknown offset strategy {strategy!r}; choose one of {', '.join(OFFSET_STRATEGIES)}")
    bound = lower_bound(lifetimes)
    tried = {}
    if strategy in ("best", "size", "search"):
        tried["size"] = (by_size(lifetimes), False)
    if strategy in ("best", "breadth", "search"):
        tried["breadth"] = (by_breadth(lifetimes), True)
    results = {name: place(order, fit) for name, (order, fit) in tried.items()}
    if strategy in ("best", "search"):
        name = min(results, key=lambda n: results[n][1])
        order, fit = list(tried[name][0]), tried[name][1]
        offsets, arena = results[name]
        rng, deadline = random.Random(0), time.perf_counter() + search_seconds
        while arena > bound and len(order) > 1 and time.perf_counter() < deadline:
            i, j = rng.randrange(len(order)), rng.randrange(len(order))
            order[i], order[j] = order[j], order[i]
            new_offsets, new_arena = place(order, fit)
            if new_arena <= arena:
                offsets, arena = new_offsets, new_arena
            else:
                order[i], order[j] = order[j], order[i]
        results["search"] = (offsets, arena)
    name = strategy if strategy != "best" else min(results, key=lambda n: (results[n][1], n != "size"))
    offsets, arena = results[name]
    return MemoryPlan(offsets, list(lifetimes), arena, sum(align(lt.nbytes) for lt in lifetimes), bound,
                      offset_strategy=name)


def writes_over(kernel, out, inp) -> bool:
    """May ``kernel`` write its parameter ``out`` over ``inp`` (same shape and
    dtype)? Yes when one statement stores to ``out`` and it runs once per
    element (every loop around it indexes it, none is a reduction), every
    read of ``inp`` is in that store at the same element, and nothing else
    reads ``inp``: then an element of ``inp`` is read, in the one iteration
    that needs it, before the same element of ``out`` is written, and never
    after. (Two stores to ``out`` — an initialisation, then an update that
    reads ``inp`` — would clobber ``inp`` before reading it.)"""
    from minicomp.ir import expr as ex
    from minicomp.ir.loops import For, Store, stmt_children, stmt_exprs

    if out.shape != inp.shape or out.dtype != inp.dtype or kernel.workspace:
        return False
    stores = 0

    def reads_inp(e) -> list:
        return [n for n in ex.walk(e) if isinstance(n, ex.Load) and n.tensor is inp]

    def visit(s, loops) -> bool:
        nonlocal stores
        if isinstance(s, For):
            return not s.is_reduction and visit(s.body, loops + [s.var])
        if isinstance(s, Store):
            loads = reads_inp(s.value) + [ld for i in s.indices for ld in reads_inp(i)]
            if s.buffer is inp:
                return False
            if s.buffer is not out:
                return not loads
            stores += 1
            text = [ex.format_expr(i) for i in s.indices]
            indexed = {v for i in s.indices for v in ex.free_vars(i)}
            return all(v in indexed for v in loops) and all(
                [ex.format_expr(i) for i in ld.indices] == text for ld in loads)
        if any(reads_inp(e) for e in stmt_exprs(s)):
            return False  # a branch condition or the like reads it
        return all(visit(c, loops) for c in stmt_children(s))

    return visit(kernel.body, []) and stores == 1


def in_place_pairs(kernels, lifetimes: list[Lifetime]) -> list[tuple[int, object, object]]:
    """(kernel index, output value, input value) for each kernel that may
    write an output over an input dying there (both planned buffers)."""
    by_key = {lt.key: lt for lt in lifetimes}
    pairs, taken = [], set()
    for step, k in enumerate(kernels):
        params = dict(zip(k.params, k.param_values))
        for out in k.outputs:
            o = params.get(out)
            if o not in by_key or by_key[o].start != step:
                continue
            for inp in k.inputs:
                i = params.get(inp)
                if i in by_key and i not in taken and by_key[i].end == step and writes_over(k, out, inp):
                    pairs.append((step, o, i))
                    taken.add(i)
                    break
    return pairs


def share_in_place(lifetimes: list[Lifetime], pairs) -> tuple[list[Lifetime], dict]:
    """Lifetimes to place, with each in-place output merged into the buffer
    whose memory it takes (chains follow: a -> b -> c is one buffer), and
    the aliases ``{output key: key of the buffer placed}``."""
    root = {}

    def find(key):
        while key in root:
            key = root[key]
        return key

    for _, out, inp in pairs:
        root[out] = find(inp)
    merged = {}
    for lt in lifetimes:
        key = find(lt.key)
        if key not in merged:
            merged[key] = Lifetime(key, lt.name, lt.nbytes, lt.start, lt.end)
        else:
            m = merged[key]
            m.name, m.nbytes = f"{m.name} > {lt.name}", max(m.nbytes, lt.nbytes)
            m.start, m.end = min(m.start, lt.start), max(m.end, lt.end)
    return list(merged.values()), {key: find(key) for key in root}


def buffer_slots(graph, plan: MemoryPlan) -> dict:
    """A slot (table index) for every buffer a model touches: its inputs,
    constants and outputs, then the planned buffers; code generators and
    runtimes share this numbering."""
    slots: dict = {}
    for v in list(graph.inputs) + list(graph.constants) + list(graph.outputs):
        if v in plan.written_in_place:
            slots[v] = slots[plan.written_in_place[v]]
        slots.setdefault(v, len(slots))
    if graph.dims():  # the sizes of the symbolic dimensions at the call (loops.DIM_SIZES)
        slots[DIM_SIZES] = len(slots)
    for lt in plan.lifetimes:
        slots[lt.key] = len(slots)
    for key in plan.aliases:
        slots[key] = len(slots)
    return slots


def kernel_slots(kernel, slots: dict) -> list[int]:
    """The table slot of each of ``kernel``'s parameters, in order: its graph value's, or for a workspace
    the planned buffer's (:func:`buffer_slots`). The code generators bind their calls and launches so."""
    workspaces = iter(kernel.workspace)
    return [slots[v] if v is not None else slots[next(workspaces)] for v in kernel.param_values]


def check_plan(plan: MemoryPlan) -> None:
    """Raise AssertionError if two buffers that are live together share bytes
    (a buffer written in place is placed exactly over the one it replaces)."""
    for key, placed in plan.aliases.items():
        assert plan.offsets[key] == plan.offsets[placed], f"{key} is not at the offset of the buffer it writes over"
    lts = plan.lifetimes
    for i, a in enumerate(lts):
        for b in lts[i + 1:]:
            if a.overlaps(b) and a.nbytes and b.nbytes:
                oa, ob = plan.offsets[a.key], plan.offsets[b.key]
                assert oa + a.nbytes <= ob or ob + b.nbytes <= oa, f"{a.name} and {b.name} overlap in memory"
