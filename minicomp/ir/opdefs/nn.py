"""Neural-network ops: matmul, conv2d (NCHW) and 2-D pooling."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute, reduce, reduce_axis, reduce_identity
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import OpDef, broadcast_index, broadcast_shapes, register_op

# -- matmul ---------------------------------------------------------------------


def _matmul_shapes(a, b):
    if a.rank == 0 or b.rank == 0:
        raise ShapeError("matmul needs inputs of rank >= 1")
    if a.dtype != b.dtype:
        raise ShapeError(f"input dtypes {a.dtype.name} and {b.dtype.name} differ; cast one first")
    if a.dtype.is_bool:
        raise ShapeError("matmul needs a numeric dtype, got bool")
    ash = a.shape if a.rank > 1 else (1,) + a.shape
    bsh = b.shape if b.rank > 1 else b.shape + (1,)
    if ash[-1] != bsh[-2]:
        raise ShapeError(f"contracted dimensions differ: {ash[-1]} (last of A) vs {bsh[-2]} (rows of B)")
    batch = broadcast_shapes(ash[:-2], bsh[:-2])
    out = batch + ((ash[-2],) if a.rank > 1 else ()) + ((bsh[-1],) if b.rank > 1 else ())
    return ash, bsh, batch, out


def _matmul_infer(types, attrs):
    *_, out = _matmul_shapes(*types)
    return [TensorType(out, types[0].dtype)]


def _matmul_compute(a, b):
    ta, tb = TensorType(a.shape, a.dtype), TensorType(b.shape, b.dtype)
    ash, bsh, batch, out = _matmul_shapes(ta, tb)
    k_axis = reduce_axis(ash[-1], "k")
    k = k_axis[0]

    def fn(*idx):
        nb = len(batch)
        bidx = idx[:nb]
        rest = list(idx[nb:])
        i = rest.pop(0) if a.ndim > 1 else None
        j = rest.pop(0) if b.ndim > 1 else None
        ia = (broadcast_index(bidx, a.shape[:-2], batch) + (i, k)) if a.ndim > 1 else (k,)
        ib = (broadcast_index(bidx, b.shape[:-2], batch) + (k, j)) if b.ndim > 1 else (k,)
        return reduce("sum", a[ia] * b[ib], [k_axis])

    return compute(out, fn, "matmul")


register_op(OpDef("matmul", _matmul_infer, lambda a, b: np.matmul(a, b).astype(a.dtype),
                  _matmul_compute, num_inputs=2,
                  doc="numpy matmul: batch dimensions broadcast; 1-D operands as in numpy."))

# -- windows (shared by conv and pooling) -------------------------------------------


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ShapeError(f"{name} must have 2 values, got {list(v)}")
    return v


def _pads(v):
    if isinstance(v, int):
        return (v, v, v, v)
    v = tuple(int(x) for x in v)
    if len(v) == 2:
        return (v[0], v[1], v[0], v[1])
    if len(v) != 4:
        raise ShapeError(f"padding must have 4 values (top, left, bottom, right), got {list(v)}")
    if min(v) < 0:
        raise ShapeError(f"padding must not be negative, got {list(v)}")
    return v


def window_out(size, k, stride, pad_begin, pad_end, dilation, ceil_mode=False) -> int:
    """Output length of a sliding window along one axis."""
    span = size + pad_begin + pad_end - dilation * (k - 1) - 1
    if span < 0:
        return 0
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def padded_load(x, n, c, h, w, H, W, fill):
    """Load x[n, c, h, w], or ``fill`` where (h, w) falls outside the image.

    Indices are clamped so that the load itself is always in bounds: generated
    code may evaluate both sides of a select.
    """
    inside = ex.logical_and(ex.logical_and(ex.ge(h, 0), ex.lt(h, H)),
                            ex.logical_and(ex.ge(w, 0), ex.lt(w, W)))
    hc = ex.minimum(ex.maximum(h, 0), H - 1)
    wc = ex.minimum(ex.maximum(w, 0), W - 1)
    return ex.select(inside, x[n, c, hc, wc], ex.const(fill, x.dtype))


def _windows_normalize(types, a, need_kernel):
    if need_kernel:
        a["kernel"] = _pair(a["kernel"], "kernel")
        if a.get("strides") is None:
            a["strides"] = a["kernel"]
    a["strides"] = _pair(a["strides"], "strides")
    a["padding"] = _pads(a["padding"])
    a["dilations"] = _pair(a["dilations"], "dilations")
    if min(a["strides"]) < 1 or min(a["dilations"]) < 1:
        raise ShapeError(f"strides and dilations must be >= 1, got {a['strides']}, {a['dilations']}")
    return a


# -- conv2d ------------------------------------------------------------------------


def _conv_normalize(types, a):
    a = _windows_normalize(types, a, need_kernel=False)
    a["groups"] = int(a["groups"])
    return a


def _conv_infer(types, a):
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        raise ShapeError("conv2d needs a 4-D input (N, C, H, W) and 4-D weights (CO, C/groups, KH, KW)")
    if x.dtype != w.dtype or not (x.dtype.is_float or x.dtype.is_int):
        raise ShapeError(f"input and weight need the same numeric dtype, got {x.dtype.name}, {w.dtype.name}")
    g = a["groups"]
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    if g < 1 or c % g or co % g or cg * g != c:
        raise ShapeError(f"groups={g} does not fit {c} input channels, {co} output channels "
                         f"and weights for {cg} channels per group")
    if len(types) == 3 and (types[2].shape != (co,) or types[2].dtype != x.dtype):
        raise ShapeError(f"bias must be {x.dtype.short}[{co}], got {types[2]}")
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = a["strides"], a["dilations"], a["padding"]
    oh = window_out(h, kh, sh, pt, pb, dh)
    ow = window_out(wd, kw, sw, pl, pr, dw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"the kernel {kh}x{kw} (dilated) is larger than the padded input {h}x{wd}")
    return [TensorType((n, co, oh, ow), x.dtype)]


def _conv_compute(x, w, bias=None, strides=(1, 1), padding=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    n_, c_, H, W = x.shape
    co_, cg, KH, KW = w.shape
    (sh, sw), (dh, dw), (pt, pl, _, _) = strides, dilations, padding
    oh_ = window_out(H, KH, sh, padding[0], padding[2], dh)
    ow_ = window_out(W, KW, sw, padding[1], padding[3], dw)
    co_per_group = co_ // groups
    rc, rh, rw = reduce_axis(cg, "rc"), reduce_axis(KH, "rh"), reduce_axis(KW, "rw")
    padded = any(padding)

    def fn(n, co, oh, ow):
        c = rc[0] if groups == 1 else (co // co_per_group) * cg + rc[0]
        h = oh * sh + rh[0] * dh - pt
        wi = ow * sw + rw[0] * dw - pl
        xv = padded_load(x, n, c, h, wi, H, W, 0) if padded else x[n, c, h, wi]
        return reduce("sum", xv * w[co, rc[0], rh[0], rw[0]], [rc, rh, rw])

    conv = compute((n_, co_, oh_, ow_), fn, "conv")
    if bias is None:
        return conv
    return compute(conv.shape, lambda n, co, oh, ow: conv[n, co, oh, ow] + bias[co], "conv_bias")


def conv2d_reference(x, w, bias=None, strides=(1, 1), padding=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    """conv2d in numpy: a sum over kernel taps of strided slices, per group."""
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, padding
    oh = window_out(h, kh, sh, pt, pb, dh)
    ow = window_out(wd, kw, sw, pl, pr, dw)
    acc_t = np.float64 if x.dtype.kind == "f" else np.int64
    xp = np.pad(x.astype(acc_t), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, co, oh, ow), acc_t)
    cog = co // groups
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * cog:(g + 1) * cog].astype(acc_t)
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * cog:(g + 1) * cog] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    if bias is not None:
        out += bias.astype(acc_t)[None, :, None, None]
    return out.astype(x.dtype)


register_op(OpDef(
    "conv2d", _conv_infer, conv2d_reference, _conv_compute,
    attrs={"strides": (1, 1), "padding": (0, 0, 0, 0), "dilations": (1, 1), "groups": 1},
    normalize=_conv_normalize, num_inputs=(2, 3),
    doc="2-D convolution, NCHW, weights (CO, C/groups, KH, KW), optional bias; "
        "padding is (top, left, bottom, right).",
))

# -- pooling -------------------------------------------------------------------


def _pool_infer(types, a):
    x = types[0]
    if x.rank != 4:
        raise ShapeError("pooling needs a 4-D input (N, C, H, W)")
    if x.dtype.is_bool:
        raise ShapeError("pooling needs a numeric dtype, got bool")
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["dilations"], a["padding"]
    if max(pt, pb) > (kh - 1) * dh or max(pl, pr) > (kw - 1) * dw:
        # A window made only of padding has no elements to pool.
        raise ShapeError(f"padding {list(a['padding'])} must be smaller than the (dilated) kernel {kh}x{kw}")
    oh = window_out(x.shape[2], kh, sh, pt, pb, dh, a["ceil_mode"])
    ow = window_out(x.shape[3], kw, sw, pl, pr, dw, a["ceil_mode"])
    if oh < 1 or ow < 1:
        raise ShapeError(f"the window {kh}x{kw} is larger than the padded input")
    if "count_include_pad" in a and not x.dtype.is_float:
        raise ShapeError(f"avg_pool2d needs a float dtype, got {x.dtype.name}")
    return [TensorType(x.shape[:2] + (oh, ow), x.dtype)]


def _pool_geometry(x, kernel, strides, padding, dilations, ceil_mode):
    H, W = x.shape[2], x.shape[3]
    oh = window_out(H, kernel[0], strides[0], padding[0], padding[2], dilations[0], ceil_mode)
    ow = window_out(W, kernel[1], strides[1], padding[1], padding[3], dilations[1], ceil_mode)
    return H, W, oh, ow


def _max_pool_compute(x, kernel, strides, padding, dilations, ceil_mode):
    H, W, oh_, ow_ = _pool_geometry(x, kernel, strides, padding, dilations, ceil_mode)
    rh, rw = reduce_axis(kernel[0], "rh"), reduce_axis(kernel[1], "rw")
    low = reduce_identity("max", x.dtype).value

    def fn(n, c, oh, ow):
        h = oh * strides[0] + rh[0] * dilations[0] - padding[0]
        w = ow * strides[1] + rw[0] * dilations[1] - padding[1]
        return reduce("max", padded_load(x, n, c, h, w, H, W, low), [rh, rw])

    return compute((x.shape[0], x.shape[1], oh_, ow_), fn, "max_pool")


def _window_count(o, k, stride, dilation, pad_begin, lo, hi):
    """Number of taps of window ``o`` whose position lies in ``[lo, hi)``."""
    total = None
    for t in range(k):
        pos = o * stride + (t * dilation - pad_begin)
        term = ex.select(ex.logical_and(ex.ge(pos, lo), ex.lt(pos, hi)), 1, 0)
        total = term if total is None else total + term
    return total


def _avg_pool_compute(x, kernel, strides, padding, dilations, ceil_mode, count_include_pad):
    H, W, oh_, ow_ = _pool_geometry(x, kernel, strides, padding, dilations, ceil_mode)
    rh, rw = reduce_axis(kernel[0], "rh"), reduce_axis(kernel[1], "rw")
    pt, pl, pb, pr = padding

    def fn(n, c, oh, ow):
        h = oh * strides[0] + rh[0] * dilations[0] - pt
        w = ow * strides[1] + rw[0] * dilations[1] - pl
        return reduce("sum", padded_load(x, n, c, h, w, H, W, 0), [rh, rw])

    total = compute((x.shape[0], x.shape[1], oh_, ow_), fn, "avg_pool_sum")
    lo_h, hi_h, lo_w, hi_w = (-pt, H + pb, -pl, W + pr) if count_include_pad else (0, H, 0, W)

    def avg(n, c, oh, ow):
        ch = _window_count(oh, kernel[0], strides[0], dilations[0], pt, lo_h, hi_h)
        cw = _window_count(ow, kernel[1], strides[1], dilations[1], pl, lo_w, hi_w)
        return total[n, c, oh, ow] / ex.cast(x.dtype, ch * cw)

    return compute(total.shape, avg, "avg_pool")


def _pool_reference(x, kernel, strides, padding, dilations, ceil_mode, mode, count_include_pad=False):
    n, c, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = kernel, strides, dilations, padding
    oh = window_out(H, kh, sh, pt, pb, dh, ceil_mode)
    ow = window_out(W, kw, sw, pl, pr, dw, ceil_mode)
    # Pad generously so that every window of every output fits, then mask.
    eh = max(0, (oh - 1) * sh + (kh - 1) * dh + 1 - (H + pt))
    ew = max(0, (ow - 1) * sw + (kw - 1) * dw + 1 - (W + pl))
    if mode == "max":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        xp = np.pad(x, ((0, 0), (0, 0), (pt, eh), (pl, ew)), constant_values=fill)
        out = None
    else:
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, eh), (pl, ew)))
        inside = np.zeros((H + pt + eh, W + pl + ew))
        if count_include_pad:
            inside[: H + pt + pb, : W + pl + pr] = 1
        else:
            inside[pt: pt + H, pl: pl + W] = 1
        out = np.zeros((n, c, oh, ow))
        count = np.zeros((oh, ow))
    for i in range(kh):
        for j in range(kw):
            sl = (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
            patch = xp[:, :, sl[0], sl[1]]
            if mode == "max":
                out = patch.copy() if out is None else np.maximum(out, patch)
            else:
                out += patch
                count += inside[sl[0], sl[1]]
    if mode == "avg":
        out = out / count
    return out.astype(x.dtype)


_POOL_ATTRS = {"kernel": None, "strides": None, "padding": (0, 0, 0, 0), "dilations": (1, 1), "ceil_mode": False}


def _pool_normalize(types, a):
    if a["kernel"] is None:
        raise ShapeError("attribute 'kernel' is required")
    a = _windows_normalize(types, a, need_kernel=True)
    a["ceil_mode"] = bool(a["ceil_mode"])
    if "count_include_pad" in a:
        a["count_include_pad"] = bool(a["count_include_pad"])
    return a


register_op(OpDef(
    "max_pool2d", _pool_infer,
    lambda x, kernel, strides, padding, dilations, ceil_mode: _pool_reference(
        x, kernel, strides, padding, dilations, ceil_mode, "max"),
    _max_pool_compute, attrs=dict(_POOL_ATTRS), normalize=_pool_normalize,
    doc="2-D max pooling over NCHW; strides default to the kernel.",
))
register_op(OpDef(
    "avg_pool2d", _pool_infer,
    lambda x, kernel, strides, padding, dilations, ceil_mode, count_include_pad: _pool_reference(
        x, kernel, strides, padding, dilations, ceil_mode, "avg", count_include_pad),
    _avg_pool_compute, attrs=dict(_POOL_ATTRS, count_include_pad=False), normalize=_pool_normalize,
    doc="2-D average pooling; padded positions count in the divisor only with count_include_pad.",
))


def _gap_infer(types, a):
    x = types[0]
    if x.rank < 3 or not x.dtype.is_float:
        raise ShapeError("global_avg_pool needs a float input of rank >= 3 (N, C, spatial...)")
    return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]


def _gap_compute(x):
    axes = [reduce_axis(d, f"r{k}_") for k, d in enumerate(x.shape[2:])]
    count = int(np.prod(x.shape[2:], dtype=np.int64))
    total = compute(x.shape[:2] + (1,) * len(axes),
                    lambda n, c, *_: reduce("sum", x[(n, c) + tuple(a[0] for a in axes)], axes), "gap_sum")
    return compute(total.shape, lambda *i: total[i] / ex.const(count, x.dtype), "global_avg_pool")


register_op(OpDef(
    "global_avg_pool", _gap_infer,
    lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(x.dtype),
    _gap_compute, doc="Mean over every spatial axis, keeping them as size 1.",
))
