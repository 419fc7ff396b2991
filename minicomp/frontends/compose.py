"""Compositions of graph ops that more than one frontend imports with.

Each takes the frontend's context (the ONNX ``ImportContext`` or the
PyTorch ``TorchContext``: both record ops with ``ctx.op`` and constants
with ``ctx.const``) and returns builder tensors.
"""

from __future__ import annotations

import math

import numpy as np


def moments(ctx, x, axes: list[int]):
    """Mean over ``axes`` (kept as size-1 axes), ``x`` minus it, and the (biased) variance."""
    mean = ctx.op("mean", x, axes=axes, keepdims=True)
    centred = ctx.op("sub", x, mean)
    return mean, centred, ctx.op("mean", ctx.op("mul", centred, centred), axes=axes, keepdims=True)


def group_norm(ctx, x, groups: int, eps: float, weight=None, bias=None):
    """Normalize each of ``groups`` groups of channels of (N, C, ...) ``x`` over
    its channels and positions, then scale and shift per channel."""
    n, c = x.shape[0], x.shape[1]
    grouped = ctx.op("reshape", x, shape=(n, groups, math.prod(x.shape[1:]) // groups))
    y = ctx.op("reshape", ctx.op("layer_norm", grouped, axis=2, epsilon=eps), shape=x.shape)
    per_channel = (c,) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = ctx.op("mul", y, ctx.op("reshape", weight, shape=per_channel))
    if bias is not None:
        y = ctx.op("add", y, ctx.op("reshape", bias, shape=per_channel))
    return y, grouped


def split_heads(ctx, t, heads: int):
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    from minicomp.errors import UnsupportedError

    b, s, hidden = t.shape
    if heads <= 0 or hidden % heads:
        raise UnsupportedError(f"hidden size {hidden} does not split into {heads} heads")
    return ctx.op("transpose", ctx.op("reshape", t, shape=(b, s, heads, hidden // heads)), perm=(0, 2, 1, 3))


def repeat_heads(ctx, t, rep: int):
    """(..., heads, seq, size) -> (..., heads * rep, seq, size), each head repeated in place
    (h0, h0, h1, h1, ...): the key/value heads of grouped-query attention."""
    shape = t.shape
    y = ctx.op("unsqueeze", t, axes=[t.ndim - 2])
    y = ctx.op("broadcast_to", y, shape=shape[:-2] + (rep,) + shape[-2:])
    return ctx.op("reshape", y, shape=shape[:-3] + (shape[-3] * rep,) + shape[-2:])


def attend(ctx, q, k, v, scale: float, bias=None):
    """``softmax(q k^T * scale + bias) v`` over the last two axes."""
    perm = tuple(range(k.ndim - 2)) + (k.ndim - 1, k.ndim - 2)
    q = ctx.op("mul", q, ctx.const(np.array(scale, q.dtype.numpy)))
    scores = ctx.op("matmul", q, ctx.op("transpose", k, perm=perm))
    if bias is not None:
        scores = ctx.op("add", scores, bias)
    return ctx.op("matmul", ctx.op("softmax", scores, axis=-1), v)
