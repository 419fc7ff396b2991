"""The nchwc layout pass: semantics kept on random convolution networks, and the
graph it makes (which ops move, where conversions go)."""

import numpy as np
import pytest
from hypothesis import given

import minicomp as mc
from minicomp.backends.registry import default_pipeline
from minicomp.errors import ShapeError
from minicomp.passes.manager import get_pass
from minicomp.passes.nchwc import channel_block, output_block
from tests.strategies import conv_networks, random_dags
from tests.tolerances import assert_close

nchwc = get_pass("nchwc").run
RNG = np.random.default_rng(0)
WITH_NCHWC = ["simplify", "nchwc", "fuse", "lower", "schedule", "plan"]


def ops(graph):
    return [n.op for n in graph.nodes]


def weights(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


@given(conv_networks())
def test_pass_keeps_semantics_on_random_conv_networks(case):
    graph, inputs = case
    graph = get_pass("simplify").run(graph)
    before = mc.print_graph(graph)
    after = nchwc(graph)
    after.verify()
    assert mc.print_graph(graph) == before, "the pass changed its input graph"
    assert [v.name for v in after.outputs] == [v.name for v in graph.outputs]
    for got, want in zip(mc.run_reference(after, *inputs), mc.run_reference(graph, *inputs), strict=True):
        assert_close(got, want, scale=10)


@given(conv_networks(max_layers=4))
def test_compiled_conv_networks_match_the_reference(case):
    graph, inputs = case
    model = mc.compile(graph, num_threads=2, cache=False, pipeline=WITH_NCHWC)
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs), strict=True):
        assert_close(got, want, scale=10)


@given(random_dags())
def test_graphs_without_convolutions_are_unchanged(case):
    graph, _ = case
    assert mc.print_graph(nchwc(graph)) == mc.print_graph(graph)


def resnet_block():
    g = mc.GraphBuilder("block")
    x = g.input("image", (1, 3, 16, 16))
    stem = g.relu(g.conv2d(x, g.constant(weights(32, 3, 3, 3)), g.constant(weights(32)), padding=1))
    y = g.relu(g.conv2d(stem, g.constant(weights(32, 32, 3, 3)), padding=1))
    y = g.conv2d(y, g.constant(weights(32, 32, 1, 1)))
    y = g.relu(y + stem)
    y = g.max_pool2d(y, kernel=[3, 3], strides=[2, 2], padding=1)
    pooled = g.global_avg_pool(y)
    g.output(pooled.reshape(1, 32) @ g.constant(weights(32, 10)))
    return g.build()


def test_a_residual_network_runs_blocked_and_converts_back_once():
    graph = resnet_block()
    after = nchwc(graph)
    assert ops(after) == ["conv2d_nchwc", "relu", "conv2d_nchwc", "relu", "conv2d_nchwc", "add", "relu",
                          "max_pool2d_nchwc", "global_avg_pool_nchwc", "from_nchwc", "reshape", "matmul"]
    first = after.nodes[0]
    assert first.inputs[0].shape == (1, 3, 16, 16), "the first convolution reads the plain image"
    assert first.output.shape == (1, 1, 16, 16, 32)
    gap = next(n for n in graph.nodes if n.op == "global_avg_pool")
    assert after.nodes[9].output.name == gap.output.name, "the conversion takes the plain value's name"
    x = RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)
    model = mc.compile(graph, num_threads=2, cache=False, pipeline=WITH_NCHWC)
    assert_close(model(x)[0], mc.run_reference(graph, x)[0], scale=10)


def test_an_op_without_a_blocked_form_gets_the_plain_layout_once():
    g = mc.GraphBuilder()
    x = g.input("x", (1, 8, 6, 6))
    y = g.max_pool2d(g.conv2d(x, g.constant(weights(16, 8, 3, 3)), padding=1), kernel=[2, 2])
    g.output(g.op("lrn", y, size=3), g.softmax(y, axis=1), g.conv2d(y, g.constant(weights(16, 16, 1, 1))))
    assert ops(nchwc(g.build())) == ["conv2d_nchwc", "max_pool2d_nchwc", "from_nchwc", "lrn", "softmax", "conv2d"]


def test_a_convolution_read_only_in_the_plain_layout_stays_plain():
    g = mc.GraphBuilder()
    x = g.input("x", (1, 8, 6, 6))
    y = g.max_pool2d(g.relu(g.conv2d(x, g.constant(weights(16, 8, 3, 3)), padding=1)), kernel=[2, 2])
    g.output(g.op("lrn", y, size=3))
    assert ops(nchwc(g.build())) == ["conv2d", "relu", "max_pool2d", "lrn"]


def test_depthwise_convolutions_and_concatenations_keep_the_blocks():
    g = mc.GraphBuilder()
    x = g.input("x", (1, 16, 8, 8))
    a = g.conv2d(x, g.constant(weights(32, 16, 1, 1)))
    d = g.conv2d(a, g.constant(weights(32, 1, 3, 3)), padding=1, groups=32)
    b = g.conv2d(x, g.constant(weights(16, 16, 1, 1)))
    g.output(g.concat(d, b, axis=1))
    after = nchwc(g.build())
    assert ops(after) == ["conv2d_nchwc", "conv2d_nchwc", "conv2d_nchwc", "concat", "from_nchwc"]
    assert after.nodes[0].output.shape == (1, 2, 8, 8, 16), "a depthwise convolution's input comes in blocks of 16"
    assert after.nodes[3].output.shape == (1, 3, 8, 8, 16)


def test_grouped_convolutions_keep_the_blocks_of_their_groups():
    """RegNet's and ResNeXt's grouped 3x3 convolution between two 1x1 ones: groups of 16 channels run
    blocked, each output block reading its own group's input block; groups of 4 are merged four into
    one (zero weights between them) so that a block is a whole vector; three groups of 4, which no
    block fits and which cannot merge, stay plain, and so does the convolution only they read."""
    def network(channels, groups):
        g = mc.GraphBuilder()
        x = g.input("x", (1, channels, 8, 8))
        a = g.relu(g.conv2d(x, g.constant(weights(channels, channels, 1, 1))))
        b = g.relu(g.conv2d(a, g.constant(weights(channels, channels // groups, 3, 3)), padding=1, groups=groups))
        g.output(g.relu(g.conv2d(b, g.constant(weights(32, channels, 1, 1)))) + 1.0)
        return g.build()

    after = nchwc(network(64, 4))
    assert ops(after)[:4] == ["conv2d_nchwc", "relu", "conv2d_nchwc", "relu"]
    assert after.nodes[0].output.shape == (1, 4, 8, 8, 16), "the grouped convolution asks for blocks of its group"
    assert after.nodes[2].inputs[1].shape == (4, 1, 3, 3, 16, 16)
    merged = nchwc(network(64, 16)).nodes[2]
    assert merged.op == "conv2d_nchwc" and merged.attrs["groups"] == 4
    assert merged.inputs[1].shape == (4, 1, 3, 3, 16, 16)
    assert ops(nchwc(network(12, 3)))[:4] == ["conv2d", "relu", "conv2d", "relu"]
    for channels, groups in ((64, 4), (64, 16), (64, 8), (12, 3)):
        graph = network(channels, groups)
        xs = [RNG.standard_normal((1, channels, 8, 8)).astype(np.float32)]
        assert_close(mc.compile(graph, cache=False)(*xs)[0], mc.run_reference(graph, *xs)[0], scale=10)


def test_a_squeeze_and_excitation_block_keeps_the_blocks():
    """EfficientNet's block: SiLU, a mean over the map (ReduceMean, not a global pool), two small
    convolutions and a sigmoid, the per-channel gate multiplied in: the map never leaves the blocks."""
    g = mc.GraphBuilder()
    x = g.input("x", (1, 16, 8, 8))
    a = g.conv2d(x, g.constant(weights(32, 16, 1, 1)))
    a = a * g.sigmoid(a)
    d = g.conv2d(a, g.constant(weights(32, 1, 3, 3)), padding=1, groups=32)
    s = g.mean(d, axes=[2, 3], keepdims=True)
    s = g.relu(g.conv2d(s, g.constant(weights(8, 32, 1, 1))))
    gate = g.sigmoid(g.conv2d(s, g.constant(weights(32, 8, 1, 1))))
    g.output(g.conv2d(d * gate, g.constant(weights(16, 32, 1, 1))))
    graph = g.build()
    after = nchwc(graph)
    plain_again = [n for n in after.nodes if n.op == "from_nchwc"]
    assert all(n.output.shape[2:] == (1, 1) for n in plain_again[:-1]), "only the gate's few values leave the blocks"
    assert "global_avg_pool_nchwc" in ops(after) and ops(after).count("conv2d_nchwc") == 4  # the last is read plain
    xs = [RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)]
    assert_close(mc.run_reference(after, *xs)[0], mc.run_reference(graph, *xs)[0], scale=10)
    assert_close(mc.compile(graph)(*xs)[0], mc.run_reference(graph, *xs)[0], scale=10)


def test_convolutions_that_no_block_divides_stay_plain():
    g = mc.GraphBuilder()
    x = g.input("x", (1, 3, 8, 8))
    g.output(g.relu(g.conv2d(x, g.constant(weights(5, 3, 3, 3)))))
    assert ops(nchwc(g.build())) == ["conv2d", "relu"]
    assert channel_block(64) == 32 and channel_block(48) == 16 and channel_block(24) == 24
    assert channel_block(5) is None and channel_block(72) is None
    assert output_block(72) == 16 and output_block(120) == 32 and output_block(200) == 16
    assert output_block(5) is None and output_block(24) == 24 and output_block(96) == 32


def mobilenet_v3_block(divide_by=None):
    """MobileNetV3's inverted residual at 72 channels, which no block divides: a 1x1 expansion with
    hardswish, a depthwise 5x5, squeeze-and-excitation (a mean, 72 -> 24 -> 72, hardsigmoid), a 1x1
    projection; ``divide_by(builder, map)``: what the map is divided by after the expansion."""
    g = mc.GraphBuilder()
    x = g.input("x", (1, 24, 8, 8))

    def hardswish(v):
        return v * g.clip(v * 0.16666667 + 0.5, min=0.0, max=1.0)

    a = hardswish(g.conv2d(x, g.constant(weights(72, 24, 1, 1)), g.constant(weights(72))))
    if divide_by is not None:
        a = a / divide_by(g, a)
    d = g.conv2d(a, g.constant(weights(72, 1, 5, 5)), padding=2, groups=72)
    s = g.relu(g.conv2d(g.mean(d, axes=[2, 3], keepdims=True), g.constant(weights(24, 72, 1, 1))))
    gate = g.clip(g.conv2d(s, g.constant(weights(72, 24, 1, 1))) * 0.2 + 0.5, min=0.0, max=1.0)
    g.output(g.conv2d(d * gate, g.constant(weights(40, 72, 1, 1))))
    return g.build()


def test_channel_counts_that_no_block_divides_run_in_padded_blocks():
    """72 channels run as 5 blocks of 16, the last one half padding: the whole block stays blocked,
    the padding lanes zero through the convolutions and finite through hardswish and the gate."""
    graph = mobilenet_v3_block()
    after = nchwc(graph)
    assert ops(after).count("conv2d_nchwc") == 4 and ops(after)[-2:] == ["from_nchwc", "conv2d"], \
        "all but the last convolution (whose output the graph returns plain) run blocked"
    assert [n.output.shape for n in after.nodes if n.op == "from_nchwc"] == [(1, 72, 8, 8)], \
        "the map leaves the blocks once, the padding dropped"
    assert after.nodes[0].output.shape == (1, 5, 8, 8, 16) and after.nodes[0].inputs[2].shape == (5, 16)
    depthwise = after.nodes[5]
    assert depthwise.attrs["groups"] == 80 and depthwise.inputs[1].shape == (5, 1, 5, 5, 1, 16)
    xs = [RNG.standard_normal((1, 24, 8, 8)).astype(np.float32)]
    assert_close(mc.run_reference(after, *xs)[0], mc.run_reference(graph, *xs)[0], scale=10)
    for target in ("llvm", "c"):
        assert_close(mc.compile(graph, target=target, cache=False)(*xs)[0], mc.run_reference(graph, *xs)[0],
                     scale=10)


def test_padding_lanes_go_only_through_ops_that_keep_them_finite():
    """A division by a per-channel constant would divide the padding lanes by its zero padding, and a
    division by a moving value by whatever they hold: both read the plain layout (72 channels, the
    padding dropped); a division by one nonzero value for all channels keeps the blocks."""
    def divisions(divide_by):
        after = nchwc(mobilenet_v3_block(divide_by))
        return next(n for n in after.nodes if n.op == "div"), after

    div, after = divisions(lambda g, a: g.constant(np.full((72, 1, 1), 2.0, np.float32)))
    assert div.inputs[0].shape == (1, 72, 8, 8)
    source = next(n for n in after.nodes if n.output is div.inputs[0])
    assert source.op == "from_nchwc" and source.attrs["channels"] == 72
    assert divisions(lambda g, a: g.sigmoid(a))[0].output.shape == (1, 72, 8, 8)
    assert divisions(lambda g, a: g.constant(np.float32(6.0)))[0].output.shape == (1, 5, 8, 8, 16)
    assert divisions(lambda g, a: g.constant(np.float32(0.0)))[0].output.shape == (1, 72, 8, 8), \
        "a division by zero stays plain"


def test_ops_that_use_the_position_are_not_moved():
    g = mc.GraphBuilder()
    x = g.input("x", (1, 8, 4, 4))
    y = g.conv2d(x, g.constant(weights(8, 8, 1, 1)))
    g.output(g.op("trilu", y, upper=True), g.conv2d(y, g.constant(weights(8, 8, 1, 1))))
    after = nchwc(g.build())
    assert ops(after) == ["conv2d_nchwc", "from_nchwc", "trilu", "conv2d"]


def test_the_pass_can_be_left_out_of_the_pipeline():
    graph = resnet_block()
    pipeline = [p for p in default_pipeline("llvm") if p != "nchwc"]
    model = mc.compile(graph, num_threads=2, cache=False, pipeline=pipeline)
    assert not any("nchwc" in k.name for k in model.kernels)


def test_blocked_ops_name_the_bad_layout():
    g = mc.GraphBuilder()
    x = g.input("x", (1, 2, 4, 4, 8))
    with pytest.raises(ShapeError, match="input blocks of 8 channels do not fit weights"):
        g.op("conv2d_nchwc", x, g.constant(np.zeros((1, 2, 1, 1, 4, 16), np.float32)))
    with pytest.raises(ShapeError, match="3 channels do not end in the last of 2 blocks of 4"):
        g.op("from_nchwc", g.input("y", (1, 2, 2, 2, 4)), channels=3)


def test_a_wide_squeeze_and_excitation_fc_compiles_for_two_threads():
    """EfficientNet-V2's SE: 1,536 blocked channels into a 64-wide FC with SiLU. The FC's nest runs
    inside its output's unit loops, where no thread loop can go; splitting its columns over the
    threads there failed the schedule (efficientnet_v2_s, maxvit_t)."""
    g = mc.GraphBuilder()
    x = g.input("x", (1, 64, 2, 2))
    h = g.conv2d(x, g.constant(weights(1536, 64, 1, 1)))
    s = g.silu(g.conv2d(g.mean(h, axes=(2, 3), keepdims=True), g.constant(weights(64, 1536, 1, 1))))
    gate = g.sigmoid(g.conv2d(s, g.constant(weights(1536, 64, 1, 1))))
    g.output(g.conv2d(h * gate, g.constant(weights(64, 1536, 1, 1))))
    graph = g.build()
    xs = [RNG.standard_normal((1, 64, 2, 2)).astype(np.float32)]
    compiled = mc.compile(graph, target=mc.Target.host(num_threads=2))
    assert_close(compiled(*xs)[0], mc.run_reference(graph, *xs)[0], scale=10)


def test_a_convolution_of_a_plain_input_takes_its_tile_rows_along_the_width():
    """The tile's pixels are neighbours in a plain (N, C, H, W) input along W: along H each row of the
    tile was another cache line for every input channel (EfficientNet's 136 channels ran at half speed)."""
    g = mc.GraphBuilder()
    x = g.input("x", (1, 136, 14, 14))  # (no block divides 136 channels: the input stays plain)
    h = g.relu(g.conv2d(x, g.constant(weights(64, 136, 1, 1))))
    g.output(g.conv2d(h, g.constant(weights(32, 64, 1, 1))))
    model = mc.compile(g.build(), cache=False)
    first = next(str(k) for k in model.kernels if "x[1, 136, 14, 14]" in str(k))
    assert "_w_nchwc[" in first, "a blocked convolution of the plain input"
    assert "split(i3, 7)" in first and "((i3.o * 7) + i3.i)] * conv2d_1_w_nchwc" in first, first
    xs = RNG.standard_normal((1, 136, 14, 14)).astype(np.float32)
    assert_close(model(xs)[0], mc.run_reference(g.build(), xs)[0])
