"""Sliding-window ops over 1 to 3 spatial axes, channels first (N, C, spatial...):
conv1d/2d/3d, conv_transpose1d/2d/3d, max_pool1d/2d/3d, avg_pool1d/2d/3d and
global_avg_pool.

One implementation serves every spatial rank R; each rank is registered under
its own name. Padding is given as (begin of each spatial axis..., end of each
spatial axis...), the ONNX order; for 2-D that is (top, left, bottom, right).

Zero (or -inf) padding is a stage of its own marked ``materialize``: lowering
writes the padded input to memory once, so that the inner loops of the window
have plain loads instead of a bounds check per tap.
"""

from __future__ import annotations

import itertools

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute, reduce, reduce_axis, reduce_identity
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import REQUIRED, OpDef, register_op


def _tuple(v, n: int, name: str) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    if len(v) != n:
        raise ShapeError(f"{name} must have {n} values, got {list(v)}")
    return v


def _pads(v, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        v = (v,) * (2 * n)
    v = tuple(int(x) for x in v)
    if len(v) == n:
        v = v + v
    if len(v) != 2 * n:
        raise ShapeError(f"padding must have {2 * n} values (begins, then ends), got {list(v)}")
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
        out -= 1  # the last window must start inside the input or its begin padding
    return out


def padded_stage(x, begins, ends, fill, name="pad"):
    """x padded on its spatial axes with ``fill``; kept in memory by lowering.

    The spatial axes are the ``len(begins)`` axes after N and C; axes after
    them (the channel lanes of the blocked layout, ``nchwc.py``) are copied."""
    R = len(begins)
    spatial = x.shape[2:2 + R]
    shape = x.shape[:2] + tuple(d + b + e for d, b, e in zip(spatial, begins, ends)) + x.shape[2 + R:]

    def fn(n, c, *rest):
        inside = ex.const(True, "bool")
        src = []
        for p, b, d in zip(rest[:R], begins, spatial):
            j = p - b
            inside = ex.logical_and(inside, ex.logical_and(ex.ge(j, 0), ex.lt(j, d)))
            src.append(ex.minimum(ex.maximum(j, 0), d - 1))
        return ex.select(inside, x[(n, c) + tuple(src) + tuple(rest[R:])], ex.const(fill, x.dtype))

    st = compute(shape, fn, name)
    st.materialize = True
    return st


def _normalize_window(R, need_kernel):
    def normalize(types, a):
        if need_kernel:
            if a["kernel"] is None:
                raise ShapeError("attribute 'kernel' is required")
            a["kernel"] = _tuple(a["kernel"], R, "kernel")
            if a.get("strides") is None:
                a["strides"] = a["kernel"]
        a["strides"] = _tuple(a["strides"], R, "strides")
        a["padding"] = _pads(a["padding"], R)
        a["dilations"] = _tuple(a["dilations"], R, "dilations")
        if min(a["strides"]) < 1 or min(a["dilations"]) < 1:
            raise ShapeError(f"strides and dilations must be >= 1, got {list(a['strides'])}, {list(a['dilations'])}")
        for k in ("groups",):
            if k in a:
                a[k] = int(a[k])
        for k in ("ceil_mode", "count_include_pad"):
            if k in a:
                a[k] = bool(a[k])
        if "output_padding" in a:
            a["output_padding"] = _tuple(a["output_padding"], R, "output_padding")
        return a

    return normalize


def _check_input(x, R, what):
    if x.rank != R + 2:
        raise ShapeError(f"{what} needs a {R + 2}-D input (N, C, {R} spatial axes), got rank {x.rank}")
    if x.dtype.is_bool:
        raise ShapeError(f"{what} needs a numeric dtype, got bool")


# -- convolution ------------------------------------------------------------------


def _conv_infer(R):
    def infer(types, a):
        x, w = types[0], types[1]
        _check_input(x, R, f"conv{R}d")
        if w.rank != R + 2:
            raise ShapeError(f"weights must be {R + 2}-D (CO, C/groups, kernel...), got rank {w.rank}")
        if x.dtype != w.dtype:
            raise ShapeError(f"input and weight dtypes differ: {x.dtype.name}, {w.dtype.name}")
        g = a["groups"]
        c, co, cg = x.shape[1], w.shape[0], w.shape[1]
        if g < 1 or c % g or co % g or cg * g != c:
            raise ShapeError(f"groups={g} does not fit {c} input channels, {co} output channels "
                             f"and weights for {cg} channels per group")
        if len(types) == 3 and (types[2].shape != (co,) or types[2].dtype != x.dtype):
            raise ShapeError(f"bias must be {x.dtype.short}[{co}], got {types[2]}")
        out = tuple(window_out(x.shape[2 + d], w.shape[2 + d], a["strides"][d], a["padding"][d],
                               a["padding"][R + d], a["dilations"][d]) for d in range(R))
        if min(out) < 1:
            raise ShapeError(f"the kernel {list(w.shape[2:])} (dilated) is larger than the padded input "
                             f"{list(x.shape[2:])}")
        return [TensorType((x.shape[0], co) + out, x.dtype)]

    return infer


def _conv_compute(R):
    def comp(x, w, bias=None, strides=None, padding=None, dilations=None, groups=1):
        co_total, cg = w.shape[0], w.shape[1]
        K = w.shape[2:]
        # The padded stage starts at the first padded position, so window
        # positions index it directly.
        src = padded_stage(x, padding[:R], padding[R:], 0) if any(padding) else x
        out_sp = tuple(window_out(x.shape[2 + d], K[d], strides[d], padding[d], padding[R + d], dilations[d])
                       for d in range(R))
        rc = reduce_axis(cg, "rc")
        rk = [reduce_axis(K[d], f"rk{d}") for d in range(R)]
        per_group = co_total // groups

        def fn(n, co, *o):
            c = rc[0] if groups == 1 else (co // per_group) * cg + rc[0]
            pos = tuple(o[d] * strides[d] + rk[d][0] * dilations[d] for d in range(R))
            return reduce("sum", src[(n, c) + pos] * w[(co, rc[0]) + tuple(r[0] for r in rk)], [rc] + rk)

        conv = compute((x.shape[0], co_total) + out_sp, fn, "conv")
        if bias is None:
            return conv
        return compute(conv.shape, lambda n, co, *o: conv[(n, co) + o] + bias[co], "conv_bias")

    return comp


def conv_reference(x, w, bias=None, strides=None, padding=None, dilations=None, groups=1):
    """Convolution in numpy: a sum over kernel taps of strided slices, per group."""
    R = x.ndim - 2
    co, cg = w.shape[:2]
    K = w.shape[2:]
    acc_t = np.float64 if dtypes.as_dtype(x.dtype).is_float else np.int64
    xp = np.pad(x.astype(acc_t), [(0, 0), (0, 0)] + [(padding[d], padding[R + d]) for d in range(R)])
    out_sp = [window_out(x.shape[2 + d], K[d], strides[d], padding[d], padding[R + d], dilations[d])
              for d in range(R)]
    out = np.zeros((x.shape[0], co) + tuple(out_sp), acc_t)
    per_group = co // groups
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * per_group:(g + 1) * per_group].astype(acc_t)
        for taps in itertools.product(*[range(k) for k in K]):
            sl = tuple(slice(t * dilations[d], t * dilations[d] + strides[d] * (out_sp[d] - 1) + 1, strides[d])
                       for d, t in enumerate(taps))
            patch = xg[(slice(None), slice(None)) + sl]
            out[:, g * per_group:(g + 1) * per_group] += np.tensordot(
                wg[(slice(None), slice(None)) + taps], patch, axes=([1], [1])).swapaxes(0, 1)
    if bias is not None:
        out += bias.astype(acc_t).reshape((1, -1) + (1,) * R)
    return out.astype(x.dtype)


# -- transposed convolution ------------------------------------------------------------


def _conv_t_out(x_shape, K, a, R):
    return tuple((x_shape[2 + d] - 1) * a["strides"][d] - a["padding"][d] - a["padding"][R + d]
                 + a["dilations"][d] * (K[d] - 1) + a["output_padding"][d] + 1 for d in range(R))


def _conv_t_infer(R):
    def infer(types, a):
        x, w = types[0], types[1]
        _check_input(x, R, f"conv_transpose{R}d")
        if w.rank != R + 2 or w.shape[0] != x.shape[1]:
            raise ShapeError(f"weights must be (C={x.shape[1]}, CO/groups, kernel...), got {list(w.shape)}")
        if x.dtype != w.dtype:
            raise ShapeError(f"input and weight dtypes differ: {x.dtype.name}, {w.dtype.name}")
        g = a["groups"]
        if g < 1 or x.shape[1] % g:
            raise ShapeError(f"groups={g} does not divide {x.shape[1]} input channels")
        co = w.shape[1] * g
        if len(types) == 3 and (types[2].shape != (co,) or types[2].dtype != x.dtype):
            raise ShapeError(f"bias must be {x.dtype.short}[{co}], got {types[2]}")
        if any(op >= max(s, d) for op, s, d in zip(a["output_padding"], a["strides"], a["dilations"])):
            raise ShapeError(f"output_padding {list(a['output_padding'])} must be smaller than stride or dilation")
        out = _conv_t_out(x.shape, w.shape[2:], a, R)
        if min(out) < 1:
            raise ShapeError(f"the output would be empty ({list(out)})")
        return [TensorType((x.shape[0], co) + out, x.dtype)]

    return infer


def _conv_t_compute(R):
    def comp(x, w, bias=None, strides=None, padding=None, dilations=None, groups=1, output_padding=None):
        c_total, co_g = w.shape[0], w.shape[1]
        K = w.shape[2:]
        out_sp = _conv_t_out(x.shape, K, dict(strides=strides, padding=padding, dilations=dilations,
                                              output_padding=output_padding), R)
        cg = c_total // groups
        rc = reduce_axis(cg, "rc")
        rk = [reduce_axis(K[d], f"rk{d}") for d in range(R)]

        def fn(n, co, *o):
            g = co // co_g
            c = g * cg + rc[0] if groups > 1 else rc[0]
            valid = ex.const(True, "bool")
            src = []
            for d in range(R):
                num = o[d] + padding[d] - rk[d][0] * dilations[d]
                q = num // strides[d]
                valid = ex.logical_and(valid, ex.logical_and(ex.ge(num, 0), ex.eq(num % strides[d], 0)))
                valid = ex.logical_and(valid, ex.lt(q, x.shape[2 + d]))
                src.append(ex.minimum(ex.maximum(q, 0), x.shape[2 + d] - 1))
            term = x[(n, c) + tuple(src)] * w[(c, co % co_g if groups > 1 else co) + tuple(r[0] for r in rk)]
            return reduce("sum", ex.select(valid, term, ex.const(0, x.dtype)), [rc] + rk)

        out = compute((x.shape[0], co_g * groups) + out_sp, fn, "conv_transpose")
        if bias is None:
            return out
        return compute(out.shape, lambda n, co, *o: out[(n, co) + o] + bias[co], "conv_transpose_bias")

    return comp


def conv_transpose_reference(x, w, bias=None, strides=None, padding=None, dilations=None, groups=1,
                             output_padding=None):
    """Transposed convolution in numpy: scatter each input position's taps."""
    R = x.ndim - 2
    c_total, co_g = w.shape[:2]
    K = w.shape[2:]
    cg = c_total // groups
    a = dict(strides=strides, padding=padding, dilations=dilations, output_padding=output_padding)
    out_sp = _conv_t_out(x.shape, K, a, R)
    full = [(x.shape[2 + d] - 1) * strides[d] + dilations[d] * (K[d] - 1) + 1 + output_padding[d]
            for d in range(R)]
    big = np.zeros((x.shape[0], co_g * groups) + tuple(max(f, padding[d] + out_sp[d]) for d, f in enumerate(full)))
    xd, wd = x.astype(np.float64), w.astype(np.float64)
    for g in range(groups):
        for taps in itertools.product(*[range(k) for k in K]):
            sl = tuple(slice(t * dilations[d], t * dilations[d] + strides[d] * (x.shape[2 + d] - 1) + 1, strides[d])
                       for d, t in enumerate(taps))
            contrib = np.tensordot(xd[:, g * cg:(g + 1) * cg], wd[(slice(g * cg, (g + 1) * cg), slice(None)) + taps],
                                   axes=([1], [0]))
            contrib = np.moveaxis(contrib, -1, 1)
            big[(slice(None), slice(g * co_g, (g + 1) * co_g)) + sl] += contrib
    out = big[(slice(None), slice(None)) + tuple(slice(padding[d], padding[d] + out_sp[d]) for d in range(R))]
    if bias is not None:
        out = out + bias.astype(np.float64).reshape((1, -1) + (1,) * R)
    return out.astype(x.dtype)


# -- pooling ------------------------------------------------------------------------


def _pool_infer(R, kind):
    def infer(types, a):
        x = types[0]
        _check_input(x, R, f"{kind}_pool{R}d")
        if kind == "avg" and not x.dtype.is_float:
            raise ShapeError(f"avg_pool{R}d needs a float dtype, got {x.dtype.name}")
        K, P, D = a["kernel"], a["padding"], a["dilations"]
        for d in range(R):
            if max(P[d], P[R + d]) > (K[d] - 1) * D[d]:
                # A window made only of padding has no elements to pool.
                raise ShapeError(f"padding {list(P)} must be smaller than the (dilated) kernel {list(K)}")
        out = tuple(window_out(x.shape[2 + d], K[d], a["strides"][d], P[d], P[R + d], D[d], a["ceil_mode"])
                    for d in range(R))
        if min(out) < 1:
            raise ShapeError(f"the window {list(K)} is larger than the padded input {list(x.shape[2:])}")
        return [TensorType(x.shape[:2] + out, x.dtype)]

    return infer


def _pool_out(x, kernel, strides, padding, dilations, ceil_mode):
    R = len(kernel)
    return tuple(window_out(x.shape[2 + d], kernel[d], strides[d], padding[d], padding[R + d], dilations[d], ceil_mode)
                 for d in range(R))


def _pool_source(x, kernel, strides, padding, dilations, out_sp, fill):
    """The input padded far enough for every window (ceil mode can run past the end)."""
    R = len(kernel)
    ends = [max(0, (out_sp[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - (x.shape[2 + d] + padding[d]))
            for d in range(R)]
    if any(padding[:R]) or any(ends):
        return padded_stage(x, padding[:R], ends, fill, "pool_pad")
    return x


def _max_pool_compute(x, kernel, strides, padding, dilations, ceil_mode):
    R = len(kernel)
    out_sp = _pool_out(x, kernel, strides, padding, dilations, ceil_mode)
    src = _pool_source(x, kernel, strides, padding, dilations, out_sp, reduce_identity("max", x.dtype).value)
    rk = [reduce_axis(k, f"rk{d}") for d, k in enumerate(kernel)]

    def fn(n, c, *rest):
        pos = tuple(rest[d] * strides[d] + rk[d][0] * dilations[d] for d in range(R))
        return reduce("max", src[(n, c) + pos + tuple(rest[R:])], rk)

    # Axes after the spatial ones (blocked channel lanes) pass through.
    return compute(x.shape[:2] + out_sp + x.shape[2 + R:], fn, "max_pool")


def _window_count(o, k, stride, dilation, pad_begin, lo, hi):
    """Number of taps of window ``o`` whose position lies in ``[lo, hi)``."""
    total = None
    for t in range(k):
        pos = o * stride + (t * dilation - pad_begin)
        term = ex.select(ex.logical_and(ex.ge(pos, lo), ex.lt(pos, hi)), 1, 0)
        total = term if total is None else total + term
    return total


def _avg_pool_compute(x, kernel, strides, padding, dilations, ceil_mode, count_include_pad):
    R = len(kernel)
    out_sp = _pool_out(x, kernel, strides, padding, dilations, ceil_mode)
    src = _pool_source(x, kernel, strides, padding, dilations, out_sp, 0)
    rk = [reduce_axis(k, f"rk{d}") for d, k in enumerate(kernel)]

    def fn(n, c, *rest):
        pos = tuple(rest[d] * strides[d] + rk[d][0] * dilations[d] for d in range(R))
        return reduce("sum", src[(n, c) + pos + tuple(rest[R:])], rk)

    total = compute(x.shape[:2] + out_sp + x.shape[2 + R:], fn, "avg_pool_sum")

    def avg(n, c, *rest):
        count = None
        for d in range(R):
            size = x.shape[2 + d]
            lo, hi = (-padding[d], size + padding[R + d]) if count_include_pad else (0, size)
            cd = _window_count(rest[d], kernel[d], strides[d], dilations[d], padding[d], lo, hi)
            count = cd if count is None else count * cd
        return total[(n, c) + tuple(rest)] / ex.cast(x.dtype, count)

    return compute(total.shape, avg, "avg_pool")


def pool_reference(x, kernel, strides, padding, dilations, ceil_mode, mode, count_include_pad=False):
    """Pooling in numpy over a generously padded input, with a mask for averages."""
    R = x.ndim - 2
    out_sp = _pool_out(x, kernel, strides, padding, dilations, ceil_mode)
    ends = [max(0, (out_sp[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - (x.shape[2 + d] + padding[d]))
            for d in range(R)]
    widths = [(0, 0), (0, 0)] + [(padding[d], ends[d]) for d in range(R)]
    if mode == "max":
        fill = -np.inf if dtypes.as_dtype(x.dtype).is_float else np.iinfo(x.dtype).min
        xp = np.pad(x, widths, constant_values=fill)
        out = None
    else:
        xp = np.pad(x.astype(np.float64), widths)
        inside = np.zeros(xp.shape[2:])
        region = tuple(slice(0, x.shape[2 + d] + padding[d] + padding[R + d]) if count_include_pad
                       else slice(padding[d], padding[d] + x.shape[2 + d]) for d in range(R))
        inside[region] = 1
        out = np.zeros(x.shape[:2] + out_sp)
        count = np.zeros(out_sp)
    for taps in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(slice(t * dilations[d], t * dilations[d] + strides[d] * (out_sp[d] - 1) + 1, strides[d])
                   for d, t in enumerate(taps))
        patch = xp[(slice(None), slice(None)) + sl]
        if mode == "max":
            out = patch.copy() if out is None else np.maximum(out, patch)
        else:
            out += patch
            count += inside[sl]
    if mode == "avg":
        out = out / count
    return out.astype(x.dtype)


def _register(R: int):
    win = {"strides": None, "padding": 0, "dilations": 1}
    register_op(OpDef(
        f"conv{R}d", _conv_infer(R), conv_reference, _conv_compute(R),
        attrs=dict(win, strides=1, groups=1), normalize=_normalize_window(R, False), num_inputs=(2, 3),
        doc=f"{R}-D convolution, channels first; weights (CO, C/groups, kernel...), optional bias.",
    ))
    register_op(OpDef(
        f"conv_transpose{R}d", _conv_t_infer(R), conv_transpose_reference, _conv_t_compute(R),
        attrs=dict(win, strides=1, groups=1, output_padding=0), normalize=_normalize_window(R, False),
        num_inputs=(2, 3),
        doc=f"{R}-D transposed convolution; weights (C, CO/groups, kernel...), optional bias.",
    ))
    pool = dict(win, kernel=None, ceil_mode=False)
    register_op(OpDef(
        f"max_pool{R}d", _pool_infer(R, "max"),
        lambda x, kernel, strides, padding, dilations, ceil_mode: pool_reference(
            x, kernel, strides, padding, dilations, ceil_mode, "max"),
        _max_pool_compute, attrs=pool, normalize=_normalize_window(R, True),
        doc=f"{R}-D max pooling; strides default to the kernel.",
    ))
    register_op(OpDef(
        f"avg_pool{R}d", _pool_infer(R, "avg"),
        lambda x, kernel, strides, padding, dilations, ceil_mode, count_include_pad: pool_reference(
            x, kernel, strides, padding, dilations, ceil_mode, "avg", count_include_pad),
        _avg_pool_compute, attrs=dict(pool, count_include_pad=False), normalize=_normalize_window(R, True),
        doc=f"{R}-D average pooling; padded positions count only with count_include_pad.",
    ))


for _rank in (1, 2, 3):
    _register(_rank)


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


# -- resize ---------------------------------------------------------------------------------

RESIZE_COORDS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                 "half_pixel_symmetric", "tf_crop_and_resize")


def symmetric_offset(out_len: int, in_len: int, scale: float) -> float:
    """half_pixel_symmetric's shift: the rounding of the output length spread evenly about the centre."""
    return in_len / 2 * (1 - out_len / (scale * in_len))
RESIZE_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _resize_normalize(types, a):
    x = types[0]
    sizes = tuple(int(d) for d in a["sizes"])
    if len(sizes) != x.rank or min(sizes, default=1) < 1:
        raise ShapeError(f"sizes {list(sizes)} must give every one of the {x.rank} axes a length >= 1")
    scales = tuple(float(v) for v in (a["scales"] or [out / inp if inp else 1.0 for out, inp in zip(sizes, x.shape)]))
    if len(scales) != x.rank or min(scales, default=1.0) <= 0:
        raise ShapeError(f"scales {list(scales)} must be one positive number per axis")
    if a["mode"] not in ("nearest", "linear", "cubic"):
        raise ShapeError(f"mode {a['mode']!r}: nearest, linear and cubic are supported")
    a["cubic_coeff_a"], a["exclude_outside"] = float(a["cubic_coeff_a"]), bool(a["exclude_outside"])
    if a["coordinate_mode"] not in RESIZE_COORDS:
        raise ShapeError(f"coordinate mode {a['coordinate_mode']!r}: one of {', '.join(RESIZE_COORDS)}")
    if a["nearest_mode"] not in RESIZE_NEAREST:
        raise ShapeError(f"nearest mode {a['nearest_mode']!r}: one of {', '.join(RESIZE_NEAREST)}")
    a["sizes"], a["scales"] = sizes, scales
    roi = a["roi"]
    if a["coordinate_mode"] == "tf_crop_and_resize":
        roi = tuple(float(v) for v in (roi if roi is not None else [0.0] * x.rank + [1.0] * x.rank))
        if len(roi) != 2 * x.rank:
            raise ShapeError(f"roi {list(roi)} must give a start for every axis, then an end for every axis")
    a["roi"] = roi if a["coordinate_mode"] == "tf_crop_and_resize" else None
    a["extrapolation_value"] = float(a["extrapolation_value"])
    return a


def crop_coordinate(i, out_len: int, in_len: int, start: float, end: float):
    """tf_crop_and_resize: output index ``i`` (a number, an array or an
    expression) spread over the region [start, end] of the input, in its own
    units (0 is the first element, 1 the last)."""
    if out_len > 1:
        return i * ((end - start) * (in_len - 1) / (out_len - 1)) + start * (in_len - 1)
    return i * 0.0 + 0.5 * (start + end) * (in_len - 1)


def _source_coordinate(i, out_len: int, in_len: int, scale: float, mode: str, roi=None):
    """Where output index ``i`` samples the input (float64), by ONNX's coordinate transformation
    (``roi``: the (start, end) of tf_crop_and_resize on this axis)."""
    f = ex.cast(dtypes.float64, i)
    c = lambda v: ex.const(v, dtypes.float64)  # noqa: E731
    if mode == "tf_crop_and_resize":
        return crop_coordinate(f, out_len, in_len, *roi)
    if mode == "align_corners":  # ONNX uses the unrounded resized length, in_len * scale
        resized = in_len * scale
        return f * c((in_len - 1) / (resized - 1)) if resized > 1 else c(0.0)
    if mode == "asymmetric":
        return f / c(scale)
    if mode == "tf_half_pixel_for_nn":
        return (f + c(0.5)) / c(scale)
    if mode == "pytorch_half_pixel" and out_len == 1:
        return c(0.0)
    if mode == "half_pixel_symmetric":
        return (f + c(0.5)) / c(scale) - c(0.5) + c(symmetric_offset(out_len, in_len, scale))
    return (f + c(0.5)) / c(scale) - c(0.5)  # half_pixel (and pytorch_half_pixel for longer axes)


def _clamp_index(v, n: int):
    return ex.minimum(ex.maximum(ex.cast(dtypes.int64, v), ex.const(0, dtypes.int64)), ex.const(n - 1, dtypes.int64))


def cubic_weights(t, a: float):
    """Keys' cubic convolution weights of the taps at floor - 1 .. floor + 2 for the
    fraction ``t`` in [0, 1) (works on numpy arrays and on expressions alike)."""
    u, v, w = t + 1, 1 - t, 2 - t
    return [((a * u - 5 * a) * u + 8 * a) * u - 4 * a, ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * v - (a + 3)) * v * v + 1, ((a * w - 5 * a) * w + 8 * a) * w - 4 * a]


def _resize_compute(x, sizes, scales, mode, coordinate_mode, nearest_mode, cubic_coeff_a=-0.75,
                    exclude_outside=False, roi=None, extrapolation_value=0.0):
    rank = len(sizes)
    crop = coordinate_mode == "tf_crop_and_resize"
    axes = [k for k in range(rank) if sizes[k] != x.shape[k] or scales[k] != 1.0 or crop]
    f64 = lambda v: ex.const(v, dtypes.float64)  # noqa: E731

    def source(i, k):
        return _source_coordinate(i[k], sizes[k], x.shape[k], scales[k], coordinate_mode,
                                  (roi[k], roi[rank + k]) if crop else None)

    def fn(*i):
        value = sample(*i)
        if not crop:
            return value
        outside = None  # a sample point off the input on any axis reads the extrapolation value
        for k in axes:
            src = source(i, k)
            off = ex.BinOp("or", ex.lt(src, f64(0.0)), ex.gt(src, f64(x.shape[k] - 1.0)))
            outside = off if outside is None else ex.BinOp("or", outside, off)
        return value if outside is None else ex.select(outside, ex.const(extrapolation_value, x.dtype), value)

    def sample(*i):
        if mode == "nearest":
            idx = list(i)
            for k in axes:
                src = source(i, k)
                half = ex.const(0.5, dtypes.float64)
                pick = {"floor": lambda v: ex.call("floor", v),
                        "ceil": lambda v: -ex.call("floor", -v),
                        "round_prefer_floor": lambda v: -ex.call("floor", half - v),
                        "round_prefer_ceil": lambda v: ex.call("floor", v + half)}[nearest_mode](src)
                idx[k] = _clamp_index(pick, x.shape[k])
            return x[tuple(idx)]
        corners = [(list(i), f64(1.0))]
        if mode == "cubic":  # a weighted sum over the 4^k taps around the source point (edges repeat)
            for k in axes:
                src = source(i, k)
                low = ex.call("floor", src)
                taps = [low + f64(d) for d in (-1.0, 0.0, 1.0, 2.0)]
                weights = cubic_weights(src - low, cubic_coeff_a)
                if exclude_outside:  # taps outside the input weigh nothing; the rest are renormalized
                    inside = [ex.select(ex.logical_and(ex.ge(p, f64(0.0)), ex.lt(p, f64(x.shape[k]))), w, f64(0.0))
                              for p, w in zip(taps, weights)]
                    total = inside[0] + inside[1] + inside[2] + inside[3]
                    weights = [w / total for w in inside]
                corners = [(idx[:k] + [_clamp_index(p, x.shape[k])] + idx[k + 1:], cw * w)
                           for idx, cw in corners for p, w in zip(taps, weights)]
            return _weighted_sum(x, corners)
        # linear: a weighted sum over the 2^k corners around the source point
        for k in axes:
            src = ex.maximum(source(i, k), ex.const(0.0, dtypes.float64))
            low = ex.call("floor", src)
            frac = src - low
            lo = _clamp_index(low, x.shape[k])
            hi = _clamp_index(low + ex.const(1.0, dtypes.float64), x.shape[k])
            grown = []
            for idx, w in corners:
                grown.append((idx[:k] + [lo] + idx[k + 1:], w * (ex.const(1.0, dtypes.float64) - frac)))
                grown.append((idx[:k] + [hi] + idx[k + 1:], w * frac))
            corners = grown
        return _weighted_sum(x, corners)

    return compute(sizes, fn, "resize")


def _weighted_sum(x, corners):
    total = None
    for idx, w in corners:
        term = ex.cast(dtypes.float64, x[tuple(idx)]) * w
        total = term if total is None else total + term
    return ex.cast(x.dtype, total)


def _resize_np(x, sizes, scales, mode, coordinate_mode, nearest_mode, cubic_coeff_a=-0.75, exclude_outside=False,
               roi=None, extrapolation_value=0.0):
    out = x.astype(np.float64)
    crop = coordinate_mode == "tf_crop_and_resize"
    outside = np.zeros(sizes, bool)
    for k in range(x.ndim):
        n, m = x.shape[k], sizes[k]
        if n == m and scales[k] == 1.0 and not crop:
            continue
        i = np.arange(m, dtype=np.float64)
        if crop:
            src = crop_coordinate(i, m, n, roi[k], roi[x.ndim + k])
            shape = [1] * x.ndim
            shape[k] = m
            outside = outside | ((src < 0) | (src > n - 1)).reshape(shape)
        elif coordinate_mode == "align_corners":
            resized = n * scales[k]
            src = i * ((n - 1) / (resized - 1)) if resized > 1 else np.zeros(m)
        elif coordinate_mode == "asymmetric":
            src = i / scales[k]
        elif coordinate_mode == "tf_half_pixel_for_nn":
            src = (i + 0.5) / scales[k]
        elif coordinate_mode == "pytorch_half_pixel" and m == 1:
            src = np.zeros(m)
        elif coordinate_mode == "half_pixel_symmetric":
            src = (i + 0.5) / scales[k] - 0.5 + symmetric_offset(m, n, scales[k])
        else:
            src = (i + 0.5) / scales[k] - 0.5
        if mode == "nearest":
            pick = {"floor": np.floor, "ceil": np.ceil, "round_prefer_floor": lambda v: np.ceil(v - 0.5),
                    "round_prefer_ceil": lambda v: np.floor(v + 0.5)}[nearest_mode](src)
            out = np.take(out, np.clip(pick, 0, n - 1).astype(np.int64), axis=k)
        elif mode == "cubic":
            low = np.floor(src)
            taps = [low + d for d in (-1, 0, 1, 2)]
            weights = cubic_weights(src - low, cubic_coeff_a)
            if exclude_outside:
                weights = [np.where((p >= 0) & (p < n), w, 0.0) for p, w in zip(taps, weights)]
                total = sum(weights)
                weights = [w / total for w in weights]
            shape = [1] * x.ndim
            shape[k] = m
            out = sum(np.take(out, np.clip(p, 0, n - 1).astype(np.int64), axis=k) * w.reshape(shape)
                      for p, w in zip(taps, weights))
        else:
            src = np.maximum(src, 0.0)
            low = np.floor(src)
            frac = src - low
            lo = np.clip(low, 0, n - 1).astype(np.int64)
            hi = np.clip(low + 1, 0, n - 1).astype(np.int64)
            shape = [1] * x.ndim
            shape[k] = m
            frac = frac.reshape(shape)
            out = np.take(out, lo, axis=k) * (1 - frac) + np.take(out, hi, axis=k) * frac
    if crop:
        out = np.where(outside, extrapolation_value, out)
    return out.astype(x.dtype)


def _resize_infer(types, a):
    if not types[0].dtype.is_float and a["mode"] != "nearest":
        raise ShapeError(f"{a['mode']} resize needs a float input")
    return [TensorType(a["sizes"], types[0].dtype)]


register_op(OpDef(
    "resize", _resize_infer, _resize_np, _resize_compute,
    attrs={"sizes": REQUIRED, "scales": None, "mode": "nearest", "coordinate_mode": "half_pixel",
           "nearest_mode": "round_prefer_floor", "cubic_coeff_a": -0.75, "exclude_outside": False, "roi": None,
           "extrapolation_value": 0.0},
    normalize=_resize_normalize,
    doc="Resize to ``sizes`` by nearest, (multi)linear or cubic (Keys, coefficient ``cubic_coeff_a``; "
        "``exclude_outside`` drops taps beyond the edges) sampling, with ONNX's coordinate transformations "
        "(half_pixel, pytorch_half_pixel, align_corners, asymmetric, tf_half_pixel_for_nn, half_pixel_symmetric; "
        "tf_crop_and_resize samples the region ``roi`` (starts, then ends, as fractions of each axis) and reads "
        "``extrapolation_value`` off the input).",
))
