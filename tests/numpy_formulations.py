"""Independent numpy formulations of every op, written apart from the op
registry, so that each op's ``reference`` is checked against a second reading
of its semantics (per-element Python math, explicit loops, einsum...)."""

from __future__ import annotations

import math

import numpy as np


def _per_element(fn):
    def run(x, **_):
        out = np.array([fn(float(v)) for v in x.reshape(-1)], dtype=np.float64)
        return out.reshape(x.shape)
    return run


def _gelu(x, approximate):
    if approximate == "tanh":
        return _per_element(lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))))(x)
    return _per_element(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)


def _int_div(a, b):
    a, b = np.broadcast_arrays(a, b)
    out = np.zeros(a.shape, dtype=object)  # exact quotients, wrapped to the width by the comparison
    for idx in np.ndindex(a.shape):
        x, y = int(a[idx]), int(b[idx])
        out[idx] = 0 if y == 0 else (abs(x) // abs(y)) * (1 if (x < 0) == (y < 0) else -1)
    return out


def _div(a, b):
    return _int_div(a, b) if a.dtype.kind in "iu" else a.astype(np.float64) / b


def _reduce(fn):
    def run(x, axes=None, keepdims=False):
        axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in np.atleast_1d(axes))
        moved = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
        flat = moved.reshape(moved.shape[: x.ndim - len(axes)] + (-1,))
        out = np.apply_along_axis(fn, -1, flat) if flat.size else np.zeros(flat.shape[:-1], x.dtype)
        if keepdims:
            out = out.reshape(tuple(1 if k in axes else d for k, d in enumerate(x.shape)))
        return out
    return run


def _prod(x, axes=None, keepdims=False):
    """Products of Python numbers along the axes (exact for integers; 1 when empty)."""
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in np.atleast_1d(axes))
    moved = np.moveaxis(_exact(x), axes, tuple(range(x.ndim - len(axes), x.ndim)))
    flat = moved.reshape(moved.shape[: x.ndim - len(axes)] + (-1,))
    out = np.empty(flat.shape[:-1], dtype=flat.dtype)
    for idx in np.ndindex(out.shape):
        out[idx] = math.prod(flat[idx].tolist())
    if keepdims:
        out = out.reshape(tuple(1 if k in axes else d for k, d in enumerate(x.shape)))
    return out


def _out_len(size, k, s, pb, pe, d, ceil=False):
    span = size + pb + pe - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + pb:
        out -= 1
    return out


def _conv(x, w, bias=None, strides=1, padding=0, dilations=1, groups=1):
    """Direct convolution: for each output position, sum over the window."""
    R = x.ndim - 2
    strides = (strides,) * R if isinstance(strides, int) else strides
    dilations = (dilations,) * R if isinstance(dilations, int) else dilations
    padding = (padding,) * 2 * R if isinstance(padding, int) else padding
    co, cg = w.shape[:2]
    K = w.shape[2:]
    out_sp = [_out_len(x.shape[2 + d], K[d], strides[d], padding[d], padding[R + d], dilations[d]) for d in range(R)]
    out = np.zeros((x.shape[0], co) + tuple(out_sp))
    for b in range(x.shape[0]):
        for o in range(co):
            g = o // (co // groups)
            for pos in np.ndindex(*out_sp):
                acc = 0.0
                for ci in range(cg):
                    for taps in np.ndindex(*K):
                        src = [pos[d] * strides[d] + taps[d] * dilations[d] - padding[d] for d in range(R)]
                        if all(0 <= src[d] < x.shape[2 + d] for d in range(R)):
                            acc += float(x[(b, g * cg + ci) + tuple(src)]) * float(w[(o, ci) + taps])
                out[(b, o) + pos] = acc + (float(bias[o]) if bias is not None else 0.0)
    return out


def _conv_transpose(x, w, bias=None, strides=1, padding=0, dilations=1, groups=1, output_padding=0):
    """Transposed convolution by its definition: each input scatters into the output."""
    R = x.ndim - 2
    c, cog = w.shape[:2]
    K = w.shape[2:]
    cg = c // groups
    out_sp = [(x.shape[2 + d] - 1) * strides[d] - padding[d] - padding[R + d] + dilations[d] * (K[d] - 1)
              + output_padding[d] + 1 for d in range(R)]
    out = np.zeros((x.shape[0], cog * groups) + tuple(out_sp))
    for b in range(x.shape[0]):
        for ci in range(c):
            g = ci // cg
            for pos in np.ndindex(*x.shape[2:]):
                for o in range(cog):
                    for taps in np.ndindex(*K):
                        dst = [pos[d] * strides[d] + taps[d] * dilations[d] - padding[d] for d in range(R)]
                        if all(0 <= dst[d] < out_sp[d] for d in range(R)):
                            out[(b, g * cog + o) + tuple(dst)] += float(x[(b, ci) + pos]) * float(w[(ci, o) + taps])
    if bias is not None:
        out += bias.reshape((1, -1) + (1,) * R)
    return out


def _pool(mode):
    def run(x, kernel, strides=None, padding=0, dilations=1, ceil_mode=False, count_include_pad=False):
        R = x.ndim - 2
        strides = strides or kernel
        out_sp = [_out_len(x.shape[2 + d], kernel[d], strides[d], padding[d], padding[R + d], dilations[d], ceil_mode)
                  for d in range(R)]
        out = np.zeros(x.shape[:2] + tuple(out_sp))
        for pos in np.ndindex(*out_sp):
            vals, count = [], 0
            for taps in np.ndindex(*kernel):
                src = [pos[d] * strides[d] + taps[d] * dilations[d] - padding[d] for d in range(R)]
                if all(0 <= src[d] < x.shape[2 + d] for d in range(R)):
                    vals.append(x[(slice(None), slice(None)) + tuple(src)].astype(np.float64))
                    count += 1
                elif count_include_pad and all(-padding[d] <= src[d] < x.shape[2 + d] + padding[R + d]
                                               for d in range(R)):
                    count += 1
            if mode == "max":
                out[(slice(None), slice(None)) + pos] = np.max(vals, axis=0)
            else:
                out[(slice(None), slice(None)) + pos] = np.sum(vals, axis=0) / count
        return out
    return run


def _softmax(x, axis, log=False):
    out = np.zeros(x.shape)
    for idx in np.ndindex(*[d for k, d in enumerate(x.shape) if k != axis]):
        sl = idx[:axis] + (slice(None),) + idx[axis:]
        row = [float(v) for v in x[sl]]
        m = max(row)
        z = sum(math.exp(v - m) for v in row)
        out[sl] = [(v - m - math.log(z)) if log else math.exp(v - m) / z for v in row]
    return out


def _layer_norm(x, scale=None, bias=None, axis=-1, epsilon=1e-5):
    lead = x.shape[:axis]
    flat = x.reshape(int(np.prod(lead)) if lead else 1, -1).astype(np.float64)
    mu = flat.mean(axis=1, keepdims=True)
    sd = np.sqrt(((flat - mu) ** 2).mean(axis=1, keepdims=True) + epsilon)
    y = ((flat - mu) / sd).reshape(x.shape)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def _batch_norm(x, scale, bias, mean, var, epsilon):
    y = np.empty(x.shape)
    for c in range(x.shape[1]):
        y[:, c] = (x[:, c] - mean[c]) * (scale[c] / math.sqrt(var[c] + epsilon)) + bias[c]
    return y


def _lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    y = np.empty(x.shape)
    C = x.shape[1]
    for c in range(C):
        lo, hi = c - (size - 1) // 2, c + math.ceil((size - 1) / 2)
        sq = sum(x[:, k].astype(np.float64) ** 2 for k in range(max(lo, 0), min(hi, C - 1) + 1))
        y[:, c] = x[:, c] / (bias + alpha / size * sq) ** beta
    return y


def _slice(x, starts, ends, axes=None, steps=None):
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    idx = [list(range(d)) for d in x.shape]
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[a] = list(range(x.shape[a]))[slice(s, e, st)]
    return x[np.ix_(*idx)] if x.ndim else x


def _pad(x, pads, value=0.0, mode="constant"):
    rank = x.ndim
    shape = tuple(x.shape[k] + pads[k] + pads[rank + k] for k in range(rank))
    out = np.full(shape, value, dtype=np.float64)
    for idx in np.ndindex(*shape):
        src = [i - pads[k] for k, i in enumerate(idx)]
        if mode == "edge":
            src = [min(max(s, 0), x.shape[k] - 1) for k, s in enumerate(src)]
        elif mode == "reflect":
            for k, s in enumerate(src):
                n = x.shape[k] - 1
                while s < 0 or s > n:
                    s = -s if s < 0 else 2 * n - s
                src[k] = s
        if all(0 <= s < x.shape[k] for k, s in enumerate(src)):
            out[idx] = x[tuple(src)]
    return out


def _take(x, indices, axis=0):
    d = x.shape[axis]
    moved = np.moveaxis(x, axis, 0)
    picked = np.array([moved[min(max(int(i) + (d if i < 0 else 0), 0), d - 1)] for i in indices.reshape(-1)])
    picked = picked.reshape(indices.shape + moved.shape[1:])
    return np.moveaxis(picked, list(range(indices.ndim)), list(range(axis, axis + indices.ndim)))


def _tile(x, repeats):
    out = x
    for axis, r in enumerate(repeats):
        out = np.concatenate([out] * r, axis=axis) if r else np.take(out, [], axis=axis)
    return out


def _matmul(a, b):
    aa = a[None, :] if a.ndim == 1 else a
    bb = b[:, None] if b.ndim == 1 else b
    out = np.einsum("...ik,...kj->...ij", aa.astype(np.float64), bb.astype(np.float64))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def _cast(x, dtype):
    if dtype == "bool":
        return np.array([v != 0 for v in x.reshape(-1)], dtype=bool).reshape(x.shape)
    if np.dtype(dtype).kind in "iu" and x.dtype.kind == "f":  # saturating, NaN to 0
        info = np.iinfo(dtype)
        return np.array([0 if v != v else min(max(math.trunc(v), int(info.min)), int(info.max))
                         if abs(v) != math.inf else (info.max if v > 0 else info.min)
                         for v in x.reshape(-1).tolist()], dtype=object).reshape(x.shape)
    if np.dtype(dtype).kind in "iu":
        return x.astype(object)  # exact Python ints; the comparison wraps them to the width
    return x.astype(dtype)


def _concat(*xs, axis=0):
    axis %= xs[0].ndim
    pieces = [np.moveaxis(x, axis, 0) for x in xs]
    return np.moveaxis(np.array([row for p in pieces for row in p]).reshape(
        (sum(x.shape[axis] for x in xs),) + pieces[0].shape[1:]), 0, axis)


def _clip(x, min=None, max=None):
    out = x.astype(np.float64)
    if min is not None:
        out = np.where(out < min, min, out)
    if max is not None:
        out = np.where(out > max, max, out)
    return out


def _pairwise(fn):
    """Apply a Python function of two scalars elementwise, with broadcasting."""
    def run(a, b):
        x, y = np.broadcast_arrays(a, b)
        out = [fn(p, q) for p, q in zip(x.reshape(-1).tolist(), y.reshape(-1).tolist())]
        return np.array(out, dtype=np.float64 if a.dtype.kind == "f" else object).reshape(x.shape)
    return run


def _exact(x):
    """float64 for floats, Python ints for integers: arithmetic without rounding or wrapping."""
    return x.astype(np.float64) if x.dtype.kind == "f" else x.astype(object)


def _per_int(x, fn):
    """``fn`` on each element as a Python int (exact), kept as an object array."""
    return np.array([fn(v) for v in x.reshape(-1).tolist()], dtype=object).reshape(x.shape)


def _shift(fn):
    """A shift on Python ints; amounts outside [0, bits) shift every bit out."""
    def run(a, b):
        bits = a.dtype.itemsize * 8
        x, y = np.broadcast_arrays(a, b)
        out = [fn(p, q) if 0 <= q < bits else (-1 if p < 0 and fn(-1, 1) == -1 else 0)
               for p, q in zip(x.reshape(-1).tolist(), y.reshape(-1).tolist())]
        return np.array(out, dtype=object).reshape(x.shape)
    return run


def _py_floor_div(p, q):
    if isinstance(p, float):
        return float(math.floor(p / q))
    return 0 if q == 0 else p // q


def _py_mod(p, q):
    if isinstance(p, float):
        return p % q  # Python floats: fmod, in the divisor's sign
    return 0 if q == 0 else p % q


def _arg(pick):
    """First index of the extreme along axis, by Python loops over each line."""
    def run(x, axis, keepdims=False, select_last=False):
        moved = np.moveaxis(x, axis, -1)
        out = np.empty(moved.shape[:-1], dtype=np.int64)
        for idx in np.ndindex(out.shape):
            line = moved[idx].tolist()
            nan = [k for k, v in enumerate(line) if v != v]
            hits = nan or [k for k, v in enumerate(line) if v == pick(line)]
            out[idx] = hits[-1] if select_last else hits[0]
        return np.expand_dims(out, axis) if keepdims else out
    return run


def _cumulative(combine, identity):
    """Running sums or products by Python loops, exact for integers."""
    def run(x, axis, exclusive=False, reverse=False):
        moved = np.moveaxis(_exact(x), axis, -1)
        out = np.zeros_like(moved)
        n = moved.shape[-1]
        for i in range(n):
            js = [j for j in range(n) if (j > i if exclusive else j >= i)] if reverse else \
                [j for j in range(n) if (j < i if exclusive else j <= i)]
            acc = np.full(moved.shape[:-1], identity, dtype=moved.dtype)
            for j in js:
                acc = combine(acc, moved[..., j])
            out[..., i] = acc
        return np.moveaxis(out, -1, axis)
    return run


def _trilu(x, k=0, upper=True):
    rows, cols = np.indices(x.shape[-2:])
    keep = (cols - rows >= k) if upper else (cols - rows <= k)
    return np.where(keep, x, 0)


def _rms_norm(x, scale, axis=-1, epsilon=1e-6):
    axes = tuple(range(axis % x.ndim, x.ndim))
    xd = x.astype(np.float64)
    ms = np.apply_over_axes(np.sum, xd * xd, axes) / np.prod([x.shape[k] for k in axes])
    return xd / np.sqrt(ms + epsilon) * scale


def _topk(x, k, axis=-1, largest=True):
    """Per line: Python's stable sort of (value, index) pairs."""
    moved = np.moveaxis(x, axis, -1)
    vals = np.empty(moved.shape[:-1] + (k,), dtype=x.dtype)
    idxs = np.empty(moved.shape[:-1] + (k,), dtype=np.int64)
    for line in np.ndindex(moved.shape[:-1]):
        items = sorted(enumerate(moved[line].tolist()), key=lambda p: -p[1] if largest else p[1])
        vals[line] = [v for _, v in items[:k]]
        idxs[line] = [i for i, _ in items[:k]]
    return np.moveaxis(vals, -1, axis), np.moveaxis(idxs, -1, axis)


def _index_copy(data, index, updates, axis=0):
    """Each position of the axis, one at a time: the slice of the last index that names it."""
    at = axis % data.ndim
    length = data.shape[at]
    out = data.copy()
    rows, new_rows = np.moveaxis(out, at, 0), np.moveaxis(updates, at, 0)  # (views: rows writes into out)
    for p in range(length):
        writers = [j for j, q in enumerate(index.tolist()) if q % length == p]
        if writers:
            rows[p] = new_rows[writers[-1]]
    return out


def _gather_elements(x, indices, axis=0):
    out = np.empty(indices.shape, dtype=x.dtype)
    d = x.shape[axis]
    for i in np.ndindex(indices.shape):
        j = int(indices[i])
        src = list(i)
        src[axis] = j + d if j < 0 else j
        out[i] = x[tuple(src)]
    return out


def _keys_kernel(d, a):
    """Keys' cubic convolution kernel at distance ``d``."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def _resize(x, sizes, scales=None, mode="nearest", coordinate_mode="half_pixel", nearest_mode="round_prefer_floor",
            cubic_coeff_a=-0.75, exclude_outside=False, roi=None, extrapolation_value=0.0):
    """Per output element, per axis, in Python floats (ONNX's formulas)."""
    scales = scales or [m / n for m, n in zip(sizes, x.shape)]
    crop = coordinate_mode == "tf_crop_and_resize"

    def source(i, n, m, s, k=0):
        if crop:
            start, end = roi[k], roi[x.ndim + k]
            return start * (n - 1) + i * (end - start) * (n - 1) / (m - 1) if m > 1 else (start + end) / 2 * (n - 1)
        if coordinate_mode == "align_corners":
            return i * (n - 1) / (n * s - 1) if n * s > 1 else 0.0
        if coordinate_mode == "asymmetric":
            return i / s
        if coordinate_mode == "tf_half_pixel_for_nn":
            return (i + 0.5) / s
        if coordinate_mode == "pytorch_half_pixel" and m == 1:
            return 0.0
        if coordinate_mode == "half_pixel_symmetric":  # ONNX: offset = centre * (1 - m / (n * s))
            return (n / 2) * (1 - m / (n * s)) + (i + 0.5) / s - 0.5
        return (i + 0.5) / s - 0.5

    def near(v):
        return {"floor": math.floor, "ceil": math.ceil, "round_prefer_floor": lambda t: math.ceil(t - 0.5),
                "round_prefer_ceil": lambda t: math.floor(t + 0.5)}[nearest_mode](v)

    out = np.empty(sizes)
    xd = x.astype(np.float64)
    for o in np.ndindex(*sizes):
        corners = [((), 1.0)]
        off = False
        for k, (i, n, m) in enumerate(zip(o, x.shape, sizes)):
            if n == m and scales[k] == 1.0 and not crop:
                corners = [(c + (i,), w) for c, w in corners]
                continue
            src = source(i, n, m, scales[k], k)
            off = off or crop and not 0 <= src <= n - 1
            if mode == "nearest":
                corners = [(c + (min(max(near(src), 0), n - 1),), w) for c, w in corners]
            elif mode == "cubic":
                taps = [math.floor(src) + d for d in (-1, 0, 1, 2)]
                ws = [_keys_kernel(src - j, cubic_coeff_a) for j in taps]
                if exclude_outside:
                    ws = [w if 0 <= j < n else 0.0 for j, w in zip(taps, ws)]
                    ws = [w / sum(ws) for w in ws]
                corners = [(c + (min(max(j, 0), n - 1),), w * wj) for c, w in corners for j, wj in zip(taps, ws)]
            else:
                src = max(src, 0.0)
                lo = math.floor(src)
                f = src - lo
                corners = [(c + (min(lo, n - 1),), w * (1 - f)) for c, w in corners] + \
                          [(c + (min(lo + 1, n - 1),), w * f) for c, w in corners]
        out[o] = extrapolation_value if off else sum(w * xd[c] for c, w in corners)
    return out


def _index_unblock(x, channels=None):
    """(N, C/b, H, W, b) -> (N, C, H, W), by the layout's definition: channel c is lane c % b of block c // b
    (``channels``: the first ones, where the last block is padded)."""
    b = x.shape[-1]
    c = np.arange(x.shape[1] * b if channels is None else channels)
    return np.moveaxis(x[:, c // b, :, :, c % b], 0, 1)


def _index_block(x, block):
    """(N, C, H, W) -> (N, ceil(C/block), H, W, block): lane l of block j is channel j * block + l, or zero
    past the last channel."""
    blocks = -(-x.shape[1] // block)
    j, lane = np.meshgrid(np.arange(blocks), np.arange(block), indexing="ij")
    c = j * block + lane
    out = np.where((c < x.shape[1])[None, :, :, None, None], x[:, np.minimum(c, x.shape[1] - 1)], 0)
    return np.moveaxis(out, 2, -1).astype(x.dtype)


def _conv_nchwc(x, w, bias=None, **attrs):
    ob, ib, kh, kw, bi, bo = w.shape
    co, ci = np.arange(ob * bo), np.arange(ib * bi)
    plain_w = w[(co // bo)[:, None], (ci // bi)[None, :], :, :, (ci % bi)[None, :], (co % bo)[:, None]]
    plain_x = _index_unblock(x) if x.ndim == 5 else x
    out = _conv(plain_x, plain_w, None if bias is None else bias.reshape(-1), **attrs)
    return _index_block(out, bo)


def _blocked_pool(mode):
    def run(x, **attrs):
        return _index_block(_pool(mode)(_index_unblock(x), **attrs), x.shape[-1])

    return run


FORMULATIONS = {
    **{f"conv{r}d": _conv for r in (1, 2, 3)},
    **{f"conv_transpose{r}d": _conv_transpose for r in (1, 2, 3)},
    **{f"max_pool{r}d": _pool("max") for r in (1, 2, 3)},
    "conv2d_nchwc": _conv_nchwc, "to_nchwc": _index_block, "from_nchwc": _index_unblock,
    "max_pool2d_nchwc": _blocked_pool("max"), "avg_pool2d_nchwc": _blocked_pool("avg"),
    "global_avg_pool_nchwc": lambda x: x.astype(np.float64).mean(axis=(2, 3), keepdims=True),
    **{f"avg_pool{r}d": _pool("avg") for r in (1, 2, 3)},
    "neg": lambda x: -x.astype(np.float64),
    "abs": lambda x: np.array([abs(v) for v in x.reshape(-1).tolist()]).reshape(x.shape),
    "exp": _per_element(math.exp), "log": _per_element(math.log), "sqrt": _per_element(math.sqrt),
    "rsqrt": _per_element(lambda v: 1 / math.sqrt(v)), "reciprocal": _per_element(lambda v: 1 / v),
    "tanh": _per_element(math.tanh), "sigmoid": _per_element(lambda v: 1 / (1 + math.exp(-v))),
    "relu": lambda x: np.where(x > 0, x, 0), "erf": _per_element(math.erf),
    "leaky_relu": lambda x, alpha: np.where(x > 0, x, alpha * x.astype(np.float64)),
    "clip": _clip, "gelu": _gelu, "cast": _cast,
    "add": lambda a, b: _exact(a) + _exact(b), "sub": lambda a, b: _exact(a) - _exact(b),
    "mul": lambda a, b: _exact(a) * _exact(b), "div": _div,
    "pow": lambda a, b: a.astype(np.float64) ** b,
    "maximum": lambda a, b: np.where(a >= b, a, b), "minimum": lambda a, b: np.where(a <= b, a, b),
    "less": lambda a, b: a < b, "greater": lambda a, b: a > b, "equal": lambda a, b: a == b,
    "less_equal": _pairwise(lambda p, q: p <= q), "greater_equal": _pairwise(lambda p, q: p >= q),
    "not_equal": _pairwise(lambda p, q: p != q), "floor": _per_element(math.floor),
    "sin": _per_element(math.sin), "cos": _per_element(math.cos),
    **{name: _per_element(getattr(math, name)) for name in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh",
                                                            "acosh", "atanh", "ceil")},
    "round": _per_element(round),
    "argmax": _arg(max), "argmin": _arg(min), "topk": _topk, "gather_elements": _gather_elements,
    "index_copy": _index_copy,
    "cumsum": _cumulative(np.add, 0), "cumprod": _cumulative(np.multiply, 1),
    "prod": _prod, "trilu": _trilu, "rms_norm": _rms_norm, "resize": _resize,
    "silu": _per_element(lambda v: v / (1 + math.exp(-v))),
    "floor_div": _pairwise(_py_floor_div), "mod": _pairwise(_py_mod),
    "bitcast": lambda x, dtype: np.frombuffer(x.tobytes(), dtype=dtype).reshape(x.shape),
    "iota": lambda length, start, step, dtype: np.array([start + k * step for k in range(length)], dtype=dtype),
    "fmod": _pairwise(lambda p, q: math.fmod(p, q) if isinstance(p, float) else (0 if q == 0 else
                                                                               int(math.fmod(p, q)))),
    "logical_and": _pairwise(lambda p, q: p and q), "logical_or": _pairwise(lambda p, q: p or q),
    "logical_xor": _pairwise(lambda p, q: p != q), "logical_not": lambda x: ~x,
    "bitwise_and": _pairwise(lambda p, q: p & q), "bitwise_or": _pairwise(lambda p, q: p | q),
    "bitwise_xor": _pairwise(lambda p, q: p ^ q), "bitwise_not": lambda x: _per_int(x, lambda v: -v - 1),
    "shift_left": _shift(lambda p, q: p << q), "shift_right": _shift(lambda p, q: p >> q),
    "where": lambda c, a, b: np.choose(np.broadcast_to(c, np.broadcast_shapes(c.shape, a.shape, b.shape))
                                       .astype(int), np.broadcast_arrays(b, a, np.broadcast_to(
                                           a, np.broadcast_shapes(c.shape, a.shape, b.shape)))[:2]),
    "sum": _reduce(lambda r: np.add.reduce(r.astype(np.float64))),
    "mean": _reduce(lambda r: math.fsum(r.tolist()) / len(r)),
    "max": _reduce(lambda r: max(r.tolist())), "min": _reduce(lambda r: min(r.tolist())),
    "matmul": _matmul, "take": _take, "tile": _tile,
    "global_avg_pool": lambda x: x.reshape(x.shape[:2] + (-1,)).astype(np.float64).mean(-1).reshape(
        x.shape[:2] + (1,) * (x.ndim - 2)),
    "reshape": lambda x, shape: np.array(x.reshape(-1).tolist(), dtype=x.dtype).reshape(shape),
    "transpose": lambda x, perm=None: np.einsum(x, list(range(x.ndim)),
                                                list(perm if perm is not None else reversed(range(x.ndim)))),
    "concat": _concat, "slice": _slice, "pad": _pad,
    "broadcast_to": lambda x, shape: x * np.ones(shape, x.dtype),
    "squeeze": lambda x, axes=None: x.reshape(tuple(d for k, d in enumerate(x.shape) if (
        d != 1 if axes is None else k not in [a % x.ndim for a in axes]))),
    "unsqueeze": lambda x, axes: np.expand_dims(x, tuple(axes)),
    "softmax": lambda x, axis=-1: _softmax(x, axis % x.ndim),
    "log_softmax": lambda x, axis=-1: _softmax(x, axis % x.ndim, log=True),
    "layer_norm": _layer_norm, "batch_norm": _batch_norm, "lrn": _lrn,
}
