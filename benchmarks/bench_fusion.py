"""Fused against unfused kernels on memory-bound workloads over a (4096, 1024)
float32 tensor, beside numpy and PyTorch eager, with 1 and 2 threads.

Each workload is built from primitive ops (softmax and layer norm arrive
decomposed), then compiled twice: with the fusion pass (one kernel) and
without it (one kernel per op). The roofline column is the time the bytes
that must move (inputs read once, output written once) take at the
machine's measured copy bandwidth; "of roofline" is roofline time / time.

    python benchmarks/bench_fusion.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    describe_machine,
    machine_limits,
    measure,
    numpy_threads,
    print_table,
    torch_module,
)

SHAPE = (4096, 1024)
FUSED = "decompose,simplify,fuse,lower,schedule,plan"
UNFUSED = "decompose,simplify,lower,schedule,plan"


def workloads(rng):
    d = SHAPE[1]
    gamma = rng.uniform(0.5, 1.5, d).astype(np.float32)
    beta = rng.standard_normal(d).astype(np.float32)
    bias = rng.standard_normal(d).astype(np.float32)

    def softmax(g, x):
        return g.softmax(x, axis=-1)

    def layer_norm(g, x):
        return g.layer_norm(x, g.constant(gamma), g.constant(beta), axis=-1)

    def bias_gelu(g, x):
        return g.gelu(x + g.constant(bias), approximate="tanh")

    def chain(g, x):
        return g.tanh(g.relu(x * 1.5 + 0.5))

    def np_softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def np_layer_norm(x):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta

    def np_bias_gelu(x):
        y = x + bias
        return 0.5 * y * (1 + np.tanh(0.7978845608 * (y + 0.044715 * y * y * y)))

    def np_chain(x):
        return np.tanh(np.maximum(x * 1.5 + 0.5, 0))

    torch = torch_module()
    tv = {}
    if torch is not None:
        tv = {"gamma": torch.from_numpy(gamma), "beta": torch.from_numpy(beta), "bias": torch.from_numpy(bias)}

    def t_softmax(x):
        return torch.softmax(x, dim=-1)

    def t_layer_norm(x):
        return torch.nn.functional.layer_norm(x, (d,), tv["gamma"], tv["beta"])

    def t_bias_gelu(x):
        return torch.nn.functional.gelu(x + tv["bias"], approximate="tanh")

    def t_chain(x):
        return torch.tanh(torch.relu(x * 1.5 + 0.5))

    n = SHAPE[0] * SHAPE[1] * 4
    return [
        ("softmax", softmax, np_softmax, t_softmax, 2 * n),
        ("layer_norm", layer_norm, np_layer_norm, t_layer_norm, 2 * n + 8 * d),
        ("bias+gelu", bias_gelu, np_bias_gelu, t_bias_gelu, 2 * n + 4 * d),
        ("4-op chain", chain, np_chain, t_chain, 2 * n),
    ]


def main() -> int:
    print(describe_machine())
    bw = machine_limits()["copy_gbs"] * 1e9
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    torch = torch_module()
    xt = torch.from_numpy(x) if torch is not None else None
    rows = []
    for name, build, np_fn, t_fn, nbytes in workloads(rng):
        g = mc.GraphBuilder(name.replace("+", "_").replace(" ", "_").replace("-", "_"))
        inp = g.input("x", SHAPE)
        g.output(build(g, inp))
        graph = g.build()
        fused = mc.compile(graph, pipeline=FUSED)
        unfused = mc.compile(graph, pipeline=UNFUSED)
        want = mc.run_reference(graph, x)[0]
        for m in (fused, unfused):
            np.testing.assert_allclose(m(x)[0], want, rtol=2e-3, atol=2e-4)
        roof = nbytes / bw
        for th in (1, 2):
            fused.set_num_threads(th)
            unfused.set_num_threads(th)
            t_f = measure(lambda: fused(x))
            t_u = measure(lambda: unfused(x))
            with numpy_threads(th):
                t_np = measure(lambda: np_fn(x))
            t_t = float("nan")
            if torch is not None:
                torch.set_num_threads(th)
                t_t = measure(lambda: t_fn(xt))
            rows.append([name, th, f"{len(fused.kernels)}/{len(unfused.kernels)}", t_f * 1e3, t_u * 1e3,
                         t_np * 1e3, t_t * 1e3, t_u / t_f, t_t / t_f, nbytes / t_f / 1e9, roof * 1e3,
                         f"{roof / t_f:.0%}"])
    print_table(f"fusion on {SHAPE[0]}x{SHAPE[1]} float32 (ms; kernels fused/unfused; "
                "speedups are other / fused)",
                ["workload", "thr", "kernels", "fused", "unfused", "numpy", "torch", "vs unfused", "vs torch",
                 "GB/s", "roofline", "of roofline"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
