"""``quantize_weights``: linear layers' weights stored as int8 (``compile(quantize="int8-weight")``).

A matrix-vector product at batch 1 (a language model's decoding step)
streams each weight once and does two flops with it: its time is the
weights' bytes over the memory's bandwidth. Stored as int8 with one float32
scale per output column (symmetric, per channel, as llama.cpp's Q8_0 and
torch's int8 weight-only), a weight takes a quarter of the bytes:

    W[k, n] ~= q[k, n] * s[n],  s[n] = max_k |W[k, n]| / 127,  q = round(W / s)
    x @ W   ~= (x @ float(q)) * s

The pass rewrites each ``matmul`` by a float32 constant matrix of at least
:data:`MIN_ELEMENTS` elements into a ``cast`` of the int8 constant, the
product, and a ``mul`` by the scales. Fusion puts the cast inside the
product's loads (``widens_weights``), so the kernel reads one byte a weight
and widens it in registers; the scales are the product's epilogue. The
arithmetic stays float32: the inputs are not quantized (weight-only).

It runs after ``simplify`` (which would fold the cast of a constant back
into float32 weights). Activations, convolutions and embeddings are left
as they are.
"""

from __future__ import annotations

import numpy as np

from minicomp.ir.graph import Graph
from minicomp.passes.manager import register_pass
from minicomp.passes.rewrite import Rewriter

SCHEMES = ("int8-weight",)
MIN_ELEMENTS = 4096  # smaller matrices are not worth a rounding: their bytes are few


def int8_per_column(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, s): int8 ``q`` and float32 scales ``s`` per column with ``weights ~= q * s`` (a column of
    zeros gets the scale 1)."""
    w = weights.astype(np.float64)
    peak = np.abs(w).max(axis=0)
    scales = np.where(peak > 0, peak / 127.0, 1.0)
    q = np.clip(np.rint(w / scales), -127, 127).astype(np.int8)
    return q, scales.astype(np.float32)


def _quantizable(node, constants) -> bool:
    if node.op != "matmul" or node.inputs[1] not in constants:
        return False
    w = node.inputs[1]
    return w.dtype.name == "float32" and len(w.shape) == 2 and w.type.size >= MIN_ELEMENTS


@register_pass("quantize_weights")
def quantize_weights(graph: Graph) -> Graph:
    """Store every large float32 constant matrix a matmul multiplies by as int8 with per-column scales."""
    if not any(_quantizable(n, graph.constants) for n in graph.nodes):
        return graph
    rw = Rewriter(graph)
    for node in rw.nodes():
        if not _quantizable(node, rw.graph.constants):
            rw.keep(node)
            continue
        x, w = node.inputs
        q, scales = int8_per_column(rw.graph.constants[w])
        widened = rw.add("cast", [rw.constant(q, f"{w.name}_int8")], f"{node.name}_weights", dtype="float32")
        product = rw.add("matmul", [x, widened], f"{node.name}_int8")
        rw.release(node)
        rw.replace(node.output, rw.add("mul", [product, rw.constant(scales, f"{w.name}_scales")], node.name))
    return rw.finish()
