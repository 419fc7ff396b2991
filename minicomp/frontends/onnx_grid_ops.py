"""ONNX GridSample, AffineGrid, Resize and Upsample, composed from minicomp ops.

GridSample reads each output element from positions the grid holds (data, not
shapes), so it is written as gathers: per spatial axis, the grid's coordinate
is denormalized, moved inside by the padding mode, and split into taps (1
for nearest, 2 for linear, 4 for cubic) with their weights; every combination
of taps is one ``gather_elements`` over the flattened spatial axes, weighted
and summed. The rules follow the onnx reference (and PyTorch's grid_sample):
nearest rounds half to even, cubic is Keys' kernel with a = -0.75, and the
zeros mode reads 0 at taps outside the input.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import register_onnx_importer

CUBIC_A = -0.75


class _Axis:
    """The graph arithmetic of one spatial axis (length ``size``) on float tensors like ``like``."""

    def __init__(self, ctx, size: int, align: bool, padding: str, like):
        self.ctx, self.size, self.align, self.padding, self.like = ctx, size, align, padding, like
        self.low, self.high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)

    def c(self, v):
        return self.ctx.const(np.array(v, dtype=self.like.dtype.numpy))

    def op(self, name, *args, **attrs):
        return self.ctx.op(name, *args, **attrs)

    def denormalize(self, g):
        if self.align:  # -1 and 1 are the centres of the first and last elements
            return self.op("mul", self.op("add", g, self.c(1.0)), self.c((self.size - 1) / 2.0))
        return self.op("div", self.op("sub", self.op("mul", self.op("add", g, self.c(1.0)), self.c(self.size)),
                                      self.c(1.0)), self.c(2.0))

    def reflect(self, x, low: float, high: float):
        """Fold ``x`` back into [low, high] by reflecting at the nearer border, again and again."""
        span = high - low
        if span <= 0:
            return self.op("broadcast_to", self.c(low), shape=x.shape)
        below = self.op("less", x, self.c(low))
        dist = self.op("where", below, self.op("sub", self.c(low), x), self.op("sub", x, self.c(high)))
        turns = self.op("floor", self.op("div", dist, self.c(span)))
        rest = self.op("sub", dist, self.op("mul", turns, self.c(span)))
        even = self.op("equal", self.op("mod", turns, self.c(2.0)), self.c(0.0))
        from_low, from_high = self.op("add", self.c(low), rest), self.op("sub", self.c(high), rest)
        folded = self.op("where", below, self.op("where", even, from_low, from_high),
                         self.op("where", even, from_high, from_low))
        inside = self.op("logical_and", self.op("greater_equal", x, self.c(low)),
                         self.op("less_equal", x, self.c(high)))
        return self.op("where", inside, x, folded)

    def inside(self, x):
        """The coordinate moved inside the borders, as the padding mode says."""
        if self.padding == "border":  # only a coordinate past the borders moves (to the nearest element)
            outside = self.op("logical_or", self.op("less", x, self.c(self.low)),
                              self.op("greater", x, self.c(self.high)))
            return self.op("where", outside, self.op("clip", x, min=0.0, max=float(self.size - 1)), x)
        if self.padding == "reflection":
            return self.reflect(x, self.low, self.high)
        return x

    def tap(self, position):
        """An integer tap (a float tensor holding whole numbers) as an int64 index and a validity mask."""
        if self.padding == "reflection":
            position = self.reflect(position, self.low, self.high)
        index = self.op("cast", position, dtype="int64")  # truncation, as the reference's int()
        if self.padding == "zeros":
            valid = self.op("logical_and", self.op("greater_equal", position, self.c(0.0)),
                            self.op("less_equal", position, self.c(self.size - 1.0)))
            return self.op("clip", index, min=0, max=self.size - 1), valid
        return self.op("clip", index, min=0, max=self.size - 1), None

    def taps(self, g, mode: str):
        """[(index, validity or None, weight or None)] for the normalized coordinates ``g``."""
        x = self.denormalize(g)
        if mode == "nearest":
            return [(*self.tap(self.inside(self.op("round", x))), None)]
        x = self.inside(x)
        base = self.op("floor", x)
        t = self.op("sub", x, base)
        if mode == "linear":
            weights = [self.op("sub", self.c(1.0), t), t]
            offsets = [0, 1]
        else:
            weights = self._cubic_weights(t)
            offsets = [-1, 0, 1, 2]
        return [(*self.tap(self.op("add", base, self.c(float(k)))), w) for k, w in zip(offsets, weights)]

    def _cubic_weights(self, t):
        """Keys' cubic kernel at distances 1 + t, t, 1 - t and 2 - t."""
        a = CUBIC_A

        def near(d):  # |d| <= 1
            return self.op("add", self.op("mul", self.op("mul", self.op("sub", self.op("mul", d, self.c(a + 2)),
                                                                              self.c(a + 3)), d), d), self.c(1.0))

        def far(d):  # 1 < |d| < 2
            inner = self.op("add", self.op("mul", self.op("sub", self.op("mul", d, self.c(a)), self.c(5 * a)), d),
                            self.c(8 * a))
            return self.op("sub", self.op("mul", inner, d), self.c(4 * a))

        one, two = self.c(1.0), self.c(2.0)
        return [far(self.op("add", t, one)), near(t), near(self.op("sub", one, t)), far(self.op("sub", two, t))]


@register_onnx_importer("GridSample")
def _grid_sample(ctx, node):
    x, grid = ctx.input(0), ctx.input(1)
    r = x.ndim - 2
    if r < 1 or grid.ndim != r + 2 or grid.shape[-1] != r or grid.shape[0] != x.shape[0]:
        raise ShapeError(f"{node.describe()}: grid {list(grid.shape)} does not fit input {list(x.shape)}")
    mode = ctx.attr("mode", "linear" if ctx.opset >= 20 else "bilinear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = ctx.attr("padding_mode", "zeros")
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise UnsupportedError(f"{node.describe()}: mode {mode!r} with padding {padding!r} is not supported")
    if not x.dtype.is_float:
        raise UnsupportedError(f"{node.describe()}: GridSample of {x.dtype.name} is not supported")
    if grid.dtype != x.dtype:
        grid = ctx.op("cast", grid, dtype=x.dtype.name)
    n, c, spatial, out = x.shape[0], x.shape[1], x.shape[2:], grid.shape[1:-1]
    q = math.prod(out)
    align = bool(ctx.attr("align_corners", 0))
    per_axis = []
    for a in range(r):  # the grid's last coordinate indexes the first spatial axis
        g = ctx.op("squeeze", ctx.op("slice", grid, starts=[r - 1 - a], ends=[r - a], axes=[grid.ndim - 1]),
                   axes=[grid.ndim - 1])
        per_axis.append(_Axis(ctx, spatial[a], align, padding, x).taps(g, mode))
    flat_x = ctx.op("reshape", x, shape=(n, c, math.prod(spatial)))
    strides = [math.prod(spatial[a + 1:]) for a in range(r)]
    total = None
    for combo in itertools.product(*per_axis):
        index, valid, weight = None, None, None
        for (idx, ok, w), stride in zip(combo, strides):
            term = idx if stride == 1 else ctx.op("mul", idx, ctx.const(np.array(stride, np.int64)))
            index = term if index is None else ctx.op("add", index, term)
            valid = ok if valid is None else (valid if ok is None else ctx.op("logical_and", valid, ok))
            weight = w if weight is None else (weight if w is None else ctx.op("mul", weight, w))
        picks = ctx.op("broadcast_to", ctx.op("reshape", index, shape=(n, 1, q)), shape=(n, c, q))
        value = ctx.op("reshape", ctx.op("gather_elements", flat_x, picks, axis=2), shape=(n, c, *out))
        if valid is not None:
            value = ctx.op("where", ctx.op("unsqueeze", valid, axes=[1]), value,
                           ctx.const(np.array(0, x.dtype.numpy)))
        if weight is not None:
            value = ctx.op("mul", value, ctx.op("unsqueeze", weight, axes=[1]))
        total = value if total is None else ctx.op("add", total, value)
    return [total]


@register_onnx_importer("AffineGrid")
def _affine_grid(ctx, node):
    """The normalized sampling grid of affine matrices ``theta`` for an output of ``size``."""
    theta = ctx.input(0)
    size = [int(v) for v in np.asarray(ctx.required_constant(1, "size")).reshape(-1)]
    r = len(size) - 2
    if r not in (2, 3) or theta.shape != (size[0], r, r + 1):
        raise ShapeError(f"{node.describe()}: theta {list(theta.shape)} does not fit size {size}")
    align = bool(ctx.attr("align_corners", 0))

    def positions(length: int) -> np.ndarray:
        if align:
            return np.linspace(-1.0, 1.0, length)  # one position: -1, as torch.linspace gives
        return (np.arange(length) * 2.0 + 1.0) / length - 1.0

    spatial = size[2:]
    # Homogeneous coordinates (x, y[, z], 1), x running along the last axis.
    mesh = np.meshgrid(*[positions(s) for s in spatial], indexing="ij")
    base = np.stack([*reversed([m.reshape(-1) for m in mesh]), np.ones(math.prod(spatial))], axis=-1)
    points = ctx.const(base.astype(theta.dtype.numpy))  # (positions, r + 1)
    grid = ctx.op("matmul", points, ctx.op("transpose", theta, perm=(0, 2, 1)))  # (n, positions, r)
    return [ctx.op("reshape", grid, shape=(size[0], *spatial, r))]


@register_onnx_importer("Upsample")
def _upsample(ctx, node):
    """Resize's predecessor (opsets 7 to 9): scales, asymmetric coordinates, nearest floors."""
    x = ctx.input(0)
    scales = ctx.attr("scales") if ctx.opset < 9 else ctx.required_constant(1, "scales")
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(scales) != x.ndim:
        raise ShapeError(f"{node.describe()}: {len(scales)} scales for rank {x.ndim}")
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise UnsupportedError(f"{node.describe()}: mode {mode!r} is not supported")
    sizes = [int(np.floor(d * s)) for d, s in zip(x.shape, scales)]
    return [ctx.op("resize", x, sizes=sizes, scales=scales, mode=mode, coordinate_mode="asymmetric",
                   nearest_mode="floor")]


@register_onnx_importer("Resize")
def _resize(ctx, node):
    x = ctx.input(0)
    if ctx.opset < 11:
        raise UnsupportedError(f"{node.describe()}: Resize before opset 11 is not supported")
    mode = ctx.attr("mode", "nearest")
    coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if ctx.attr("antialias", 0):
        raise UnsupportedError(f"{node.describe()}: antialiased Resize is not supported")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise UnsupportedError(f"{node.describe()}: keep_aspect_ratio_policy {policy!r} is not supported")
    axes = ctx.attr("axes")
    axes = [int(a) % x.ndim for a in axes] if axes is not None else list(range(x.ndim))
    roi = None
    if coord == "tf_crop_and_resize":  # the region: starts then ends (fractions of each axis), for ``axes``
        given = ctx.required_constant(1, "roi").reshape(-1).astype(np.float64)
        if given.size != 2 * len(axes):
            raise ShapeError(f"{node.describe()}: roi has {given.size} values for {len(axes)} axes")
        roi = [0.0] * x.ndim + [1.0] * x.ndim
        for k, a in enumerate(axes):
            roi[a], roi[x.ndim + a] = float(given[k]), float(given[len(axes) + k])
    scales_in = ctx.constant(2) if ctx.input(2) is not None else None
    sizes_in = ctx.constant(3) if ctx.input(3) is not None else None
    if ctx.input(2) is not None and scales_in is None or ctx.input(3) is not None and sizes_in is None:
        raise UnsupportedError(f"{node.describe()}: scales and sizes must be constants known at import time")
    scales, sizes = [1.0] * x.ndim, list(x.shape)
    if sizes_in is not None and sizes_in.size and policy != "stretch":
        # One scale for every resized axis, the smallest or largest the sizes ask for.
        ratios = [int(s) / x.shape[a] for a, s in zip(axes, sizes_in.reshape(-1))]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        for a in axes:
            sizes[a], scales[a] = int(scale * x.shape[a] + 0.5), scale
    elif sizes_in is not None and sizes_in.size:
        for a, s in zip(axes, sizes_in.reshape(-1)):
            sizes[a] = int(s)
            scales[a] = sizes[a] / x.shape[a] if x.shape[a] else 1.0
    elif scales_in is not None and scales_in.size:
        for a, s in zip(axes, scales_in.reshape(-1)):
            scales[a] = float(s)
            extent = (roi[x.ndim + a] - roi[a]) if roi is not None else 1.0
            sizes[a] = int(np.floor(x.shape[a] * extent * float(s)))
    else:
        raise UnsupportedError(f"{node.describe()}: Resize needs scales or sizes")
    return [ctx.op("resize", x, sizes=sizes, scales=scales, mode=mode, coordinate_mode=coord,
                   nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor"),
                   cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                   exclude_outside=bool(ctx.attr("exclude_outside", 0)), roi=roi,
                   extrapolation_value=float(ctx.attr("extrapolation_value", 0.0)))]
