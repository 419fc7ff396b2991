"""A 1-layer transformer encoder block: layer norm, multi-head self-attention
with softmax, a GELU MLP and residual connections.

    python examples/transformer_block.py [--target llvm|reference]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minicomp as mc

DIMS = dict(batch=2, seq=32, d_model=64, heads=4, d_ff=256)


def make_params(d_model: int, d_ff: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights for the block (scaled by fan-in)."""
    rng = np.random.default_rng(seed)

    def w(n_in, n_out):
        return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)

    def v(n, scale=0.1, offset=0.0):
        return (offset + scale * rng.standard_normal(n)).astype(np.float32)

    return {
        "ln1_g": v(d_model, offset=1.0), "ln1_b": v(d_model),
        "wq": w(d_model, d_model), "bq": v(d_model), "wk": w(d_model, d_model), "bk": v(d_model),
        "wv": w(d_model, d_model), "bv": v(d_model), "wo": w(d_model, d_model), "bo": v(d_model),
        "ln2_g": v(d_model, offset=1.0), "ln2_b": v(d_model),
        "w1": w(d_model, d_ff), "b1": v(d_ff), "w2": w(d_ff, d_model), "b2": v(d_model),
    }


def build_transformer_block(batch=2, seq=32, d_model=64, heads=4, d_ff=256, seed=0) -> mc.Graph:
    """The encoder block as a graph; weights from :func:`make_params`."""
    p = make_params(d_model, d_ff, seed)
    g = mc.GraphBuilder("transformer_block")
    c = {k: g.constant(v, name=k) for k, v in p.items()}
    x = g.input("x", (batch, seq, d_model))
    dh = d_model // heads

    def split_heads(t):
        return t.reshape(batch, seq, heads, dh).transpose(0, 2, 1, 3)

    h = g.layer_norm(x, c["ln1_g"], c["ln1_b"], axis=-1, name="ln1")
    q = split_heads(h @ c["wq"] + c["bq"])
    k = split_heads(h @ c["wk"] + c["bk"])
    v = split_heads(h @ c["wv"] + c["bv"])
    scores = (q @ k.transpose(0, 1, 3, 2)) * float(1.0 / np.sqrt(dh))
    attn = g.softmax(scores, axis=-1, name="attn_softmax") @ v
    attn = attn.transpose(0, 2, 1, 3).reshape(batch, seq, d_model)
    x1 = x + (attn @ c["wo"] + c["bo"])
    h2 = g.layer_norm(x1, c["ln2_g"], c["ln2_b"], axis=-1, name="ln2")
    ff = g.gelu(h2 @ c["w1"] + c["b1"], approximate="none") @ c["w2"] + c["b2"]
    g.output(x1 + ff)
    return g.build()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="llvm", help="llvm (native code) or reference (numpy)")
    args = parser.parse_args(argv)

    graph = build_transformer_block(**DIMS)
    print(graph)
    x = np.random.default_rng(1).standard_normal((DIMS["batch"], DIMS["seq"], DIMS["d_model"])).astype(np.float32)
    expected = mc.run_reference(graph, x)[0]
    model = mc.compile(graph, target=args.target)
    t0 = time.perf_counter()
    (out,) = model(x)
    elapsed = time.perf_counter() - t0
    print(f"target {args.target}: output {out.dtype}{list(out.shape)}, out[0, 0, :4] = {np.round(out[0, 0, :4], 4)}")
    print(f"max |diff| vs reference: {np.abs(out - expected).max():.2e}; one call took {elapsed * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
