"""Run every benchmark suite and print their tables.

    python benchmarks/run.py            # all suites
    python benchmarks/run.py models     # one suite by name (models, fusion, onnx, gemm, memory, torch, gpu)
    python benchmarks/run.py --help     # this text and a line on each suite

Set ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` on the command, so that
numpy's OpenBLAS uses this machine's fastest kernels (see the README's Benchmarks).
"""

from __future__ import annotations

import importlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SUITES = {
    "models": "benchmarks.bench_models",
    "fusion": "benchmarks.bench_fusion",
    "onnx": "benchmarks.bench_onnx",
    "gemm": "benchmarks.bench_gemm",
    "memory": "benchmarks.bench_memory",
    "torch": "benchmarks.bench_torch",  # skipped without torch
    "gpu": "benchmarks.bench_gpu",  # skipped without a GPU, pycuda and torch
}


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(SUITES)
    if any(n in ("-h", "--help") for n in names):
        print(__doc__.strip() + "\n\nsuites:")
        for name, module in SUITES.items():
            print(f"  {name:8} {importlib.import_module(module).__doc__.strip().splitlines()[0]}")
        return 0
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    for name in names:
        importlib.import_module(SUITES[name]).main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
