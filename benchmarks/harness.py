"""Timing helpers and the machine's limits, shared by every benchmark.

Times are the median of repeated calls after a warm-up, all in one process.
Thread counts are set per library: minicomp through ``set_num_threads``,
numpy's BLAS through threadpoolctl, PyTorch through ``torch.set_num_threads``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time

import numpy as np


def measure(fn, min_time: float = 0.5, min_runs: int = 5, max_runs: int = 300) -> float:
    """Median seconds per call of ``fn()`` after warm-up calls (thread pools
    and caches settle during the first few)."""
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_blocks(makers: dict, rounds: int = 3, min_time: float = 0.3) -> dict:
    """Each side's best block median, over ``rounds`` rounds of one block of
    calls per side in turn.

    ``makers`` maps a side's name to a function that returns the function to
    time. It is called at the start of each of the side's blocks and what it
    returns is dropped after the block: a runtime whose idle worker threads
    keep spinning (an ONNX Runtime session: it made minicomp's ResNet-50 run
    in 27 ms instead of 22 ms while it merely existed) is then alive only
    during its own blocks. The pause after each block lets a side's threads
    go to sleep, and the best of several blocks, taken at different moments,
    keeps a slow spell of this shared machine from counting against one side."""
    best = dict.fromkeys(makers, float("inf"))
    for _ in range(rounds):
        for name, make in makers.items():
            fn = make()
            best[name] = min(best[name], measure(fn, min_time=min_time, min_runs=3))
            del fn
            gc.collect()
            time.sleep(0.1)
    return best


@contextlib.contextmanager
def numpy_threads(n: int):
    """Limit numpy's BLAS to ``n`` threads inside the block (needs threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=n):
        yield True


def torch_module():
    """PyTorch if installed (the bench extra pins torch==2.13.0), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


_limits: dict | None = None


def machine_limits() -> dict:
    """Measured limits: copy bandwidth (GB/s) and numpy sgemm GFLOP/s on 1 and 2 threads."""
    global _limits
    if _limits is not None:
        return _limits
    n = 64 << 20  # 256 MiB of float32: far beyond the caches
    src = np.ones(n // 4, np.float32)
    dst = np.empty_like(src)
    t = measure(lambda: np.copyto(dst, src), min_runs=5)
    copy_gbs = 2 * n / t / 1e9  # read + write
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    flops = {}
    for th in (1, 2):
        with numpy_threads(th):
            t = measure(lambda: a @ a, min_runs=5)
        flops[th] = 2 * 1024**3 / t / 1e9
    _limits = {"copy_gbs": copy_gbs, "sgemm_gflops_1t": flops[1], "sgemm_gflops_2t": flops[2],
               "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    return _limits


def describe_machine() -> str:
    lim = machine_limits()
    from minicomp.target import Target

    t = Target.host()
    return (f"machine: {t.llvm_cpu}, {lim['cores']} cores, {t.vector_bits}-bit vectors"
            f"{' (' + ', '.join(t.dot_units) + ')' if t.dot_units else ''}; "
            f"copy bandwidth {lim['copy_gbs']:.1f} GB/s; numpy sgemm {lim['sgemm_gflops_1t']:.0f} GFLOP/s "
            f"(1 thread), {lim['sgemm_gflops_2t']:.0f} GFLOP/s (2 threads)")


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A plain-text table with right-aligned numbers."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else f"{c:.3f}" if isinstance(c, float) else
                                           str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(cells[0], widths))))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
