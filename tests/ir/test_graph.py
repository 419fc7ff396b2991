"""Graph.verify() accepts good graphs and rejects each kind of malformed one."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.ir.dtypes import float32, int64
from minicomp.ir.graph import FrozenAttrs, Graph, Node, TensorType, Value


def small_graph():
    g = mc.GraphBuilder("small")
    x = g.input("x", (2, 3))
    y = g.relu(x, name="r")
    g.output(g.add(y, x, name="a"))
    return g.build()


def test_good_graph_verifies():
    g = small_graph()
    assert g.verify() is g
    assert [n.name for n in g.nodes] == ["r", "a"]


def test_use_before_definition():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(mc.VerifyError, match="node 'a'.*used before it is defined"):
        g.verify()


def test_dangling_value():
    g = small_graph()
    stray = Value("stray", TensorType((2, 3), float32))
    g.nodes[1].inputs = (g.nodes[1].inputs[0], stray)
    with pytest.raises(mc.VerifyError, match="node 'a'.*%stray.*nowhere"):
        g.verify()


def test_type_mismatch():
    g = small_graph()
    g.nodes[0].outputs[0].type = TensorType((3, 2), float32)
    with pytest.raises(mc.VerifyError, match="node 'r'.*declared output types f32\\[3, 2\\]"):
        g.verify()


def test_duplicate_node_names():
    g = small_graph()
    g.nodes[1].name = "r"
    with pytest.raises(mc.VerifyError, match="node name 'r' is used twice"):
        g.verify()


def test_duplicate_value_names():
    g = small_graph()
    g.nodes[1].outputs[0].name = "r"
    with pytest.raises(mc.VerifyError, match="value name %r is defined twice"):
        g.verify()


def test_undefined_output():
    g = small_graph()
    g.outputs.append(Value("ghost", TensorType((1,), float32)))
    with pytest.raises(mc.VerifyError, match="graph output 1 %ghost is not defined"):
        g.verify()


def test_constant_with_wrong_array():
    g = Graph("c")
    v = Value("k", TensorType((2,), int64))
    g.constants[v] = np.zeros(3, np.int64)
    g.outputs.append(v)
    with pytest.raises(mc.VerifyError, match="constant %k is declared i64\\[2\\]"):
        g.verify()


def test_unknown_op():
    x = Value("x", TensorType((1,), float32))
    out = Value("y", TensorType((1,), float32))
    g = Graph("u", inputs=[x], outputs=[out], nodes=[Node("frobnicate", (x,), FrozenAttrs(), (out,), "f")])
    with pytest.raises(mc.MinicompError, match="node 'f': unknown op 'frobnicate'"):
        g.verify()


def test_to_networkx_view():
    import networkx as nx

    g = small_graph()
    dg = g.to_networkx()
    assert nx.is_directed_acyclic_graph(dg)
    assert [n.name for n in nx.topological_sort(dg)] == ["r", "a"]


def test_frozen_attrs_are_immutable_and_hashable():
    a = FrozenAttrs({"axes": [1, 2], "keepdims": True})
    assert a["axes"] == (1, 2)
    assert hash(a) == hash(FrozenAttrs({"keepdims": True, "axes": (1, 2)}))
    with pytest.raises(TypeError):
        a["axes"] = 3
