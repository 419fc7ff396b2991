"""The reference interpreter: runs a Graph node by node with each op's numpy
``reference``. It is the oracle that every compiled result is checked against.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from minicomp.backends.registry import Backend, register_backend
from minicomp.errors import MinicompError
from minicomp.ir.dims import concrete, concrete_attrs
from minicomp.ir.graph import Graph, Value
from minicomp.ir.ops import get_op
from minicomp.runtime import CompiledModel, bind_inputs, call_sizes, write_back


def run_reference(graph: Graph, *args, **kwargs) -> list[np.ndarray]:
    """Run ``graph`` on numpy arrays (by position or input name); return outputs."""
    env = bind_inputs(graph, args, kwargs)
    return write_back(graph, env, evaluate(graph, env))


def evaluate(graph: Graph, env: Mapping[Value, np.ndarray], keep: bool = False):
    """Evaluate every node given arrays for the inputs.

    Returns the graph outputs, or with ``keep=True`` the dict of every value.
    """
    env = dict(env)
    sizes = call_sizes(graph, env)
    for v, arr in graph.constants.items():
        if arr is None:
            raise MinicompError(f"constant %{v.name} has no data (it was read from text that "
                                f"showed only its digest); bind it before running")
        env[v] = arr
    for node in graph.nodes:
        opdef = get_op(node.op, node.name)
        arrays = [env[v] for v in node.inputs]
        try:
            result = opdef.reference(*arrays, **(concrete_attrs(node.attrs, sizes) if sizes else dict(node.attrs)))
        except MinicompError:
            raise
        except Exception as exc:  # a bug in a reference must still name the node
            raise MinicompError(f"{node.describe()}: reference failed: {exc}") from exc
        results = result if isinstance(result, (list, tuple)) else [result]
        for v, r in zip(node.outputs, results):
            r = np.asarray(r)
            if r.shape != concrete(v.shape, sizes) or r.dtype != v.dtype.numpy:
                raise MinicompError(f"{node.describe()}: reference returned {r.dtype}{list(r.shape)}, "
                                    f"expected {v.type}")
            env[v] = r
    if keep:
        return env
    return [np.array(env[v]) for v in graph.outputs]


class ReferenceModel(CompiledModel):
    """The common model interface over the interpreter (target "reference")."""

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        return run_reference(self.signature, *args, **kwargs)

    def profile(self, *args, repeat: int = 10, **kwargs):
        """The whole graph's time per call, as one entry."""
        t0 = time.perf_counter()
        for _ in range(repeat):
            self(*args, **kwargs)
        return [("reference", (time.perf_counter() - t0) / repeat)]

    def _code_summary(self) -> str:
        return "the interpreter"


def _build_reference(program, stages, opt_level):
    return None  # the interpreter runs the graph itself


def _reference_model(program, target, stages, executable) -> ReferenceModel:
    return ReferenceModel(program.graph, target, stages)


register_backend(Backend("reference", "the numpy interpreter (the oracle)", ("simplify",), _build_reference,
                         runs_kernels=False, model=_reference_model, symbolic=True))
