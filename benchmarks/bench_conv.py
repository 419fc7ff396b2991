"""The distinct convolution layers of ResNet-50 and MobileNetV2, each alone
(a one-node ONNX model: Conv with its bias), compiled by minicomp beside
ONNX Runtime's session of the same model, at batch 1 on 2 threads:
GFLOP/s of each and the ratio, timed in blocks (``harness.best_blocks``).
Layers repeated in a network are timed once; ``count`` says how often each
appears, and the last row weighs the ratios by time spent.

A layer alone has a plain input and output, so it compiles to the plain
convolution; inside a model the ``nchwc`` pass runs most layers in the
channel-blocked layout. The "blocked us" column times that form too: the
same layer as ``conv2d_nchwc`` on an input already in the blocks the pass
would give it (docs/layout.md).

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


def conv_weights(w_shape, seed: int):
    """Random weights and bias for a layer."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    return w, rng.standard_normal(w_shape[0]).astype(np.float32)


def conv_model(x_shape, w_shape, strides, padding, groups, seed: int = 0):
    """A one-node ONNX model: ``y = Conv(x, W, B)`` with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    w, b = conv_weights(w_shape, seed)
    top, left, bottom, right = padding
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], strides=list(strides), group=groups,
                            pads=[top, left, bottom, right], kernel_shape=list(w_shape[2:]))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def blocked_layer(x, w, b, strides, padding, groups):
    """(compiled conv2d_nchwc, its blocked input, a function to unblock its
    output): the layer as the nchwc pass lays it out inside a model."""
    from minicomp.ir.opdefs.nchwc import block_array, block_weights, unblock_array
    from minicomp.passes.nchwc import DEPTHWISE_BLOCK, channel_block

    depthwise = groups > 1
    bo = DEPTHWISE_BLOCK if depthwise else channel_block(w.shape[0])
    bi = 1 if depthwise else (channel_block(x.shape[1]) or 1)
    xb = block_array(x, bo if depthwise else bi) if (depthwise or bi > 1) else x
    g = mc.GraphBuilder("conv_nchwc")
    y = g.op("conv2d_nchwc", g.input("x", xb.shape), g.constant(block_weights(w, bi, bo)),
             g.constant(b.reshape(-1, bo)), strides=list(strides), padding=list(padding), groups=groups)
    g.output(y)
    return mc.compile(g.build(), num_threads=THREADS), xb, unblock_array


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
            blocked, xb, unblock = blocked_layer(x, *conv_weights(w_shape, k), strides, padding, groups)
            np.testing.assert_allclose(unblock(blocked(x=xb)[0]), got, rtol=1e-3, atol=1e-3)
            makers = {"minicomp": lambda: lambda: model(x=x), "blocked": lambda: lambda: blocked(x=xb)}
            err = float("nan")
            if ort is not None:
                want = ort_session(ort, proto, THREADS).run(None, {"x": x})[0]
                err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
                makers["onnxruntime"] = lambda: ort_session(ort, proto, THREADS, {"x": x})
            best = best_blocks(makers, rounds=2, min_time=0.1)
            t_mc, t_ort, t_b = best["minicomp"], best.get("onnxruntime", float("nan")), best["blocked"]
            f = flops(x_shape, w_shape, got.shape)
            kh, kw = w_shape[2:]
            kind = "depthwise" if groups == x_shape[1] and groups > 1 else f"{kh}x{kw}"
            label = f"{x_shape[1]}->{w_shape[0]} {kind} s{strides[0]} on {x_shape[2]}x{x_shape[3]}"
            rows.append([name, label, count, t_mc * 1e6, t_b * 1e6, t_ort * 1e6, f / t_mc / 1e9, f / t_b / 1e9,
                         f / t_ort / 1e9, t_ort / t_mc, t_ort / t_b, f"{err:.1e}"])
            w = weighted.setdefault(name, [0.0, 0.0, 0.0])
            w[0] += count * t_mc
            w[1] += count * t_b
            w[2] += count * t_ort
    for name, (t_mc, t_b, t_ort) in weighted.items():
        rows.append([name, "all layers, each as often as it appears", "", t_mc * 1e6, t_b * 1e6, t_ort * 1e6, "",
                     "", "", t_ort / t_mc, t_ort / t_b, ""])
    print_table(f"convolution layers alone, batch 1, {THREADS} threads (us; GFLOP/s; ratio = ONNX Runtime time / "
                "minicomp time)", ["model", "layer", "count", "minicomp us", "blocked us", "onnxruntime us",
                                   "minicomp GF/s", "blocked GF/s", "onnxruntime GF/s", "ratio", "blocked ratio",
                                   "max rel diff"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
