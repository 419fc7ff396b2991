"""A 3-layer MLP (784-512-512-10) built with the builder, compiled and run.

    python examples/mlp.py [--target llvm|reference] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minicomp as mc


def build_mlp(batch: int = 64, sizes=(784, 512, 512, 10), seed: int = 0) -> mc.Graph:
    """The MLP graph with seeded random weights (scaled by fan-in)."""
    rng = np.random.default_rng(seed)
    g = mc.GraphBuilder("mlp")
    h = g.input("x", (batch, sizes[0]), "float32")
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = g.constant((rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32), name=f"w{k}")
        b = g.constant(rng.standard_normal(n_out).astype(np.float32) * 0.1, name=f"b{k}")
        h = h @ w + b
        if k < len(sizes) - 2:
            h = g.relu(h)
    g.output(h)
    return g.build()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="llvm", help="llvm (native code) or reference (numpy)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    graph = build_mlp(args.batch)
    print(graph)
    x = np.random.default_rng(1).standard_normal((args.batch, 784)).astype(np.float32)
    expected = mc.run_reference(graph, x)[0]
    model = mc.compile(graph, target=args.target)
    t0 = time.perf_counter()
    (out,) = model(x)
    elapsed = time.perf_counter() - t0
    print(f"target {args.target}: output {out.dtype}{list(out.shape)}, first row {np.round(out[0, :4], 4)}")
    print(f"max |diff| vs reference: {np.abs(out - expected).max():.2e}; one call took {elapsed * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
