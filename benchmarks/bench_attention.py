"""Attention as one pass (a derived reduction chain) beside minicomp unfused and torch's fused SDPA.

``softmax(q k^T / 8) v`` at 12 heads x 64, 2 threads, for S = 512, 2048 and 4096:
minicomp with the reduction chain fused (``passes/lower_chain.py``), minicomp
stage by stage (``fusion={"reduction_chains": False}``: the S x S scores in
memory) and ``torch.nn.functional.scaled_dot_product_attention``, timed in
blocks (``harness.best_blocks``), with each minicomp model's arena. Then a
sweep over the chain's tiles (rows a block, elements a step) at S = 2048: the
rule's choice beside the fastest.

    python benchmarks/run.py attention
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import best_blocks, describe_machine, print_table  # noqa: E402

THREADS, HEADS, DIM = 2, 12, 64
SIZES = (512, 2048, 4096)
SWEEP_AT = 2048
SWEEP = [(rows, step) for rows in (4, 8) for step in (64, 128, 256, 512, 1024)]


def attention(S: int) -> mc.Graph:
    g = mc.GraphBuilder("attention")
    q, k, v = (g.input(n, (1, HEADS, S, DIM)) for n in "qkv")
    scores = (q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(DIM ** -0.5))
    g.output(g.softmax(scores, axis=-1) @ v)
    return g.build()


def _inputs(S):
    rng = np.random.default_rng(S)
    return [rng.standard_normal((1, HEADS, S, DIM)).astype(np.float32) for _ in range(3)]


def _time(model, args):
    return best_blocks({"m": lambda: (lambda: model(*args))})["m"]


def main():
    try:
        import torch
    except ImportError:
        print("torch is not installed (pip install -e '.[bench]'): skipping the attention benchmark")
        return
    print(describe_machine())
    torch.set_num_threads(THREADS)
    rows = []
    for S in SIZES:
        graph, args = attention(S), _inputs(S)
        fused = mc.compile(graph, cache=False, num_threads=THREADS)
        plain = mc.compile(graph, cache=False, num_threads=THREADS, fusion={"reduction_chains": False})
        np.testing.assert_allclose(fused(*args)[0], plain(*args)[0], rtol=1e-4, atol=1e-5)
        tq, tk, tv = (torch.from_numpy(a) for a in args)
        best = best_blocks({"fused": lambda: (lambda: fused(*args)), "plain": lambda: (lambda: plain(*args)),
                            "sdpa": lambda: (lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv))})
        rows.append([f"S = {S}", best["fused"] * 1e3, best["plain"] * 1e3, best["sdpa"] * 1e3,
                     best["fused"] / best["sdpa"], best["plain"] / best["fused"],
                     fused.memory_plan.arena_bytes / 2**20, plain.memory_plan.arena_bytes / 2**20])
    print_table(f"attention, {HEADS} heads x {DIM}, {THREADS} threads: ms per call (best block)",
                ["size", "one pass", "unfused", "torch sdpa", "one pass / sdpa", "unfused / one pass",
                 "arena MiB (one pass)", "arena MiB (unfused)"], rows)

    graph, args = attention(SWEEP_AT), _inputs(SWEEP_AT)
    times = {}
    for tiles in SWEEP + [None]:
        model = mc.compile(graph, cache=False, num_threads=THREADS, fusion={"chain_tiles": tiles})
        times[tiles] = _time(model, args)
        if tiles is None:
            chosen = next(n for n in model.kernels[-1].notes if "rows x" in n)
    best = min(times[t] for t in SWEEP)
    sweep_rows = [[f"{r} rows x {s} elements", times[(r, s)] * 1e3, times[(r, s)] / best] for r, s in SWEEP]
    sweep_rows.append([f"the rule ({chosen.split(' in one pass, ')[1].split(' a step')[0]})",
                       times[None] * 1e3, times[None] / best])
    print_table(f"the chain's tiles at S = {SWEEP_AT}: ms per call, and / the fastest of the sweep",
                ["tiles", "ms", "/ fastest"], sweep_rows)


if __name__ == "__main__":
    main()
