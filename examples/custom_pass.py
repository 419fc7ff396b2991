"""Write a pass, register it, and insert it into the pipeline by name.

The pass below is a strength reduction: ``pow(x, 2)`` becomes ``x * x``.
It runs after ``simplify`` and before ``fuse``; ``print_after`` shows its
effect, and the compiled model still matches the reference.

    python examples/custom_pass.py
"""

from __future__ import annotations

import numpy as np

import minicomp as mc
from minicomp.passes.manager import register_pass
from minicomp.passes.rewrite import Rewriter


@register_pass("square_to_mul", replace=True)
def square_to_mul(graph: mc.Graph) -> mc.Graph:
    """pow(x, 2) -> mul(x, x): a multiply is cheaper than a call to pow."""
    rw = Rewriter(graph)  # works on a copy: passes never change their input
    for node in rw.nodes():
        if node.op == "pow":
            x, exponent = node.inputs
            value = rw.graph.constants.get(exponent)
            if value is not None and value.size == 1 and float(value.reshape(-1)[0]) == 2.0 \
                    and x.type == node.output.type:
                rw.replace(node.output, rw.add("mul", [x, x], node.name + "_sq"))
                continue
        rw.keep(node)
    return rw.finish()


def build() -> mc.Graph:
    g = mc.GraphBuilder("squares")
    x = g.input("x", (4, 8))
    g.output(g.sum(x ** 2.0, axes=[1]) / 8.0)  # mean of squares
    return g.build()


def main() -> int:
    pipeline = mc.default_pipeline("llvm")
    pipeline.insert(pipeline.index("fuse"), "square_to_mul")
    print("pipeline:", ",".join(pipeline))
    graph = build()
    model = mc.compile(graph, pipeline=pipeline, print_after=["square_to_mul"])
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    (got,) = model(x)
    (want,) = mc.run_reference(graph, x)
    print("ops after the pipeline:", [n.op for n in model.graph.nodes])
    print("max |diff| vs reference:", float(np.abs(got - want).max()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
