"""Whole graphs on the llvm target: random DAGs, dtypes, edge shapes, threads."""

import numpy as np
import pytest
from hypothesis import given

import minicomp as mc
from tests.strategies import contraction_graphs, dtype_graph, op_chains, random_dags
from tests.tolerances import assert_close


def check_graph(graph, inputs, threads=2, scale=10):
    model = mc.compile(graph, target="llvm", num_threads=threads)
    got = model(*inputs)
    want = mc.run_reference(graph, *inputs)
    for g, w in zip(got, want):
        assert_close(g, w, scale=scale, what=model.stages["loops"])
    return model


@given(random_dags())
def test_random_dags_match_reference(case):
    check_graph(*case)


@given(op_chains())
def test_random_chains_match_reference(case):
    check_graph(*case)


@given(contraction_graphs())
def test_random_contractions_match_reference(case):
    """Matmul, batched matmul and convolution with odd sizes: every register
    tile, remainder and fused epilogue of the CPU schedule."""
    check_graph(*case)


@given(contraction_graphs())
def test_random_contractions_match_reference_on_avx2(case):
    graph, inputs = case
    model = mc.compile(graph, target="haswell", num_threads=2)
    for g, w in zip(model(*inputs), mc.run_reference(graph, *inputs)):
        assert_close(g, w, scale=10)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
def test_dtypes_through_a_small_graph(dtype):
    check_graph(*dtype_graph(dtype))


def test_bool_inputs_and_outputs():
    g = mc.GraphBuilder()
    c = g.input("c", (5, 4), "bool")
    x = g.input("x", (5, 4))
    flag = g.equal(c, g.greater(x, 0.0))
    g.output(flag, g.where(flag, x, -x), flag.astype("int32"))
    rng = np.random.default_rng(1)
    check_graph(g.build(), [rng.integers(0, 2, (5, 4)).astype(bool), rng.standard_normal((5, 4)).astype(np.float32)])


def test_float16_math_is_computed_in_float32():
    g = mc.GraphBuilder()
    x = g.input("x", (64,), "float16")
    g.output(g.softmax(g.gelu(x)), g.mean(x, axes=[0]))
    xs = np.linspace(-3, 3, 64).astype(np.float16)
    check_graph(g.build(), [xs])


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1), (7,), (3, 1, 5), (33, 17), (1, 129)])
def test_edge_shapes(shape):
    g = mc.GraphBuilder()
    x = g.input("x", shape)
    y = g.relu(x) * 2.0 + g.exp(x)
    outs = [y]
    if shape:
        outs.append(g.sum(y, axes=[len(shape) - 1]))
        outs.append(g.softmax(x, axis=0))
    g.output(*outs)
    check_graph(g.build(), [np.random.default_rng(2).standard_normal(shape).astype(np.float32)])


def test_zero_size_tensors():
    g = mc.GraphBuilder()
    x = g.input("x", (0, 4))
    y = g.input("y", (3, 4))
    g.output(g.relu(x), g.sum(x, axes=[0]), g.concat(x, y, axis=0))
    check_graph(g.build(), [np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32)])


def test_integer_division_never_traps():
    g = mc.GraphBuilder()
    a = g.input("a", (6,), "int32")
    b = g.input("b", (6,), "int32")
    g.output(a / b)
    a_v = np.array([7, -7, 7, -7, 5, np.iinfo(np.int32).min], np.int32)
    b_v = np.array([2, 2, -2, 0, 0, -1], np.int32)
    (got,) = mc.compile(g.build())(a_v, b_v)
    np.testing.assert_array_equal(got[:5], [3, -3, -3, 0, 0])


def test_outputs_that_are_inputs_constants_or_repeated():
    g = mc.GraphBuilder()
    x = g.input("x", (3,))
    k = g.constant(np.array([1.0, 2.0, 3.0], np.float32), name="k")
    y = x + k
    g.output(y, x, k, y)
    model = mc.compile(g.build())
    xs = np.ones(3, np.float32)
    outs = model(xs)
    np.testing.assert_array_equal(outs[0], [2, 3, 4])
    np.testing.assert_array_equal(outs[1], xs)
    np.testing.assert_array_equal(outs[2], [1, 2, 3])
    assert outs[3] is not outs[0]
    np.testing.assert_array_equal(outs[3], outs[0])


def test_threads_give_the_same_answer():
    rng = np.random.default_rng(3)
    g = mc.GraphBuilder()
    x = g.input("x", (256, 300))
    w = g.constant(rng.standard_normal((300, 200)).astype(np.float32))
    g.output(g.softmax(g.relu(x @ w), axis=-1), g.transpose(x) * 2.0)
    graph = g.build()
    xs = rng.standard_normal((256, 300)).astype(np.float32)
    model = check_graph(graph, [xs], threads=2)
    assert "parallel for" in model.stages["loops"]
    two = model(xs)
    model.set_num_threads(1)
    one = model(xs)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keepdims", [False, True])
def test_two_reductions_read_by_one_output_keep_their_own_buffers(keepdims):
    """sum(x) / sum(y) fused into one kernel: both sums once wrote into the
    output's buffer, the second over the first, and the answer was 1.0
    (found by the ONNX node cases: an expanded NegativeLogLikelihoodLoss)."""
    g = mc.GraphBuilder()
    x, y = g.input("x", (3, 4)), g.input("y", (3, 4))
    axes = [1] if keepdims else [0, 1]
    g.output(g.sum(x, axes=axes, keepdims=keepdims) / g.max(y, axes=axes, keepdims=keepdims))
    rng = np.random.default_rng(0)
    check_graph(g.build(), [rng.uniform(1, 2, (3, 4)).astype(np.float32), rng.uniform(1, 2, (3, 4)).astype(np.float32)])
