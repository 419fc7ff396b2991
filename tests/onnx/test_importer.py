"""The ONNX importer: errors before any work, dynamic shapes, bad files,
opset differences, names, and folding of shape computations."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import minicomp as mc  # noqa: E402


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_unsupported_ops_are_all_listed_at_once():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Unique", ["a"], ["b"], name="hm"),
             helper.make_node("NonZero", ["b"], ["c"], name="nz")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("c", [2, 3])])
    with pytest.raises(mc.UnsupportedError) as exc:
        mc.from_onnx(model)
    msg = str(exc.value)
    assert "2 unsupported" in msg and "node 'hm' (op Unique, opset 17: its output's length depends" in msg \
        and "node 'nz' (op NonZero" in msg


def test_dynamic_dims_need_shapes():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3])], [vi("y", ["N", 3])])
    with pytest.raises(mc.MinicompError, match=r"input 'x' has dynamic dimensions \['N', 3\].*shapes="):
        mc.from_onnx(model)
    graph = mc.from_onnx(model, shapes={"x": (4, 3)})
    assert graph.inputs[0].shape == (4, 3)
    with pytest.raises(mc.MinicompError, match="does not fit"):
        mc.from_onnx(model, shapes={"x": (4, 5)})
    with pytest.raises(mc.MinicompError, match="unknown input"):
        mc.from_onnx(model, shapes={"x": (4, 3), "z": (1,)})
    # A misspelled name alone is named as unknown, not reported as x's missing shape.
    with pytest.raises(mc.MinicompError, match="unknown input.*X; the model's inputs are x"):
        mc.from_onnx(model, shapes={"X": (4, 3)})


def test_malformed_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf \xff\xfe\x00")
    with pytest.raises(mc.MinicompError, match="cannot read ONNX model"):
        mc.from_onnx(str(bad))
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [2])], [vi("y", [2])])
    data = model.SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(mc.MinicompError):
        mc.from_onnx(str(cut))
    with pytest.raises(mc.MinicompError, match="no such ONNX file"):
        mc.from_onnx(str(tmp_path / "missing.onnx"))
    with pytest.raises(mc.MinicompError, match="cannot parse"):
        mc.from_onnx(b"\x0a\xff\xff\xff")


def test_node_names_carry_over_and_shapes_fold():
    x = vi("x", [2, 3, 4])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="flatten_it"),
        helper.make_node("Relu", ["flat"], ["y"], name="my_relu"),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = mc.from_onnx(make_model(nodes, [x], [vi("y", [2, 12])], inits))
    assert [n.op for n in graph.nodes] == ["reshape", "relu"]
    assert [n.name for n in graph.nodes] == ["flatten_it", "my_relu"]
    xs = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(mc.compile(graph)(xs)[0], np.maximum(xs.reshape(2, 12), 0))


def test_softmax_semantics_before_and_after_opset_13():
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)
    xs = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    old = mc.from_onnx(make_model([node], [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], opset=11))
    new = mc.from_onnx(make_model([node], [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], opset=13))
    flat = xs.reshape(2, 12)
    want_old = (np.exp(flat) / np.exp(flat).sum(1, keepdims=True)).reshape(2, 3, 4)
    want_new = np.exp(xs) / np.exp(xs).sum(1, keepdims=True)
    np.testing.assert_allclose(mc.run_reference(old, xs)[0], want_old, rtol=1e-5)
    np.testing.assert_allclose(mc.run_reference(new, xs)[0], want_new, rtol=1e-5)


def test_errors_inside_an_importer_name_the_node():
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")
    model = make_model([node], [vi("x", [2, 3]), vi("s", [2], TensorProto.INT64)], [vi("y", [3, 2])])
    with pytest.raises(mc.MinicompError, match="node 'bad_reshape' \\(Reshape\\): the shape .* must be a constant"):
        mc.from_onnx(model)
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")
    model = make_model([node], [vi("x", [2, 3])], [vi("y", [3, 2])],
                       [numpy_helper.from_array(np.array([4, 4], np.int64), "s")])
    with pytest.raises(mc.ShapeError, match="bad_reshape.*cannot reshape 6 elements"):
        mc.from_onnx(model)


def test_unsupported_input_types_are_reported():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [2], TensorProto.COMPLEX64)],
                       [vi("y", [2], TensorProto.COMPLEX64)])
    with pytest.raises(mc.UnsupportedError, match="input 'x' has ONNX type COMPLEX64"):
        mc.from_onnx(model)


def test_external_data_loads(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", [2, 3])],
                       [vi("y", [2, 4])], [numpy_helper.from_array(w, "w")])
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert (tmp_path / "weights.bin").exists()
    graph = mc.from_onnx(str(path))
    xs = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(mc.compile(graph)(xs)[0], xs @ w)


def _external_model(tmp_path, location):
    """A MatMul model whose weight lies in an external file at ``location`` (weights.bin holds it)."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", [2, 3])],
                       [vi("y", [2, 4])], [tensor])
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(w.tobytes())
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save would write (and check) the location itself
    return path


@pytest.mark.parametrize("escape", ["../secret.bin", "link.bin", "/etc/hostname"])
def test_external_data_must_stay_inside_the_models_folder(tmp_path, escape):
    (tmp_path / "secret.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    path = _external_model(tmp_path, escape)
    if escape == "link.bin":  # a link inside the folder that points outside it
        (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(mc.MinicompError, match="initializer 'w': external data"):
        mc.from_onnx(str(path))
    with pytest.raises(mc.MinicompError, match="initializer 'w': external data"):
        mc.from_onnx(onnx.load(str(path), load_external_data=False), base_dir=str(path.parent))


def test_external_data_errors_are_clear(tmp_path):
    path = _external_model(tmp_path, "missing.bin")
    with pytest.raises(mc.MinicompError, match="initializer 'w': external data 'missing.bin'"):
        mc.from_onnx(str(path))
    (tmp_path / "b").mkdir()
    path = _external_model(tmp_path / "b", "weights.bin")
    (path.parent / "weights.bin").write_bytes(b"short")
    with pytest.raises(mc.MinicompError, match="not inside the file"):
        mc.from_onnx(str(path))
    (path.parent / "weights.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    graph = mc.from_onnx(str(path))  # the same model, whole again, loads
    np.testing.assert_array_equal(next(iter(graph.constants.values())).ravel(), np.arange(12))


@pytest.mark.parametrize("axis, shape", [(-4, (1, 120)), (-3, (2, 60)), (-2, (6, 20)), (-1, (24, 5)),
                                         (0, (1, 120)), (2, (6, 20)), (4, (120, 1))])
def test_flatten_counts_a_negative_axis_from_the_rank(axis, shape):
    model = make_model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], [vi("x", [2, 3, 4, 5])], [vi("y", None)])
    graph = mc.from_onnx(model)
    assert graph.outputs[0].shape == shape
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(mc.compile(graph)(x)[0], x.reshape(shape))
    bad = make_model([helper.make_node("Flatten", ["x"], ["y"], axis=-5)], [vi("x", [2, 3, 4, 5])], [vi("y", None)])
    with pytest.raises(mc.ShapeError, match="axis -5 is outside"):
        mc.from_onnx(bad)


def test_split_uses_its_sizes_input_and_refuses_sizes_it_cannot_know():
    node = helper.make_node("Split", ["x", "s"], ["a", "b"], axis=0)
    sizes = numpy_helper.from_array(np.array([2, 4], np.int64), "s")
    model = make_model([node], [vi("x", [6])], [vi("a", None), vi("b", None)], inits=[sizes], opset=13)
    graph = mc.from_onnx(model)
    assert [v.shape for v in graph.outputs] == [(2,), (4,)]
    x = np.arange(6, dtype=np.float32)
    a, b = mc.compile(graph)(x)
    np.testing.assert_array_equal(a, x[:2])
    np.testing.assert_array_equal(b, x[2:])
    runtime_sizes = make_model([node], [vi("x", [6]), vi("s", [2], TensorProto.INT64)], [vi("a", None), vi("b", None)],
                               opset=13)
    with pytest.raises(mc.UnsupportedError, match="split sizes .* must be a constant"):
        mc.from_onnx(runtime_sizes)
    equal = make_model([helper.make_node("Split", ["x"], ["a", "b"], axis=0)], [vi("x", [6])],
                       [vi("a", None), vi("b", None)], opset=13)
    assert [v.shape for v in mc.from_onnx(equal).outputs] == [(3,), (3,)]
