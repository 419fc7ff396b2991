"""``patches``: a convolution whose windows tile its input is a matrix product.

A patch embedding (ViT's 16x16 convolution with stride 16, Swin's and
ConvNeXt's 4x4 stems) reads every input pixel exactly once: its windows do
not overlap and leave nothing out. Cutting the image into patches is then a
reshape and a transpose (one copy of the input), and the convolution is a
matrix product of the patches, (pixels, C*KH*KW), by the weights, (C*KH*KW,
CO), which the matmul schedule tiles in registers. As a convolution the same
work ran as one dot product of 3*16*16 per output with a horizontal sum each
time, several times slower (docs/measurements.md).

Only dense convolutions with constant weights, stride equal to the kernel,
no padding, no dilation, and a map that the kernel divides, are rewritten;
every other convolution is left as it is.
"""

from __future__ import annotations

from minicomp.ir.graph import Graph
from minicomp.passes.manager import register_pass
from minicomp.passes.rewrite import Rewriter


def is_patch_convolution(node, constants) -> bool:
    """Does ``node`` convolve non-overlapping windows that cover its whole input?"""
    if node.op != "conv2d" or node.attrs["groups"] != 1 or node.inputs[1] not in constants:
        return False
    kh, kw = node.inputs[1].shape[2:]
    h, w = node.inputs[0].shape[2:]
    return (tuple(node.attrs["strides"]) == (kh, kw) and not any(node.attrs["padding"])
            and tuple(node.attrs["dilations"]) == (1, 1) and (kh, kw) != (1, 1) and h % kh == 0 and w % kw == 0)


@register_pass("patches")
def patches(graph: Graph) -> Graph:
    """Rewrite each patch convolution as patches (a reshape and a transpose) times its weights."""
    if not any(is_patch_convolution(n, graph.constants) for n in graph.nodes):
        return graph
    rw = Rewriter(graph)
    for node in rw.nodes():
        if not is_patch_convolution(node, rw.graph.constants):
            rw.keep(node)
            continue
        x, w = node.inputs[0], node.inputs[1]
        n, c, h, wd = x.shape
        co, _, kh, kw = w.shape
        oh, ow = h // kh, wd // kw
        rw.release(node)
        name = node.name
        p = rw.add("reshape", [x], f"{name}_windows", shape=(n, c, oh, kh, ow, kw))
        p = rw.add("transpose", [p], f"{name}_patches", perm=(0, 2, 4, 1, 3, 5))
        p = rw.add("reshape", [p], f"{name}_rows", shape=(n * oh * ow, c * kh * kw))
        weights = rw.graph.constants[w].reshape(co, c * kh * kw).T
        y = rw.add("matmul", [p, rw.constant(weights, f"{w.name}_columns")], f"{name}_product")
        if len(node.inputs) > 2:
            y = rw.add("add", [y, node.inputs[2]], f"{name}_bias")
        y = rw.add("reshape", [y], f"{name}_map", shape=(n, oh, ow, co))
        rw.replace(node.output, rw.add("transpose", [y], name, perm=(0, 3, 1, 2)))
    return rw.finish()
