"""Add an op to minicomp and teach the ONNX importer to use it.

1. ``hard_swish`` becomes a minicomp op: one OpDef with its type rule, its
   numpy semantics and its compute definition. Lowering, fusion and the LLVM
   backend need nothing else.
2. ONNX's ``HardSwish`` gets an importer that maps onto it.
3. A small ONNX model using HardSwish is imported, compiled and checked.

    python examples/add_an_op.py
"""

from __future__ import annotations

import numpy as np

import minicomp as mc
from minicomp.errors import ShapeError
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute
from minicomp.ir.ops import OpDef, all_ops, register_op


def hard_swish_infer(types, attrs):
    (x,) = types
    if not x.dtype.is_float:
        raise ShapeError(f"input has dtype {x.dtype.name}, but hard_swish needs a float dtype")
    return [x]


def hard_swish_reference(x):
    return (x * np.clip(x + 3, 0, 6) / 6).astype(x.dtype)


def hard_swish_compute(x):
    # out[i...] = x * min(max(x + 3, 0), 6) / 6, written over the output indices.
    return compute(x.shape, lambda *i: x[i] * ex.minimum(ex.maximum(x[i] + 3.0, 0.0), 6.0) / 6.0, "hard_swish")


if "hard_swish" not in all_ops():
    register_op(OpDef("hard_swish", hard_swish_infer, hard_swish_reference, hard_swish_compute,
                      doc="x * relu6(x + 3) / 6"))


@mc.register_onnx_importer("HardSwish", replace=True)
def import_hard_swish(ctx, node):
    """ONNX HardSwish (opset 14) -> minicomp hard_swish."""
    return [ctx.op("hard_swish", ctx.input(0))]


def onnx_model():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["y"], name="act")]
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                           np.random.default_rng(0).standard_normal(108).astype(np.float32).tolist())
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def main() -> int:
    graph = mc.from_onnx(onnx_model())
    model = mc.compile(graph)
    print(model.stages["fusion"])
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = model(x)
    (want,) = mc.run_reference(graph, x)
    print("max |diff| vs reference:", float(np.abs(got - want).max()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
