"""The distinct convolution layers of ResNet-50 and MobileNetV2, each alone
(a one-node ONNX model: Conv with its bias), compiled by minicomp beside
ONNX Runtime's session of the same model, at batch 1 on 2 threads:
GFLOP/s of each and the ratio, timed in blocks (``harness.best_blocks``).
Layers repeated in a network are timed once; ``count`` says how often each
appears, and the last row weighs the ratios by time spent.

    python benchmarks/bench_conv.py [resnet50|mobilenet_v2 ...]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.bench_onnx import load, ort_session  # noqa: E402
from benchmarks.harness import best_blocks, describe_machine, onnxruntime_module, print_table  # noqa: E402

THREADS = 2


def conv_layers(name: str) -> dict:
    """The model's distinct convolutions: {(input shape, weight shape,
    strides, padding, groups): how many times it appears}."""
    proto, _ = load(name)
    layers: dict = {}
    for node in mc.from_onnx(proto).nodes:
        if node.op != "conv2d":
            continue
        a = node.attrs
        key = (node.inputs[0].type.shape, node.inputs[1].type.shape, tuple(a["strides"]), tuple(a["padding"]),
               a["groups"])
        layers[key] = layers.get(key, 0) + 1
    return layers


def conv_model(x_shape, w_shape, strides, padding, groups, seed: int = 0):
    """A one-node ONNX model: ``y = Conv(x, W, B)`` with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    top, left, bottom, right = padding
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], strides=list(strides), group=groups,
                            pads=[top, left, bottom, right], kernel_shape=list(w_shape[2:]))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def flops(x_shape, w_shape, y_shape) -> float:
    """Multiply-adds times two: every output element sums C/groups x kh x kw products."""
    return 2.0 * np.prod(y_shape) * np.prod(w_shape[1:])


def main(argv=None) -> int:
    names = list(argv or []) or ["resnet50", "mobilenet_v2"]
    print(describe_machine())
    ort = onnxruntime_module()
    rows, weighted = [], {}
    for name in names:
        for k, ((x_shape, w_shape, strides, padding, groups), count) in enumerate(conv_layers(name).items()):
            proto = conv_model(x_shape, w_shape, strides, padding, groups, seed=k)
            x = np.random.default_rng(k).standard_normal(x_shape).astype(np.float32)
            model = mc.compile(mc.from_onnx(proto), num_threads=THREADS)
            (got,) = model(x=x)
            makers = {"minicomp": lambda: lambda: model(x=x)}
            err = float("nan")
            if ort is not None:
                want = ort_session(ort, proto, THREADS).run(None, {"x": x})[0]
                err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
                makers["onnxruntime"] = lambda: ort_session(ort, proto, THREADS, {"x": x})
            best = best_blocks(makers, rounds=2, min_time=0.1)
            t_mc, t_ort = best["minicomp"], best.get("onnxruntime", float("nan"))
            f = flops(x_shape, w_shape, got.shape)
            kh, kw = w_shape[2:]
            kind = "depthwise" if groups == x_shape[1] and groups > 1 else f"{kh}x{kw}"
            label = f"{x_shape[1]}->{w_shape[0]} {kind} s{strides[0]} on {x_shape[2]}x{x_shape[3]}"
            rows.append([name, label, count, t_mc * 1e6, t_ort * 1e6, f / t_mc / 1e9, f / t_ort / 1e9, t_ort / t_mc,
                         f"{err:.1e}"])
            w = weighted.setdefault(name, [0.0, 0.0])
            w[0] += count * t_mc
            w[1] += count * t_ort
    for name, (t_mc, t_ort) in weighted.items():
        rows.append([name, "all layers, each as often as it appears", "", t_mc * 1e6, t_ort * 1e6, "", "",
                     t_ort / t_mc, ""])
    print_table(f"convolution layers alone, batch 1, {THREADS} threads (us; GFLOP/s; ratio = ONNX Runtime time / "
                "minicomp time)", ["model", "layer", "count", "minicomp us", "onnxruntime us", "minicomp GF/s",
                                   "onnxruntime GF/s", "ratio", "max rel diff"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
