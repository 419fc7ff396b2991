"""One ONNX node, run by the onnx package's ReferenceEvaluator and by minicomp
(reference interpreter and llvm), compared output by output."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import minicomp as mc


def drawn_rng(draw) -> np.random.Generator:
    """A numpy generator seeded by hypothesis (so failing examples shrink and replay)."""
    from hypothesis import strategies as st

    return np.random.default_rng(draw(st.integers(0, 2**31)))


def single_node_model(op: str, feeds: dict, names: list, outputs: list, attrs: dict, opset: int):
    """A model of one ``op`` node reading ``names`` (``""`` for an absent input)."""
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    node = helper.make_node(op, names, outputs, name="op", **attrs)
    return helper.make_model(helper.make_graph([node], op, inputs, outs),
                             opset_imports=[helper.make_opsetid("", opset)])


def check_against_reference(op: str, feeds: dict, names: list, outputs: list, attrs: dict, opset: int,
                            bind: tuple = ()) -> None:
    """``bind`` names inputs imported as constants (axes, sizes) rather than fed."""
    model = single_node_model(op, feeds, names, outputs, attrs, opset)
    want = ReferenceEvaluator(model).run(None, feeds)
    fed = {n: a for n, a in feeds.items() if n not in bind}
    graph = mc.from_onnx(model, shapes={n: a.shape for n, a in fed.items()}, constants={n: feeds[n] for n in bind})
    for target in ("reference", "llvm"):
        got = mc.compile(graph, target=target)(**fed)
        for name, g, w in zip(outputs, got, want, strict=True):
            what = f"{op} {name} on {target}: {attrs}"
            assert g.dtype == w.dtype, f"{what}: dtype {g.dtype} != {w.dtype}"
            if w.dtype.kind == "f":
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=what)
            else:
                np.testing.assert_array_equal(g, w, err_msg=what)
