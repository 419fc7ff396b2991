"""Register-tiled reductions (explicit SIMD tiles) against the reference,
on shapes that leave remainders in every direction."""

import re

import numpy as np
import pytest

import minicomp as mc
from tests.tolerances import assert_close


def compiled_matches(graph, inputs, expect_tiles=True):
    model = mc.compile(graph, num_threads=2)
    if expect_tiles:
        assert "simd for" in model.stages["loops"] and "unrolled for" in model.stages["loops"]
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs)):
        assert_close(got, want, scale=10)
    return model


@pytest.mark.parametrize("m, k, n", [(37, 53, 71), (6, 8, 32), (5, 3, 1000), (64, 784, 512), (1, 17, 3)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_tiles_with_remainders(m, k, n, dtype):
    rng = np.random.default_rng(m * n)
    g = mc.GraphBuilder()
    a = g.input("a", (m, k), dtype)
    b = g.input("b", (k, n), dtype)
    g.output(g.relu(a @ b + 0.5))
    compiled_matches(g.build(), [rng.standard_normal((m, k)).astype(dtype),
                                 rng.standard_normal((k, n)).astype(dtype)], expect_tiles=m > 1)


@pytest.mark.parametrize("stride, pad, size", [(1, 1, 28), (2, 1, 15), (3, 0, 20), (1, 0, 7), (2, 2, 9)])
def test_conv_tiles_with_strided_lanes(stride, pad, size):
    rng = np.random.default_rng(size)
    g = mc.GraphBuilder()
    x = g.input("x", (2, 5, size, size))
    w = g.constant(rng.standard_normal((13, 5, 3, 3)).astype(np.float32))
    bias = g.constant(rng.standard_normal(13).astype(np.float32))
    g.output(g.relu(g.conv2d(x, w, bias, strides=stride, padding=pad)))
    compiled_matches(g.build(), [rng.standard_normal((2, 5, size, size)).astype(np.float32)])


@pytest.mark.parametrize("groups, per_group, kernel, size, batch",
                         [(4, 34, 1, 14, 1), (3, 7, 3, 9, 2), (2, 5, 1, 11, 1)])
def test_grouped_convolution_tiles_within_each_group(groups, per_group, kernel, size, batch):
    """ShuffleNet's grouped convolutions: the output channel loop is split by
    the group size, so that within a group the input does not move with the
    channel and the channels are the rows of register tiles."""
    rng = np.random.default_rng(groups * size)
    channels = groups * per_group
    g = mc.GraphBuilder()
    x = g.input("x", (batch, channels, size, size))
    w = g.constant(rng.standard_normal((channels, per_group, kernel, kernel)).astype(np.float32))
    g.output(g.relu(g.conv2d(x, w, groups=groups, padding=kernel // 2)))
    model = compiled_matches(g.build(), [rng.standard_normal((batch, channels, size, size)).astype(np.float32)])
    assert re.search(rf"split\(i\d+, {per_group}\)", model.stages["loops"])  # the channels, by the group size


@pytest.mark.parametrize("channels, size, kernel, stride, batch",
                         [(48, 7, 3, 1, 1), (40, 9, 3, 2, 2), (64, 5, 1, 1, 1)])
def test_convolution_on_a_small_map_runs_channels_as_lanes(channels, size, kernel, stride, batch):
    """Short rows (a 7x7 map) would leave lanes idle: the output channels are
    the lanes (weights packed so that they are contiguous, remainders in
    narrower tiles), the pixels the rows; bias and relu are folded in."""
    rng = np.random.default_rng(channels + size)
    g = mc.GraphBuilder()
    x = g.input("x", (batch, 6, size, size))
    w = g.constant(rng.standard_normal((channels, 6, kernel, kernel)).astype(np.float32))
    bias = g.constant(rng.standard_normal(channels).astype(np.float32))
    g.output(g.relu(g.conv2d(x, w, bias, strides=stride, padding=kernel // 2)))
    model = compiled_matches(g.build(), [rng.standard_normal((batch, 6, size, size)).astype(np.float32)])
    assert "pack(const_0, 0, 32)" in model.stages["loops"] and "const_0_p32" in model.stages["loops"]


def test_a_deep_convolution_on_long_rows_runs_channels_as_lanes_too():
    """288 products per output (32 channels x 3 x 3) on rows of 130: the same
    tiles, the long rows fused with the image rows into tile rows."""
    rng = np.random.default_rng(5)
    g = mc.GraphBuilder()
    x = g.input("x", (1, 32, 3, 130))
    w = g.constant(rng.standard_normal((40, 32, 3, 3)).astype(np.float32))
    g.output(g.conv2d(x, w, padding=1))
    model = compiled_matches(g.build(), [rng.standard_normal((1, 32, 3, 130)).astype(np.float32)])
    assert "pack(const_0, 0, 32)" in model.stages["loops"]


def test_batched_matmul_and_transposed_operand():
    rng = np.random.default_rng(7)
    g = mc.GraphBuilder()
    q = g.input("q", (2, 3, 19, 16))
    k = g.input("k", (2, 3, 19, 16))
    g.output(g.softmax(q @ k.transpose(0, 1, 3, 2), axis=-1))
    compiled_matches(g.build(), [rng.standard_normal((2, 3, 19, 16)).astype(np.float32),
                                 rng.standard_normal((2, 3, 19, 16)).astype(np.float32)], expect_tiles=False)


@pytest.mark.parametrize("columns, panels", [(1024, True), (1000, False)])
def test_batch_one_matrix_vector_products_stream_packed_panels(columns, panels):
    """A classifier layer (one row of outputs): panels of 32 columns, each
    accumulated in registers over the whole reduction from weights packed as
    one contiguous run, shared among the threads; columns that are no whole
    number of panels keep the plain schedule."""
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder()
    x = g.input("x", (1, 512))
    w = g.constant(rng.standard_normal((512, columns)).astype(np.float32))
    g.output(g.relu(x @ w))
    graph = g.build()
    model = mc.compile(graph, num_threads=2)
    loops = model.stages["loops"]
    assert ("pack(const_0, 1, 32)" in loops and "parallel(i0.o)" in loops) == panels
    xs = rng.standard_normal((1, 512)).astype(np.float32)
    np.testing.assert_allclose(model(xs)[0], mc.run_reference(graph, xs)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, kernel, stride, pad", [(23, 3, 2, 0), (14, 3, 1, 1), (9, 5, 1, 2)])
def test_pooling_and_depthwise_windows_run_outputs_as_lanes(size, kernel, stride, pad):
    """A shallow window (pooling, depthwise convolution) reads a different
    input for every output: the output row is the vector lanes and
    neighbouring rows the tile's rows, instead of one scalar at a time."""
    rng = np.random.default_rng(size + kernel)
    channels = 6
    g = mc.GraphBuilder()
    x = g.input("x", (1, channels, size, size))
    w = g.constant(rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32))
    depthwise = g.conv2d(x, w, groups=channels, strides=stride, padding=pad)
    pooled = g.max_pool2d(x, kernel=(kernel, kernel), strides=(stride, stride), padding=[pad] * 4)
    g.output(g.relu(depthwise), pooled)
    model = compiled_matches(g.build(), [rng.standard_normal((1, channels, size, size)).astype(np.float32)])
    kernels = model.stages["loops"].split("kernel ")[1:]
    assert len(kernels) >= 2 and all("simd for" in k and "unrolled for" in k for k in kernels)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vector_max_and_min_keep_numpy_semantics_on_nan_inf_and_signed_zeros(dtype):
    """The tiles' max and min (max pooling, a relu or clip epilogue) give NaN
    when any element of a window is NaN, wherever it sits in the window, and
    otherwise exactly numpy's values."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 4, 21, 21)).astype(dtype)
    for value in (np.nan, np.inf, -np.inf, 0.0, -0.0):
        x.flat[rng.integers(0, x.size, 40)] = value
    g = mc.GraphBuilder()
    xi = g.input("x", x.shape, dtype)
    w = g.constant(rng.standard_normal((4, 1, 3, 3)).astype(dtype))
    window = dict(kernel=(3, 3), strides=(2, 2))
    g.output(g.max_pool2d(xi, **window), -g.max_pool2d(-xi, **window),
             g.clip(g.conv2d(xi, w, groups=4, padding=1), min=0.0, max=6.0))
    graph = g.build()
    model = mc.compile(graph, num_threads=2)
    assert "simd for" in model.stages["loops"]
    for got, want in zip(model(x), mc.run_reference(graph, x)):
        assert np.isnan(want).any()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # NaN where NaN, inf where inf


def test_a_row_remainder_is_one_widened_tile():
    """A 27-wide pooled row in tiles of 16: one tile, then one of 16 over
    columns 11-26 (not tiles of 8, 2 and 1: narrow tiles cost as many
    instructions as full ones). Columns 11-15 are computed twice, with the
    same values. (Tiles that add onto earlier results never widen: see
    tests/passes/test_schedule.py.)"""
    rng = np.random.default_rng(5)
    g = mc.GraphBuilder()
    x = g.input("x", (1, 3, 55, 55))
    g.output(g.relu(g.max_pool2d(x, kernel=(3, 3), strides=(2, 2)) - 0.5))
    model = compiled_matches(g.build(), [rng.standard_normal((1, 3, 55, 55)).astype(np.float32)])
    assert "split(i3, 16, widen)" in model.stages["loops"]


def test_an_epilogue_is_not_folded_before_its_other_operand_is_computed():
    """max_pool(x) + avg_pool(x) in one kernel: the add may not be applied as
    the max pool's tiles are written, since the average pool is computed
    after them (it was, once: every sum read an unwritten buffer)."""
    rng = np.random.default_rng(3)
    g = mc.GraphBuilder()
    x = g.input("x", (1, 3, 12, 12))
    window = dict(kernel=(2, 2), strides=(2, 2))
    g.output(g.max_pool2d(x, **window) + g.avg_pool2d(x, **window))
    compiled_matches(g.build(), [rng.standard_normal((1, 3, 12, 12)).astype(np.float32)])


@pytest.mark.parametrize("channels, size, outer", [(96, 5, True), (64, 20, False), (72, 5, True)])
def test_channel_blocks_go_outermost_when_the_weights_outweigh_the_input(channels, size, outer):
    """96 channels of 3x3 weights (332 KB) on a 5x5 map (10 KB): each block of
    channels reads its weights once, the small input again per block; on a
    20x20 map of 64 channels the input is larger and the pixels stay outside.
    72 channels are two blocks and 8 more: the channel loop is partitioned
    first and the last 8 get their own nest, pixels outside."""
    rng = np.random.default_rng(channels)
    g = mc.GraphBuilder()
    x = g.input("x", (1, channels, size, size))
    w = g.constant(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32))
    g.output(g.relu(g.conv2d(x, w, padding=1)))
    model = compiled_matches(g.build(), [rng.standard_normal((1, channels, size, size)).astype(np.float32)])
    assert ("channel blocks outermost" in model.stages["loops"]) == outer
    assert bool(re.search(r"partition\(i\d+, 64\)", model.stages["loops"])) == (channels == 72)
