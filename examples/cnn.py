"""A small CNN built with the builder: conv-bn-relu blocks, pooling, a
classifier head with softmax. Compiled for the CPU and checked against the
reference interpreter.

    python examples/cnn.py [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minicomp as mc


def build_cnn(batch: int = 8, seed: int = 0) -> mc.Graph:
    rng = np.random.default_rng(seed)
    g = mc.GraphBuilder("cnn")
    x = g.input("image", (batch, 3, 32, 32))

    def conv_bn_relu(t, c_in, c_out, name):
        w = g.constant((rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32),
                       name=f"{name}_w")
        t = g.conv2d(t, w, padding=1, name=name)
        bn = [g.constant(a.astype(np.float32), name=f"{name}_bn{k}") for k, a in enumerate(
            (rng.uniform(0.5, 1.5, c_out), rng.standard_normal(c_out) * 0.1,
             rng.standard_normal(c_out) * 0.1, rng.uniform(0.5, 1.5, c_out)))]
        return g.relu(g.batch_norm(t, *bn, name=f"{name}_bn"))

    h = conv_bn_relu(x, 3, 16, "conv1")
    h = g.max_pool2d(h, kernel=2)
    h = conv_bn_relu(h, 16, 32, "conv2")
    h = g.max_pool2d(h, kernel=2)
    h = conv_bn_relu(h, 32, 64, "conv3")
    h = g.global_avg_pool(h).reshape(batch, 64)
    w = g.constant((rng.standard_normal((64, 10)) / 8).astype(np.float32), name="fc_w")
    b = g.constant(np.zeros(10, np.float32), name="fc_b")
    g.output(g.softmax(h @ w + b, axis=-1))
    return g.build()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    graph = build_cnn(args.batch)
    print(graph)
    model = mc.compile(graph)
    print(model.stages["fusion"])
    x = np.random.default_rng(1).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    model(x)
    t0 = time.perf_counter()
    (probs,) = model(x)
    elapsed = time.perf_counter() - t0
    (want,) = mc.run_reference(graph, x)
    print(f"predictions: {probs.argmax(axis=1).tolist()}; one call {elapsed * 1e3:.2f} ms")
    print(f"max |diff| vs reference: {np.abs(probs - want).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
