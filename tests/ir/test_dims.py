"""Symbolic sizes: arithmetic, comparison by value, the ranges' answers, and loud refusals."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import RuntimeInputError, ShapeError
from minicomp.ir import expr as ex
from minicomp.ir.dims import Size, SizeReader, SymbolicSizeError, bounds, concrete, corners, upper

B = mc.Dim("batch", 1, 256)
S = mc.Dim("seq", 1, 512)


def test_arithmetic_makes_polynomials_that_compare_by_value():
    assert B * 784 == 784 * B and (B * 784) // 784 == B
    assert B * S * 12 + B * 3 == 3 * B + 12 * (S * B)
    assert B + 0 == B and B - B == 0 and isinstance(B - B, int)
    assert hash(B * 2) == hash(2 * B)
    assert B != mc.Dim("batch", 1, 128)  # another range is another dimension
    assert B != 1 and B != 256  # never equal to an int: a size 1 at some calls is not a broadcast
    assert str(12 * B * S - 1) == "12*batch*seq-1"
    assert (2 * B + 1) % 2 == 1 and (2 * B + 1) // 2 == B


def test_the_ranges_answer_what_they_decide_and_nothing_else():
    assert B >= 1 and B <= 256 and B < 257 and not B > 256 and B * S > 0
    assert bounds(3 * B - S) == (3 - 512, 768 - 1) and upper(B * S) == 256 * 512
    for question in (lambda: B > 1, lambda: B == B and B < 128, lambda: bool(B - 1), lambda: int(B),
                     lambda: range(B), lambda: B // 2, lambda: B % 3, lambda: 10 // B, lambda: B / 2):
        with pytest.raises(SymbolicSizeError):
            question()


def test_a_dim_needs_an_identifier_and_a_range():
    for bad in (("2x", 1, 4), ("n", 5, 4), ("n", -1, 4), ("n", 1.5, 4)):
        with pytest.raises(mc.MinicompError):
            mc.Dim(*bad)


def test_sizes_become_int64_expressions_over_dimension_variables():
    e = ex.size_expr(B * 784 + 3)
    assert e.dtype.name == "int64" and ex.bounds(e, {}) == (787, 256 * 784 + 3)
    assert {v.name for v in ex.walk(e) if isinstance(v, ex.DimVar)} == {"batch"}
    assert ex.dim_var("batch", 1, 256) is ex.dim_var("batch", 1, 256)
    assert concrete((B, 784, 2 * B), {"batch": 7}) == (7, 784, 14)
    assert corners([("batch", 1, 256), ("seq", 4, 4)]) == [{"batch": 1, "seq": 4}, {"batch": 256, "seq": 4}]


def test_shape_inference_carries_dims_through_ops():
    g = mc.GraphBuilder("t")
    x = g.input("x", (B, S, 64))
    h = g.softmax(x @ g.constant(np.zeros((64, 32), np.float32)), axis=-1)
    y = h.reshape(B * S, 32)
    assert h.shape == (B, S, 32) and y.shape == (B * S, 32)
    g.output(y)
    assert "f32[batch, seq, 64]" in mc.print_graph(g.build())


def test_an_op_that_needs_a_static_size_names_itself_and_the_dimension():
    g = mc.GraphBuilder("t")
    x = g.input("x", (B, 8))
    assert x.reshape(2, -1).shape == (2, 4 * B)  # 8 * batch elements divide by 2
    with pytest.raises(ShapeError, match=r"op reshape.*needs a static size.*batch"):
        x.reshape(3, -1)  # but not by 3


def test_sizes_are_read_from_the_inputs_and_checked():
    g = mc.GraphBuilder("t")
    x, y = g.input("x", (B, 4)), g.input("y", (2 * B,))
    g.output(x, y)
    graph = g.build()
    assert SizeReader(graph.inputs).read([np.zeros((3, 4)), np.zeros(6)]) == {"batch": 3}
    with pytest.raises(RuntimeInputError, match=r"257 at axis 0, dimension batch, which is declared 1\.\.256"):
        SizeReader(graph.inputs).read([np.zeros((257, 4)), np.zeros(514)])
    with pytest.raises(RuntimeInputError, match=r"where 2\*batch is 6"):
        SizeReader(graph.inputs).read([np.zeros((3, 4)), np.zeros(5)])
    assert isinstance(2 * B, Size)


def test_the_text_format_declares_and_reads_dims():
    g = mc.GraphBuilder("t")
    x = g.input("x", (B, S, 8))
    g.output(g.relu(x.reshape(B * S - 0, 8)) * 2.0, x.reshape(-1))
    text = mc.print_graph(g.build())
    assert text.startswith("dim batch = [1, 256]\ndim seq = [1, 512]\ngraph t(%x: f32[batch, seq, 8])")
    assert "shape = [batch*seq, 8]" in text and "f32[8*batch*seq]" in text
    again = mc.parse_graph(text)
    assert mc.print_graph(again) == text and again.inputs[0].shape == (B, S, 8)
    with pytest.raises(mc.ParseError, match="dimension seq is not declared"):
        mc.parse_graph(text.replace("dim seq = [1, 512]\n", ""))
