"""SGEMM: minicomp's compiled matmul beside numpy's OpenBLAS, square float32
matrices, 1 and 2 threads, GFLOP/s and the ratio, timed in blocks.

Run with OpenBLAS's own kernels for this CPU (this machine sets variables
that hold it to AVX2):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py gemm
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import best_blocks, describe_machine, numpy_threads, print_table  # noqa: E402

SIZES = (256, 512, 1024, 2048)


def blas_kernel() -> str:
    """Which OpenBLAS core numpy runs (threadpoolctl), and the variables that pin it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl missing: OpenBLAS kernel unknown"
    blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    pinned = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(v)]
    core = blas[0].get("architecture", "?") if blas else "not OpenBLAS"
    return f"numpy BLAS: OpenBLAS {core}" + (f" (pinned by {', '.join(pinned)})" if pinned else "")


def main(argv=None) -> int:
    print(describe_machine())
    print(blas_kernel())
    rows = []
    for n in (int(a) for a in argv) if argv else SIZES:
        g = mc.GraphBuilder(f"sgemm{n}")
        a, b = g.input("a", (n, n)), g.input("b", (n, n))
        g.output(a @ b)
        t0 = time.perf_counter()
        model = mc.compile(g.build())
        compile_s = time.perf_counter() - t0
        rng = np.random.default_rng(n)
        x, y = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
        (got,) = model(x, y)
        err = float(np.abs(got - x @ y).max() / np.abs(x @ y).max())
        flops = 2.0 * n**3
        for th in (1, 2):
            model.set_num_threads(th)
            with numpy_threads(th):  # limits numpy's BLAS only
                best = best_blocks({"minicomp": lambda: lambda: model(x, y), "numpy": lambda: lambda: x @ y})
            t_mc, t_np = best["minicomp"], best["numpy"]
            rows.append([f"{n}x{n}x{n}", th, flops / t_mc / 1e9, flops / t_np / 1e9, t_np / t_mc, compile_s,
                         f"{err:.1e}"])
    print_table("SGEMM (GFLOP/s; ratio = numpy time / minicomp time, above 1 is faster)",
                ["size", "threads", "minicomp", "numpy", "ratio", "compile s", "rel err"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
