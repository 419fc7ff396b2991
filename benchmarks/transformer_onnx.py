"""The transformer block example (examples/transformer_block.py) as an ONNX
model with the same weights, so that minicomp and ONNX Runtime load the same
file: a BERT-base layer is ``transformer_onnx(1, 128, 768, 12, 3072)``."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

BERT_BASE = dict(batch=1, seq=128, d_model=768, heads=12, d_ff=3072)


def transformer_onnx(batch: int, seq: int, d_model: int, heads: int, d_ff: int, seed: int = 0):
    """An onnx ModelProto (opset 20) computing ``build_transformer_block``."""
    from onnx import TensorProto, helper, numpy_helper
    from transformer_block import make_params

    p = make_params(d_model, d_ff, seed)
    dh = d_model // heads
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    consts = {"heads_shape": np.array([batch, seq, heads, dh], np.int64),
              "model_shape": np.array([batch, seq, d_model], np.int64),
              "scale": np.array(1.0 / np.sqrt(dh), np.float32)}
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes = []

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def dense(x, w, b, out):
        return node("Add", [node("MatMul", [x, w], out + "_mm"), b], out)

    def heads_of(x, name):
        r = node("Reshape", [x, "heads_shape"], name + "_r")
        return node("Transpose", [r], name + "_t", perm=[0, 2, 1, 3])

    h = node("LayerNormalization", ["x", "ln1_g", "ln1_b"], "h", axis=-1, epsilon=1e-5)
    q, k, v = (heads_of(dense(h, f"w{n}", f"b{n}", n), n + "h") for n in "qkv")
    kt = node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    scores = node("Mul", [node("MatMul", [q, kt], "qk"), "scale"], "scores")
    attn = node("MatMul", [node("Softmax", [scores], "probs", axis=-1), v], "attn")
    merged = node("Reshape", [node("Transpose", [attn], "attn_t", perm=[0, 2, 1, 3]), "model_shape"], "merged")
    x1 = node("Add", ["x", dense(merged, "wo", "bo", "proj")], "x1")
    h2 = node("LayerNormalization", [x1, "ln2_g", "ln2_b"], "h2", axis=-1, epsilon=1e-5)
    ff = dense(node("Gelu", [dense(h2, "w1", "b1", "up")], "act"), "w2", "b2", "down")
    node("Add", [x1, ff], "y")
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, seq, d_model]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "transformer_block", [value[0]], [value[1]], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
