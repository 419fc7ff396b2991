"""One ONNX node, run by the onnx package's ReferenceEvaluator and by minicomp
(reference interpreter and llvm), compared output by output."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import minicomp as mc

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
        np.dtype(bool): TensorProto.BOOL}


def single_node_model(op: str, feeds: dict, names: list, outputs: list, attrs: dict, opset: int):
    """A model of one ``op`` node reading ``names`` (``""`` for an absent input)."""
    inputs = [helper.make_tensor_value_info(n, ELEM[a.dtype], a.shape) for n, a in feeds.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    node = helper.make_node(op, names, outputs, name="op", **attrs)
    return helper.make_model(helper.make_graph([node], op, inputs, outs),
                             opset_imports=[helper.make_opsetid("", opset)])


def check_against_reference(op: str, feeds: dict, names: list, outputs: list, attrs: dict, opset: int) -> None:
    model = single_node_model(op, feeds, names, outputs, attrs, opset)
    want = ReferenceEvaluator(model).run(None, feeds)
    graph = mc.from_onnx(model)
    for target in ("reference", "llvm"):
        got = mc.compile(graph, target=target)(**feeds)
        for name, g, w in zip(outputs, got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{op} {name} on {target}: {attrs}")
