"""Run every benchmark suite and print their tables.

    python benchmarks/run.py            # all suites
    python benchmarks/run.py models     # one suite by name (see --help for the list)
    python benchmarks/run.py onnx --tune  # the onnx suite also times each model tuned (compile(tune=True))
    python benchmarks/run.py torch --zoo  # the torch suite also times torchvision's and transformers' models
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
    "conv": "benchmarks.bench_conv",
    "layout": "benchmarks.bench_layout",
    "gemm": "benchmarks.bench_gemm",
    "memory": "benchmarks.bench_memory",
    "dynamic": "benchmarks.bench_dynamic",
    "attention": "benchmarks.bench_attention",  # skipped without torch
    "decode": "benchmarks.bench_decode",  # skipped without torch and transformers
    "targets": "benchmarks.bench_targets",
    "torch": "benchmarks.bench_torch",  # skipped without torch
    "zoo": "benchmarks.bench_zoo",  # skipped without torch, torchvision and onnxruntime
    "gpu": "benchmarks.bench_gpu",  # skipped without a GPU, pycuda and torch
}


# Options passed on to the one suite that takes them.
OPTIONS = {"--tune": "onnx", "--zoo": "torch", "--small": "decode", "--all": "zoo"}


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if any(n in ("-h", "--help") for n in args):
        print(__doc__.strip() + "\n\nsuites:")
        for name, module in SUITES.items():
            print(f"  {name:8} {importlib.import_module(module).__doc__.strip().splitlines()[0]}")
        return 0
    options = [a for a in args if a.startswith("--")]
    names = [a for a in args if not a.startswith("--")] or list(SUITES)
    unknown = [n for n in names if n not in SUITES] + [o for o in options if o not in OPTIONS]
    if unknown:
        print(f"unknown suite(s) or option(s) {', '.join(unknown)}; choose from {', '.join(SUITES)} and "
              f"{', '.join(f'{o} (for {s})' for o, s in OPTIONS.items())}", file=sys.stderr)
        return 2
    unused = [o for o in options if OPTIONS[o] not in names]
    if unused:
        print(f"{', '.join(unused)} is for the {OPTIONS[unused[0]]} suite, which is not being run", file=sys.stderr)
        return 2
    for name in names:
        own = [o for o in options if OPTIONS[o] == name]
        importlib.import_module(SUITES[name]).main(*([own] if own else []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
