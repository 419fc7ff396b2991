"""Schedules: primitives that rewrite loop-IR kernels, and per-target defaults.

``primitives`` holds the loop steps (``split``, ``reorder``, ``fuse`` ...),
the registry of every step and their text form; ``buffer_steps`` the steps
that move data (``cache_write``, ``compute_at``, ``pack`` ...); ``step`` their
base class and tree helpers; ``cpu`` chooses steps for a CPU target;
``analysis`` reads strides. See docs/scheduling.md.
"""

from minicomp.passes.schedules.primitives import (
    STEPS,
    Bind,
    CacheRead,
    CacheWrite,
    ComputeAt,
    DecomposeReduction,
    Distribute,
    Fuse,
    Join,
    Localize,
    Pack,
    Parallel,
    Partition,
    Reorder,
    ReverseComputeInline,
    Simd,
    Split,
    Tile,
    Unroll,
    Vectorize,
    apply_schedule,
    apply_step,
    format_schedule,
    parse_schedule,
)
from minicomp.passes.schedules.step import ScheduleError, Step

__all__ = [
    "STEPS", "Bind", "CacheRead", "CacheWrite", "ComputeAt", "DecomposeReduction", "Distribute", "Fuse", "Join",
    "Localize", "Pack", "Parallel", "Partition", "Reorder", "ReverseComputeInline", "ScheduleError", "Simd", "Split",
    "Step", "Tile", "Unroll", "Vectorize", "apply_schedule", "apply_step", "format_schedule", "parse_schedule",
]
