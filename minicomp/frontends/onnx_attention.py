"""ONNX Attention (opsets 23 to 26), spelled out as minicomp ops.

    Y = softmax(softcap(Q' K'^T) + bias) V      Q' = Q sqrt(scale), K' = K sqrt(scale)

- 3-D inputs ``(batch, seq, heads * size)`` are split into heads with
  ``q_num_heads``/``kv_num_heads`` and joined again at the end;
- ``past_key``/``past_value`` are prepended to K and V along the sequence
  (the ``present_*`` outputs); fewer KV heads than Q heads repeat each KV
  head in place (grouped-query attention);
- the additive bias combines ``attn_mask`` (boolean: True attends; float:
  added; padded with -inf up to the key length), the causal mask aligned
  bottom-right (a query at ``i`` sees keys ``j <= i + offset``, offset the
  past length, or ``nonpad_kv_seqlen - q_len`` per batch), the sliding window
  (``left_window_size``/``right_window_size``), and the padding of
  ``nonpad_kv_seqlen``; a query row whose bias masks every key gives zeros;
- ``qk_matmul_output_mode`` 0/1, 2, 3 return the scores (after softcap),
  the scores plus bias, or the probabilities; ``softmax_precision`` runs the
  softmax in another float type.
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import UnsupportedError
from minicomp.frontends.compose import repeat_heads, split_heads
from minicomp.frontends.onnx import register_onnx_importer

_SOFTMAX_TYPES = {1: "float32", 10: "float16", 11: "float64"}


def _additive(ctx, allowed, like):
    """A boolean mask as 0 where allowed and -inf elsewhere, in ``like``'s dtype."""
    dt = like.dtype.numpy
    return ctx.op("where", allowed, ctx.const(np.zeros((), dt)), ctx.const(np.array(-np.inf, dt)))


def _offset_mask(ctx, q_len: int, kv_len: int, offset, allow, like):
    """The bias of a mask that allows key ``j`` for query ``i`` where ``allow(ctx, diff)``, with
    ``diff = i + offset - j``; ``offset`` is an int, or a (batch,) tensor (then the bias is
    (batch, 1, q, kv)). A constant mask folds away when the graph is simplified."""
    base = ctx.const((np.arange(q_len).reshape(q_len, 1) - np.arange(kv_len).reshape(1, kv_len)).astype(np.int64))
    if isinstance(offset, int):
        return _additive(ctx, allow(ctx, ctx.op("add", base, ctx.const(np.array(offset, np.int64)))), like)
    per_batch = ctx.op("reshape", ctx.op("cast", offset, dtype="int64"), shape=(offset.shape[0], 1, 1))
    bias = _additive(ctx, allow(ctx, ctx.op("add", base, per_batch)), like)  # (batch, q, kv)
    return ctx.op("unsqueeze", bias, axes=[1])


def _causal(ctx, diff):
    return ctx.op("greater_equal", diff, ctx.const(np.array(0, np.int64)))


def _window(left: int, right: int):
    def allow(ctx, diff):
        ok = None
        if left >= 0:
            ok = ctx.op("less_equal", diff, ctx.const(np.array(left, np.int64)))
        if right >= 0:
            r = ctx.op("greater_equal", diff, ctx.const(np.array(-right, np.int64)))
            ok = r if ok is None else ctx.op("logical_and", ok, r)
        return ok

    return allow


def _add_bias(ctx, bias, extra):
    return extra if bias is None else ctx.op("add", bias, extra)


@register_onnx_importer("Attention")
def _attention(ctx, node):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    mask, past_k, past_v, nonpad = ctx.input(3), ctx.input(4), ctx.input(5), ctx.input(6)
    if (past_k is None) != (past_v is None):
        raise UnsupportedError("past_key and past_value must be given together")
    three_d = q.ndim == 3
    if three_d:
        qh, kvh = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if qh is None or kvh is None:
            raise UnsupportedError("3-D Attention inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = split_heads(ctx, q, int(qh)), split_heads(ctx, k, int(kvh)), split_heads(ctx, v, int(kvh))
    elif q.ndim != 4:
        raise UnsupportedError(f"Attention inputs must be 3-D or 4-D, got rank {q.ndim}")
    dt = q.dtype.numpy
    scale = ctx.attr("scale")
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else float(scale)
    root = ctx.const(np.array(np.sqrt(scale), dtype=dt))  # the reference scales Q and K by sqrt(scale) each

    if past_k is not None:
        k, v = ctx.op("concat", past_k, k, axis=2), ctx.op("concat", past_v, v, axis=2)
    present_k, present_v = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    past_len = past_k.shape[2] if past_k is not None else 0
    if nonpad is not None and past_k is None:
        offset = ctx.op("sub", nonpad, ctx.const(np.array(q_len, nonpad.dtype.numpy)))
    else:
        offset = past_len

    bias = None
    if mask is not None:
        if mask.dtype.name == "bool":
            mask = _additive(ctx, mask, q)
        if mask.shape[-1] < kv_len:
            pads = [0] * mask.ndim + [0] * (mask.ndim - 1) + [kv_len - mask.shape[-1]]
            mask = ctx.op("pad", mask, pads=tuple(pads), value=float("-inf"))
        bias = mask
    if ctx.attr("is_causal", 0):
        bias = _add_bias(ctx, bias, _offset_mask(ctx, q_len, kv_len, offset, _causal, q))
    left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
    if left >= 0 or right >= 0:
        bias = _add_bias(ctx, bias, _offset_mask(ctx, q_len, kv_len, offset, _window(left, right), q))
    if nonpad is not None:
        keys = ctx.const(np.arange(kv_len, dtype=np.int64).reshape(1, kv_len))
        seen = ctx.op("less", keys, ctx.op("reshape", ctx.op("cast", nonpad, dtype="int64"),
                                           shape=(nonpad.shape[0], 1)))
        pad_bias = ctx.op("reshape", _additive(ctx, seen, q), shape=(nonpad.shape[0], 1, 1, kv_len))
        bias = _add_bias(ctx, bias, pad_bias)

    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        if heads % kv_heads:
            raise UnsupportedError(f"{heads} query heads do not group over {kv_heads} key/value heads")
        k, v = repeat_heads(ctx, k, heads // kv_heads), repeat_heads(ctx, v, heads // kv_heads)

    scores = ctx.op("matmul", ctx.op("mul", q, root),
                    ctx.op("transpose", ctx.op("mul", k, root), perm=(0, 1, 3, 2)))
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap > 0:
        cap = ctx.const(np.array(softcap, dt))
        scores = ctx.op("mul", ctx.op("tanh", ctx.op("div", scores, cap)), cap)
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    qk_out = scores
    logits = scores if bias is None else ctx.op("add", scores, bias)
    if mode == 2:
        qk_out = logits
    precision = ctx.attr("softmax_precision")
    if precision is not None:
        if int(precision) not in _SOFTMAX_TYPES:
            raise UnsupportedError(f"softmax_precision {precision} is not supported (float, float16, double are)")
        logits = ctx.op("cast", logits, dtype=_SOFTMAX_TYPES[int(precision)])
    probs = ctx.op("softmax", logits, axis=-1)
    if bias is not None:  # a row whose bias masks every key attends to nothing: zeros, not NaN
        masked = ctx.op("equal", ctx.op("max", bias, axes=[bias.ndim - 1], keepdims=True),
                        ctx.const(np.array(-np.inf, bias.dtype.numpy)))
        probs = ctx.op("where", masked, ctx.const(np.zeros((), probs.dtype.numpy)), probs)
    if probs.dtype != q.dtype:
        probs = ctx.op("cast", probs, dtype=q.dtype.name)
    if mode == 3:
        qk_out = probs
    y = ctx.op("matmul", probs, v)
    if three_d:
        b, h, s, d = y.shape
        y = ctx.op("reshape", ctx.op("transpose", y, perm=(0, 2, 1, 3)), shape=(b, s, h * d))
    if len(node.outputs) > 3 and node.outputs[3] and qk_out.shape != (q.shape[0], heads, q_len, kv_len):
        qk_out = ctx.op("broadcast_to", qk_out, shape=(q.shape[0], heads, q_len, kv_len))
    return [y, present_k, present_v, qk_out]
