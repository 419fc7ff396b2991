"""Converters for PyTorch's fused fast-path layers.

Under ``torch.no_grad()`` in eval mode, ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` call one fused ATen op each instead of their
parts; TorchDynamo captures those calls as they are. They are spelled out
here as minicomp ops (linear layers, heads, softmax attention, layer norms),
which fusion then regroups.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import UnsupportedError
from minicomp.frontends.builder import Tensor
from minicomp.frontends.compose import attend, split_heads
from minicomp.frontends.pytorch import register_torch_op


def _linear(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` (torch's Linear); a constant weight is transposed at import."""
    known = ctx.builder.graph.constants.get(weight.value)
    w_t = ctx.const(np.ascontiguousarray(known.T)) if known is not None else ctx.op("transpose", weight, perm=(1, 0))
    y = ctx.op("matmul", x, w_t)
    return y if bias is None else ctx.op("add", y, bias)


def _rows(ctx, t: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a weight or bias (sliced at import when it is a constant)."""
    known = ctx.builder.graph.constants.get(t.value)
    if known is not None:
        return ctx.const(np.ascontiguousarray(known[start:stop]))
    return ctx.op("slice", t, starts=[start], ends=[stop], axes=[0])


def _attention(ctx, query, key, value, embed_dim: int, heads: int, qkv_w, qkv_b, proj_w, proj_b, mask) -> Tensor:
    """Multi-head attention of (batch, length, embed) tensors with packed q/k/v projections."""
    if mask is not None:
        raise UnsupportedError("the fused attention fast path with a mask is not supported")
    E, H = embed_dim, heads
    D = E // H
    q, k, v = (_linear(ctx, t, _rows(ctx, qkv_w, i * E, (i + 1) * E), _rows(ctx, qkv_b, i * E, (i + 1) * E))
               for i, t in enumerate((query, key, value)))

    out = attend(ctx, split_heads(ctx, q, H), split_heads(ctx, k, H), split_heads(ctx, v, H), 1.0 / math.sqrt(D))
    B, L = out.shape[0], out.shape[2]
    merged = ctx.op("reshape", ctx.op("transpose", out, perm=(0, 2, 1, 3)), shape=(B, L, E))
    return _linear(ctx, merged, proj_w, proj_b)


@register_torch_op("aten._native_multi_head_attention")
def _native_mha(ctx, a):
    if 1 in ctx.used_outputs():
        raise UnsupportedError("the attention weights output of the fused attention is not supported")
    y = _attention(ctx, a["query"], a["key"], a["value"], int(a["embed_dim"]), int(a["num_head"]),
                   a["qkv_weight"], a["qkv_bias"], a["proj_weight"], a["proj_bias"], a["mask"])
    return (y, None)


@register_torch_op("aten._transformer_encoder_layer_fwd")
def _encoder_layer(ctx, a):
    x = a["src"]
    eps = float(a["eps"])

    def norm(t, k):
        return ctx.op("layer_norm", t, a[f"norm_weight_{k}"], a[f"norm_bias_{k}"], axis=-1, epsilon=eps)

    def attention(t):
        return _attention(ctx, t, t, t, int(a["embed_dim"]), int(a["num_heads"]), a["qkv_weight"], a["qkv_bias"],
                          a["proj_weight"], a["proj_bias"], a["mask"])

    def feed_forward(t):
        h = _linear(ctx, t, a["ffn_weight_1"], a["ffn_bias_1"])
        h = ctx.op("gelu", h) if a["use_gelu"] else ctx.op("relu", h)
        return _linear(ctx, h, a["ffn_weight_2"], a["ffn_bias_2"])

    if a["norm_first"]:
        x = ctx.op("add", x, attention(norm(x, 1)))
        return ctx.op("add", x, feed_forward(norm(x, 2)))
    x = norm(ctx.op("add", x, attention(x)), 1)
    return norm(ctx.op("add", x, feed_forward(x)), 2)
