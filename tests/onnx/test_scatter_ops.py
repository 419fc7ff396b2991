"""ScatterElements, ScatterND, GatherND and Col2Im (constant indices) against
the onnx package's ReferenceEvaluator, duplicates and every reduction included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference  # noqa: E402
from tests.onnx.reference_check import drawn_rng as _rng  # noqa: E402


@given(st.data())
def test_scatter_elements(data):
    d = data.draw
    rng = _rng(d)
    shape = tuple(d(st.integers(1, 4)) for _ in range(d(st.integers(1, 3))))
    axis = d(st.integers(-len(shape), len(shape) - 1))
    reduction = d(st.sampled_from(["none", "add", "mul", "max", "min"]))
    upd_shape = tuple(d(st.integers(1, n)) for n in shape)
    n = shape[axis]
    if reduction == "none":  # distinct targets along the axis: duplicates have no defined winner
        upd_shape = tuple(min(u, n) if k == axis % len(shape) else u for k, u in enumerate(upd_shape))
        perm = np.argsort(rng.random((*upd_shape[: axis % len(shape)], n, *upd_shape[axis % len(shape) + 1:])),
                          axis=axis)
        indices = np.take(perm, np.arange(upd_shape[axis]), axis=axis)
    else:
        indices = rng.integers(0, n, size=upd_shape)
    indices = np.where(rng.random(indices.shape) < 0.3, indices - n, indices).astype(np.int64)  # negative too
    feeds = {"x": rng.standard_normal(shape).astype(np.float32), "i": indices,
             "u": rng.standard_normal(upd_shape).astype(np.float32)}
    check_against_reference("ScatterElements", feeds, ["x", "i", "u"], ["y"], {"axis": axis, "reduction": reduction},
                            18, bind=("i",))


@given(st.data())
def test_scatter_nd_and_gather_nd(data):
    d = data.draw
    rng = _rng(d)
    shape = tuple(d(st.integers(1, 4)) for _ in range(d(st.integers(1, 3))))
    k = d(st.integers(1, len(shape)))
    reduction = d(st.sampled_from(["none", "add", "mul", "max", "min"]))
    count = d(st.integers(1, 5))
    if reduction == "none":
        picks = rng.permutation(int(np.prod(shape[:k])))[:count]
        indices = np.stack(np.unravel_index(picks, shape[:k]), axis=-1).astype(np.int64)
    else:
        indices = np.stack([rng.integers(0, n, size=count) for n in shape[:k]], axis=-1).astype(np.int64)
    x = rng.standard_normal(shape).astype(np.float32)
    updates = rng.standard_normal((len(indices),) + shape[k:]).astype(np.float32)
    check_against_reference("ScatterND", {"x": x, "i": indices, "u": updates}, ["x", "i", "u"], ["y"],
                            {"reduction": reduction}, 18, bind=("i",))
    check_against_reference("GatherND", {"x": x, "i": indices}, ["x", "i"], ["y"], {}, 13, bind=("i",))


def test_gather_nd_with_batch_dims():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    indices = np.array([[[1, 2], [0, 3]], [[2, 0], [1, 1]]], np.int64)
    check_against_reference("GatherND", {"x": x, "i": indices}, ["x", "i"], ["y"], {"batch_dims": 1}, 13,
                            bind=("i",))


@given(st.data())
def test_col2im(data):
    d = data.draw
    block = [d(st.integers(1, 3)), d(st.integers(1, 3))]
    strides, dil = [d(st.integers(1, 2))] * 2, [d(st.integers(1, 2))] * 2
    pads = [d(st.integers(0, 1))] * 4
    image = [d(st.integers(max(b * dl, 2), 6)) for b, dl in zip(block, dil)]
    counts = [(image[k] + 2 * pads[k] - dil[k] * (block[k] - 1) - 1) // strides[k] + 1 for k in range(2)]
    channels = d(st.integers(1, 2))
    x = _rng(d).standard_normal((1, channels * block[0] * block[1], counts[0] * counts[1])).astype(np.float32)
    feeds = {"x": x, "image": np.array(image, np.int64), "block": np.array(block, np.int64)}
    check_against_reference("Col2Im", feeds, ["x", "image", "block"], ["y"],
                            {"strides": strides, "dilations": dil, "pads": pads}, 18, bind=("image", "block"))


def test_indices_that_are_not_constants_are_refused_clearly():
    import minicomp as mc
    from tests.onnx.reference_check import single_node_model

    feeds = {"x": np.zeros((3, 2), np.float32), "i": np.zeros((1, 1), np.int64), "u": np.zeros((1, 2), np.float32)}
    model = single_node_model("ScatterND", feeds, ["x", "i", "u"], ["y"], {}, 18)
    with pytest.raises(mc.UnsupportedError, match=r"ScatterND.*indices \(input 1\) must be a constant"):
        mc.from_onnx(model)


@given(st.data())
def test_tensor_scatter_cache_updates(data):
    d = data.draw
    rng = _rng(d)
    batch, heads, length, size = d(st.integers(1, 2)), d(st.integers(1, 2)), d(st.integers(2, 6)), 2
    steps = d(st.integers(1, length))
    mode = d(st.sampled_from(["linear", "circular"]))
    high = length if mode == "circular" else length - steps + 1
    feeds = {"cache": rng.standard_normal((batch, heads, length, size)).astype(np.float32),
             "update": rng.standard_normal((batch, heads, steps, size)).astype(np.float32),
             "at": rng.integers(0, high, size=batch).astype(np.int64)}
    check_against_reference("TensorScatter", feeds, ["cache", "update", "at"], ["y"], {"mode": mode}, 24,
                            bind=("at",))
