"""SGEMM: minicomp's compiled matmul beside numpy's OpenBLAS, square float32
matrices, 1 and 2 threads, GFLOP/s and the ratio, timed in blocks; then the
products of a BERT-base layer at sequence 128 (the projections with their
weights as constants, as in a model, and the per-head attention products).

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
# A BERT-base layer at sequence 128: (name, left shape, right shape, right is a constant weight).
ATTENTION = (
    ("Q/K/V/out projection", (128, 768), (768, 768), True),
    ("feed-forward up", (128, 768), (768, 3072), True),
    ("feed-forward down", (128, 3072), (3072, 768), True),
    ("heads: Q @ K^T", (12, 128, 64), (12, 64, 128), False),
    ("heads: P @ V", (12, 128, 128), (12, 128, 64), False),
)


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
        rows += _compare(f"{n}x{n}x{n}", (n, n), (n, n), constant=False, seed=n)
    print_table("SGEMM (GFLOP/s; ratio = numpy time / minicomp time, above 1 is faster)",
                ["size", "threads", "minicomp", "numpy", "ratio", "compile s", "rel err"], rows)
    if not argv:
        rows = []
        for name, a_shape, b_shape, constant in ATTENTION:
            shape = "x".join(map(str, a_shape)) + " @ " + "x".join(map(str, b_shape[-2:]))
            rows += _compare(f"{name} ({shape})", a_shape, b_shape, constant, seed=len(rows))
        print_table("BERT-base layer products, sequence 128 (GFLOP/s; ratio = numpy time / minicomp time)",
                    ["product", "threads", "minicomp", "numpy", "ratio", "compile s", "rel err"], rows)
    return 0


def _compare(label: str, a_shape, b_shape, constant: bool, seed: int) -> list:
    """Rows (one per thread count) timing ``a @ b`` compiled and in numpy;
    with ``constant``, ``b`` is a constant of the graph (packed at compile time)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(a_shape).astype(np.float32)
    y = rng.standard_normal(b_shape).astype(np.float32)
    g = mc.GraphBuilder("matmul")
    a = g.input("a", a_shape)
    b = g.constant(y) if constant else g.input("b", b_shape)
    g.output(a @ b)
    t0 = time.perf_counter()
    model = mc.compile(g.build())
    compile_s = time.perf_counter() - t0
    args = (x,) if constant else (x, y)
    want = x @ y
    (got,) = model(*args)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    flops = 2.0 * np.prod(a_shape) * b_shape[-1]
    rows = []
    for th in (1, 2):
        model.set_num_threads(th)
        with numpy_threads(th):  # limits numpy's BLAS only
            best = best_blocks({"minicomp": lambda: lambda: model(*args), "numpy": lambda: lambda: x @ y})
        t_mc, t_np = best["minicomp"], best["numpy"]
        rows.append([label, th, flops / t_mc / 1e9, flops / t_np / 1e9, t_np / t_mc, compile_s, f"{err:.1e}"])
    return rows


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
