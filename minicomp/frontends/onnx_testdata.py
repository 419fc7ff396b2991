"""The ONNX test data that ships inside the ``onnx`` package, as cases to run.

- :func:`backend_cases` lists the model directories (``model.onnx`` with
  ``test_data_set_*/input_*.pb`` and ``output_*.pb``) of one suite such as
  ``pytorch-converted``;
- :func:`light_model` finds one of the ``light/`` models (ResNet-50, VGG-19...),
  whose weights are made by ConstantOfShape; :func:`light_input` is the input
  ONNX's own runner feeds them, and :func:`randomize_weights` replaces those
  constant weights with seeded random values (scaled by fan-in) so that the
  outputs say something.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from minicomp.errors import MinicompError

LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512")
# Tolerances used by ONNX's own runner for these models.
LIGHT_RTOL = {"densenet121": 2e-3}


def data_dir() -> str:
    try:
        import onnx
    except ImportError:
        raise MinicompError("the ONNX test data needs the onnx package: pip install 'minicomp[onnx]'") from None
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


@dataclass
class BackendCase:
    suite: str
    name: str
    model_path: str
    data_sets: list[tuple[list[str], list[str]]]

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


def _read_tensor(path: str) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    t = TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def read_tensors(paths) -> list[np.ndarray]:
    return [_read_tensor(p) for p in paths]


def backend_cases(suite: str) -> list[BackendCase]:
    """Every case of one suite of the ONNX backend test data, sorted by name."""
    cases = []
    for d in sorted(glob.glob(os.path.join(data_dir(), suite, "*"))):
        model = os.path.join(d, "model.onnx")
        if not os.path.exists(model):
            continue
        sets = []
        for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
            ins = sorted(glob.glob(os.path.join(ds, "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
            outs = sorted(glob.glob(os.path.join(ds, "output_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
            sets.append((ins, outs))
        cases.append(BackendCase(suite, os.path.basename(d), model, sets))
    return cases


def light_model(name: str) -> str:
    """Path of ``light_<name>.onnx``."""
    if name not in LIGHT_MODELS:
        raise MinicompError(f"unknown light model '{name}'; choose from {', '.join(LIGHT_MODELS)}")
    return os.path.join(data_dir(), "light", f"light_{name}.onnx")


def light_expected(name: str) -> np.ndarray:
    return _read_tensor(os.path.join(data_dir(), "light", f"light_{name}_output_0.pb"))


def light_input(model) -> dict[str, np.ndarray]:
    """The inputs ONNX's runner feeds a light model: ``arange(n) / n`` in the input's shape."""
    from minicomp.frontends.onnx import load_model

    proto = load_model(model)
    inits = {t.name for t in proto.graph.initializer}
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def randomize_weights(model, seed: int = 0):
    """A copy of ``model`` whose ConstantOfShape weights are seeded random
    initializers, scaled by fan-in (1/sqrt of the product of all but the
    first dimension); 1-D tensors (biases, batch-norm parameters) get values
    near 1 for scales and variances and near 0 otherwise, keyed by name."""
    from onnx import numpy_helper

    from minicomp.frontends.onnx import load_model

    proto = load_model(model)
    out = type(proto)()
    out.CopyFrom(proto)
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    keep = []
    for node in out.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]].reshape(-1))
        name = node.output[0]
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif any(k in name.lower() for k in ("_s_", "scale", "gamma", "riv", "var")):
            arr = rng.uniform(0.5, 1.5, shape)
        else:
            arr = rng.standard_normal(shape) * 0.1
        out.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    del out.graph.node[:]
    out.graph.node.extend(keep)
    # Drop the shape tensors nothing reads any more (ONNX Runtime warns about each).
    used = {i for n in out.graph.node for i in n.input}
    kept_inits = [t for t in out.graph.initializer if t.name in used or t.name in {o.name for o in out.graph.output}]
    dropped = {t.name for t in out.graph.initializer} - {t.name for t in kept_inits}
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept_inits)
    kept_inputs = [vi for vi in out.graph.input if vi.name not in dropped]
    del out.graph.input[:]
    out.graph.input.extend(kept_inputs)
    return out
