"""Schedules: primitives that rewrite loop-IR kernels, and per-target defaults.

``primitives`` holds the steps (``split``, ``reorder``, ``cache_write`` ...);
``cpu`` chooses them for a CPU target. See docs/scheduling.md.
"""

from minicomp.passes.schedules.primitives import (
    STEPS,
    Bind,
    CacheRead,
    CacheWrite,
    ComputeAt,
    DecomposeReduction,
    Fuse,
    Localize,
    Pack,
    Parallel,
    Reorder,
    ReverseComputeInline,
    ScheduleError,
    Simd,
    Split,
    Step,
    Tile,
    Unroll,
    Vectorize,
    apply_schedule,
    apply_step,
    format_schedule,
    parse_schedule,
)

__all__ = [
    "STEPS", "Bind", "CacheRead", "CacheWrite", "ComputeAt", "DecomposeReduction", "Fuse", "Localize", "Pack",
    "Parallel", "Reorder", "ReverseComputeInline", "ScheduleError", "Simd", "Split", "Step", "Tile", "Unroll",
    "Vectorize", "apply_schedule", "apply_step", "format_schedule", "parse_schedule",
]
