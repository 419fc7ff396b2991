"""ONNX ops of sequence models (opset 26), spelled out as minicomp ops:
RotaryEmbedding, CausalConvWithState and LinearAttention.

Each follows the onnx package's reference implementation: the step-by-step
recurrence of LinearAttention is unrolled over the (static) sequence, which
suits the short prompts and single decode steps it is used for; longer
sequences are refused with the limit.
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import UnsupportedError
from minicomp.frontends.compose import repeat_heads, split_heads
from minicomp.frontends.onnx import register_onnx_importer

# LinearAttention unrolls its recurrence: one group of ops per position.
MAX_UNROLLED_STEPS = 256


def _cut(ctx, t, axis: int, start: int, stop: int, step: int = 1):
    return ctx.op("slice", t, starts=[start], ends=[stop], axes=[axis], steps=[step])


@register_onnx_importer("RotaryEmbedding")
def _rotary_embedding(ctx, node):
    x, cos, sin, positions = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    original = x.shape
    if x.ndim == 4:  # (batch, heads, seq, size) -> (batch, seq, heads, size)
        x = ctx.op("transpose", x, perm=(0, 2, 1, 3))
    elif x.ndim == 3:
        heads = int(ctx.attr("num_heads", 0))
        if heads <= 0 or x.shape[2] % heads:
            raise UnsupportedError(f"3-D RotaryEmbedding input {list(x.shape)} needs num_heads dividing its last axis")
        x = ctx.op("reshape", x, shape=(x.shape[0], x.shape[1], heads, x.shape[2] // heads))
    else:
        raise UnsupportedError(f"RotaryEmbedding input must be 3-D or 4-D, got rank {x.ndim}")
    size = x.shape[3]
    dim = int(ctx.attr("rotary_embedding_dim", 0)) or size
    half = dim // 2
    if positions is not None:
        cos, sin = ctx.op("take", cos, positions, axis=0), ctx.op("take", sin, positions, axis=0)
    if cos.shape[-1] != half or sin.shape[-1] != half:
        raise UnsupportedError(f"the cos/sin caches' last axis ({cos.shape[-1]}) must be rotary_embedding_dim/2 "
                               f"({half})")
    cos, sin = ctx.op("unsqueeze", cos, axes=[cos.ndim - 1]), ctx.op("unsqueeze", sin, axes=[sin.ndim - 1])
    rotate = _cut(ctx, x, 3, 0, dim)
    interleaved = bool(ctx.attr("interleaved", 0))
    if interleaved:
        x1, x2 = _cut(ctx, rotate, 3, 0, dim, 2), _cut(ctx, rotate, 3, 1, dim, 2)
    else:
        x1, x2 = _cut(ctx, rotate, 3, 0, half), _cut(ctx, rotate, 3, half, dim)
    real = ctx.op("sub", ctx.op("mul", cos, x1), ctx.op("mul", sin, x2))
    imag = ctx.op("add", ctx.op("mul", sin, x1), ctx.op("mul", cos, x2))
    if interleaved:  # real and imaginary parts alternate again
        pairs = ctx.op("concat", ctx.op("unsqueeze", real, axes=[4]), ctx.op("unsqueeze", imag, axes=[4]), axis=4)
        rotated = ctx.op("reshape", pairs, shape=rotate.shape)
    else:
        rotated = ctx.op("concat", real, imag, axis=3)
    y = rotated if dim == size else ctx.op("concat", rotated, _cut(ctx, x, 3, dim, size), axis=3)
    if len(original) == 3:
        return [ctx.op("reshape", y, shape=original)]
    return [ctx.op("transpose", y, perm=(0, 2, 1, 3))]


@register_onnx_importer("CausalConvWithState")
def _causal_conv_with_state(ctx, node):
    x, w, bias, past = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    if x.ndim != 3 or w.ndim != 3:
        raise UnsupportedError(f"CausalConvWithState takes (batch, channels, length) and (channels, 1, k) "
                               f"tensors, got {list(x.shape)} and {list(w.shape)}")
    activation = ctx.attr("activation", "none") or "none"
    if activation not in ("none", "silu", "swish"):
        raise UnsupportedError(f"CausalConvWithState activation {activation!r} is not supported (none, silu, swish)")
    b, c, _ = x.shape
    k = w.shape[2]
    if k > 1:
        past = past if past is not None else ctx.const(np.zeros((b, c, k - 1), x.dtype.numpy))
        padded = ctx.op("concat", past, x, axis=2)
    else:
        padded = x
    args = [padded, w] + ([bias] if bias is not None else [])
    y = ctx.op("conv1d", *args, groups=c)
    if activation != "none":
        y = ctx.op("silu", y)
    present = None
    if len(node.outputs) > 1 and node.outputs[1]:
        if k == 1:
            raise UnsupportedError("CausalConvWithState with a kernel of 1 has an empty state, which minicomp "
                                   "cannot return")
        n = padded.shape[2]
        present = _cut(ctx, padded, 2, n - (k - 1), n)
    return [y, present]


@register_onnx_importer("LinearAttention")
def _linear_attention(ctx, node):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    past, decay, beta = ctx.input(3), ctx.input(4), ctx.input(5)
    rule = ctx.attr("update_rule", "gated_delta") or "gated_delta"
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise UnsupportedError(f"LinearAttention update_rule {rule!r} is not supported")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gating != (decay is not None) or delta != (beta is not None):
        raise UnsupportedError(f"update_rule {rule!r} needs decay {'given' if gating else 'absent'} and beta "
                               f"{'given' if delta else 'absent'}")
    qh, kvh = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if qh is None or kvh is None or int(qh) % int(kvh):
        raise UnsupportedError("LinearAttention needs q_num_heads, a multiple of kv_num_heads")
    qh, kvh = int(qh), int(kvh)
    b, t, _ = q.shape
    if t > MAX_UNROLLED_STEPS:
        raise UnsupportedError(f"LinearAttention over {t} positions: minicomp unrolls the recurrence, up to "
                               f"{MAX_UNROLLED_STEPS}")
    out_dtype = q.dtype.name
    f32 = "float32"

    def as_f32(t_):
        return t_ if t_.dtype.name == f32 else ctx.op("cast", t_, dtype=f32)

    q4, k4, v4 = (as_f32(split_heads(ctx, t_, h)) for t_, h in ((q, qh), (k, kvh), (v, kvh)))
    dk, dv = q4.shape[3], v4.shape[3]
    group = qh // kvh
    if gating:
        last = decay.shape[-1]
        if last == kvh:
            decay4 = ctx.op("transpose", ctx.op("reshape", decay, shape=(b, t, kvh, 1)), perm=(0, 2, 1, 3))
        elif last == kvh * dk:
            decay4 = split_heads(ctx, decay, kvh)
        else:
            raise UnsupportedError(f"decay's last axis ({last}) must be kv_num_heads or kv_num_heads * head size")
        gates = ctx.op("exp", as_f32(decay4))  # (b, kvh, t, 1 or dk)
    if delta:
        betas = ctx.op("transpose", ctx.op("reshape", as_f32(beta), shape=(b, t, beta.shape[-1], 1)),
                       perm=(0, 2, 1, 3))  # (b, kvh or 1, t, 1)
    state_dtype = past.dtype.name if past is not None else out_dtype
    state = as_f32(past) if past is not None else ctx.const(np.zeros((b, kvh, dk, dv), np.float32))
    scale = ctx.attr("scale")
    scale = 1.0 / np.sqrt(dk) if not scale else float(scale)
    scale_c = ctx.const(np.array(scale, np.float32))

    def at(t_, i):  # position i of a (b, h, t, d) tensor as (b, h, d)
        return ctx.op("squeeze", _cut(ctx, t_, 2, i, i + 1), axes=[2])

    outs = []
    for i in range(t):
        q_t, k_t, v_t = at(q4, i), at(k4, i), at(v4, i)
        if gating:
            state = ctx.op("mul", state, ctx.op("unsqueeze", at(gates, i), axes=[3]))
        if delta:  # v_t <- beta_t (v_t - S^T k_t)
            retrieved = ctx.op("squeeze", ctx.op("matmul", ctx.op("unsqueeze", k_t, axes=[2]), state), axes=[2])
            v_t = ctx.op("mul", at(betas, i), ctx.op("sub", v_t, retrieved))
        state = ctx.op("add", state, ctx.op("mul", ctx.op("unsqueeze", k_t, axes=[3]),
                                            ctx.op("unsqueeze", v_t, axes=[2])))
        read = repeat_heads(ctx, state, group) if group > 1 else state  # a KV head's state serves `group` heads
        o_t = ctx.op("matmul", ctx.op("unsqueeze", q_t, axes=[2]), read)  # (b, qh, 1, dv)
        outs.append(ctx.op("mul", o_t, scale_c))
    y = outs[0] if len(outs) == 1 else ctx.op("concat", *outs, axis=2)  # (b, qh, t, dv)
    y = ctx.op("reshape", ctx.op("transpose", y, perm=(0, 2, 1, 3)), shape=(b, t, qh * dv))
    if out_dtype != f32:
        y = ctx.op("cast", y, dtype=out_dtype)
    if state_dtype != f32:
        state = ctx.op("cast", state, dtype=state_dtype)
    return [y, state]
