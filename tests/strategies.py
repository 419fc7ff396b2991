"""hypothesis strategies shared by the test suite.

- ``shapes`` and ``broadcast_pair``: random shapes and broadcast-compatible
  pairs;
- ``arrays``: numpy arrays of a dtype with bounded values;
- ``op_case(op)``: inputs and attributes for one op (every registered op has
  one: see OP_CASES);
- ``op_chains`` and ``random_dags``: whole random graphs built with the
  builder, chains of ops and DAGs with branches and joins.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minicomp.frontends.builder import GraphBuilder
from minicomp.ir.dtypes import as_dtype

FLOAT = np.float32


def shapes(min_rank=0, max_rank=4, min_side=1, max_side=6):
    return st.lists(st.integers(min_side, max_side), min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def broadcast_pair(draw, max_rank=4, max_side=5):
    """Two shapes that broadcast together (size-1 and missing axes included)."""
    out = draw(shapes(0, max_rank, 1, max_side))
    def derive():
        k = draw(st.integers(0, len(out)))
        return tuple(1 if draw(st.booleans()) else d for d in out[len(out) - k:])
    a, b = derive(), derive()
    if draw(st.booleans()):
        a = out
    return a, b


def _rng(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


@st.composite
def arrays(draw, shape, dtype=FLOAT, low=-3.0, high=3.0):
    rng = _rng(draw)
    dt = np.dtype(dtype)
    if dt.kind == "f" or dt.name == "bfloat16":
        return rng.uniform(low, high, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.itemsize < 4 and draw(st.booleans()):  # 8- and 16-bit integers: the whole range, so results wrap
        info = np.iinfo(dt)
        return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dt)
    # Small values; negative ones wrap to the top of an 8- or 16-bit unsigned
    # range (not of uint32/uint64: their products are past what the float64
    # formulations hold exactly).
    lo = max(int(low) * 3, 0) if dt.kind == "u" and dt.itemsize >= 4 else int(low) * 3
    return rng.integers(lo, int(high) * 3 + 1, size=shape).astype(dt)


float_dtypes = st.sampled_from([np.float32, np.float64])
SMALL_INTS = [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64]
numeric_dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64] + SMALL_INTS)
int_dtypes = st.sampled_from([np.int32, np.int64] + SMALL_INTS)

UNARY_FLOAT = {"floor": (-3, 3), "sin": (-4, 4), "cos": (-4, 4), "silu": (-6, 6),
               "exp": (-3, 3), "log": (0.1, 5), "sqrt": (0, 5), "rsqrt": (0.1, 5),
               "reciprocal": (0.2, 5), "tanh": (-4, 4), "sigmoid": (-6, 6), "erf": (-3, 3), "leaky_relu": (-3, 3),
               "gelu": (-4, 4), "tan": (-1.2, 1.2), "asin": (-0.99, 0.99), "acos": (-0.99, 0.99),
               "atan": (-4, 4), "sinh": (-3, 3), "cosh": (-3, 3), "asinh": (-4, 4), "acosh": (1.01, 5),
               "atanh": (-0.95, 0.95), "ceil": (-3, 3), "round": (-3, 3)}
UNARY_NUMERIC = ("neg", "abs", "relu", "clip")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "less", "greater", "equal", "pow", "less_equal",
          "greater_equal", "not_equal", "floor_div", "mod", "fmod")


@st.composite
def _unary_case(draw, op):
    if op in UNARY_FLOAT:
        lo, hi = UNARY_FLOAT[op]
        dt = draw(float_dtypes)
        x = draw(arrays(draw(shapes()), dt, lo, hi))
        if op == "round":  # quarters: ties to even, and values either side of them
            x = (np.floor(x * 4) / 4).astype(dt)
    else:
        dt = draw(numeric_dtypes)
        x = draw(arrays(draw(shapes()), dt))
    attrs = {}
    if op == "leaky_relu":
        attrs["alpha"] = draw(st.sampled_from([0.01, 0.2]))
    if op == "gelu":
        attrs["approximate"] = draw(st.sampled_from(["none", "tanh"]))
    if op == "clip":
        lows = [None, 0] if np.dtype(dt).kind == "u" else [None, -1, 0]
        attrs = {"min": draw(st.sampled_from(lows)), "max": draw(st.sampled_from([None, 1, 2]))}
    return [x], attrs


@st.composite
def _binary_case(draw, op):
    sa, sb = draw(broadcast_pair())
    dt = draw(float_dtypes) if op == "pow" else draw(numeric_dtypes)
    lo = 0.5 if op == "pow" else -3
    a = draw(arrays(sa, dt, lo, 3))
    b = draw(arrays(sb, dt, -2 if op == "pow" else -3, 3))
    if op in ("div", "floor_div", "mod", "fmod") and np.dtype(dt).kind == "f":
        b = np.where(np.abs(b) < 0.1, 1, b).astype(dt)
    return [a, b], {}


@st.composite
def _where_case(draw):
    sa, sb = draw(broadcast_pair())
    dt = draw(numeric_dtypes)
    cond = draw(arrays(draw(st.sampled_from([sa, sb, ()])), bool))
    return [cond, draw(arrays(sa, dt)), draw(arrays(sb, dt))], {}


@st.composite
def _cast_case(draw):
    src = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.bool_] + SMALL_INTS))
    dst = draw(st.sampled_from(["float32", "float64", "int32", "int64", "bool"]
                               + [np.dtype(t).name for t in SMALL_INTS]))
    return [draw(arrays(draw(shapes()), src))], {"dtype": dst}


@st.composite
def _reduce_case(draw, op):
    shape = draw(shapes(1, 4))
    dt = draw(float_dtypes) if op == "mean" else draw(numeric_dtypes)
    axes = draw(st.one_of(st.none(), st.lists(st.integers(-len(shape), len(shape) - 1),
                                              min_size=1, max_size=len(shape), unique_by=lambda a: a % len(shape))))
    return [draw(arrays(shape, dt))], {"axes": axes, "keepdims": draw(st.booleans())}


@st.composite
def _matmul_case(draw):
    m, k, n = draw(st.integers(1, 7)), draw(st.integers(1, 9)), draw(st.integers(1, 7))
    batch_a, batch_b = draw(broadcast_pair(max_rank=2, max_side=3))
    kind = draw(st.sampled_from(["2d", "batched", "vec_left", "vec_right"]))
    sa, sb = (m, k), (k, n)
    if kind == "batched":
        sa, sb = batch_a + sa, batch_b + sb
    elif kind == "vec_left":
        sa = (k,)
    elif kind == "vec_right":
        sb = (k,)
    dt = draw(numeric_dtypes)
    return [draw(arrays(sa, dt)), draw(arrays(sb, dt))], {}


@st.composite
def _conv_case(draw, R, transpose=False):
    groups = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.integers(1, 3))
    co = groups * draw(st.integers(1, 3))
    K = tuple(draw(st.integers(1, 3)) for _ in range(R))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(R))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(R))
    max_side = {1: 9, 2: 7, 3: 4}[R]
    if transpose:
        out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dil))
        spatial = tuple(draw(st.integers(2, max_side - 2)) for _ in range(R))
        full = [(spatial[d] - 1) * strides[d] + dil[d] * (K[d] - 1) + out_pad[d] + 1 for d in range(R)]
        begins = [draw(st.integers(0, min(1, full[d] - 1))) for d in range(R)]
        ends = [draw(st.integers(0, min(1, full[d] - 1 - begins[d]))) for d in range(R)]
        pad = tuple(begins + ends)
        x = draw(arrays((draw(st.integers(1, 2)), cg * groups) + spatial))
        inputs = [x, draw(arrays((cg * groups, co // groups) + K))]
        attrs = {"strides": strides, "padding": pad, "dilations": dil, "groups": groups, "output_padding": out_pad}
    else:
        pad = tuple(draw(st.integers(0, 2)) for _ in range(2 * R))
        spatial = tuple(draw(st.integers(max(1, dil[d] * (K[d] - 1) + 1 - pad[d] - pad[R + d]),
                                         max(max_side, dil[d] * (K[d] - 1) + 1))) for d in range(R))
        inputs = [draw(arrays((draw(st.integers(1, 2)), cg * groups) + spatial)), draw(arrays((co, cg) + K))]
        attrs = {"strides": strides, "padding": pad, "dilations": dil, "groups": groups}
    if draw(st.booleans()):
        inputs.append(draw(arrays((co,))))
    return inputs, attrs


@st.composite
def _pool_case(draw, op):
    R = int(op[-2])
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(R))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(R))
    dil = tuple(1 if op.startswith("avg") and draw(st.booleans()) else draw(st.integers(1, 2)) for _ in range(R))
    pad = tuple(draw(st.integers(0, (kernel[d % R] - 1) * dil[d % R])) for d in range(2 * R))
    max_side = {1: 10, 2: 9, 3: 5}[R]
    spatial = tuple(draw(st.integers(dil[d] * (kernel[d] - 1) + 1, max(max_side, dil[d] * (kernel[d] - 1) + 1)))
                    for d in range(R))
    dt = np.float32 if op.startswith("avg") else draw(numeric_dtypes)
    attrs = {"kernel": kernel, "strides": strides, "padding": pad, "dilations": dil,
             "ceil_mode": draw(st.booleans())}
    if op.startswith("avg"):
        attrs["count_include_pad"] = draw(st.booleans())
    return [draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3))) + spatial, dt))], attrs


@st.composite
def _layout_case(draw, op):
    dt = draw(numeric_dtypes)
    if op == "reshape":
        shape = draw(shapes(0, 4))
        size = int(np.prod(shape))
        target = list(np.random.default_rng(draw(st.integers(0, 99))).permutation(shape)) if shape else []
        if target and draw(st.booleans()):
            target[draw(st.integers(0, len(target) - 1))] = -1
        if draw(st.booleans()):
            target = [size]
        return [draw(arrays(shape, dt))], {"shape": [int(d) for d in target]}
    if op == "transpose":
        shape = draw(shapes(0, 4))
        perm = draw(st.permutations(range(len(shape))))
        return [draw(arrays(shape, dt))], {"perm": list(perm) if draw(st.booleans()) else None}
    if op == "concat":
        shape = draw(shapes(1, 3))
        axis = draw(st.integers(0, len(shape) - 1))
        parts = []
        for _ in range(draw(st.integers(1, 4))):
            s = list(shape)
            s[axis] = draw(st.integers(0, 3))
            parts.append(draw(arrays(tuple(s), dt)))
        return parts, {"axis": axis - len(shape) if draw(st.booleans()) else axis}
    if op == "slice":
        shape = draw(shapes(1, 3))
        axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
        starts = [draw(st.integers(-8, 8)) for _ in axes]
        ends = [draw(st.integers(-8, 8)) for _ in axes]
        steps = [draw(st.sampled_from([1, 2, -1, -2])) for _ in axes]
        return [draw(arrays(shape, dt))], {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    if op == "pad":
        shape = draw(shapes(1, 3))
        mode = draw(st.sampled_from(["constant", "constant", "reflect", "edge"]))
        limit = (lambda d: d - 1) if mode == "reflect" else (lambda d: 2)
        crop = mode == "constant"
        pads = [draw(st.integers(-1 if d > 1 and crop else 0, max(0, min(2, limit(d))))) for d in shape]
        pads += [draw(st.integers(-1 if d > 2 and crop else 0, max(0, min(2, limit(d))))) for d in shape]
        return [draw(arrays(shape, dt))], {"pads": pads, "value": draw(st.sampled_from([0.0, 1.5, -2.0])),
                                          "mode": mode}
    if op == "tile":
        shape = draw(shapes(0, 3, 1, 4))
        return [draw(arrays(shape, dt))], {"repeats": [draw(st.integers(0, 3)) for _ in shape]}
    if op == "take":
        shape = draw(shapes(1, 3))
        axis = draw(st.integers(0, len(shape) - 1))
        d = shape[axis]
        idx_shape = draw(shapes(0, 2, 1, 4))
        rng = _rng(draw)
        indices = rng.integers(-d, d, size=idx_shape).astype(draw(st.sampled_from([np.int32, np.int64])))
        return [draw(arrays(shape, dt)), indices], {"axis": axis}
    if op == "broadcast_to":
        sa, _ = draw(broadcast_pair())
        target = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))) + tuple(
            draw(st.integers(2, 3)) if d == 1 else d for d in sa)
        return [draw(arrays(sa, dt))], {"shape": list(target)}
    if op == "squeeze":
        shape = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(draw(st.integers(0, 4))))
        ones = [k for k, d in enumerate(shape) if d == 1]
        axes = None if not ones or draw(st.booleans()) else draw(st.lists(st.sampled_from(ones), min_size=1,
                                                                          unique=True))
        return [draw(arrays(shape, dt))], {"axes": axes}
    if op == "unsqueeze":
        shape = draw(shapes(0, 3))
        n_new = draw(st.integers(1, 2))
        axes = draw(st.lists(st.integers(0, len(shape) + n_new - 1), min_size=n_new, max_size=n_new, unique=True))
        return [draw(arrays(shape, dt))], {"axes": axes}
    raise KeyError(op)


@st.composite
def _composite_case(draw, op):
    if op in ("softmax", "log_softmax"):
        shape = draw(shapes(1, 4))
        return [draw(arrays(shape, draw(float_dtypes), -5, 5))], {"axis": draw(st.integers(-len(shape),
                                                                                           len(shape) - 1))}
    if op == "layer_norm":
        shape = draw(shapes(1, 4, 1, 6))
        axis = draw(st.integers(0, len(shape) - 1))
        dt = draw(float_dtypes)
        ins = [draw(arrays(shape, dt))]
        for _ in range(draw(st.integers(0, 2))):
            ins.append(draw(arrays(shape[axis:], dt)))
        return ins, {"axis": axis, "epsilon": 1e-5}
    if op == "batch_norm":
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 4))) + draw(shapes(0, 2))
        dt = draw(float_dtypes)
        c = (shape[1],)
        return [draw(arrays(shape, dt)), draw(arrays(c, dt)), draw(arrays(c, dt)), draw(arrays(c, dt)),
                draw(arrays(c, dt, 0.1, 2))], {"epsilon": 1e-3}
    if op == "lrn":
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 6))) + draw(shapes(1, 2))
        return [draw(arrays(shape, draw(float_dtypes)))], {"size": draw(st.integers(1, 5)), "alpha": 1e-2,
                                                           "beta": 0.75, "bias": 1.0}
    raise KeyError(op)


@st.composite
def _gap_case(draw):
    return [draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3))) + draw(shapes(1, 2)),
                        draw(float_dtypes)))], {}


@st.composite
def _arg_case(draw):
    x = draw(arrays(draw(shapes(1, 3, 1, 6)), draw(numeric_dtypes)))
    return [x], {"axis": draw(st.integers(-x.ndim, x.ndim - 1)), "keepdims": draw(st.booleans()),
                 "select_last": draw(st.booleans())}


@st.composite
def _gather_elements_case(draw):
    x = draw(arrays(draw(shapes(1, 3, 1, 5)), draw(numeric_dtypes)))
    axis = draw(st.integers(0, x.ndim - 1))
    shape = tuple(draw(st.integers(1, 4)) if k == axis else d for k, d in enumerate(x.shape))
    d = x.shape[axis]
    idx = _rng(draw).integers(-d, d, size=shape).astype(draw(st.sampled_from([np.int32, np.int64])))
    return [x, idx], {"axis": axis}


@st.composite
def _index_copy_case(draw):
    """Positions anywhere in the axis, negative ones too, repeated ones too (the last write wins)."""
    data = draw(arrays(draw(shapes(1, 4, 1, 6)), draw(numeric_dtypes)))
    axis = draw(st.integers(-data.ndim, data.ndim - 1))
    length = data.shape[axis]
    n = draw(st.integers(1, 4))
    index = _rng(draw).integers(-length, length, size=n).astype(draw(st.sampled_from([np.int32, np.int64])))
    at = axis % data.ndim
    updates = draw(arrays(data.shape[:at] + (n,) + data.shape[at + 1:], data.dtype))
    return [data, index, updates], {"axis": axis}


@st.composite
def _cumsum_case(draw):
    x = draw(arrays(draw(shapes(1, 3, 1, 6)), draw(numeric_dtypes)))
    return [x], {"axis": draw(st.integers(-x.ndim, x.ndim - 1)), "exclusive": draw(st.booleans()),
                 "reverse": draw(st.booleans())}


@st.composite
def _trilu_case(draw):
    x = draw(arrays(draw(shapes(2, 4, 1, 6)), draw(numeric_dtypes)))
    return [x], {"k": draw(st.integers(-3, 3)), "upper": draw(st.booleans())}


@st.composite
def _rms_norm_case(draw):
    dt = draw(float_dtypes)
    x = draw(arrays(draw(shapes(1, 3, 1, 6)), dt))
    axis = draw(st.integers(0, x.ndim - 1))
    scale = draw(arrays(x.shape[axis:], dt, 0.5, 2))
    return [x, scale], {"axis": axis}


@st.composite
def _logical_case(draw, op):
    if op == "logical_not":
        return [draw(arrays(draw(shapes()), bool))], {}
    sa, sb = draw(broadcast_pair())
    return [draw(arrays(sa, bool)), draw(arrays(sb, bool))], {}


BITCAST_GROUPS = [[np.int8, np.uint8, np.bool_], [np.int16, np.uint16, np.float16, "bfloat16"],
                  [np.int32, np.uint32, np.float32], [np.int64, np.uint64, np.float64]]


@st.composite
def _iota_case(draw):
    return [], {"length": draw(st.integers(0, 40)), "start": draw(st.integers(-5, 5)),
                "step": draw(st.sampled_from([1, 2, -1, 3])), "dtype": draw(st.sampled_from(["int64", "float32",
                                                                                            "int32"]))}


@st.composite
def _bitcast_case(draw):
    group = draw(st.sampled_from(BITCAST_GROUPS))
    src = draw(st.sampled_from(group))
    dst = draw(st.sampled_from([t for t in group if t is not np.bool_ and t != "bfloat16"]))  # bool: only as source
    if src == "bfloat16":
        import ml_dtypes

        src = ml_dtypes.bfloat16
    return [draw(arrays(draw(shapes()), src))], {"dtype": np.dtype(dst).name}


@st.composite
def _bitwise_case(draw, op):
    dt = draw(int_dtypes)
    if op == "bitwise_not":
        return [draw(arrays(draw(shapes()), dt))], {}
    sa, sb = draw(broadcast_pair())
    a = draw(arrays(sa, dt))
    if op.startswith("shift"):  # amounts across the width, past it, and negative for signed types
        bits = np.dtype(dt).itemsize * 8
        b = draw(arrays(sb, np.int64, -1, bits // 3 + 1)).clip(-1 if np.dtype(dt).kind == "i" else 0).astype(dt)
        return [a, b], {}
    return [a, draw(arrays(sb, dt))], {}


@st.composite
def _topk_case(draw):
    x = draw(arrays(draw(shapes(1, 3, 1, 6)), draw(numeric_dtypes)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return [x], {"k": draw(st.integers(0, x.shape[axis])), "axis": axis, "largest": draw(st.booleans())}


@st.composite
def _resize_case(draw):
    x = draw(arrays(draw(shapes(1, 4, 1, 5)), draw(float_dtypes)))
    sizes = [draw(st.integers(1, 7)) if k >= x.ndim - 2 else d for k, d in enumerate(x.shape)]
    attrs = {"sizes": sizes, "mode": draw(st.sampled_from(["nearest", "linear", "cubic"])),
             "cubic_coeff_a": draw(st.sampled_from([-0.75, -0.5])), "exclude_outside": draw(st.booleans()),
             "coordinate_mode": draw(st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners",
                                                      "asymmetric", "tf_half_pixel_for_nn", "half_pixel_symmetric",
                                                      "tf_crop_and_resize"])),
             "nearest_mode": draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))}
    if attrs["coordinate_mode"] == "tf_crop_and_resize":
        # Regions reaching past the input on either side, whose sample points never land exactly on the
        # input's first or last element: there, FMA contraction in generated code may decide the other way.
        starts = [draw(st.sampled_from([0.0, -0.23, 0.37])) for _ in sizes]
        attrs["roi"] = starts + [s + draw(st.sampled_from([0.31, 0.83, 1.07])) for s in starts]
        attrs["extrapolation_value"] = draw(st.sampled_from([0.0, 7.5]))
    return [x], attrs


@st.composite
def _nchwc_conv_case(draw):
    """A dense or grouped (blocked or plain input) or depthwise convolution in the blocked layout."""
    from minicomp.ir.opdefs.nchwc import block_array, block_weights

    kind = draw(st.sampled_from(["dense", "plain_input", "depthwise", "grouped", "grouped_plain_input"]))
    bo = draw(st.sampled_from([1, 2, 4]))
    bi = draw(st.sampled_from([1, 2, 3])) if kind in ("dense", "grouped") else 1
    groups = draw(st.integers(2, 3)) if kind.startswith("grouped") else 1
    co = groups * bo * draw(st.integers(1, 2))  # output blocks lie within one group
    ci = co if kind == "depthwise" else groups * bi * draw(st.integers(1, 2))
    if kind == "depthwise":
        groups = ci
    K = tuple(draw(st.integers(1, 3)) for _ in range(2))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(2))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    spatial = tuple(draw(st.integers(max(1, dil[d] * (K[d] - 1) + 1 - pad[d] - pad[2 + d]),
                                     max(7, dil[d] * (K[d] - 1) + 1))) for d in range(2))
    x = draw(arrays((draw(st.integers(1, 2)), ci) + spatial))
    w = block_weights(draw(arrays((co, ci // groups) + K)), 1 if kind == "depthwise" else bi, bo)
    inputs = [x if kind.endswith("plain_input") else block_array(x, bo if kind == "depthwise" else bi), w]
    if draw(st.booleans()):
        inputs.append(draw(arrays((co // bo, bo))))
    attrs = {"strides": tuple(draw(st.integers(1, 2)) for _ in range(2)), "padding": pad, "dilations": dil,
             "groups": groups}
    return inputs, attrs


def _blocked_case(plain_case):
    """``plain_case`` (one N, C, H, W input first) with that input in the blocked layout."""
    from minicomp.ir.opdefs.nchwc import block_array

    @st.composite
    def case(draw):
        inputs, attrs = draw(plain_case)
        x = inputs[0]
        block = draw(st.sampled_from([b for b in (1, 2, 3) if x.shape[1] % b == 0]))
        return [block_array(x, block)] + inputs[1:], attrs

    return case()


@st.composite
def _to_nchwc_case(draw):
    """A plain input and a block, which need not divide its channels (a padded last block)."""
    x = draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 6))) + draw(shapes(2, 2)), draw(numeric_dtypes)))
    return [x], {"block": draw(st.sampled_from([1, 2, 3, 4]))}


@st.composite
def _from_nchwc_case(draw):
    """A blocked input, and the channel count of its last block where that one is padded."""
    from minicomp.ir.opdefs.nchwc import block_array

    (x,), attrs = draw(_to_nchwc_case())
    channels = x.shape[1]
    blocked = block_array(x, attrs["block"])
    padded = blocked.shape[1] * blocked.shape[4] != channels
    return [blocked], ({"channels": channels} if padded or draw(st.booleans()) else {})


OP_CASES = {}
for _op in list(UNARY_FLOAT) + list(UNARY_NUMERIC):
    OP_CASES[_op] = _unary_case(_op)
for _op in BINARY:
    OP_CASES[_op] = _binary_case(_op)
for _op in ("sum", "prod", "mean", "max", "min"):
    OP_CASES[_op] = _reduce_case(_op)
for _op in ("reshape", "transpose", "concat", "slice", "pad", "broadcast_to", "squeeze", "unsqueeze", "tile", "take"):
    OP_CASES[_op] = _layout_case(_op)
for _op in ("softmax", "log_softmax", "layer_norm", "batch_norm", "lrn"):
    OP_CASES[_op] = _composite_case(_op)
for _r in (1, 2, 3):
    OP_CASES[f"max_pool{_r}d"] = _pool_case(f"max_pool{_r}d")
    OP_CASES[f"avg_pool{_r}d"] = _pool_case(f"avg_pool{_r}d")
    OP_CASES[f"conv{_r}d"] = _conv_case(_r)
    OP_CASES[f"conv_transpose{_r}d"] = _conv_case(_r, transpose=True)
OP_CASES.update(where=_where_case(), cast=_cast_case(), matmul=_matmul_case(), global_avg_pool=_gap_case(),
                argmax=_arg_case(), argmin=_arg_case(), cumsum=_cumsum_case(), cumprod=_cumsum_case(),
                trilu=_trilu_case(), rms_norm=_rms_norm_case(), topk=_topk_case(),
                gather_elements=_gather_elements_case(), resize=_resize_case(), bitcast=_bitcast_case(),
                index_copy=_index_copy_case(),
                iota=_iota_case(),
                **{op: _logical_case(op) for op in ("logical_and", "logical_or", "logical_xor", "logical_not")},
                **{op: _bitwise_case(op) for op in ("bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
                                                    "shift_left", "shift_right")})
OP_CASES.update(conv2d_nchwc=_nchwc_conv_case(), to_nchwc=_to_nchwc_case(),
                from_nchwc=_from_nchwc_case(),
                max_pool2d_nchwc=_blocked_case(_pool_case("max_pool2d")),
                avg_pool2d_nchwc=_blocked_case(_pool_case("avg_pool2d")),
                global_avg_pool_nchwc=_blocked_case(_gap_case().filter(lambda c: c[0][0].ndim == 4)))


def op_case(op: str):
    """Strategy of (input arrays, attrs) for ``op``."""
    return OP_CASES[op]


def single_op_graph(op: str, inputs, attrs):
    """A graph with one node of ``op`` over fresh inputs shaped like ``inputs``."""
    g = GraphBuilder(f"single_{op}")
    ins = [g.input(f"x{k}", a.shape, a.dtype) for k, a in enumerate(inputs)]
    out = g.op(op, *ins, **attrs)
    g.output(*(out if isinstance(out, tuple) else (out,)))
    return g.build()


# -- random graphs ------------------------------------------------------------

_CHAIN_UNARY = ("relu", "neg", "abs", "exp_safe", "tanh", "sigmoid", "gelu", "sqrt_abs")
_CHAIN_BINARY = ("add", "sub", "mul", "maximum", "minimum")


def _apply_unary(g, x, name):
    if name == "exp_safe":
        return g.exp(g.tanh(x))
    if name == "sqrt_abs":
        return g.sqrt(g.abs(x))
    return g.op(name, x)


@st.composite
def random_dags(draw, max_nodes=8, with_layout=True, with_reductions=True):
    """A random DAG of float32 ops with branches, joins, broadcasts, reductions
    and layout changes. Returns (graph, input arrays)."""
    g = GraphBuilder("random")
    shape = draw(shapes(1, 3, 1, 5))
    rng = _rng(draw)
    n_inputs = draw(st.integers(1, 3))
    pool = []
    arrays_in = []
    for k in range(n_inputs):
        s = shape if k == 0 or draw(st.booleans()) else tuple(1 if draw(st.booleans()) else d for d in shape)
        pool.append(g.input(f"in{k}", s, "float32"))
        arrays_in.append(rng.uniform(-2, 2, size=s).astype(np.float32))
    if draw(st.booleans()):
        pool.append(g.constant(rng.uniform(-1, 1, size=shape[-1:]).astype(np.float32)))
    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "layout", "softmax"]))
        x = draw(st.sampled_from(pool))
        if kind == "unary":
            y = _apply_unary(g, x, draw(st.sampled_from(_CHAIN_UNARY)))
        elif kind == "binary":
            other = draw(st.sampled_from(pool))
            try:
                y = g.op(draw(st.sampled_from(_CHAIN_BINARY)), x, other)
            except Exception:
                continue
        elif kind == "reduce" and with_reductions and x.ndim > 0:
            axis = draw(st.integers(0, x.ndim - 1))
            y = g.op(draw(st.sampled_from(["sum", "max", "mean"])), x, axes=[axis], keepdims=True)
        elif kind == "softmax" and with_reductions and x.ndim > 0:
            y = g.softmax(x, axis=draw(st.integers(0, x.ndim - 1)))
        elif kind == "layout" and with_layout and x.ndim > 0:
            choice = draw(st.sampled_from(["transpose", "reshape", "slice"]))
            if choice == "transpose":
                y = x.transpose(list(reversed(range(x.ndim))))
            elif choice == "reshape":
                y = x.reshape(-1)
            else:
                y = x[..., ::-1] if x.shape[-1] > 1 else x.reshape(x.shape + (1,))
        else:
            continue
        pool.append(y)
    # Outputs: the last value and, sometimes, another one.
    outs = [pool[-1]]
    if len(pool) > n_inputs + 1 and draw(st.booleans()):
        extra = draw(st.sampled_from(pool[n_inputs:-1]))
        if extra is not outs[0]:
            outs.append(extra)
    g.output(*outs)
    return g.build(), arrays_in


@st.composite
def op_chains(draw, max_len=6):
    """A straight chain of elementwise ops over one input."""
    shape = draw(shapes(1, 3, 1, 6))
    g = GraphBuilder("chain")
    x = g.input("x", shape)
    y = x
    for _ in range(draw(st.integers(1, max_len))):
        if draw(st.booleans()):
            y = _apply_unary(g, y, draw(st.sampled_from(_CHAIN_UNARY)))
        else:
            y = g.op(draw(st.sampled_from(_CHAIN_BINARY)), y, draw(st.floats(-2, 2, width=32)))
    g.output(y)
    return g.build(), [_rng(draw).uniform(-2, 2, size=shape).astype(np.float32)]


ODD_SIZES = (1, 3, 7, 33, 97)


@st.composite
def contraction_graphs(draw):
    """A matmul, batched matmul or 2-D convolution with odd sizes (1, 3, 7,
    33, 97: every register-tile remainder), an elementwise epilogue sometimes.
    Returns (graph, input arrays)."""
    rng = _rng(draw)
    kind = draw(st.sampled_from(["matmul", "batched", "conv"]))
    size = st.sampled_from(ODD_SIZES)
    g = GraphBuilder(f"random_{kind}")
    if kind == "matmul":
        m, k, n = draw(size), draw(size), draw(size)
        a, b = g.input("a", (m, k)), g.input("b", (k, n))
        y = a @ b
        ins = [(m, k), (k, n)]
    elif kind == "batched":
        batch, m, k, n = draw(st.sampled_from([1, 3])), draw(size), draw(st.sampled_from([1, 3, 7])), draw(size)
        a, b = g.input("a", (batch, m, k)), g.input("b", (batch, k, n))
        y = a @ b
        ins = [(batch, m, k), (batch, k, n)]
    else:
        c_in, c_out = draw(st.sampled_from([1, 3, 7])), draw(st.sampled_from([1, 3, 7, 33]))
        side, ksize = draw(st.sampled_from([1, 3, 7, 33])), draw(st.sampled_from([1, 3]))
        pad = draw(st.sampled_from([0, ksize // 2]))
        if side + 2 * pad < ksize:
            pad = ksize // 2
        x = g.input("x", (1, c_in, side, side))
        w = g.constant(rng.uniform(-1, 1, size=(c_out, c_in, ksize, ksize)).astype(np.float32))
        y = g.conv2d(x, w, padding=pad, strides=draw(st.sampled_from([1, 2])))
        ins = [(1, c_in, side, side)]
    if draw(st.booleans()):
        y = g.relu(y + g.constant(rng.uniform(-1, 1, size=y.shape[-1:]).astype(np.float32)))
    g.output(y)
    return g.build(), [rng.uniform(-1, 1, size=s).astype(np.float32) for s in ins]


def dtype_graph(dtype: str):
    """A small graph over one dtype: arithmetic, abs, a sum, where, a cast.
    Returns (graph, input arrays) with small integer values."""
    g = GraphBuilder()
    x = g.input("x", (3, 17), dtype)
    y = g.input("y", (17,), dtype)
    z = g.maximum(x * y - x, g.abs(y))
    s = g.sum(z, axes=[1], keepdims=True)
    g.output(z, s, g.where(x > y, x, y), (x + y).astype("float32"))
    rng = np.random.default_rng(0)
    np_dtype = as_dtype(dtype).numpy  # (bfloat16's numpy name exists once ml_dtypes is imported)
    return g.build(), [rng.integers(-5, 6, size=(3, 17)).astype(np_dtype),
                       rng.integers(-5, 6, size=(17,)).astype(np_dtype)]


@st.composite
def conv_networks(draw, max_layers=7):
    """A random small convolution network: dense, plain-input, grouped and depthwise
    convolutions with channel counts that do and do not fill a block (72: a padded
    one), MobileNetV3's inverted residual (72 channels inside, hardswish, optional
    squeeze-and-excitation), pools, residual adds, concatenations, batch norm,
    per-channel scales and divisions, SiLU, LRN and a global average pool, one or
    two outputs. Returns (graph, input arrays)."""
    rng = _rng(draw)
    g = GraphBuilder("convnet")
    c0, side = draw(st.sampled_from([3, 8, 16])), draw(st.integers(5, 10))
    x = g.input("image", (1, c0, side, side))
    pool = [x]

    def weights(*shape):
        return g.constant((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))

    def channels(v):
        return v.shape[1]

    for _ in range(draw(st.integers(1, max_layers))):
        v = draw(st.sampled_from(pool[-3:]))
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "grouped", "relu", "residual", "pool", "concat",
                                     "batch_norm", "scale", "divide", "silu", "inverted_residual", "lrn"]))
        if kind == "conv":
            co, k = draw(st.sampled_from([8, 16, 24, 32, 64, 5, 72])), draw(st.sampled_from([1, 3]))
            pad = k // 2 if draw(st.booleans()) else 0
            if v.shape[2] + 2 * pad < k:
                continue
            bias = [g.constant(rng.standard_normal(co).astype(np.float32))] if draw(st.booleans()) else []
            y = g.conv2d(v, weights(co, channels(v), k, k), *bias, padding=pad, strides=draw(st.sampled_from([1, 2])))
        elif kind == "depthwise":
            c = channels(v)
            y = g.conv2d(v, weights(c, 1, 3, 3), padding=1, groups=c, strides=draw(st.sampled_from([1, 2])))
        elif kind == "grouped":  # groups as wide as a block, or narrower (ResNeXt's 4), or not dividing it
            c = channels(v)
            groups = draw(st.sampled_from([d for d in (2, 3, 4) if c % d == 0] or [1]))
            co = groups * draw(st.sampled_from([8, 16, 4]))
            y = g.conv2d(v, weights(co, c // groups, 3, 3), padding=1, groups=groups,
                         strides=draw(st.sampled_from([1, 2])))
        elif kind == "relu":
            y = g.clip(v, min=0.0, max=6.0) if draw(st.booleans()) else g.relu(v)
        elif kind == "residual":
            same = [u for u in pool if u.shape == v.shape and u is not v]
            if not same:
                continue
            y = v + draw(st.sampled_from(same))
        elif kind == "pool":
            if v.shape[2] < 3:
                y = g.global_avg_pool(v)
            else:
                op = draw(st.sampled_from(["max_pool2d", "avg_pool2d"]))
                stride = draw(st.sampled_from([1, 2]))
                y = g.op(op, v, kernel=[3, 3], strides=[stride, stride], padding=draw(st.sampled_from([0, 1])))
        elif kind == "concat":
            same = [u for u in pool if u.shape[2:] == v.shape[2:]]
            y = g.concat(v, draw(st.sampled_from(same)), axis=1)
        elif kind == "batch_norm":
            c = channels(v)
            y = g.batch_norm(v, *[g.constant(rng.uniform(0.5, 1.5, c).astype(np.float32)) for _ in range(4)])
        elif kind == "scale":
            y = v * g.constant(rng.uniform(0.5, 1.5, (channels(v), 1, 1)).astype(np.float32))
        elif kind == "divide":  # by a per-channel constant, or one value
            shape = draw(st.sampled_from([(channels(v), 1, 1), ()]))
            y = v / g.constant(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif kind == "silu":
            y = v * g.sigmoid(v)
        elif kind == "inverted_residual":  # 1x1 up to 72, hardswish, depthwise 3x3, [SE], 1x1 back down
            c = channels(v)
            a = g.conv2d(v, weights(72, c, 1, 1), g.constant(rng.standard_normal(72).astype(np.float32)))
            a = a * g.clip(a * 0.16666667 + 0.5, min=0.0, max=1.0)
            a = g.conv2d(a, weights(72, 1, 3, 3), padding=1, groups=72, strides=draw(st.sampled_from([1, 2])))
            if draw(st.booleans()):
                s = g.relu(g.conv2d(g.mean(a, axes=[2, 3], keepdims=True), weights(24, 72, 1, 1)))
                a = a * g.sigmoid(g.conv2d(s, weights(72, 24, 1, 1)))
            y = g.conv2d(a, weights(c, 72, 1, 1))
        else:
            y = g.op("lrn", v, size=3)
        pool.append(y)
    outs = [pool[-1]]
    if len(pool) > 2 and draw(st.booleans()) and pool[-2] is not x:
        outs.append(pool[-2])
    g.output(*outs)
    return g.build(), [rng.uniform(-2, 2, size=x.shape).astype(np.float32)]
