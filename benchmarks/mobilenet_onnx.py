"""MobileNetV2 (Sandler et al. 2018, width 1.0, 224x224) as an ONNX model
with seeded random weights, laid out as torchvision exports it in eval mode:
every convolution has its batch norm folded into weights and a bias, ReLU6
is ``Clip(0, 6)``, and the classifier is global average pooling, ``Flatten``
and ``Gemm``. It is not in the onnx package's test data, so the benchmarks
build it here: 52 convolutions, 17 of them depthwise."""

from __future__ import annotations

import numpy as np

# (expansion t, output channels c, repeats n, first stride s), from the paper's table 2
INVERTED_RESIDUALS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2_onnx(batch: int = 1, classes: int = 1000, seed: int = 0):
    """An onnx ModelProto (opset 17) of MobileNetV2 with input ``input``
    (batch, 3, 224, 224) and output ``output`` (batch, classes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name, shape, fan_in):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    def conv(x, cin, cout, k, stride, groups, relu6, name):
        w = weight(name + "_w", (cout, cin // groups, k, k), cin // groups * k * k)
        b = weight(name + "_b", (cout,), 100.0)
        nodes.append(helper.make_node("Conv", [x, w, b], [name], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=groups))
        if not relu6:
            return name
        nodes.append(helper.make_node("Clip", [name, "zero", "six"], [name + "_relu6"]))
        return name + "_relu6"

    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6, np.float32), "six")]
    x, cin = conv("input", 3, 32, 3, 2, 1, True, "stem"), 32
    block = 0
    for t, c, n, s in INVERTED_RESIDUALS:
        for i in range(n):
            stride, name = (s if i == 0 else 1), f"block{block}"
            hidden = cin * t
            h = x if t == 1 else conv(x, cin, hidden, 1, 1, 1, True, name + "_expand")
            h = conv(h, hidden, hidden, 3, stride, hidden, True, name + "_depthwise")
            h = conv(h, hidden, c, 1, 1, 1, False, name + "_project")
            if stride == 1 and cin == c:
                nodes.append(helper.make_node("Add", [x, h], [name + "_out"]))
                h = name + "_out"
            x, cin, block = h, c, block + 1
    x = conv(x, cin, 1280, 1, 1, 1, True, "head")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    fc_w, fc_b = weight("fc_w", (classes, 1280), 1280), weight("fc_b", (classes,), 100.0)
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["output"], transB=1))
    graph = helper.make_graph(
        nodes, "mobilenet_v2", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
