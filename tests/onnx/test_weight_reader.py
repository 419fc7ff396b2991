"""Reading an ONNX file's weights straight from the file (onnx_weights.py):
the same constants as onnx's own reading, for every kind of tensor, and the
usual errors for files it does not read."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import minicomp as mc  # noqa: E402
from minicomp.frontends.onnx_weights import scan_model  # noqa: E402

RNG = np.random.default_rng(0)
WEIGHTS = {
    "f32": RNG.standard_normal((3, 5)).astype(np.float32),
    "f64": RNG.standard_normal((4,)).astype(np.float64),
    "f16": RNG.standard_normal((2, 3)).astype(np.float16),
    "i64": np.arange(-3, 9, dtype=np.int64).reshape(3, 4),
    "i32": np.array([7, -1], np.int32),
    "i8": np.array([-128, 0, 127], np.int8),
    "u8": np.array([0, 200, 255], np.uint8),
    "flag": np.array([True, False, True]),
    "scalar": np.array(2.5, np.float32),
    "empty": np.zeros((0, 4), np.float32),
}


def model_with_weights(extra_inits=()):
    """Each weight is an output through Identity, so the graph keeps them all."""
    inits = [numpy_helper.from_array(v, k) for k, v in WEIGHTS.items()] + list(extra_inits)
    names = [t.name for t in inits]
    nodes = [helper.make_node("Identity", [n], [n + "_out"], name=n + "_id") for n in names]
    outputs = [helper.make_tensor_value_info(n + "_out", t.data_type, list(t.dims)) for n, t in zip(names, inits)]
    graph = helper.make_graph(nodes, "weights", [], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_file_gives_the_same_constants_as_the_model_in_memory(tmp_path):
    # float_data (not raw data) and raw bfloat16 (decoded by onnx) take the other paths
    import ml_dtypes

    listed = helper.make_tensor("listed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    bf16 = numpy_helper.from_array(np.array([1.5, -2.0], ml_dtypes.bfloat16), "bf16")
    assert bf16.raw_data and not listed.raw_data
    model = model_with_weights([listed, bf16])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    stripped, where = scan_model(str(path))
    assert set(where) == set(WEIGHTS) - {"empty"} | {"bf16"} or set(where) == set(WEIGHTS) | {"bf16"}
    assert len(stripped) < 2000  # the structure alone, without the weights' bytes
    from_file, from_memory = mc.from_onnx(str(path)), mc.from_onnx(model)
    got, want = mc.run_reference(from_file), mc.run_reference(from_memory)
    assert len(got) == len(want) == len(WEIGHTS) + 2
    for name, a, b in zip(list(WEIGHTS) + ["listed", "bf16"], got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    for (name, value), a in zip(WEIGHTS.items(), got):
        np.testing.assert_array_equal(a, value, err_msg=name)


def test_a_file_the_scan_cannot_read_gets_the_usual_error(tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(model_with_weights().SerializeToString()[:-7])
    assert scan_model(str(path)) is None
    with pytest.raises(mc.MinicompError, match="cannot read ONNX model"):
        mc.from_onnx(str(path))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert scan_model(str(empty)) is None
    with pytest.raises(mc.MinicompError):
        mc.from_onnx(str(empty))
