"""The channel-blocked layout NCHW[b]c and the ops that work in it.

A tensor (N, C, H, W) in layout NCHW[b]c is stored as (N, C/b, H, W, b): the
channels in blocks of ``b``, each block's channels innermost. Where ``b`` does
not divide C (MobileNetV3's 72 and 120 channels), the last block is padded:
(N, ceil(C/b), H, W, b), and the padding lanes hold no channel (zeros where
``to_nchwc`` or a convolution with zero weights wrote them). Every blocked op
computes them like real channels; ``from_nchwc`` drops them (its
``channels``). A convolution that writes this layout runs its output channels as vector lanes, with every
load and store contiguous; the plain layout must either run pixels as lanes
(idle lanes on small maps) or store one tile into 32 channel planes (4 KiB
apart on 64x64 maps, so all in one cache set). The ``nchwc`` pass
(``passes/nchwc.py``) moves whole convolution networks into this layout.

- ``to_nchwc`` / ``from_nchwc``: the conversions (real nodes in the graph);
- ``conv2d_nchwc``: 2-D convolution, dense, grouped or depthwise. Weights
  are re-laid once, as (CO/bo, CI/groups/bi, KH, KW, bi, bo); the input is
  blocked by ``bi``, or plain NCHW with ``bi = 1`` (the first convolution of
  a network, whose 3 input channels make no block). A grouped one has blocks
  that divide its groups' widths, so that each output block reads the input
  blocks of its own group (RegNet, ResNeXt); a depthwise one has ``bi = 1``
  and keeps its input's blocks. The bias is (CO/bo, bo);
- ``max_pool2d_nchwc``, ``avg_pool2d_nchwc``: the pools, with the plain ops'
  attributes;
- ``global_avg_pool_nchwc``: the mean over H and W, to (N, C/b, 1, 1, b).

Each op's numpy reference converts to the plain layout, runs the plain op's
reference and converts back, so the blocked ops are checked against the same
oracle as everything else.
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute, reduce, reduce_axis
from minicomp.ir.graph import TensorType
from minicomp.ir.opdefs.window import (
    _avg_pool_compute,
    _conv_infer,
    _max_pool_compute,
    _normalize_window,
    _pool_infer,
    conv_reference,
    padded_stage,
    pool_reference,
    window_out,
)
from minicomp.ir.ops import REQUIRED, OpDef, register_op

# -- numpy helpers (references, and the pass re-laying constants) --------------------


def padded_count(channels: int, block: int) -> int:
    """``channels`` rounded up to whole blocks of ``block``."""
    return -(-channels // block) * block


def _pad_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``x`` with zeros appended along ``axis`` up to ``size``."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths)


def block_array(x: np.ndarray, block: int) -> np.ndarray:
    """(N, C, ...) -> (N, ceil(C/block), ..., block), padding lanes zero."""
    x = _pad_axis(x, 1, padded_count(x.shape[1], block))
    n, c = x.shape[:2]
    y = x.reshape((n, c // block, block) + x.shape[2:])
    return np.ascontiguousarray(np.moveaxis(y, 2, -1))


def unblock_array(x: np.ndarray, channels: int | None = None) -> np.ndarray:
    """(N, C/b, ..., b) -> (N, C, ...); ``channels`` drops a padded last block's padding."""
    y = np.moveaxis(x, -1, 2)
    y = y.reshape((y.shape[0], y.shape[1] * y.shape[2]) + y.shape[3:])
    return np.ascontiguousarray(y if channels is None else y[:, :channels])


def block_weights(w: np.ndarray, bi: int, bo: int) -> np.ndarray:
    """Plain weights (CO, CI, KH, KW) -> (ceil(CO/bo), ceil(CI/bi), KH, KW, bi, bo), zero
    for the padding channels of either side (so padding lanes of the input add nothing,
    and padding lanes of the output are zero)."""
    w = _pad_axis(_pad_axis(w, 0, padded_count(w.shape[0], bo)), 1, padded_count(w.shape[1], bi))
    co, ci, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(co // bo, bo, ci // bi, bi, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def unblock_weights(w: np.ndarray) -> np.ndarray:
    """(CO/bo, CI/bi, KH, KW, bi, bo) -> plain (CO, CI, KH, KW)."""
    ob, ib, kh, kw, bi, bo = w.shape
    return np.ascontiguousarray(w.transpose(0, 5, 1, 4, 2, 3).reshape(ob * bo, ib * bi, kh, kw))


def plain_type(t: TensorType, channels: int | None = None) -> TensorType:
    """The plain (N, C, H, W) type of a blocked (N, C/b, H, W, b) one; ``channels``
    where its last block is padded."""
    c = t.shape[1] * t.shape[-1] if channels is None else channels
    return TensorType((t.shape[0], c) + t.shape[2:-1], t.dtype)


def blocked_type(t: TensorType, block: int) -> TensorType:
    """The blocked type of a plain (N, C, ...) one (the last block padded where ``block`` does not divide C)."""
    return TensorType((t.shape[0], padded_count(t.shape[1], block) // block) + t.shape[2:] + (block,), t.dtype)


def _check_blocked(x: TensorType, what: str):
    if x.rank != 5:
        raise ShapeError(f"{what} needs a blocked 5-D input (N, C/b, H, W, b), got rank {x.rank}")


# -- conversions -------------------------------------------------------------------------


def _to_infer(types, a):
    x, b = types[0], a["block"]
    if x.rank != 4:
        raise ShapeError(f"to_nchwc needs a 4-D input (N, C, H, W), got rank {x.rank}")
    if b < 1:
        raise ShapeError(f"to_nchwc needs a block of at least 1 channel, got {b}")
    return [blocked_type(x, b)]


def _to_compute(x, block):
    channels = x.shape[1]

    def fn(n, cb, h, w, lane):
        c = cb * block + lane
        if channels % block == 0:
            return x[n, c, h, w]
        # padding lanes are zero; their (clamped) load stays in bounds
        return ex.select(ex.lt(c, channels), x[n, ex.minimum(c, channels - 1), h, w], ex.const(0, x.dtype))

    return compute(blocked_type(TensorType(x.shape, x.dtype), block).shape, fn, "to_nchwc")


def _from_infer(types, a):
    x, channels = types[0], a["channels"]
    _check_blocked(x, "from_nchwc")
    full = x.shape[1] * x.shape[4]
    if channels is not None and not full - x.shape[4] < channels <= full:
        raise ShapeError(f"from_nchwc: {channels} channels do not end in the last of {x.shape[1]} blocks "
                         f"of {x.shape[4]}")
    return [plain_type(x, channels)]


def _from_compute(x, channels=None):
    b = x.shape[-1]
    return compute(plain_type(TensorType(x.shape, x.dtype), channels).shape,
                   lambda n, c, h, w: x[n, c // b, h, w, c % b], "from_nchwc")


register_op(OpDef("to_nchwc", _to_infer, lambda x, block: block_array(x, block), _to_compute,
                  attrs={"block": REQUIRED},
                  doc="Plain (N, C, H, W) to the channel-blocked layout (N, ceil(C/block), H, W, block); "
                      "a padded last block's padding lanes are zero."))
register_op(OpDef("from_nchwc", _from_infer, lambda x, channels=None: unblock_array(x, channels), _from_compute,
                  attrs={"channels": None},
                  doc="The channel-blocked layout (N, C/b, H, W, b) back to plain (N, C, H, W); ``channels``: "
                      "the count a padded last block holds (default: every lane)."))


# -- convolution ---------------------------------------------------------------------------


def _is_depthwise(x_shape, w_shape, groups: int) -> bool:
    """Whether a blocked convolution is depthwise: one input channel per group,
    read lane for lane from the input's blocks (which are the output's)."""
    ob, ib, _, _, bi, bo = w_shape
    return (len(x_shape) == 5 and groups > 1 and groups == x_shape[1] * x_shape[4] == ob * bo
            and ib == bi == 1)


def _conv_types(types, a):
    """The plain types of a blocked convolution's inputs, after checking the layouts."""
    x, w, groups = types[0], types[1], a["groups"]
    if w.rank != 6:
        raise ShapeError(f"conv2d_nchwc needs 6-D weights (CO/bo, CI/groups/bi, KH, KW, bi, bo), got rank {w.rank}")
    ob, ib, kh, kw, bi, bo = w.shape
    if x.rank == 5:
        lanes = x.shape[4]
        wanted = bo if _is_depthwise(x.shape, w.shape, groups) else bi
        if lanes != wanted:
            raise ShapeError(f"input blocks of {lanes} channels do not fit weights {list(w.shape)} "
                             f"(groups={groups})")
        xp = plain_type(x)
    elif x.rank == 4 and bi == 1:
        xp = x
    else:
        raise ShapeError(f"conv2d_nchwc needs a blocked input (N, C/b, H, W, b), or a plain one with bi = 1; "
                         f"got rank {x.rank} with weights {list(w.shape)}")
    plain = [xp, TensorType((ob * bo, ib * bi, kh, kw), w.dtype)]
    if len(types) == 3:
        if types[2].shape != (ob, bo):
            raise ShapeError(f"bias must be ({ob}, {bo}), got {list(types[2].shape)}")
        plain.append(TensorType((ob * bo,), types[2].dtype))
    return plain


def _conv_nchwc_infer(types, a):
    plain = _conv_types(types, a)
    (out,) = _conv_infer(2)(plain, a)
    groups, bo = a["groups"], types[1].shape[5]
    if groups > 1 and not _is_depthwise(types[0].shape, types[1].shape, groups) and (out.shape[1] // groups) % bo:
        raise ShapeError(f"output blocks of {bo} channels straddle groups of {out.shape[1] // groups} "
                         f"(groups={groups})")
    return [blocked_type(out, bo)]


def _conv_nchwc_compute(x, w, bias=None, strides=None, padding=None, dilations=None, groups=1):
    ob, ib, K0, K1, bi, bo = w.shape
    src = padded_stage(x, padding[:2], padding[2:], 0) if any(padding) else x
    out_hw = tuple(window_out(x.shape[2 + d], w.shape[2 + d], strides[d], padding[d], padding[2 + d], dilations[d])
                   for d in range(2))
    kh, kw = reduce_axis(K0, "kh"), reduce_axis(K1, "kw")

    def at(h, wo):
        return h * strides[0] + kh[0] * dilations[0], wo * strides[1] + kw[0] * dilations[1]

    out_blocks_per_group = (ob * bo) // groups // bo

    def in_group(cb, i, per_group):
        """Input block (or channel) ``i`` of output block ``cb``'s group, whose
        input has ``per_group`` of them."""
        if groups == 1:
            return i
        group = cb if out_blocks_per_group == 1 else cb // out_blocks_per_group
        return group * per_group + i

    if _is_depthwise(x.shape, w.shape, groups):  # output channel (cb, lane) reads input channel (cb, lane)
        def fn(n, cb, h, wo, lane):
            y, xx = at(h, wo)
            return reduce("sum", src[n, cb, y, xx, lane] * w[cb, 0, kh[0], kw[0], 0, lane], [kh, kw])
    elif len(x.shape) == 4:  # plain input: each input channel is one broadcast value
        ci = reduce_axis(ib, "ci")

        def fn(n, cb, h, wo, lane):
            y, xx = at(h, wo)
            return reduce("sum", src[n, in_group(cb, ci[0], ib), y, xx] * w[cb, ci[0], kh[0], kw[0], 0, lane],
                          [ci, kh, kw])
    else:  # dense, or grouped: the group's input blocks, one broadcast value per input channel
        icb, il = reduce_axis(ib, "icb"), reduce_axis(bi, "il")

        def fn(n, cb, h, wo, lane):
            y, xx = at(h, wo)
            return reduce("sum", src[n, in_group(cb, icb[0], ib), y, xx, il[0]]
                          * w[cb, icb[0], kh[0], kw[0], il[0], lane], [icb, kh, kw, il])

    conv = compute((x.shape[0], ob) + out_hw + (bo,), fn, "conv")
    if bias is None:
        return conv
    return compute(conv.shape, lambda n, cb, h, wo, lane: conv[n, cb, h, wo, lane] + bias[cb, lane], "conv_bias")


def _conv_nchwc_reference(x, w, bias=None, strides=None, padding=None, dilations=None, groups=1):
    xp = unblock_array(x) if x.ndim == 5 else x
    bp = None if bias is None else bias.reshape(-1)
    out = conv_reference(xp, unblock_weights(w), bp, strides, padding, dilations, groups)
    return block_array(out, w.shape[5])


register_op(OpDef(
    "conv2d_nchwc", _conv_nchwc_infer, _conv_nchwc_reference, _conv_nchwc_compute,
    attrs={"strides": 1, "padding": 0, "dilations": 1, "groups": 1}, normalize=_normalize_window(2, False),
    num_inputs=(2, 3),
    doc="2-D convolution in the blocked layout, dense, grouped or depthwise; weights "
        "(CO/bo, CI/groups/bi, KH, KW, bi, bo).",
))


# -- pooling ----------------------------------------------------------------------------------


def _pool_nchwc_infer(kind):
    plain_infer = _pool_infer(2, kind)

    def infer(types, a):
        _check_blocked(types[0], f"{kind}_pool2d_nchwc")
        (out,) = plain_infer([plain_type(types[0])], a)
        return [blocked_type(out, types[0].shape[4])]

    return infer


def _pool_nchwc_reference(mode):
    def ref(x, kernel, strides, padding, dilations, ceil_mode, count_include_pad=False):
        out = pool_reference(unblock_array(x), kernel, strides, padding, dilations, ceil_mode, mode,
                             count_include_pad)
        return block_array(out, x.shape[-1])

    return ref


_POOL_ATTRS = {"kernel": None, "strides": None, "padding": 0, "dilations": 1, "ceil_mode": False}
register_op(OpDef(
    "max_pool2d_nchwc", _pool_nchwc_infer("max"),
    lambda x, kernel, strides, padding, dilations, ceil_mode: _pool_nchwc_reference("max")(
        x, kernel, strides, padding, dilations, ceil_mode),
    _max_pool_compute, attrs=_POOL_ATTRS, normalize=_normalize_window(2, True),
    doc="2-D max pooling in the blocked layout.",
))
register_op(OpDef(
    "avg_pool2d_nchwc", _pool_nchwc_infer("avg"), _pool_nchwc_reference("avg"), _avg_pool_compute,
    attrs=dict(_POOL_ATTRS, count_include_pad=False), normalize=_normalize_window(2, True),
    doc="2-D average pooling in the blocked layout.",
))


def _gap_infer(types, a):
    x = types[0]
    _check_blocked(x, "global_avg_pool_nchwc")
    if not x.dtype.is_float:
        raise ShapeError(f"global_avg_pool_nchwc needs a float input, got {x.dtype.name}")
    return [TensorType(x.shape[:2] + (1, 1) + x.shape[4:], x.dtype)]


def _gap_compute(x):
    rh, rw = reduce_axis(x.shape[2], "rh"), reduce_axis(x.shape[3], "rw")
    total = compute(x.shape[:2] + (1, 1) + x.shape[4:],
                    lambda n, cb, _h, _w, lane: reduce("sum", x[n, cb, rh[0], rw[0], lane], [rh, rw]), "gap_sum")
    count = ex.const(x.shape[2] * x.shape[3], x.dtype)
    return compute(total.shape, lambda *i: total[i] / count, "global_avg_pool")


register_op(OpDef(
    "global_avg_pool_nchwc", _gap_infer,
    lambda x: x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype),
    _gap_compute, doc="The mean over H and W in the blocked layout, to (N, C/b, 1, 1, b).",
))
