"""Graph simplification passes.

- ``fold_constants``: evaluate nodes whose inputs are all constants (through
  the reference interpreter);
- ``dce``: drop nodes and constants that no output needs;
- ``cse``: merge identical nodes and identical constants;
- ``algebraic``: ``x*1``, ``x+0``, ``x-0``, ``x/1``, ``--x``, double transpose,
  reshape of reshape, reshapes and casts that change nothing;
- ``fold_batch_norm``: fold an inference batch norm into the conv2d or
  matmul before it;
- ``decompose``: rewrite composites (softmax, log_softmax, layer_norm,
  batch_norm, mean, gelu) into primitives; fusion groups them back into one
  kernel. Not in the default pipeline: the composites already fuse as single
  ops, and their own compute definitions lower at least as well;
- ``simplify``: the first five to a fixed point.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from minicomp.ir.graph import Graph
from minicomp.ir.ops import get_op
from minicomp.ir.text import constant_bytes
from minicomp.passes.manager import register_pass
from minicomp.passes.rewrite import Rewriter

# Do not fold a node whose result is this many elements larger than its inputs
# (a broadcast of a small constant would bloat the weights).
FOLD_GROWTH_LIMIT = 1 << 20


@register_pass("fold_constants")
def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants."""
    rw = Rewriter(graph)
    g = rw.graph
    for node in rw.nodes():
        arrays = [g.constants.get(v) for v in node.inputs]
        # (a result whose shape depends on a symbolic size, mc.Dim, is known only at the call)
        if node.inputs and all(a is not None for a in arrays) and all(v in g.constants for v in node.inputs) \
                and not any(v.type.is_symbolic for v in node.outputs):
            out_size = sum(v.type.size for v in node.outputs)
            if out_size <= max(sum(a.size for a in arrays), 1) + FOLD_GROWTH_LIMIT:
                result = get_op(node.op).reference(*arrays, **dict(node.attrs))
                results = result if isinstance(result, (list, tuple)) else [result]
                for v, r in zip(node.outputs, results):
                    v.producer = None
                    folded = np.asarray(r, dtype=v.dtype.numpy, order="C")
                    # A new constant owns its data (a reshape's result is a view of its input).
                    if any(np.may_share_memory(folded, a) for a in arrays):
                        folded = folded.copy()
                    g.constants[v] = folded
                continue
        rw.keep(node)
    return rw.finish()


@register_pass("dce")
def dce(graph: Graph) -> Graph:
    """Remove nodes and constants that no graph output depends on."""
    g = graph.clone()
    live = set(g.outputs)
    kept = []
    for node in reversed(g.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    g.nodes = list(reversed(kept))
    g.constants = {v: a for v, a in g.constants.items() if v in live}
    return g


def _sample(arr) -> bytes:
    """About 512 bytes spread over a constant's bytes: equal constants have equal samples, and two
    different weights almost never do, so only those whose samples agree are compared whole (hashing
    the weights of ResNet-50 took 44 ms of each compile)."""
    flat = constant_bytes(arr)
    return flat[::max(1, flat.size // 512)].tobytes()


@register_pass("cse")
def cse(graph: Graph) -> Graph:
    """Merge nodes with the same op, inputs and attributes, and equal constants."""
    rw = Rewriter(graph)
    g = rw.graph
    by_sample: dict = {}  # (type, sample) -> the constants kept with it
    # Only constants of one type can be equal (a network's large weights often have shapes of their own).
    types = collections.Counter(v.type for v in g.constants)
    for v, arr in list(g.constants.items()):
        if arr is None or types[v.type] < 2:
            continue
        kept = by_sample.setdefault((v.type, _sample(arr)), [])
        same = next((k for k in kept if np.array_equal(constant_bytes(g.constants[k]), constant_bytes(arr))), None)
        if same is not None:
            rw.replace(v, same)
        else:
            kept.append(v)
    seen: dict = {}
    for node in rw.nodes():
        key = (node.op, tuple(id(v) for v in node.inputs), node.attrs)
        if key in seen:
            for old, new in zip(node.outputs, seen[key].outputs):
                rw.replace(old, new)
            continue
        seen[key] = node
        rw.keep(node)
    return rw.finish()


def _is_fill(graph: Graph, v, value) -> bool:
    arr = graph.constants.get(v)
    return arr is not None and arr.size > 0 and bool(np.all(arr == value))


@register_pass("algebraic")
def algebraic(graph: Graph) -> Graph:
    """Apply algebraic identities that remove nodes."""
    rw = Rewriter(graph)
    g = rw.graph
    producer = {}
    for node in rw.nodes():
        op, ins = node.op, node.inputs
        out = node.outputs[0]
        repl = None
        if op in ("add", "mul"):
            ident = 0 if op == "add" else 1
            a, b = ins
            if b.type == out.type and _is_fill(g, a, ident):
                repl = b
            elif a.type == out.type and _is_fill(g, b, ident):
                repl = a
        elif op in ("sub", "div") and ins[0].type == out.type and _is_fill(g, ins[1], 0 if op == "sub" else 1):
            repl = ins[0]
        elif op == "neg" and producer.get(ins[0]) is not None and producer[ins[0]].op == "neg":
            repl = producer[ins[0]].inputs[0]
        elif op == "cast" and ins[0].type == out.type:
            repl = ins[0]
        elif op in ("reshape", "squeeze", "unsqueeze", "broadcast_to") and ins[0].type == out.type:
            repl = ins[0]
        elif op == "transpose":
            perm = node.attrs["perm"]
            inner = producer.get(ins[0])
            if perm == tuple(range(len(perm))):
                repl = ins[0]
            elif inner is not None and inner.op == "transpose":
                composed = tuple(inner.attrs["perm"][p] for p in perm)
                src = inner.inputs[0]
                repl = src if composed == tuple(range(len(composed))) else rw.add(
                    "transpose", [src], node.name, perm=composed)
        elif op == "reshape":
            inner = producer.get(ins[0])
            if inner is not None and inner.op in ("reshape", "squeeze", "unsqueeze"):
                src = inner.inputs[0]
                repl = src if src.type == out.type else rw.add("reshape", [src], node.name, shape=out.shape)
        if repl is not None:
            rw.replace(out, repl)
            if repl.producer is not None:
                producer[repl] = repl.producer
            continue
        rw.keep(node)
        for v in node.outputs:
            producer[v] = node
    return rw.finish()


@register_pass("fold_batch_norm")
def fold_batch_norm(graph: Graph) -> Graph:
    """Fold batch_norm(conv2d(x, W, b)) and batch_norm(matmul(x, W)) with
    constant weights into new weights (and a bias)."""
    users = graph.consumers()
    outputs = set(graph.outputs)
    rw = Rewriter(graph)
    g = rw.graph
    # consumers() is keyed by the original values; map clone values by name.
    single_use = {v.name for v, us in users.items() if len(us) == 1 and v not in outputs}
    producer = {}
    for node in rw.nodes():
        if node.op == "batch_norm" and all(v in g.constants for v in node.inputs[1:]):
            src = producer.get(node.inputs[0])
            if src is not None and src.output.name in single_use:
                folded = _fold_bn_into(rw, g, src, node)
                if folded is not None:
                    rw.graph.nodes.remove(src)
                    rw.replace(node.output, folded)
                    continue
        rw.keep(node)
        for v in node.outputs:
            producer[v] = node
    return rw.finish()


def _fold_bn_into(rw: Rewriter, g: Graph, src, bn):
    scale, bias, mean, var = (g.constants[v].astype(np.float64) for v in bn.inputs[1:])
    eps = bn.attrs["epsilon"]
    k = scale / np.sqrt(var + eps)
    dt = bn.output.dtype
    if src.op == "conv2d" and src.inputs[1] in g.constants and (len(src.inputs) == 2 or src.inputs[2] in g.constants):
        w = g.constants[src.inputs[1]].astype(np.float64)
        b0 = g.constants[src.inputs[2]].astype(np.float64) if len(src.inputs) == 3 else 0.0
        w2 = rw.constant((w * k[:, None, None, None]).astype(dt.numpy), f"{bn.name}_w")
        b2 = rw.constant(((b0 - mean) * k + bias).astype(dt.numpy), f"{bn.name}_b")
        return rw.add("conv2d", [src.inputs[0], w2, b2], bn.name, **dict(src.attrs))
    if (src.op == "matmul" and src.inputs[1] in g.constants and src.inputs[1].type.rank == 2
            and src.output.type.rank == 2):
        w = g.constants[src.inputs[1]].astype(np.float64)
        w2 = rw.constant((w * k[None, :]).astype(dt.numpy), f"{bn.name}_w")
        b2 = rw.constant(((-mean) * k + bias).astype(dt.numpy), f"{bn.name}_b")
        mm = rw.add("matmul", [src.inputs[0], w2], f"{bn.name}_matmul")
        return rw.add("add", [mm, b2], bn.name)
    return None


@register_pass("decompose")
def decompose(graph: Graph) -> Graph:
    """Rewrite composite ops into primitive ops (fusion regroups them)."""
    # Some decompositions use other composites (layer_norm uses mean): repeat.
    while any(n.op in _DECOMPOSITIONS for n in graph.nodes):
        rw = Rewriter(graph)
        for node in rw.nodes():
            fn = _DECOMPOSITIONS.get(node.op)
            if fn is None:
                rw.keep(node)
                continue
            rw.release(node)
            rw.replace(node.output, fn(rw, node, *node.inputs, **dict(node.attrs)))
        graph = rw.finish()
    return graph


def _scalar(rw, value, like, name):
    return rw.constant(np.array(value, dtype=like.dtype.numpy), name)


def _softmax(rw, node, x, axis, log=False):
    n = node.name
    m = rw.add("max", [x], f"{n}_max", axes=[axis], keepdims=True)
    d = rw.add("sub", [x, m], f"{n}_sub")
    e = rw.add("exp", [d], f"{n}_exp")
    s = rw.add("sum", [e], f"{n}_sum", axes=[axis], keepdims=True)
    if log:
        return rw.add("sub", [d, rw.add("log", [s], f"{n}_log")], n)
    return rw.add("div", [e, s], n)


def _layer_norm(rw, node, x, scale=None, bias=None, axis=-1, epsilon=1e-5):
    n = node.name
    axes = list(range(axis, x.type.rank))
    mu = rw.add("mean", [x], f"{n}_mean", axes=axes, keepdims=True)
    d = rw.add("sub", [x, mu], f"{n}_center")
    var = rw.add("mean", [rw.add("mul", [d, d], f"{n}_sq")], f"{n}_var", axes=axes, keepdims=True)
    sd = rw.add("sqrt", [rw.add("add", [var, _scalar(rw, epsilon, x, f"{n}_eps")], f"{n}_addeps")], f"{n}_sd")
    y = rw.add("div", [d, sd], f"{n}_norm")
    if scale is not None:
        y = rw.add("mul", [y, scale], f"{n}_scale")
    if bias is not None:
        y = rw.add("add", [y, bias], f"{n}_shift")
    return y


def _batch_norm(rw, node, x, scale, bias, mean, var, epsilon):
    n = node.name
    shape = [x.shape[1]] + [1] * (x.type.rank - 2)

    def per_channel(v, tag):
        return rw.add("reshape", [v], f"{n}_{tag}", shape=shape)

    sd = rw.add("sqrt", [rw.add("add", [var, _scalar(rw, epsilon, x, f"{n}_eps")], f"{n}_addeps")], f"{n}_sd")
    k = per_channel(rw.add("div", [scale, sd], f"{n}_k"), "kc")
    y = rw.add("mul", [rw.add("sub", [x, per_channel(mean, "meanc")], f"{n}_center"), k], f"{n}_scaled")
    return rw.add("add", [y, per_channel(bias, "biasc")], n)


def _mean(rw, node, x, axes, keepdims):
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    s = rw.add("sum", [x], f"{node.name}_sum", axes=list(axes), keepdims=keepdims)
    return rw.add("div", [s, _scalar(rw, count, x, f"{node.name}_count")], node.name)


def _gelu(rw, node, x, approximate):
    n = node.name
    if approximate == "tanh":
        x3 = rw.add("mul", [rw.add("mul", [x, x], f"{n}_x2"), x], f"{n}_x3")
        inner = rw.add("add", [x, rw.add("mul", [x3, _scalar(rw, 0.044715, x, f"{n}_c")], f"{n}_cx3")],
                       f"{n}_inner")
        t = rw.add("tanh", [rw.add("mul", [inner, _scalar(rw, math.sqrt(2 / math.pi), x, f"{n}_k")],
                                   f"{n}_scaled")], f"{n}_tanh")
    else:
        t = rw.add("erf", [rw.add("mul", [x, _scalar(rw, 1 / math.sqrt(2), x, f"{n}_k")], f"{n}_scaled")],
                   f"{n}_erf")
    one_plus = rw.add("add", [t, _scalar(rw, 1.0, x, f"{n}_one")], f"{n}_1p")
    half_x = rw.add("mul", [x, _scalar(rw, 0.5, x, f"{n}_half")], f"{n}_hx")
    return rw.add("mul", [half_x, one_plus], n)


_DECOMPOSITIONS = {
    "softmax": lambda rw, node, x, axis: _softmax(rw, node, x, axis),
    "log_softmax": lambda rw, node, x, axis: _softmax(rw, node, x, axis, log=True),
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "mean": _mean,
    "gelu": _gelu,
}

SIMPLIFY_PASSES = (fold_constants, algebraic, fold_batch_norm, cse, dce)


def _fingerprint(graph: Graph):
    return (len(graph.nodes), len(graph.constants), tuple(n.op for n in graph.nodes))


@register_pass("simplify")
def simplify(graph: Graph, max_rounds: int = 8) -> Graph:
    """fold_constants, algebraic, fold_batch_norm, cse and dce until nothing changes."""
    for _ in range(max_rounds):
        before = _fingerprint(graph)
        for p in SIMPLIFY_PASSES:
            graph = p(graph)
        if _fingerprint(graph) == before:
            break
    return graph
