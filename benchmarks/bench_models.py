"""The MLP (batch 64, 784-512-512-10) and the transformer block, compiled by
minicomp, beside the same models in numpy and on the reference interpreter,
with 1 and 2 threads. Prints one table; times in milliseconds.

    python benchmarks/bench_models.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mlp import build_mlp  # noqa: E402
from transformer_block import DIMS, build_transformer_block, make_params  # noqa: E402

import minicomp as mc  # noqa: E402
from benchmarks.harness import describe_machine, measure, numpy_threads, print_table  # noqa: E402


def numpy_mlp(graph):
    ws = [graph.constants[v] for v in graph.constants]
    w0, b0, w1, b1, w2, b2 = ws

    def run(x):
        h = np.maximum(x @ w0 + b0, 0)
        h = np.maximum(h @ w1 + b1, 0)
        return h @ w2 + b2

    return run


def numpy_transformer(batch, seq, d_model, heads, d_ff):
    p = make_params(d_model, d_ff)
    dh = d_model // heads

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    def gelu(x):
        # numpy has no erf; use the tanh form (same cost class)
        return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))

    def split(t):
        return t.reshape(batch, seq, heads, dh).transpose(0, 2, 1, 3)

    def run(x):
        h = ln(x, p["ln1_g"], p["ln1_b"])
        q, k, v = (split(h @ p[w] + p[b]) for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x1 = x + a.transpose(0, 2, 1, 3).reshape(batch, seq, d_model) @ p["wo"] + p["bo"]
        h2 = ln(x1, p["ln2_g"], p["ln2_b"])
        return x1 + gelu(h2 @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return run


def flops_mlp(batch=64, sizes=(784, 512, 512, 10)):
    return sum(2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_transformer(batch, seq, d_model, heads, d_ff):
    proj = 4 * 2 * batch * seq * d_model * d_model
    attn = 2 * 2 * batch * seq * seq * d_model
    ffn = 2 * 2 * batch * seq * d_model * d_ff
    return proj + attn + ffn


def main() -> int:
    print(describe_machine())
    rng = np.random.default_rng(0)
    cases = []
    g = build_mlp(64)
    cases.append(("mlp 64x784-512-512-10", g, [rng.standard_normal((64, 784)).astype(np.float32)],
                  numpy_mlp(g), flops_mlp()))
    g = build_transformer_block(**DIMS)
    x = rng.standard_normal((DIMS["batch"], DIMS["seq"], DIMS["d_model"])).astype(np.float32)
    cases.append((f"transformer b{DIMS['batch']} s{DIMS['seq']} d{DIMS['d_model']}", g, [x],
                  numpy_transformer(**DIMS), flops_transformer(**DIMS)))
    rows = []
    for name, graph, inputs, np_fn, flops in cases:
        model = mc.compile(graph)
        ref = mc.compile(graph, target="reference")
        t_ref = measure(lambda: ref(*inputs), min_runs=3)
        for th in (1, 2):
            model.set_num_threads(th)
            t_mc = measure(lambda: model(*inputs))
            with numpy_threads(th):
                t_np = measure(lambda: np_fn(*inputs))
            rows.append([name, th, t_mc * 1e3, t_np * 1e3, t_ref * 1e3, t_np / t_mc, flops / t_mc / 1e9,
                         len(model.kernels)])
    print_table("models (ms; speedup = numpy time / minicomp time)",
                ["model", "threads", "minicomp", "numpy", "reference", "speedup", "GFLOP/s", "kernels"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
