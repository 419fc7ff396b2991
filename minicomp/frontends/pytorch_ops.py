"""Converters from core ATen ops to minicomp ops (see ``pytorch.py``).

Each function takes the context and the op's arguments by their ATen
schema names (``args["self"]``, ``args["dim"]``) and returns the minicomp
tensor(s). Scalars in arithmetic follow torch's type promotion through
``ctx.out_dtype()``, the dtype torch recorded for the node.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import UnsupportedError
from minicomp.frontends.builder import Tensor
from minicomp.frontends.compose import attend, group_norm, moments, repeat_heads
from minicomp.frontends.pytorch import register_torch_op
from minicomp.ir.dims import Size, lower, upper


def _axis(dim, ndim: int) -> int:
    return int(dim) % max(ndim, 1)


def _axes(dims, ndim: int) -> list[int]:
    """A dim argument (int, list, empty list or None = every axis) as sorted axes."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({_axis(d, ndim) for d in dims})


def _same(ctx, x: Tensor) -> Tensor:
    """``x`` in the node's output dtype (a cast only where it differs)."""
    return x if x.dtype.name == ctx.out_dtype() else ctx.op("cast", x, dtype=ctx.out_dtype())


# -- elementwise arithmetic ---------------------------------------------------------


def _binary(op: str, scaled: bool = False):
    """``op(self, other)``, both in the output dtype; ``alpha`` scales ``other`` (add, sub)."""

    def convert(ctx, a):
        dtype = ctx.out_dtype()
        x, y = ctx.tensor(a["self"], dtype), a["other"]
        alpha = a.get("alpha", 1) if scaled else 1
        if not isinstance(y, Tensor):
            y = y * alpha
        y = ctx.tensor(y, dtype)
        if isinstance(a["other"], Tensor) and alpha != 1:
            y = ctx.op("mul", y, ctx.tensor(alpha, dtype))
        return ctx.op(op, x, y)

    return convert


register_torch_op("aten.add.Tensor")(_binary("add", scaled=True))
register_torch_op("aten.sub.Tensor")(_binary("sub", scaled=True))
register_torch_op("aten.mul.Tensor")(_binary("mul"))
register_torch_op("aten.div.Tensor")(_binary("div"))
register_torch_op("aten.maximum")(_binary("maximum"))
register_torch_op("aten.minimum")(_binary("minimum"))
register_torch_op("aten.remainder")(_binary("mod"))
register_torch_op("aten.fmod")(_binary("fmod"))


@register_torch_op("aten.div.Tensor_mode")
def _div_mode(ctx, a):
    dtype, mode = ctx.out_dtype(), a["rounding_mode"]
    x, y = ctx.tensor(a["self"], dtype), ctx.tensor(a["other"], dtype)
    if mode is None:
        return ctx.op("div", x, y)
    if mode == "floor":
        return ctx.op("floor_div", x, y) if dtype not in ("float32", "float64", "float16") else \
            ctx.op("floor", ctx.op("div", x, y))
    # trunc: exact for integers (x - fmod(x, y) divides by y); toward zero for floats
    if dtype in ("float32", "float64", "float16"):
        q = ctx.op("div", x, y)
        down = ctx.op("floor", q)
        up = ctx.op("neg", ctx.op("floor", ctx.op("neg", q)))
        return ctx.op("where", ctx.op("less", q, ctx.tensor(0, dtype)), up, down)
    return ctx.op("floor_div", ctx.op("sub", x, ctx.op("fmod", x, y)), y)


@register_torch_op("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def _pow(ctx, a):
    dtype = ctx.out_dtype()
    base = ctx.tensor(a["self"], dtype)
    exp = a["exponent"]
    if not isinstance(exp, Tensor) and exp == 2:
        return ctx.op("mul", base, base)  # exact, and no pow call in the kernel
    if not isinstance(exp, Tensor) and exp == 0.5:
        return ctx.op("sqrt", base)
    return ctx.op("pow", base, ctx.tensor(exp, dtype))


def _unary(op: str):
    def convert(ctx, a):
        return ctx.op(op, ctx.tensor(a["self"], ctx.out_dtype()))

    return convert


for _op, _names in {
    "neg": ["aten.neg"], "abs": ["aten.abs"], "exp": ["aten.exp"], "log": ["aten.log"], "sqrt": ["aten.sqrt"],
    "rsqrt": ["aten.rsqrt"], "reciprocal": ["aten.reciprocal"], "sigmoid": ["aten.sigmoid"],
    "tanh": ["aten.tanh"], "relu": ["aten.relu"], "erf": ["aten.erf"], "sin": ["aten.sin"], "cos": ["aten.cos"],
    "floor": ["aten.floor"], "silu": ["aten.silu"], "logical_not": ["aten.logical_not"], "ceil": ["aten.ceil"],
    "round": ["aten.round.default"], "tan": ["aten.tan"], "asin": ["aten.asin"], "acos": ["aten.acos"],
    "atan": ["aten.atan"], "sinh": ["aten.sinh"], "cosh": ["aten.cosh"], "asinh": ["aten.asinh"],
    "acosh": ["aten.acosh"], "atanh": ["aten.atanh"],
}.items():
    register_torch_op(*_names)(_unary(_op))


@register_torch_op("aten.bitwise_not")
def _bitwise_not(ctx, a):
    x = a["self"]
    return ctx.op("logical_not" if x.dtype.name == "bool" else "bitwise_not", x)


@register_torch_op("aten.trunc")
def _trunc(ctx, a):
    x = a["self"]
    zero = ctx.tensor(0, x.dtype.name)
    return ctx.op("where", ctx.op("less", x, zero), ctx.op("ceil", x), ctx.op("floor", x))


@register_torch_op("aten.sign")
def _sign(ctx, a):
    x = a["self"]
    dt = x.dtype.name
    zero, one = ctx.tensor(0, dt), ctx.tensor(1, dt)
    neg = ctx.op("where", ctx.op("less", x, zero), ctx.tensor(-1, dt), zero)
    return ctx.op("where", ctx.op("greater", x, zero), one, neg)


@register_torch_op("aten.log1p")
def _log1p(ctx, a):
    x = a["self"]
    return ctx.op("log", ctx.op("add", x, ctx.tensor(1, x.dtype.name)))


@register_torch_op("aten.expm1")
def _expm1(ctx, a):
    x = a["self"]
    return ctx.op("sub", ctx.op("exp", x), ctx.tensor(1, x.dtype.name))


@register_torch_op("aten.gelu")
def _gelu(ctx, a):
    return ctx.op("gelu", a["self"], approximate=a.get("approximate") or "none")


@register_torch_op("aten.leaky_relu")
def _leaky_relu(ctx, a):
    return ctx.op("leaky_relu", a["self"], alpha=float(a["negative_slope"]))


@register_torch_op("aten.hardtanh")
def _hardtanh(ctx, a):
    return ctx.op("clip", a["self"], min=float(a["min_val"]), max=float(a["max_val"]))


@register_torch_op("aten.clamp.default")
def _clamp(ctx, a):
    x = ctx.tensor(a["self"], ctx.out_dtype())
    lo = None if a["min"] is None else float(a["min"])
    hi = None if a["max"] is None else float(a["max"])
    return ctx.op("clip", x, min=lo, max=hi)


@register_torch_op("aten.clamp.Tensor")
def _clamp_tensor(ctx, a):
    dtype = ctx.out_dtype()
    x = ctx.tensor(a["self"], dtype)
    if a["min"] is not None:
        x = ctx.op("maximum", x, ctx.tensor(a["min"], dtype))
    if a["max"] is not None:
        x = ctx.op("minimum", x, ctx.tensor(a["max"], dtype))
    return x


@register_torch_op("aten.elu")
def _elu(ctx, a):
    """scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1)): elu, selu and celu."""
    x = a["self"]
    dt = x.dtype.name
    alpha, scale, input_scale = float(a["alpha"]), float(a["scale"]), float(a["input_scale"])
    inner = x if input_scale == 1.0 else ctx.op("mul", x, ctx.tensor(input_scale, dt))
    neg = ctx.op("mul", ctx.op("sub", ctx.op("exp", inner), ctx.tensor(1.0, dt)), ctx.tensor(alpha, dt))
    y = ctx.op("where", ctx.op("greater", x, ctx.tensor(0.0, dt)), x, neg)
    return y if scale == 1.0 else ctx.op("mul", y, ctx.tensor(scale, dt))


# -- comparisons, logic, selection --------------------------------------------------------


def _compare(op: str):
    def convert(ctx, a):
        import torch

        x, y = a["self"], a["other"]
        meta_x = ctx.node.args[0].meta["val"]
        other = ctx.node.args[1]
        meta_y = other.meta["val"] if hasattr(other, "meta") else other
        dtype = str(torch.result_type(meta_x, meta_y)).removeprefix("torch.")
        return ctx.op(op, ctx.tensor(x, dtype), ctx.tensor(y, dtype))

    return convert


for _op, _name in [("equal", "eq"), ("not_equal", "ne"), ("less", "lt"), ("less_equal", "le"),
                   ("greater", "gt"), ("greater_equal", "ge")]:
    register_torch_op(f"aten.{_name}")(_compare(_op))

for _op in ("logical_and", "logical_or", "logical_xor"):
    register_torch_op(f"aten.{_op}")(
        lambda ctx, a, _op=_op: ctx.op(_op, ctx.tensor(a["self"], "bool"), ctx.tensor(a["other"], "bool")))


@register_torch_op("aten.bitwise_and", "aten.bitwise_or", "aten.bitwise_xor", "aten.bitwise_left_shift",
                   "aten.bitwise_right_shift")
def _bitwise(ctx, a):
    """Logical ops on bool, bitwise ops and shifts on integers (a shift past the
    width gives 0, or the sign for a signed right shift, as torch's does)."""
    name = str(ctx.node.target.overloadpacket).split(".")[-1]
    dtype = ctx.out_dtype()
    if dtype == "bool" and name.endswith("shift"):
        raise UnsupportedError(f"{ctx.node.target} of bool is not supported")
    op = {"bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor", "bitwise_left_shift": "shift_left",
          "bitwise_right_shift": "shift_right"}[name]
    op = f"logical_{op}" if dtype == "bool" else op if op.startswith("shift") else f"bitwise_{op}"
    return ctx.op(op, ctx.tensor(a["self"], dtype), ctx.tensor(a["other"], dtype))


@register_torch_op("aten.where.self")
def _where(ctx, a):
    dtype = ctx.out_dtype()
    return ctx.op("where", ctx.tensor(a["condition"], "bool"), ctx.tensor(a["self"], dtype),
                  ctx.tensor(a["other"], dtype))


# -- linear algebra ---------------------------------------------------------------


@register_torch_op("aten.mm", "aten.bmm")
def _matmul(ctx, a):
    if str(ctx.node.target) == "aten.mm.default":
        return _rows_matmul(ctx, a["self"], a["mat2"])
    return ctx.op("matmul", a["self"], a["mat2"])


def _rows_matmul(ctx, rows: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``rows @ weight (+ bias)`` for a 2-D ``rows``. Linear layers on 3-D inputs decompose to
    view(2-D) -> mm -> view(3-D): multiply the 3-D tensor itself, so that the product's epilogue
    (bias, activation) stays elementwise and fuses into the matmul kernel; the reshapes around it
    cancel in the graph's simplification."""
    src = rows.value.producer
    if src is not None and src.op == "reshape" and len(src.inputs[0].shape) > 2 \
            and src.inputs[0].shape[-1] == rows.shape[-1]:
        full = Tensor(ctx.builder, src.inputs[0])
        y = ctx.op("matmul", full, weight)
        if bias is not None:
            y = ctx.op("add", y, bias)
        return ctx.op("reshape", y, shape=(rows.shape[0], weight.shape[-1]))
    y = ctx.op("matmul", rows, weight)
    return y if bias is None else ctx.op("add", y, bias)


def _scaled_sum(ctx, product: Tensor, bias: Tensor, alpha, beta) -> Tensor:
    dt = product.dtype.name
    if alpha != 1:
        product = ctx.op("mul", product, ctx.tensor(alpha, dt))
    if beta == 0:
        return product
    if beta != 1:
        bias = ctx.op("mul", bias, ctx.tensor(beta, dt))
    return ctx.op("add", product, bias)


@register_torch_op("aten.addmm")
def _addmm(ctx, a):
    if a["alpha"] == 1 and a["beta"] == 1:
        return _rows_matmul(ctx, a["mat1"], a["mat2"], a["self"])
    return _scaled_sum(ctx, ctx.op("matmul", a["mat1"], a["mat2"]), a["self"], a["alpha"], a["beta"])


def _causal_bias(ctx, L, S, dt: str):
    """0 where query i may see key j (j <= i, torch's top-left alignment), -inf elsewhere: a constant,
    or for symbolic lengths a comparison of two ``iota`` positions."""
    if not isinstance(L, Size) and not isinstance(S, Size):
        return ctx.const(np.where(np.tril(np.ones((L, S), dtype=bool)), 0.0, -np.inf).astype(dt))
    rows = ctx.op("iota", length=L).reshape(L, 1)
    cols = ctx.op("iota", length=S).reshape(1, S)
    return ctx.op("where", ctx.op("less_equal", cols, rows), ctx.tensor(0.0, dt), ctx.tensor(-np.inf, dt))


@register_torch_op("aten.scaled_dot_product_attention")
def _sdpa(ctx, a):
    """softmax(q k^T * scale + mask) v, with torch's causal mask (top-left aligned)."""
    q, k, v = a["query"], a["key"], a["value"]
    if a["dropout_p"]:
        raise UnsupportedError("scaled_dot_product_attention with dropout_p > 0 is not supported (inference)")
    dt = q.dtype.name
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    if a.get("enable_gqa") and q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = (repeat_heads(ctx, t, rep) for t in (k, v))
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(E)
    bias, mask = None, a["attn_mask"]
    if a["is_causal"]:
        bias = _causal_bias(ctx, L, S, dt)
    if isinstance(mask, Tensor):
        if mask.dtype.name == "bool":
            mask = ctx.op("where", mask, ctx.tensor(0.0, dt), ctx.tensor(-np.inf, dt))
        mask = ctx.tensor(mask, dt)
        bias = mask if bias is None else ctx.op("add", bias, mask)
    return attend(ctx, q, k, v, scale, bias)


# -- convolution, pooling, normalization ------------------------------------------


@register_torch_op("aten.convolution")
def _convolution(ctx, a):
    x, w, b = a["input"], a["weight"], a["bias"]
    R = x.ndim - 2
    if R not in (1, 2, 3):
        raise UnsupportedError(f"convolution over {R} spatial axes is not supported (1 to 3 are)")
    pads = tuple(int(p) for p in a["padding"])
    pads = pads * (R // len(pads)) if len(pads) != R else pads
    attrs = dict(strides=tuple(a["stride"]), padding=pads + pads, dilations=tuple(a["dilation"]),
                 groups=int(a["groups"]))
    args = [x, w] + ([b] if b is not None else [])
    if a["transposed"]:
        return ctx.op(f"conv_transpose{R}d", *args, output_padding=tuple(a["output_padding"]), **attrs)
    return ctx.op(f"conv{R}d", *args, **attrs)


def _window(a, R: int, name: str):
    def spread(v, default):
        v = list(v) if v not in (None, []) else list(default)
        return tuple(int(x) for x in (v * R if len(v) == 1 else v))

    kernel = spread(a["kernel_size"], [])
    strides = spread(a["stride"], kernel)
    pads = spread(a["padding"], [0])
    return dict(kernel=kernel, strides=strides, padding=pads + pads, ceil_mode=bool(a["ceil_mode"]))


@register_torch_op("aten.max_pool2d_with_indices", "aten.max_pool3d_with_indices")
def _max_pool(ctx, a):
    x = a["self"]
    R = x.ndim - 2
    if 1 in ctx.used_outputs():
        raise UnsupportedError("max pooling's indices output is not supported")
    attrs = _window(a, R, "max_pool")
    dil = list(a["dilation"]) if a["dilation"] else [1]
    attrs["dilations"] = tuple(dil * R if len(dil) == 1 else dil)
    y = ctx.op(f"max_pool{R}d", x, **attrs)
    return (y, None) if "with_indices" in str(ctx.node.target) else y


@register_torch_op("aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(ctx, a):
    x = a["self"]
    if a.get("divisor_override") is not None:
        raise UnsupportedError("avg_pool with divisor_override is not supported")
    attrs = _window(a, x.ndim - 2, "avg_pool")
    return ctx.op(f"avg_pool{x.ndim - 2}d", x, count_include_pad=bool(a["count_include_pad"]), **attrs)


@register_torch_op("aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d")
def _adaptive_avg_pool(ctx, a):
    x = a["self"]
    R = x.ndim - 2
    spatial = x.shape[2:]
    out = ctx.out_shape()[2:]
    if all(o == 1 for o in out):
        return ctx.op("global_avg_pool", x)
    if not any(s % o for s, o in zip(spatial, out)):
        kernel = tuple(s // o for s, o in zip(spatial, out))
        return ctx.op(f"avg_pool{R}d", x, kernel=kernel, strides=kernel)
    # Uneven windows: the mean over a window is separable, so each spatial axis is one
    # matmul with an averaging matrix (output cell i averages rows floor(i*n/m) .. ceil((i+1)*n/m)).
    y = x
    for k, (n, m) in enumerate(zip(spatial, out)):
        axis = 2 + k
        last = y.ndim - 1
        if axis != last:
            perm = list(range(y.ndim))
            perm[axis], perm[last] = perm[last], perm[axis]
            y = ctx.op("transpose", y, perm=tuple(perm))
        y = ctx.op("matmul", y, ctx.const(_averaging_matrix(n, m, x.dtype.name)))
        if axis != last:
            y = ctx.op("transpose", y, perm=tuple(perm))
    return y


def _averaging_matrix(n: int, m: int, dtype: str) -> np.ndarray:
    """(n, m): column i averages torch's adaptive window i of an axis of size n."""
    w = np.zeros((n, m), dtype=np.float64)
    for i in range(m):
        start, stop = (i * n) // m, -((-(i + 1) * n) // m)
        w[start:stop, i] = 1.0 / (stop - start)
    return w.astype(dtype)


@register_torch_op("aten._native_batch_norm_legit_no_training")
def _batch_norm(ctx, a):
    x = a["input"]
    C, dt = x.shape[1], x.dtype.name
    scale = a["weight"] if a["weight"] is not None else ctx.const(np.ones(C, dt))
    bias = a["bias"] if a["bias"] is not None else ctx.const(np.zeros(C, dt))
    if ctx.used_outputs() - {0}:
        raise UnsupportedError("batch norm's saved mean and inverse deviation outputs are not supported")
    y = ctx.op("batch_norm", x, scale, bias, a["running_mean"], a["running_var"], epsilon=float(a["eps"]))
    return (y, None, None)


@register_torch_op("aten.native_layer_norm")
def _layer_norm(ctx, a):
    x = a["input"]
    axis = x.ndim - len(a["normalized_shape"])
    eps = float(a["eps"])
    inputs = [x]
    if a["weight"] is not None or a["bias"] is not None:
        inputs.append(a["weight"] if a["weight"] is not None else ctx.const(np.ones(x.shape[axis:], x.dtype.name)))
    if a["bias"] is not None:
        inputs.append(a["bias"])
    y = ctx.op("layer_norm", *inputs, axis=axis, epsilon=eps)
    if not ctx.used_outputs() - {0}:
        return (y, None, None)
    mean, rstd = _mean_rstd(ctx, x, list(range(axis, x.ndim)), eps)
    return (y, mean, rstd)


def _mean_rstd(ctx, x: Tensor, axes: list[int], eps: float):
    """Mean and 1/sqrt(variance + eps) over ``axes`` (kept as size-1 axes)."""
    mean, _, var = moments(ctx, x, axes)
    return mean, ctx.op("rsqrt", ctx.op("add", var, ctx.tensor(eps, x.dtype.name)))


@register_torch_op("aten._native_batch_norm_legit.no_stats")
def _batch_norm_batch_stats(ctx, a):
    """Normalization by the input's own statistics over every axis but the channels (instance norm
    reaches it with batch and channels folded into one axis)."""
    x = a["input"]
    if a["training"] is False:
        raise UnsupportedError("batch norm without running statistics must use the batch's own (training=True)")
    axes = [k for k in range(x.ndim) if k != 1]
    mean, rstd = _mean_rstd(ctx, x, axes, float(a["eps"]))
    y = ctx.op("mul", ctx.op("sub", x, mean), rstd)
    per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)
    if a["weight"] is not None:
        y = ctx.op("mul", y, ctx.op("reshape", a["weight"], shape=per_channel))
    if a["bias"] is not None:
        y = ctx.op("add", y, ctx.op("reshape", a["bias"], shape=per_channel))
    if ctx.used_outputs() - {0}:
        return (y, ctx.op("reshape", mean, shape=(x.shape[1],)), ctx.op("reshape", rstd, shape=(x.shape[1],)))
    return (y, None, None)


@register_torch_op("aten.native_group_norm")
def _group_norm(ctx, a):
    x, groups = a["input"], int(a["group"])
    y, grouped = group_norm(ctx, x, groups, float(a["eps"]), a["weight"], a["bias"])
    if ctx.used_outputs() - {0}:
        mean, rstd = _mean_rstd(ctx, grouped, [2], float(a["eps"]))
        n = x.shape[0]
        return (y, ctx.op("reshape", mean, shape=(n, groups)), ctx.op("reshape", rstd, shape=(n, groups)))
    return (y, None, None)


@register_torch_op("aten._softmax")
def _softmax(ctx, a):
    return ctx.op("softmax", ctx.tensor(a["self"], ctx.out_dtype()), axis=int(a["dim"]))


@register_torch_op("aten._log_softmax")
def _log_softmax(ctx, a):
    return ctx.op("log_softmax", ctx.tensor(a["self"], ctx.out_dtype()), axis=int(a["dim"]))


# -- reductions -------------------------------------------------------------------


def _reduce(op: str):
    def convert(ctx, a):
        x = ctx.tensor(a["self"], ctx.out_dtype())
        dims = a.get("dim")
        keep = bool(a.get("keepdim", False))
        return ctx.op(op, x, axes=_axes(dims, x.ndim), keepdims=keep)

    return convert


register_torch_op("aten.sum.dim_IntList")(_reduce("sum"))
register_torch_op("aten.prod.dim_int", "aten.prod.default")(_reduce("prod"))
register_torch_op("aten.mean.dim", "aten.mean.default")(_reduce("mean"))
register_torch_op("aten.amax", "aten.max.default")(_reduce("max"))
register_torch_op("aten.amin", "aten.min.default")(_reduce("min"))


@register_torch_op("aten.max.dim", "aten.min.dim")
def _max_dim(ctx, a):
    x, keep = a["self"], bool(a["keepdim"])
    axis = _axis(a["dim"], x.ndim)
    which = "max" if "max" in str(ctx.node.target) else "min"
    values = ctx.op(which, x, axes=[axis], keepdims=keep)
    indices = ctx.op(f"arg{which}", x, axis=axis, keepdims=keep) if 1 in ctx.used_outputs() else None
    return (values, indices)


@register_torch_op("aten.argmax", "aten.argmin")
def _argmax(ctx, a):
    x = a["self"]
    op = "argmax" if "argmax" in str(ctx.node.target) else "argmin"
    if a["dim"] is None:
        flat = ctx.op("reshape", x, shape=(int(np.prod(x.shape)),))
        y = ctx.op(op, flat, axis=0)
        return ctx.op("reshape", y, shape=ctx.out_shape()) if a["keepdim"] else y
    return ctx.op(op, x, axis=_axis(a["dim"], x.ndim), keepdims=bool(a["keepdim"]))


@register_torch_op("aten.any.dim", "aten.any.dims")
def _any_all(ctx, a):
    x = ctx.op("cast", a["self"], dtype="int32") if a["self"].dtype.name != "int32" else a["self"]
    x = ctx.op("not_equal", x, ctx.tensor(0, "int32"))
    x = ctx.op("cast", x, dtype="int32")
    op = "max" if "any" in str(ctx.node.target) else "min"
    y = ctx.op(op, x, axes=_axes(a.get("dim"), x.ndim), keepdims=bool(a.get("keepdim", False)))
    return ctx.op("cast", y, dtype="bool")


@register_torch_op("aten.var.correction")
def _var(ctx, a):
    x = ctx.tensor(a["self"], ctx.out_dtype())
    dt = x.dtype.name
    axes = _axes(a.get("dim"), x.ndim)
    count = int(np.prod([x.shape[k] for k in axes]))
    if "correction" in a:
        corr = 1 if a["correction"] is None else float(a["correction"])
    else:
        corr = 1 if a.get("unbiased", True) else 0
    centred = ctx.op("sub", x, ctx.op("mean", x, axes=axes, keepdims=True))
    total = ctx.op("sum", ctx.op("mul", centred, centred), axes=axes, keepdims=bool(a.get("keepdim", False)))
    var = ctx.op("div", total, ctx.tensor(max(count - corr, 0), dt))
    return ctx.op("sqrt", var) if "std" in str(ctx.node.target) else var


@register_torch_op("aten.linalg_vector_norm")
def _vector_norm(ctx, a):
    x = ctx.tensor(a["self"], ctx.out_dtype())
    order, axes, keep = float(a["ord"]), _axes(a["dim"], x.ndim), bool(a["keepdim"])
    if order == 2:
        return ctx.op("sqrt", ctx.op("sum", ctx.op("mul", x, x), axes=axes, keepdims=keep))
    if order == 1:
        return ctx.op("sum", ctx.op("abs", x), axes=axes, keepdims=keep)
    if math.isinf(order):
        return ctx.op("max" if order > 0 else "min", ctx.op("abs", x), axes=axes, keepdims=keep)
    raise UnsupportedError(f"vector norm of order {order} is not supported (1, 2 and inf are)")


@register_torch_op("aten.sort.default")
def _sort(ctx, a):
    x = a["self"]
    axis = _axis(a["dim"], x.ndim)
    return ctx.op("topk", x, k=x.shape[axis], axis=axis, largest=bool(a["descending"]))


@register_torch_op("aten.cumsum", "aten.cumprod")
def _cumulative(ctx, a):
    x = ctx.tensor(a["self"], ctx.out_dtype())
    return ctx.op(str(ctx.node.target.overloadpacket).split(".")[-1], x, axis=_axis(a["dim"], x.ndim))


@register_torch_op("aten.topk")
def _topk(ctx, a):
    x = a["self"]
    return ctx.op("topk", x, k=int(a["k"]), axis=_axis(a["dim"], x.ndim), largest=bool(a["largest"]))


# -- views and data movement ----------------------------------------------------------


def _to_out_shape(op: str):
    """``op`` (reshape, broadcast_to) of ``self`` to the shape torch computed; nothing if it has it."""

    def convert(ctx, a):
        x, shape = a["self"], ctx.out_shape()
        return x if x.shape == shape else ctx.op(op, x, shape=shape)

    return convert


register_torch_op("aten.view")(_to_out_shape("reshape"))
register_torch_op("aten.expand")(_to_out_shape("broadcast_to"))


@register_torch_op("aten.permute")
def _permute(ctx, a):
    x = a["self"]
    perm = tuple(_axis(d, x.ndim) for d in a["dims"])
    return x if perm == tuple(range(x.ndim)) else ctx.op("transpose", x, perm=perm)


@register_torch_op("aten.unsqueeze")
def _unsqueeze(ctx, a):
    x = a["self"]
    return ctx.op("unsqueeze", x, axes=[int(a["dim"]) % (x.ndim + 1)])


@register_torch_op("aten.squeeze")
def _squeeze(ctx, a):
    x = a["self"]
    dims = a.get("dim")
    axes = [k for k in _axes(dims, x.ndim) if x.shape[k] == 1]
    return ctx.op("squeeze", x, axes=axes) if axes else x


@register_torch_op("aten.clone", "aten.alias")
def _identity(ctx, a):
    """A copy, or a view of the whole tensor (``x[:, 0:]``): the same values."""
    return _same(ctx, a.get("self", a.get("input")))


@register_torch_op("aten.as_strided")
def _as_strided(ctx, a):
    """Only the form decompositions leave on a channels-last tensor: the same shape with the contiguous
    strides (values in their logical order) and no offset, which is the tensor itself."""
    x = a["self"]
    size, stride, offset = list(a["size"]), list(a["stride"]), a.get("storage_offset") or 0
    contiguous = [int(np.prod(size[k + 1:], dtype=np.int64)) for k in range(len(size))]
    if list(x.shape) == size and offset == 0 and all(s == c or n == 1 for s, c, n in zip(stride, contiguous, size)):
        return _same(ctx, x)
    raise UnsupportedError(f"as_strided to size {size}, strides {stride}, offset {offset} of a "
                           f"{list(x.shape)} tensor: only the same shape with contiguous strides is supported")


@register_torch_op("aten._assert_tensor_metadata")
def _assert_metadata(ctx, a):
    return None  # export's check that a tensor has the dtype it traced with; nothing to compute


@register_torch_op("aten._to_copy")
def _to_copy(ctx, a):
    return _same(ctx, a["self"])


@register_torch_op("aten.slice.Tensor")
def _slice(ctx, a):
    x = a["self"]
    axis = _axis(a["dim"], x.ndim)
    size = x.shape[axis]
    if any(isinstance(v, Size) for v in (size, a["start"], a["end"])):  # the slice op places symbolic bounds
        start, end = a["start"] or 0, size if a["end"] is None else a["end"]
        if start == 0 and end is size and int(a["step"]) == 1:
            return x
        return ctx.op("slice", x, starts=[start], ends=[end], axes=[axis], steps=[int(a["step"])])
    start = 0 if a["start"] is None else max(min(int(a["start"]), size), -size)
    end = size if a["end"] is None else max(min(int(a["end"]), size), -size - 1)
    if start == 0 and end == size and int(a["step"]) == 1:
        return x
    return ctx.op("slice", x, starts=[start], ends=[end], axes=[axis], steps=[int(a["step"])])


def _position(i: int, size):
    """Index ``i`` (negative from the end) of an axis of ``size``: an int, or for a symbolic size
    (mc.Dim) a position counted from its end (``seq - 1``), valid at every size in the range."""
    if not isinstance(size, Size):
        return i % size
    if (i < 0 and lower(size) < -i) or (i >= 0 and lower(size) <= i):
        raise UnsupportedError(f"index {i} of an axis of {size} elements: out of range at some sizes "
                               f"({lower(size)}..{upper(size)})")
    return size + i if i < 0 else i


@register_torch_op("aten.select.int")
def _select(ctx, a):
    x = a["self"]
    axis = _axis(a["dim"], x.ndim)
    i = _position(int(a["index"]), x.shape[axis])
    y = ctx.op("slice", x, starts=[i], ends=[i + 1], axes=[axis])
    return ctx.op("squeeze", y, axes=[axis])


@register_torch_op("aten.flip")
def _flip(ctx, a):
    x = a["self"]
    axes = _axes(a["dims"], x.ndim)
    return ctx.op("slice", x, starts=[-1] * len(axes), ends=[-(x.shape[k] + 1) for k in axes], axes=axes,
                  steps=[-1] * len(axes))


@register_torch_op("aten.cat")
def _cat(ctx, a):
    parts = [t for t in a["tensors"] if not (t.ndim == 1 and t.shape[0] == 0)]  # torch skips empty 1-D tensors
    dtype = ctx.out_dtype()
    parts = [ctx.tensor(t, dtype) for t in parts]
    if len(parts) == 1:
        return parts[0]
    return ctx.op("concat", *parts, axis=_axis(a["dim"], parts[0].ndim))


def _split_at(ctx, x: Tensor, sizes: list[int], axis: int) -> tuple:
    outs, start = [], 0
    for s in sizes:
        outs.append(ctx.op("slice", x, starts=[start], ends=[start + s], axes=[axis]))
        start += s
    return tuple(outs)


@register_torch_op("aten.split_with_sizes")
def _split_with_sizes(ctx, a):
    x = a["self"]
    return _split_at(ctx, x, [int(s) for s in a["split_sizes"]], _axis(a["dim"], x.ndim))


@register_torch_op("aten.constant_pad_nd")
def _pad(ctx, a):
    x = a["self"]
    pad = [int(p) for p in a["pad"]]
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for k in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last axis backwards
        begins[x.ndim - 1 - k], ends[x.ndim - 1 - k] = pad[2 * k], pad[2 * k + 1]
    return ctx.op("pad", x, pads=tuple(begins + ends), value=float(a["value"]))


@register_torch_op("aten.repeat")
def _repeat(ctx, a):
    x = a["self"]
    reps = [int(r) for r in a["repeats"]]
    if len(reps) > x.ndim:
        x = ctx.op("reshape", x, shape=(1,) * (len(reps) - x.ndim) + x.shape)
    return ctx.op("tile", x, repeats=tuple(reps))


@register_torch_op("aten.embedding")
def _embedding(ctx, a):
    return ctx.op("take", a["weight"], a["indices"], axis=0)


@register_torch_op("aten.index_select")
def _index_select(ctx, a):
    x = a["self"]
    return ctx.op("take", x, a["index"], axis=_axis(a["dim"], x.ndim))


@register_torch_op("aten.index.Tensor")
def _index(ctx, a):
    """``x[i, j]`` with index tensors (None where a dimension is taken whole): the index tensors broadcast
    together; their dimensions stand where the indexed ones were when those are adjacent, first when not
    (numpy's rule). Several index tensors become one flat index into the indexed dimensions merged: one
    ``take``."""
    x = a["self"]
    picked = [(k, t) for k, t in enumerate(a["indices"]) if t is not None]
    if any(t.dtype.name == "bool" for _, t in picked):
        raise UnsupportedError("indexing with a boolean mask is not supported (its result has a data-dependent "
                               "shape)")
    if len(picked) == 1:
        axis, idx = picked[0]
        return ctx.op("take", x, idx, axis=axis)
    axes = [k for k, _ in picked]
    first = axes[0]
    if axes != list(range(first, first + len(axes))):  # apart: the indexed dimensions go first
        x = x.transpose(axes + [d for d in range(x.ndim) if d not in axes])
        first = 0
    sizes = [x.shape[first + j] for j in range(len(axes))]
    flat = None
    for (_, idx), n in zip(picked, sizes):
        idx = idx.astype("int64")
        n = _size_tensor(ctx, n)
        idx = ctx.op("where", idx < 0, idx + n, idx)  # negative indices count from the end
        flat = idx if flat is None else flat * n + idx
    merged = x.reshape(x.shape[:first] + (math.prod(sizes),) + x.shape[first + len(axes):])
    return ctx.op("take", merged, flat, axis=first)


@register_torch_op("aten.index_put")
def _index_put(ctx, a):
    """``x[..., idx, ...] = values`` with one index tensor (a static cache taking a step's keys at its
    positions; torch's ``index_copy`` decomposes to it): an ``index_copy`` along that dimension,
    ``values`` broadcast to the slices."""
    x = a["self"]
    picked = [(k, t) for k, t in enumerate(a["indices"]) if t is not None]
    if a.get("accumulate"):
        raise UnsupportedError("index_put with accumulate=True (a scatter-add) is not supported")
    if len(picked) != 1 or picked[0][1].ndim != 1 or picked[0][1].dtype.name == "bool":
        raise UnsupportedError("index_put is supported with one index tensor of positions (a vector, not a "
                               "mask), the other dimensions taken whole")
    axis, idx = picked[0]
    shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    values = a["values"].astype(x.dtype.name)
    if tuple(values.shape) != tuple(shape):
        values = ctx.op("broadcast_to", values, shape=shape)
    return ctx.op("index_copy", x, idx, values, axis=axis)


def _size_tensor(ctx, n):
    """A size as an operand: the int itself, or for a symbolic size a scalar tensor holding it at the call."""
    return ctx.tensor(n, "int64") if isinstance(n, Size) else n


@register_torch_op("aten.gather")
def _gather(ctx, a):
    x = a["self"]
    return ctx.op("gather_elements", x, a["index"], axis=_axis(a["dim"], x.ndim))


@register_torch_op("aten.full_like")
def _full_like(ctx, a):
    return ctx.const(np.full(ctx.out_shape(), a["fill_value"], dtype=ctx.out_dtype()))


def _resize(mode: str):
    def convert(ctx, a):
        x = a["input"] if "input" in a else a["self"]
        sizes = ctx.out_shape()
        if mode == "nearest":
            return ctx.op("resize", x, sizes=sizes, mode="nearest", coordinate_mode="asymmetric",
                          nearest_mode="floor")
        # torch clamps negative source coordinates to 0 (linear; not cubic) and maps a size-1 output
        # to the centre: ONNX's half_pixel
        coords = "align_corners" if a.get("align_corners") else "half_pixel"
        return ctx.op("resize", x, sizes=sizes, mode=mode, coordinate_mode=coords, cubic_coeff_a=-0.75)

    return convert


register_torch_op("aten.upsample_nearest2d")(_resize("nearest"))
register_torch_op("aten.upsample_bilinear2d")(_resize("linear"))
register_torch_op("aten.upsample_bicubic2d")(_resize("cubic"))


@register_torch_op("aten.arange")
def _arange(ctx, a):
    """``arange`` whose end is a symbolic size (torch.export with dynamic shapes: positions over the
    sequence); with known ends it was computed at import time."""
    start, step = a.get("start") or 0, a.get("step") or 1
    if not all(isinstance(v, int) for v in (start, step)):
        raise UnsupportedError(f"arange from {start!r} by {step!r} over a symbolic length: integer steps only")
    return ctx.op("iota", length=ctx.out_shape()[0], start=start, step=step, dtype=ctx.out_dtype())
