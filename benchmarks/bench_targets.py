"""The same scheduled loop IR through two code generators: the llvm target
(LLVM IR, optimized and JIT-compiled by llvmlite) beside the c target (C99
built by the system C compiler at -O3 -march=native), on the example models
and three ONNX models, with 1 and 2 threads; times in milliseconds.

It measures what a C-like renderer gives away against emitting LLVM IR
directly (docs/adding-a-backend.md): explicit vector code for ``simd``
loops, libgomp's work-stealing parallel loops and the vectorizable math
functions are the llvm target's own.

    python benchmarks/bench_targets.py [model ...]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import best_blocks, describe_machine, print_table  # noqa: E402

TARGETS = ("llvm", "c")


def models() -> dict:
    """name -> (graph, inputs by name)."""
    from cnn import build_cnn
    from mlp import build_mlp
    from transformer_block import build_transformer_block

    from benchmarks.bench_onnx import load

    rng = np.random.default_rng(0)
    out = {}
    for name, graph in (("mlp (batch 64)", build_mlp()), ("cnn (batch 8)", build_cnn()),
                        ("transformer block", build_transformer_block())):
        out[name] = graph, {v.name: rng.standard_normal(v.shape).astype(v.dtype.numpy) for v in graph.inputs}
    for name in ("resnet50", "squeezenet", "bert_layer"):
        proto, feeds = load(name)
        out[name] = mc.from_onnx(proto, shapes={k: v.shape for k, v in feeds.items()}), feeds
    return out


def main(argv=None) -> int:
    chosen = list(argv or [])
    print(describe_machine())
    rows = []
    for name, (graph, feeds) in models().items():
        if chosen and name.split(" ")[0] not in chosen:
            continue
        compiled = {t: mc.compile(graph, target=t) for t in TARGETS}
        want = compiled["llvm"](**feeds)[0]
        diff = float(np.abs(compiled["c"](**feeds)[0] - want).max() / max(np.abs(want).max(), 1e-30))
        for th in (1, 2):
            for m in compiled.values():
                m.set_num_threads(th)
            best = best_blocks({t: (lambda m=m: lambda: m(**feeds)) for t, m in compiled.items()})
            rows.append([name, th, best["llvm"] * 1e3, best["c"] * 1e3, best["c"] / best["llvm"], f"{diff:.1e}"])
    for th in (1, 2):
        ratios = [r[4] for r in rows if r[1] == th]
        rows.append(["geomean", th, "", "", float(np.exp(np.mean(np.log(ratios)))), ""])
    print_table("one loop IR, two code generators (ms; c / llvm = how much slower the C is)",
                ["model", "threads", "llvm", "c", "c / llvm", "max rel diff"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
