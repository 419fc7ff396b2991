"""The ONNX importers for integer dtypes, bitwise ops, math functions,
activations, normalizations, layout moves, products and window functions,
against the onnx package's ReferenceEvaluator over random shapes and values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference  # noqa: E402
from tests.onnx.reference_check import drawn_rng as _rng  # noqa: E402

INTS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def _ints(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(int(info.min), int(info.max), size=shape, dtype=dtype, endpoint=True)


def _shape(d, rank=(1, 3)):
    return tuple(d(st.integers(1, 4)) for _ in range(d(st.integers(*rank))))


@given(st.data())
def test_integer_arithmetic_wraps_like_onnx(data):
    d = data.draw
    rng = _rng(d)
    dtype = d(st.sampled_from(INTS))
    op = d(st.sampled_from(["Add", "Sub", "Mul", "Div", "Max", "Min", "Less", "Greater", "Equal", "Abs", "Neg"]))
    if op in ("Abs", "Neg") and np.dtype(dtype).kind == "u":
        op = "Add"
    shape = _shape(d)
    a, b = _ints(rng, shape, dtype), _ints(rng, shape[-1:], dtype)
    if op == "Div":
        b[b == 0] = 1
        if np.dtype(dtype).kind == "i":
            b[b == -1] = 2  # the onnx reference traps on min / -1
    names = ["a"] if op in ("Abs", "Neg") else ["a", "b"]
    feeds = {"a": a} if op in ("Abs", "Neg") else {"a": a, "b": b}
    check_against_reference(op, feeds, names, ["y"], {}, 18)


@given(st.data())
def test_bitwise_ops_and_shifts(data):
    d = data.draw
    rng = _rng(d)
    op = d(st.sampled_from(["BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitShift"]))
    shape = _shape(d)
    if op == "BitShift":  # ONNX shifts unsigned integers only
        dtype = d(st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]))
        bits = np.dtype(dtype).itemsize * 8
        a, b = _ints(rng, shape, dtype), rng.integers(0, bits, size=shape[-1:]).astype(dtype)
        check_against_reference(op, {"a": a, "b": b}, ["a", "b"], ["y"],
                                {"direction": d(st.sampled_from(["LEFT", "RIGHT"]))}, 18)
        return
    dtype = d(st.sampled_from(INTS))
    if op == "BitwiseNot":
        check_against_reference(op, {"a": _ints(rng, shape, dtype)}, ["a"], ["y"], {}, 18)
        return
    feeds = {"a": _ints(rng, shape, dtype), "b": _ints(rng, shape, dtype)}
    check_against_reference(op, feeds, ["a", "b"], ["y"], {}, 18)


@given(st.data())
def test_cast_between_integer_and_float_types(data):
    d = data.draw
    rng = _rng(d)
    src = d(st.sampled_from(INTS + [np.float32]))
    to = d(st.sampled_from(INTS + [np.float32, np.float64]))
    x = _ints(rng, _shape(d), src) if src != np.float32 else rng.uniform(-100, 100, _shape(d)).astype(np.float32)
    if src == np.float32 and np.dtype(to).kind in "iu":  # the reference's out-of-range casts are undefined
        info = np.iinfo(to)
        x = np.clip(x, max(info.min, -1e6), min(info.max, 1e6)).astype(np.float32)
        x = np.abs(x) if np.dtype(to).kind == "u" else x
    check_against_reference("Cast", {"x": x}, ["x"], ["y"], {"to": onnx.helper.np_dtype_to_tensor_dtype(
        np.dtype(to))}, 18)


@given(st.data())
def test_math_functions(data):
    d = data.draw
    rng = _rng(d)
    op, lo, hi = d(st.sampled_from([("Tan", -1.2, 1.2), ("Asin", -0.99, 0.99), ("Acos", -0.99, 0.99),
                                     ("Atan", -4, 4), ("Sinh", -3, 3), ("Cosh", -3, 3), ("Asinh", -4, 4),
                                     ("Acosh", 1.01, 5), ("Atanh", -0.95, 0.95), ("Ceil", -3, 3)]))
    x = rng.uniform(lo, hi, _shape(d)).astype(np.float32)
    check_against_reference(op, {"x": x}, ["x"], ["y"], {}, 18)


@given(st.data())
def test_round_halves_to_even(data):
    x = (np.floor(_rng(data.draw).uniform(-4, 4, _shape(data.draw)) * 4) / 4).astype(np.float32)
    check_against_reference("Round", {"x": x}, ["x"], ["y"], {}, 18)


def test_is_nan_and_is_inf():
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -2.5], np.float32)
    check_against_reference("IsNaN", {"x": x}, ["x"], ["y"], {}, 20)
    for pos in (0, 1):
        for neg in (0, 1):
            check_against_reference("IsInf", {"x": x}, ["x"], ["y"], {"detect_positive": pos,
                                                                      "detect_negative": neg}, 20)


@given(st.data())
def test_activations(data):
    d = data.draw
    rng = _rng(d)
    op, attrs, opset = d(st.sampled_from([
        ("Swish", {"alpha": 1.0}, 24), ("Swish", {"alpha": 0.5}, 24), ("HardSwish", {}, 18), ("Mish", {}, 18),
        ("Celu", {"alpha": 1.0}, 18), ("Celu", {"alpha": 2.0}, 18), ("ThresholdedRelu", {"alpha": 1.0}, 18),
        ("ThresholdedRelu", {"alpha": 0.3}, 18)]))
    x = rng.uniform(-5, 5, _shape(d)).astype(np.float32)
    check_against_reference(op, {"x": x}, ["x"], ["y"], attrs, opset)


@given(st.data())
def test_eye_like(data):
    d = data.draw
    x = np.zeros((d(st.integers(1, 5)), d(st.integers(1, 5))), np.float32)
    attrs = {"k": d(st.integers(-3, 3))}
    if d(st.booleans()):
        attrs["dtype"] = d(st.sampled_from([onnx.TensorProto.INT32, onnx.TensorProto.UINT8, onnx.TensorProto.DOUBLE]))
    check_against_reference("EyeLike", {"x": x}, ["x"], ["y"], attrs, 18)


@given(st.data())
def test_space_to_depth_and_back(data):
    d = data.draw
    rng = _rng(d)
    size = d(st.integers(1, 3))
    n, c, h, w = d(st.integers(1, 2)), d(st.integers(1, 3)), size * d(st.integers(1, 3)), size * d(st.integers(1, 3))
    mode = d(st.sampled_from(["DCR", "CRD"]))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    check_against_reference("SpaceToDepth", {"x": x}, ["x"], ["y"], {"blocksize": size, "mode": mode}, 25)
    x = rng.standard_normal((n, c * size * size, h, w)).astype(np.float32)
    check_against_reference("DepthToSpace", {"x": x}, ["x"], ["y"], {"blocksize": size, "mode": mode}, 18)


@given(st.data())
def test_group_normalization_per_group_and_per_channel(data):
    d = data.draw
    rng = _rng(d)
    groups = d(st.integers(1, 3))
    channels = groups * d(st.integers(1, 3))
    x = rng.standard_normal((d(st.integers(1, 2)), channels, d(st.integers(1, 4)), 3)).astype(np.float32)
    opset = d(st.sampled_from([18, 21]))
    per = groups if opset == 18 else channels
    feeds = {"x": x, "scale": rng.standard_normal(per).astype(np.float32),
             "bias": rng.standard_normal(per).astype(np.float32)}
    check_against_reference("GroupNormalization", feeds, ["x", "scale", "bias"], ["y"],
                            {"num_groups": groups, "epsilon": 1e-3}, opset)


@given(st.data())
def test_mean_variance_normalization(data):
    d = data.draw
    x = _rng(d).standard_normal((2, 3, d(st.integers(1, 4)), d(st.integers(2, 4)))).astype(np.float32)
    attrs = {"axes": d(st.sampled_from([[0, 2, 3], [1], [2, 3]]))}
    check_against_reference("MeanVarianceNormalization", {"x": x}, ["x"], ["y"], attrs, 18)


@given(st.data())
def test_products(data):
    d = data.draw
    rng = _rng(d)
    shape = _shape(d, (1, 3))
    x = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    axis = d(st.integers(-len(shape), len(shape) - 1))
    if d(st.booleans()):
        check_against_reference("ReduceProd", {"x": x, "axes": np.array([axis], np.int64)}, ["x", "axes"], ["y"],
                                {"keepdims": int(d(st.booleans()))}, 18, bind=("axes",))
    else:
        attrs = {"exclusive": int(d(st.booleans())), "reverse": int(d(st.booleans()))}
        check_against_reference("CumProd", {"x": x, "axis": np.array(axis, np.int64)}, ["x", "axis"], ["y"], attrs,
                                26, bind=("axis",))


@given(st.data())
def test_one_hot(data):
    d = data.draw
    rng = _rng(d)
    depth = d(st.integers(1, 5))
    indices = rng.integers(-depth, depth, size=_shape(d, (1, 2))).astype(d(st.sampled_from([np.int64, np.int32])))
    feeds = {"i": indices, "depth": np.array(depth, np.int64), "values": np.array([-1.0, 2.5], np.float32)}
    axis = d(st.integers(-indices.ndim - 1, indices.ndim))
    check_against_reference("OneHot", feeds, ["i", "depth", "values"], ["y"], {"axis": axis}, 11, bind=("depth",))


@given(st.data())
def test_compress_with_a_constant_condition(data):
    d = data.draw
    rng = _rng(d)
    x = rng.standard_normal(_shape(d, (1, 3))).astype(np.float32)
    attrs = {}
    length = x.size
    if d(st.booleans()):
        attrs["axis"] = d(st.integers(-x.ndim, x.ndim - 1))
        length = x.shape[attrs["axis"]]
    cond = rng.integers(0, 2, size=d(st.integers(1, length))).astype(bool)
    check_against_reference("Compress", {"x": x, "c": cond}, ["x", "c"], ["y"], attrs, 11, bind=("c",))


@given(st.data())
def test_center_crop_pad(data):
    d = data.draw
    x = _rng(d).standard_normal(_shape(d, (2, 3))).astype(np.float32)
    axes = sorted(d(st.sets(st.integers(0, x.ndim - 1), min_size=1)))
    shape = np.array([d(st.integers(1, 6)) for _ in axes], np.int64)
    check_against_reference("CenterCropPad", {"x": x, "s": shape}, ["x", "s"], ["y"], {"axes": axes}, 18, bind=("s",))


@given(st.data())
def test_integer_pow_and_float_mod(data):
    d = data.draw
    rng = _rng(d)
    shape = _shape(d)
    x = rng.integers(-4, 5, size=shape).astype(d(st.sampled_from([np.int32, np.int64])))
    y = rng.integers(0, 4, size=shape[-1:]).astype(d(st.sampled_from([np.int64, np.float32])))
    check_against_reference("Pow", {"x": x, "y": y}, ["x", "y"], ["z"], {}, 15)
    a = rng.uniform(-5, 5, shape).astype(np.float32)
    b = rng.choice(np.array([-2.5, -1, 0.75, 3, np.inf, -np.inf], np.float32), size=shape[-1:])
    check_against_reference("Mod", {"a": a, "b": b}, ["a", "b"], ["z"], {"fmod": 0}, 13)


def test_max_and_min_of_nothing_and_of_bools():
    empty = np.zeros((2, 0, 3), np.float32)
    axes = np.array([1], np.int64)
    for op in ("ReduceMax", "ReduceMin"):
        check_against_reference(op, {"x": empty, "axes": axes}, ["x", "axes"], ["y"], {"keepdims": 1}, 20,
                                bind=("axes",))
        flags = np.array([[True, False], [False, False], [True, True]])
        check_against_reference(op, {"x": flags, "axes": axes}, ["x", "axes"], ["y"], {"keepdims": 0}, 20,
                                bind=("axes",))


@given(st.data())
def test_bfloat16_casts_and_arithmetic(data):
    import ml_dtypes

    d = data.draw
    rng = _rng(d)
    x = (rng.standard_normal(_shape(d)) * 100).astype(np.float32)
    check_against_reference("Cast", {"x": x}, ["x"], ["y"], {"to": onnx.TensorProto.BFLOAT16}, 18)
    b = x.astype(ml_dtypes.bfloat16)
    check_against_reference("Cast", {"x": b}, ["x"], ["y"], {"to": onnx.TensorProto.FLOAT}, 18)
    check_against_reference("Relu", {"x": b}, ["x"], ["y"], {}, 18)


@given(st.data())
def test_swiglu_reverse_sequence_and_wrap_pad(data):
    d = data.draw
    rng = _rng(d)
    width = d(st.integers(1, 4))
    a, b = (rng.standard_normal((2, width)).astype(np.float32) for _ in range(2))
    check_against_reference("SwiGLU", {"a": a, "b": b}, ["a", "b"], ["y"], {"alpha": d(st.sampled_from([1.0, 1.7]))},
                            28)
    steps, batch = d(st.integers(1, 4)), d(st.integers(1, 3))
    time_axis = d(st.integers(0, 1))
    shape = (steps, batch, 2) if time_axis == 0 else (batch, steps, 2)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32),
             "lens": rng.integers(1, steps + 1, size=batch).astype(np.int64)}
    check_against_reference("ReverseSequence", feeds, ["x", "lens"], ["y"],
                            {"time_axis": time_axis, "batch_axis": 1 - time_axis}, 10, bind=("lens",))
    x = rng.standard_normal((d(st.integers(1, 3)), d(st.integers(1, 4)))).astype(np.float32)
    pads = np.array([d(st.integers(0, 3)) for _ in range(4)], np.int64)
    check_against_reference("Pad", {"x": x, "pads": pads}, ["x", "pads"], ["y"], {"mode": "wrap"}, 19,
                            bind=("pads",))


def test_upsample_and_log_sum_exp_of_nothing():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    check_against_reference("Upsample", {"x": x, "s": np.array([1, 1, 2, 3], np.float32)}, ["x", "s"], ["y"],
                            {"mode": "nearest"}, 9, bind=("s",))
    empty = np.zeros((2, 0, 3), np.float32)
    check_against_reference("ReduceLogSumExp", {"x": empty, "axes": np.array([1], np.int64)}, ["x", "axes"], ["y"],
                            {"keepdims": 1}, 18, bind=("axes",))


def test_ops_with_data_dependent_output_lengths_are_refused_clearly():
    import minicomp as mc
    from tests.onnx.reference_check import single_node_model

    model = single_node_model("NonZero", {"x": np.ones((2, 2), np.float32)}, ["x"], ["y"], {}, 13)
    with pytest.raises(mc.UnsupportedError, match=r"op NonZero, opset 13: its output's length depends on how many "
                                                  r"elements are nonzero"):
        mc.from_onnx(model)


@given(st.data())
def test_bitcast_reads_the_bits_as_another_type(data):
    d = data.draw
    rng = _rng(d)
    src, to = d(st.sampled_from([(np.float32, "INT32"), (np.int32, "FLOAT"), (np.float64, "INT64"),
                                 (np.uint16, "INT16"), (np.int8, "UINT8"), (np.float16, "UINT16")]))
    x = (rng.standard_normal(_shape(d)) * 1000).astype(src)
    check_against_reference("BitCast", {"x": x}, ["x"], ["y"], {"to": getattr(onnx.TensorProto, to)}, 26)
