"""GridSample (every mode, padding mode and corner alignment, 2-D and 3-D)
and AffineGrid against the onnx package's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference  # noqa: E402


@pytest.mark.slow  # 30 s: each example compiles up to 16 gathers per mode
@settings(max_examples=12)
@given(st.data())
def test_grid_sample(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    r = d(st.sampled_from([2, 2, 3]))
    mode = d(st.sampled_from(["nearest", "linear"] + (["cubic"] if r == 2 else [])))
    spatial = [d(st.integers(2, 4)) for _ in range(r)]
    out = [d(st.integers(1, 3)) for _ in range(r)]
    n, c = d(st.integers(1, 2)), d(st.integers(1, 2))
    x = rng.standard_normal((n, c, *spatial)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, (n, *out, r)).astype(np.float32)  # some positions outside the input
    attrs = {"mode": mode, "padding_mode": d(st.sampled_from(["zeros", "border", "reflection"])),
             "align_corners": int(d(st.booleans()))}
    check_against_reference("GridSample", {"x": x, "grid": grid}, ["x", "grid"], ["y"], attrs, 22)


@given(st.data())
def test_affine_grid_then_grid_sample(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    r = d(st.sampled_from([2, 3]))
    n = d(st.integers(1, 2))
    size = np.array([n, 1] + [d(st.integers(1, 4)) for _ in range(r)], np.int64)
    theta = rng.uniform(-1, 1, (n, r, r + 1)).astype(np.float32)
    check_against_reference("AffineGrid", {"theta": theta, "size": size}, ["theta", "size"], ["grid"],
                            {"align_corners": int(d(st.booleans()))}, 20, bind=("size",))
