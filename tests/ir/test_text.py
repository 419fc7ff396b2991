"""The IR text format: round trips on random graphs and clear parse errors."""

import numpy as np
import pytest
from hypothesis import given

import minicomp as mc
from minicomp.ir.text import parse_graph, print_graph
from tests.strategies import random_dags


@given(random_dags())
def test_round_trip_random_graphs(case):
    graph, _ = case
    text = print_graph(graph)
    assert print_graph(parse_graph(text)) == text


@given(random_dags())
def test_full_constants_round_trip_runs(case):
    graph, inputs = case
    again = parse_graph(print_graph(graph, full_constants=True))
    for a, b in zip(mc.run_reference(graph, *inputs), mc.run_reference(again, *inputs)):
        np.testing.assert_array_equal(a, b)


def test_every_attribute_kind_round_trips():
    g = mc.GraphBuilder("attrs")
    x = g.input("x", (1, 2, 5, 5))
    w = g.constant(np.ones((2, 2, 3, 3), np.float32), name="w")
    y = g.conv2d(x, w, padding=(1, 1, 1, 1), strides=2)
    y = g.gelu(y, approximate="tanh")
    y = g.clip(y, min=None, max=1.5)
    y = g.pad(y, pads=[0, 0, 1, 1, 0, 0, 1, 1], value=float("-inf"))
    y = g.cast(y, dtype="float64")
    g.output(y)
    text = print_graph(g.build())
    assert "approximate = \"tanh\"" in text and "min = none" in text and "value = -inf" in text
    assert print_graph(parse_graph(text)) == text


def test_names_that_need_quotes():
    g = mc.GraphBuilder("odd names")
    x = g.input("input:0", (2,))
    g.output(g.relu(x, name="block/relu"))
    text = print_graph(g.build())
    assert '%"input:0"' in text
    assert print_graph(parse_graph(text)) == text


def test_digest_constants_cannot_run():
    g = mc.GraphBuilder()
    x = g.input("x", (20,))
    g.output(x + g.constant(np.arange(20, dtype=np.float32), name="big"))
    parsed = parse_graph(print_graph(g.build()))
    with pytest.raises(mc.MinicompError, match="constant %big has no data"):
        mc.run_reference(parsed, np.zeros(20, np.float32))


@pytest.mark.parametrize("text, message", [
    ("graph g(%x: f32[2]) { return %y }", "line 1.*%y is used before it is defined"),
    ("graph g(%x: f99[2]) { return %x }", "unknown dtype 'f99'"),
    ("graph g(%x: f32[2]) {\n  %y: f32[3] = relu(%x)\n  return %y\n}", "line 2.*node 'y'.*declares f32\\[3\\]"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = nosuchop(%x)\n  return %y\n}", "unknown op 'nosuchop'"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = relu(%x) {bogus = 1}\n  return %y\n}", "unknown attribute"),
    ("graph g(%x: f32[2]) { %x: f32[2] = relu(%x) return %x }", "defined twice"),
    ("graph g(%x: f32[2]) { return %x } trailing", "expected the end"),
    ("graph g(%x: f32[2]) { $ }", "unexpected character"),
    ("graph g(%x: f32[2]) {\n  %k: f32[3] = constant [1.0, 2.0]\n  return %k\n}", "shape \\[2\\], declared"),
    ("", "expected graph"),
])
def test_parse_errors_are_clear(text, message):
    with pytest.raises(mc.ParseError, match=message):
        parse_graph(text)
