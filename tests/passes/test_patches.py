"""The patches pass: a convolution whose windows tile its input becomes patches
times weights; semantics kept on random patch convolutions, and every other
convolution left alone."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import minicomp as mc
from minicomp.passes.manager import get_pass
from tests.tolerances import assert_close

patches = get_pass("patches").run
RNG = np.random.default_rng(0)


def ops(graph):
    return [n.op for n in graph.nodes]


def weights(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def conv_graph(x_shape, w_shape, bias=True, reader=None, **attrs):
    g = mc.GraphBuilder()
    x = g.input("x", x_shape)
    b = [g.constant(weights(w_shape[0]))] if bias else []
    y = g.conv2d(x, g.constant(weights(*w_shape)), *b, **attrs)
    g.output(reader(g, y) if reader else y)
    return g.build()


@given(n=st.integers(1, 2), c=st.integers(1, 4), co=st.integers(1, 6), kh=st.integers(1, 4), kw=st.integers(2, 4),
       oh=st.integers(1, 3), ow=st.integers(1, 3), bias=st.booleans())
def test_patch_convolutions_keep_their_values(n, c, co, kh, kw, oh, ow, bias):
    graph = conv_graph((n, c, oh * kh, ow * kw), (co, c, kh, kw), bias=bias, strides=(kh, kw))
    after = patches(graph)
    assert "conv2d" not in ops(after) and "matmul" in ops(after)
    x = RNG.standard_normal((n, c, oh * kh, ow * kw)).astype(np.float32)
    want = mc.run_reference(graph, x)[0]
    assert_close(mc.run_reference(after, x)[0], want)
    assert_close(mc.compile(graph)(x)[0], want)


def test_vit_patch_embedding_becomes_one_product():
    """ViT's 16x16 patches of a 224x224 image, flattened and transposed into tokens, as the model reads them."""
    def tokens(g, y):
        return g.transpose(g.reshape(y, shape=(1, 64, 196)), perm=(0, 2, 1))

    graph = conv_graph((1, 3, 224, 224), (64, 3, 16, 16), reader=tokens, strides=(16, 16))
    after = patches(graph)
    assert ops(after).count("matmul") == 1 and "conv2d" not in ops(after)
    matmul = next(n for n in after.nodes if n.op == "matmul")
    assert matmul.inputs[0].shape == (196, 768) and matmul.inputs[1].shape == (768, 64)
    x = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert_close(mc.compile(graph)(x)[0], mc.run_reference(graph, x)[0], scale=10)


def test_other_convolutions_are_left_alone():
    cases = [
        ((1, 4, 8, 8), (8, 4, 2, 2), dict(strides=(1, 1))),  # windows overlap
        ((1, 4, 8, 8), (8, 4, 2, 2), dict(strides=(2, 2), padding=(1, 1, 1, 1))),  # padded
        ((1, 4, 9, 8), (8, 4, 2, 2), dict(strides=(2, 2))),  # the last row is left out
        ((1, 4, 8, 8), (8, 2, 2, 2), dict(strides=(2, 2), groups=2)),  # grouped
        ((1, 4, 8, 8), (8, 4, 1, 1), dict()),  # a 1x1 convolution is already a product per pixel
    ]
    for x_shape, w_shape, attrs in cases:
        graph = conv_graph(x_shape, w_shape, **attrs)
        assert ops(patches(graph)) == ["conv2d"], attrs


def test_the_pass_is_in_the_cpu_pipelines_and_can_be_left_out():
    graph = conv_graph((1, 3, 32, 32), (16, 3, 4, 4), strides=(4, 4))
    assert "matmul" in mc.compile(graph).stages["fusion"]
    pipeline = [p for p in mc.default_pipeline("llvm") if p != "patches"]
    assert "matmul" not in mc.compile(graph, pipeline=pipeline).stages["fusion"]
