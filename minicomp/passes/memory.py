"""Memory planning: live intervals of intermediate buffers and their offsets
in one arena.

Every intermediate value (and every kernel workspace) lives from the kernel
that writes it to the last kernel that reads it. Two buffers whose intervals
overlap must not share bytes; the planner places buffers largest first at the
lowest offset that fits among the already placed buffers they overlap with.

Three figures are always reported: the naive sum of all buffers, the lower
bound (the largest set of bytes live at one time), and the arena planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGNMENT = 64  # bytes: a cache line, and enough for any vector load


def align(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


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
    """Offsets of buffers in one arena, and the figures that judge the plan."""

    offsets: dict = field(default_factory=dict)
    lifetimes: list[Lifetime] = field(default_factory=list)
    arena_bytes: int = 0
    naive_bytes: int = 0
    lower_bound_bytes: int = 0

    def summary(self) -> str:
        """One line: naive sum, lower bound, planned arena."""
        return (f"memory plan: {len(self.lifetimes)} buffers, naive {self.naive_bytes:,} B, "
                f"lower bound {self.lower_bound_bytes:,} B, arena {self.arena_bytes:,} B")

    def __str__(self) -> str:
        lines = [self.summary()]
        for lt in sorted(self.lifetimes, key=lambda x: self.offsets[x.key]):
            lines.append(f"  [{self.offsets[lt.key]:>10,} .. {self.offsets[lt.key] + lt.nbytes:>10,})  "
                         f"steps {lt.start}-{lt.end}  {lt.name}")
        return "\n".join(lines)


def lower_bound(lifetimes: list[Lifetime]) -> int:
    """The most bytes live at any one step (no plan can use less)."""
    if not lifetimes:
        return 0
    last = max(lt.end for lt in lifetimes)
    return max(sum(align(lt.nbytes) for lt in lifetimes if lt.start <= t <= lt.end) for t in range(last + 1))


def plan_arena(lifetimes: list[Lifetime]) -> MemoryPlan:
    """Greedy-by-size placement: biggest first, at the lowest offset that fits."""
    placed: list[tuple[int, Lifetime]] = []
    offsets: dict = {}
    for lt in sorted(lifetimes, key=lambda x: (-x.nbytes, x.start, x.name)):
        size = align(lt.nbytes)  # empty buffers take no bytes (they are never read)
        busy = sorted((off, align(o.nbytes)) for off, o in placed if o.overlaps(lt) and o.nbytes)
        offset = 0
        for off, sz in busy:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        offsets[lt.key] = offset
        placed.append((offset, lt))
    arena = max((off + align(lt.nbytes) for off, lt in placed), default=0)
    return MemoryPlan(offsets, list(lifetimes), arena, sum(align(lt.nbytes) for lt in lifetimes),
                      lower_bound(lifetimes))


def check_plan(plan: MemoryPlan) -> None:
    """Raise AssertionError if two buffers that are live together share bytes."""
    lts = plan.lifetimes
    for i, a in enumerate(lts):
        for b in lts[i + 1:]:
            if a.overlaps(b) and a.nbytes and b.nbytes:
                oa, ob = plan.offsets[a.key], plan.offsets[b.key]
                assert oa + a.nbytes <= ob or ob + b.nbytes <= oa, f"{a.name} and {b.name} overlap in memory"
