"""The Python builder: operators, constants, indexing, and errors at build time."""

import numpy as np
import pytest

import minicomp as mc


def test_operators_record_nodes():
    g = mc.GraphBuilder()
    x = g.input("x", (4, 3))
    w = np.ones((3, 2), np.float32)
    y = -(x @ w + 1.0) * 2.0 / 3.0 - 0.5
    z = (x > 0.0).astype("float32") ** 2.0
    g.output(y, z, 1.0 - x, 2.0 * x)
    graph = g.build()
    ops = [n.op for n in graph.nodes]
    assert ops[:6] == ["matmul", "add", "neg", "mul", "div", "sub"]
    assert "greater" in ops and "cast" in ops and "pow" in ops
    xv = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    out = mc.run_reference(graph, xv)
    np.testing.assert_allclose(out[0], -(xv @ w + 1) * 2 / 3 - 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[2], 1 - xv)


def test_methods_and_ops_by_name():
    g = mc.GraphBuilder()
    x = g.input("x", (2, 3, 4))
    y = x.softmax(axis=-1).sum(axes=[1], keepdims=True).reshape(2, 4).T
    g.output(y, x.transpose(2, 0, 1))
    graph = g.build()
    assert graph.outputs[0].shape == (4, 2)
    assert graph.outputs[1].shape == (4, 2, 3)


def test_numpy_style_indexing():
    g = mc.GraphBuilder()
    x = g.input("x", (4, 5, 6))
    g.output(x[1], x[:, ::2, -1], x[..., None, 1:3], x[::-1])
    graph = g.build()
    xv = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    for got, want in zip(mc.run_reference(graph, xv), [xv[1], xv[:, ::2, -1], xv[..., None, 1:3], xv[::-1]]):
        np.testing.assert_array_equal(got, want)


def test_shape_error_names_node_op_and_shapes():
    g = mc.GraphBuilder()
    a = g.input("a", (2, 3))
    b = g.input("b", (4, 5))
    with pytest.raises(mc.ShapeError, match=r"node 'mm' \(op matmul, inputs f32\[2, 3\], f32\[4, 5\]\)"):
        g.matmul(a, b, name="mm")
    with pytest.raises(mc.ShapeError, match=r"node 'add_\d+' \(op add.*do not broadcast"):
        a + b
    with pytest.raises(mc.ShapeError, match="dtypes float32 and int64 differ"):
        a + g.input("i", (2, 3), "int64")


def test_attribute_errors():
    g = mc.GraphBuilder()
    x = g.input("x", (2, 3))
    with pytest.raises(mc.ShapeError, match="unknown attribute.*axis"):
        g.relu(x, axis=1)
    with pytest.raises(mc.ShapeError, match="axis 5 is out of range for rank 2"):
        g.softmax(x, axis=5)
    with pytest.raises(mc.ShapeError, match="cannot reshape 6 elements"):
        x.reshape(4, 2)
    with pytest.raises(mc.ShapeError, match="out of range for axis 0"):
        x[7]
    with pytest.raises(mc.ShapeError, match="takes 1 input, got 2"):
        g.relu(x, x)


def test_unknown_op_and_duplicate_names():
    g = mc.GraphBuilder()
    x = g.input("x", (2,))
    with pytest.raises(AttributeError, match="no attribute or op 'frobnicate'"):
        g.frobnicate(x)
    with pytest.raises(mc.MinicompError, match="already used"):
        g.input("x", (3,))
    with pytest.raises(mc.MinicompError, match="no outputs"):
        mc.GraphBuilder("empty").build()


def test_constants_keep_numpy_dtype_and_scalars_follow_tensor():
    g = mc.GraphBuilder()
    x = g.input("x", (2,), "float64")
    y = x * 3
    g.output(y, g.constant(np.arange(3)))
    graph = g.build()
    assert graph.outputs[0].dtype.name == "float64"
    assert graph.outputs[1].dtype.name == "int64"


def test_comparisons_and_python_operators_build_nodes():
    """``x == y`` used to become the Python constant False; every comparison and
    ``// % **`` now records a node, and the answers match numpy."""
    g = mc.GraphBuilder()
    x, y = g.input("x", (2, 5)), g.input("y", (5,))
    outs = [x == y, x != y, x < y, x <= y, x > y, x >= y, x // y, x % y, x ** 2.0, 2.0 ** x, 7.0 // x, 7.0 % x]
    assert [o.value.producer.op for o in outs] == ["equal", "not_equal", "less", "less_equal", "greater",
                                                   "greater_equal", "floor_div", "mod", "pow", "pow",
                                                   "floor_div", "mod"]
    g.output(*outs)
    graph = g.build()
    a = np.array([[1.5, -2.0, 3.0, 0.5, -7.25], [2.0, 2.0, -3.5, 4.0, 1.0]], np.float32)
    b = np.array([1.5, 3.0, -2.0, 0.5, 2.0], np.float32)
    want = [a == b, a != b, a < b, a <= b, a > b, a >= b, np.floor(a / b), a - np.floor(a / b) * b, a ** 2.0,
            2.0 ** a, np.floor(7.0 / a), 7.0 - np.floor(7.0 / a) * a]
    for target in ("reference", "llvm"):
        for got, w in zip(mc.compile(graph, target=target)(a, b), want):
            np.testing.assert_allclose(got, w.astype(got.dtype), rtol=1e-6)


def test_integer_floor_division_and_modulo_follow_python():
    g = mc.GraphBuilder()
    x, y = g.input("x", (6,), "int32"), g.input("y", (6,), "int32")
    g.output(x // y, x % y)
    a = np.array([7, -7, 7, -7, 5, 0], np.int32)
    b = np.array([2, 2, -2, -2, 0, 3], np.int32)
    q, r = mc.compile(g.build())(a, b)
    assert q.tolist() == [3, -4, -4, 3, 0, 0]  # a zero divisor gives 0 (generated code never traps)
    assert r.tolist() == [1, 1, -1, -1, 0, 0]


def test_a_tensor_has_no_truth_value_and_hashes_by_identity():
    g = mc.GraphBuilder()
    x = g.input("x", (3,))
    with pytest.raises(mc.MinicompError, match="truth value"):
        bool(x > 0)
    assert len({x, x}) == 1 and x in [x]


def test_a_user_adds_a_unary_function_from_outside_the_package():
    """docs/adding-an-op.md: one call registers the scalar function and its op."""
    if "expm1" not in mc.ir.ops.all_ops():
        mc.register_unary_function("expm1", np.expm1)
    g = mc.GraphBuilder()
    x = g.input("x", (5,))
    g.output(g.expm1(x) + x.expm1())
    graph = g.build()
    a = np.linspace(-1, 1, 5, dtype=np.float32)
    for target in ("reference", "llvm", "cuda-emu"):
        np.testing.assert_allclose(mc.compile(graph, target=target)(a)[0], 2 * np.expm1(a), rtol=1e-6)
    with pytest.raises(mc.MinicompError, match="built-in"):
        mc.register_unary_function("exp", np.exp)


def test_arange_and_swish():
    g = mc.GraphBuilder()
    x = g.input("x", (4,))
    g.output(g.swish(x) + g.arange(4).astype("float32"), g.arange(1, 7, 2, dtype="float32"))
    a = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)
    out, steps = mc.compile(g.build())(a)
    np.testing.assert_allclose(out, a / (1 + np.exp(-a)) + np.arange(4), rtol=1e-6)
    assert steps.tolist() == [1.0, 3.0, 5.0]
    with pytest.raises(mc.MinicompError, match="step"):
        g.arange(0, 3, 0)


EINSUMS = [("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij->ji", [(3, 4)]), ("ij,jk", [(3, 4), (4, 5)]),
           ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]), ("i,i->", [(4,), (4,)]), ("ij,k->ikj", [(2, 3), (4,)]),
           ("ijk->k", [(2, 3, 4)]), ("abc,cd->dba", [(2, 3, 4), (4, 5)]),
           ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 2)]), ("...ii->...i", [(2, 3, 3)]), ("ii", [(4, 4)]),
           ("ij...,jk", [(2, 3, 4), (3, 5)]), ("iij,jk->ik", [(3, 3, 2), (2, 4)]), ("...", [(2, 3)])]


@pytest.mark.parametrize("equation, shapes", EINSUMS)
def test_einsum_matches_numpy(equation, shapes):
    rng = np.random.default_rng(1)
    g = mc.GraphBuilder()
    g.output(g.einsum(equation, *[g.input(f"x{k}", s) for k, s in enumerate(shapes)]))
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    np.testing.assert_allclose(mc.compile(g.build())(*arrays)[0], np.einsum(equation, *arrays), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("equation, message", [("ijk->i", "do not fit"), ("....ij->ij", "malformed ellipsis"),
                                                ("ij,jk->ik", "one or two"), ("ij->q", "output labels")])
def test_einsum_refuses_what_it_cannot_do(equation, message):
    g = mc.GraphBuilder()
    x = g.input("x", (3, 3))
    args = [x, x, x] if equation == "ij,jk->ik" else [x]
    with pytest.raises(mc.MinicompError, match=message):
        g.einsum(equation, *args)
