"""The nchwc layout pass on whole convolution models: the default llvm
pipeline against the same pipeline without ``nchwc``, on 2 threads.

Both models are compiled in one process, checked against each other, and
timed in alternating blocks (``best_blocks``); speed = time without / time
with. The figures in docs/layout.md come from this suite.

    python benchmarks/run.py layout
    python benchmarks/bench_layout.py resnet50 mobilenet_v2   # some models
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.bench_onnx import load  # noqa: E402
from benchmarks.harness import best_blocks, describe_machine, print_table  # noqa: E402
from minicomp.backends.registry import default_pipeline  # noqa: E402
from minicomp.frontends.onnx_testdata import LIGHT_MODELS  # noqa: E402

WITHOUT = [p for p in default_pipeline("llvm") if p != "nchwc"]


def compare(name: str) -> list:
    """[model, blocked convolutions, ms without, ms with, speed] for one model."""
    proto, inputs = load(name)
    graph = mc.from_onnx(proto)
    plain = mc.compile(graph, num_threads=2, pipeline=WITHOUT)
    blocked = mc.compile(graph, num_threads=2)
    for a, b in zip(plain(**inputs), blocked(**inputs), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * float(np.abs(a).max() + 1))
    convs = sum(1 for k in blocked.kernels if "conv2d_nchwc" in k.name)
    t = best_blocks({"without": lambda: (lambda: plain(**inputs)), "with": lambda: (lambda: blocked(**inputs))},
                    rounds=6)
    return [name, convs, t["without"] * 1e3, t["with"] * 1e3, t["without"] / t["with"]]


def main(argv=None) -> int:
    names = list(argv or []) or [*LIGHT_MODELS, "mobilenet_v2"]
    print(describe_machine())
    rows = [compare(n) for n in names]
    rows.append(["geomean", "", "", "", math.exp(sum(math.log(r[4]) for r in rows) / len(rows))])
    print_table("nchwc layout: default pipeline with and without it (2 threads)",
                ["model", "blocked conv kernels", "without ms", "with ms", "speed"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
