"""Fusion decisions: golden tests on known models, limits, cycles, reasons."""

import os
import sys

import numpy as np
import pytest
from hypothesis import given

import minicomp as mc
from minicomp.passes.fusion import fuse_graph
from minicomp.passes.manager import get_pass
from tests.strategies import random_dags
from tests.tolerances import assert_close

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from mlp import build_mlp  # noqa: E402
from transformer_block import DIMS, build_transformer_block  # noqa: E402


def groups_of(graph, **options):
    graph = get_pass("simplify").run(graph)
    return fuse_graph(graph, options or None).groups


def test_transformer_block_is_at_most_six_kernels():
    groups = groups_of(build_transformer_block(**DIMS))
    names = [g.name for g in groups]
    assert len(groups) <= 6, names
    assert [g.ops.count("matmul") for g in groups] == [0, 3, 2, 1, 1, 1]
    assert "softmax" in groups[2].ops and groups[2].chain, "attention: one pass over the keys"
    assert "transpose" in groups[2].ops, "K read as it is: the chain copies a step's keys, not all of K^T"
    assert "layer_norm" in groups[3].ops


def test_a_transposed_right_operand_of_a_matmul_is_copied_once():
    g = mc.GraphBuilder()
    q, k, v = g.input("q", (2, 8, 4)), g.input("k", (2, 8, 4)), g.input("v", (8, 2, 4))
    scores = q @ k.transpose(0, 2, 1)  # K^T: the product's columns would come from K's rows
    g.output(scores @ v.transpose(1, 0, 2))  # the last axis stays last: fuses as index arithmetic
    graph = g.build()
    result = fuse_graph(get_pass("simplify").run(graph))
    assert [grp.ops for grp in result.groups] == [["transpose"], ["matmul"], ["transpose", "matmul"]]
    assert "a transposed right operand of matmul" in result.explain()
    rng = np.random.default_rng(0)
    x = [rng.standard_normal(shape).astype(np.float32) for shape in [(2, 8, 4), (2, 8, 4), (8, 2, 4)]]
    assert_close(mc.compile(graph)(*x)[0], mc.run_reference(graph, *x)[0], scale=10)


def shuffle_unit(with_concat: bool):
    """ShuffleNet's channel shuffle (reshape, transpose, reshape) into a 1x1 convolution, after a concat
    (v2's unit) or alone (v1's)."""
    rng = np.random.default_rng(1)
    g = mc.GraphBuilder()
    a, b = g.input("a", (1, 6, 5, 5)), g.input("b", (1, 12, 5, 5) if not with_concat else (1, 6, 5, 5))
    joined = g.concat(a, b, axis=1) if with_concat else b
    shuffled = joined.reshape((1, 2, 6, 5, 5)).transpose(0, 2, 1, 3, 4).reshape((1, 12, 5, 5))
    w = g.constant(rng.standard_normal((8, 12, 1, 1)).astype(np.float32))
    g.output(g.relu(g.conv2d(shuffled, w)))
    graph = g.build()
    return graph, [rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs]


def test_a_concat_and_shuffle_into_a_convolution_is_copied_once():
    graph, x = shuffle_unit(with_concat=True)
    result = fuse_graph(get_pass("simplify").run(graph))
    assert [grp.ops for grp in result.groups] == [["concat", "reshape", "transpose", "reshape"], ["conv2d", "relu"]]
    assert "passes a transpose: it is copied once" in result.explain()
    assert_close(mc.compile(graph)(*x)[0], mc.run_reference(graph, *x)[0], scale=10)
    # A shuffle alone still fuses into the convolution's reads (it reads well enough; copying cost more).
    alone, _ = shuffle_unit(with_concat=False)
    assert [grp.ops for grp in fuse_graph(get_pass("simplify").run(alone)).groups] == [
        ["reshape", "transpose", "reshape", "conv2d", "relu"]]


def test_mlp_is_one_kernel_per_layer():
    groups = groups_of(build_mlp())
    assert [g.ops for g in groups] == [["matmul", "add", "relu"], ["matmul", "add", "relu"], ["matmul", "add"]]
    assert groups[0].name == "fused_matmul_add_relu_0"


def test_conv_bn_relu_is_one_kernel():
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder()
    x = g.input("x", (1, 3, 16, 16))
    c = g.conv2d(x, g.constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32)), padding=1)
    bn = g.batch_norm(c, *[g.constant(rng.uniform(0.5, 1.5, 8).astype(np.float32)) for _ in range(4)])
    g.output(g.relu(bn))
    graph = g.build()
    groups = groups_of(graph)
    assert len(groups) == 1 and groups[0].ops == ["conv2d", "relu"]
    model = mc.compile(graph)
    xs = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert_close(model(xs)[0], mc.run_reference(graph, xs)[0], scale=10)
    assert len(model.kernels) == 1


@pytest.mark.parametrize("build", [
    lambda g, x: g.softmax(x, axis=-1),
    lambda g, x: g.log_softmax(x, axis=-1),
    lambda g, x: g.layer_norm(x, g.constant(np.full(128, 0.5, np.float32)), g.constant(np.ones(128, np.float32))),
], ids=["softmax", "log_softmax", "layer_norm"])
def test_decomposed_composites_become_one_row_parallel_kernel(build):
    g = mc.GraphBuilder()
    x = g.input("x", (256, 128))
    g.output(build(g, x))
    graph = g.build()
    decomposed = get_pass("decompose").run(graph)
    assert len(decomposed.nodes) >= 5
    model = mc.compile(decomposed, pipeline="decompose,simplify,fuse,lower,schedule,plan")
    assert len(model.kernels) == 1
    loops = model.stages["loops"]
    # One parallel loop over rows holds every reduction.
    assert loops.count("parallel for") == 1 and loops.count("for (r") >= 2
    xs = np.random.default_rng(1).standard_normal((256, 128)).astype(np.float32)
    assert_close(model(xs)[0], mc.run_reference(graph, xs)[0], scale=10)


def test_limits_are_respected():
    g = mc.GraphBuilder()
    x = g.input("x", (8,))
    y = x
    for _ in range(6):
        y = g.relu(y) * 2.0
    g.output(y)
    graph = g.build()
    groups = groups_of(graph, max_group_nodes=3)
    assert all(len(gr.nodes) <= 3 for gr in groups) and len(groups) == 4
    result = fuse_graph(get_pass("simplify").run(graph), {"max_group_nodes": 3})
    assert any("more than 3 nodes" in b.reason for b in result.boundaries)
    g = mc.GraphBuilder()
    y = g.input("x", (8,))
    for k in range(6):
        y = y + g.constant(np.full(8, k + 1, np.float32))
    g.output(y)
    params = fuse_graph(get_pass("simplify").run(g.build()), {"max_params": 4})
    assert len(params.groups) > 1
    assert all(len(gr.inputs) + len(gr.outputs) <= 4 for gr in params.groups)


def test_no_group_creates_a_cycle():
    # a -> matmul -> c and a -> c: fusing a with c would need the matmul inside too.
    g = mc.GraphBuilder()
    x = g.input("x", (4, 4))
    a = g.exp(x)
    m = a @ g.constant(np.eye(4, dtype=np.float32))
    g.output(g.softmax(m) + a)
    graph = get_pass("simplify").run(g.build())
    result = fuse_graph(graph)
    index = {n: i for i, gr in enumerate(result.groups) for n in gr.nodes}
    for gi, gr in enumerate(result.groups):
        for v in gr.inputs:
            if v.producer is not None:
                assert index[v.producer] < gi, "a group reads a value produced by a later group"
    model = mc.compile(g.build())
    xs = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    assert_close(model(xs)[0], mc.run_reference(g.build(), xs)[0], scale=10)


def test_every_boundary_has_a_reason():
    result = fuse_graph(get_pass("simplify").run(build_transformer_block(**DIMS)))
    text = result.explain()
    assert "boundaries:" in text and all(b.reason for b in result.boundaries)
    assert "must be in memory" in text


@given(random_dags(max_nodes=10))
def test_fused_and_unfused_agree_with_reference(case):
    graph, inputs = case
    want = mc.run_reference(graph, *inputs)
    for pipeline in ("simplify,fuse,lower,schedule,plan", "simplify,lower,schedule,plan", "lower,plan"):
        got = mc.compile(graph, pipeline=pipeline, num_threads=2)(*inputs)
        for a, b in zip(got, want):
            assert_close(a, b, scale=10, what=pipeline)


def test_sibling_matmuls_of_different_widths_fuse_side_by_side():
    """Q (64 wide) and grouped-query K (16 wide) projections read x once, in one kernel."""
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder("gqa")
    x = g.input("x", (8, 64))
    q = x @ g.constant(rng.standard_normal((64, 64)).astype(np.float32))
    k = x @ g.constant(rng.standard_normal((64, 16)).astype(np.float32))
    g.output(g.relu(q), k * 2.0)
    graph = g.build()
    model = mc.compile(graph)
    assert len(model.kernels) == 1 and "side by side" in model.stages["fusion"]
    xs = rng.standard_normal((8, 64)).astype(np.float32)
    for got, want in zip(model(xs), mc.run_reference(graph, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_an_unknown_fusion_option_is_named():
    b = mc.GraphBuilder()
    b.output(b.relu(b.input("x", (2,))))
    with pytest.raises(mc.MinicompError, match="unknown fusion option.*enabled; known: max_group_nodes"):
        mc.compile(b.build(), fusion={"enabled": False})
