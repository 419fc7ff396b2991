"""Symbolic sizes: one compile for a range of sizes beside a static compile for each size.

For each model, one compile with a symbolic dimension (``mc.Dim``) is timed
at several sizes in its range, each beside a compile for that one size
(blocks of calls, one side after the other: ``harness.best_blocks``). The
table gives the times, the ratio symbolic / static (1.0: the same speed), its
geomean and worst over the sizes, and the compile times (cold: no cache).

    python benchmarks/run.py dynamic
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import best_blocks, describe_machine, print_table  # noqa: E402

THREADS = 2


def mlp(batch) -> mc.Graph:
    """784-256-10 with relu and softmax (the README's MLP)."""
    rng = np.random.default_rng(1)
    g = mc.GraphBuilder("mlp")
    x = g.input("x", (batch, 784))
    h = g.relu(x @ g.constant(rng.standard_normal((784, 256)).astype(np.float32) / 28)
               + g.constant(rng.standard_normal(256).astype(np.float32)))
    g.output(g.softmax(h @ g.constant(rng.standard_normal((256, 10)).astype(np.float32) / 16), axis=-1))
    return g.build()


def resnet50(batch) -> mc.Graph:
    """torchvision's ResNet-50 (random weights), its batch symbolic or fixed."""
    import torch

    from benchmarks import zoo

    model, (image,) = zoo.torchvision_case("resnet50")
    if isinstance(batch, mc.Dim):
        spec = {"x": {0: torch.export.Dim("batch", min=batch.min, max=batch.max)}}
        return mc.from_torch(model, (image.expand(2, -1, -1, -1).contiguous(),), dynamic_shapes=spec)
    return mc.from_torch(model, (image.expand(batch, -1, -1, -1).contiguous(),))


def bert_base_layer(seq) -> mc.Graph:
    """One BERT-base encoder layer (768 wide, 12 heads, 3072 in the FFN) from transformers, with its
    attention mask as an input, its sequence length symbolic or fixed."""
    import torch

    from benchmarks import zoo

    tf = zoo.import_transformers()
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=3072,
                           vocab_size=1000, max_position_embeddings=512, attn_implementation="sdpa")
    model = tf.BertModel(config).eval()
    n = 16 if isinstance(seq, mc.Dim) else seq
    ids, mask = torch.randint(0, 1000, (1, n)), torch.ones(1, n, dtype=torch.int64)
    spec = None
    if isinstance(seq, mc.Dim):
        dim = torch.export.Dim("seq", min=seq.min, max=seq.max)
        spec = {"input_ids": {1: dim}, "attention_mask": {1: dim}}
    return mc.from_torch(model, (ids,), example_kwargs={"attention_mask": mask}, dynamic_shapes=spec)


def _images(n):
    return [np.random.default_rng(n).standard_normal((n, 3, 224, 224)).astype(np.float32)]


def _tokens(n):
    rng = np.random.default_rng(n)
    return [rng.integers(0, 1000, (1, n)).astype(np.int64), np.ones((1, n), np.int64)]


# name -> (graph for a size or a Dim, the Dim, the sizes timed, the inputs at a size)
MODELS = {
    "mlp (batch 1..256)": (mlp, mc.Dim("batch", 1, 256), (1, 7, 33, 64, 200, 256),
                           lambda n: [np.random.default_rng(n).standard_normal((n, 784)).astype(np.float32)]),
    "resnet50 (batch 1..32)": (resnet50, mc.Dim("batch", 1, 32), (1, 2, 7, 16, 32), _images),
    "bert-base layer (seq 16..512)": (bert_base_layer, mc.Dim("seq", 16, 512), (16, 33, 128, 200, 512), _tokens),
}


def _compile(graph):
    t0 = time.perf_counter()
    model = mc.compile(graph, cache=False, num_threads=THREADS)
    return model, time.perf_counter() - t0


def main(names=None):
    print(describe_machine())
    # The process's first compile also starts the LLVM helper and imports what compiling needs:
    # pay that here, so that neither side's compile time counts it.
    _compile(mlp(1))
    rows = []
    for name, (build, dim, sizes, inputs) in MODELS.items():
        if names and not any(n in name for n in names):
            continue
        symbolic, t_symbolic = _compile(build(dim))
        ratios, static_compiles = [], []
        for n in sizes:
            args = inputs(n)
            static, t_static = _compile(build(n))
            static_compiles.append(t_static)
            for got, want in zip(symbolic(*args), static(*args)):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            best = best_blocks({"symbolic": lambda: (lambda: symbolic(*args)),
                                "static": lambda: (lambda: static(*args))})
            ratios.append(best["symbolic"] / best["static"])
            rows.append([f"{name} at {n}", best["symbolic"] * 1e3, best["static"] * 1e3, ratios[-1], "", ""])
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        rows.append([f"{name}: geomean / worst", "", "", f"{geomean:.3f} / {max(ratios):.3f}",
                     f"{t_symbolic:.2f} s", f"{t_symbolic / (sum(static_compiles) / len(static_compiles)):.1f}x"])
    print_table(f"symbolic sizes, {THREADS} threads: ms per call (best block), symbolic / static",
                ["model", "symbolic ms", "static ms", "ratio", "compile", "vs static compile"], rows)


if __name__ == "__main__":
    main()
