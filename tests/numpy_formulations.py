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
    out = np.zeros(a.shape, dtype=np.result_type(a, b))
    for idx in np.ndindex(a.shape):
        x, y = int(a[idx]), int(b[idx])
        out[idx] = 0 if y == 0 else int(x / y) if abs(x) < 2**52 else 0
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


def _conv(x, w, bias=None, strides=(1, 1), padding=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    pt, pl, pb, pr = padding
    oh = (h + pt + pb - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pl + pr - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, co, oh, ow))
    for b in range(n):
        for o in range(co):
            g = o // (co // groups)
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                hh = i * strides[0] + p * dilations[0] - pt
                                ww = j * strides[1] + q * dilations[1] - pl
                                if 0 <= hh < h and 0 <= ww < wd:
                                    acc += float(x[b, g * cg + ci, hh, ww]) * float(w[o, ci, p, q])
                    out[b, o, i, j] = acc + (float(bias[o]) if bias is not None else 0.0)
    return out


def _out_len(size, k, s, pb, pe, d, ceil):
    span = size + pb + pe - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + pb:
        out -= 1
    return out


def _pool(mode):
    def run(x, kernel, strides=None, padding=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=False,
            count_include_pad=False):
        strides = strides or kernel
        n, c, h, w = x.shape
        pt, pl, pb, pr = padding
        oh = _out_len(h, kernel[0], strides[0], pt, pb, dilations[0], ceil_mode)
        ow = _out_len(w, kernel[1], strides[1], pl, pr, dilations[1], ceil_mode)
        out = np.zeros((n, c, oh, ow))
        for i in range(oh):
            for j in range(ow):
                vals, count = [], 0
                for p in range(kernel[0]):
                    for q in range(kernel[1]):
                        hh = i * strides[0] + p * dilations[0] - pt
                        ww = j * strides[1] + q * dilations[1] - pl
                        if 0 <= hh < h and 0 <= ww < w:
                            vals.append(x[:, :, hh, ww].astype(np.float64))
                            count += 1
                        elif -pt <= hh < h + pb and -pl <= ww < w + pr and count_include_pad:
                            count += 1
                if mode == "max":
                    out[:, :, i, j] = np.max(vals, axis=0)
                else:
                    out[:, :, i, j] = np.sum(vals, axis=0) / count
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


def _pad(x, pads, value=0.0):
    rank = x.ndim
    shape = tuple(x.shape[k] + pads[k] + pads[rank + k] for k in range(rank))
    out = np.full(shape, value, dtype=np.float64)
    for idx in np.ndindex(*shape):
        src = tuple(i - pads[k] for k, i in enumerate(idx))
        if all(0 <= s < x.shape[k] for k, s in enumerate(src)):
            out[idx] = x[src]
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
    if dtype.startswith("int") and x.dtype.kind == "f":
        return np.trunc(x).astype(dtype)
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


FORMULATIONS = {
    "neg": lambda x: -x.astype(np.float64),
    "abs": lambda x: np.array([abs(v) for v in x.reshape(-1).tolist()]).reshape(x.shape),
    "exp": _per_element(math.exp), "log": _per_element(math.log), "sqrt": _per_element(math.sqrt),
    "rsqrt": _per_element(lambda v: 1 / math.sqrt(v)), "reciprocal": _per_element(lambda v: 1 / v),
    "tanh": _per_element(math.tanh), "sigmoid": _per_element(lambda v: 1 / (1 + math.exp(-v))),
    "relu": lambda x: np.where(x > 0, x, 0), "erf": _per_element(math.erf),
    "leaky_relu": lambda x, alpha: np.where(x > 0, x, alpha * x.astype(np.float64)),
    "clip": _clip, "gelu": _gelu, "cast": _cast,
    "add": lambda a, b: a.astype(np.float64) + b, "sub": lambda a, b: a.astype(np.float64) - b,
    "mul": lambda a, b: a.astype(np.float64) * b, "div": _div,
    "pow": lambda a, b: a.astype(np.float64) ** b,
    "maximum": lambda a, b: np.where(a >= b, a, b), "minimum": lambda a, b: np.where(a <= b, a, b),
    "less": lambda a, b: a < b, "greater": lambda a, b: a > b, "equal": lambda a, b: a == b,
    "where": lambda c, a, b: np.choose(np.broadcast_to(c, np.broadcast_shapes(c.shape, a.shape, b.shape))
                                       .astype(int), np.broadcast_arrays(b, a, np.broadcast_to(
                                           a, np.broadcast_shapes(c.shape, a.shape, b.shape)))[:2]),
    "sum": _reduce(lambda r: np.add.reduce(r.astype(np.float64))),
    "mean": _reduce(lambda r: math.fsum(r.tolist()) / len(r)),
    "max": _reduce(lambda r: max(r.tolist())), "min": _reduce(lambda r: min(r.tolist())),
    "matmul": _matmul, "conv2d": _conv, "max_pool2d": _pool("max"), "avg_pool2d": _pool("avg"),
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
