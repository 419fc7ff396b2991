"""The reference interpreter: runs a Graph node by node with each op's numpy
``reference``. It is the oracle that every compiled result is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from minicomp.backends.registry import Backend, register_backend
from minicomp.errors import MinicompError, RuntimeInputError
from minicomp.ir.graph import Graph, Value
from minicomp.ir.ops import get_op
from minicomp.wording import count


def bind_inputs(graph: Graph, args, kwargs, device_arrays: bool = False) -> dict[Value, np.ndarray]:
    """Match positional/keyword arrays to graph inputs, checking shape and dtype.

    ``device_arrays``: also accept arrays in GPU memory (pycuda ``GPUArray``) as they are."""
    if len(args) > len(graph.inputs):
        raise RuntimeInputError(f"graph '{graph.name}' takes {count(len(graph.inputs), 'input')}, got {len(args)}")
    env: dict[Value, np.ndarray] = {}
    by_name = {v.name: v for v in graph.inputs}
    for v, a in zip(graph.inputs, args):
        env[v] = a
    for k, a in kwargs.items():
        if k not in by_name:
            raise RuntimeInputError(f"graph '{graph.name}' has no input named '{k}'; "
                                    f"inputs: {', '.join(by_name)}")
        if by_name[k] in env:
            raise RuntimeInputError(f"input '{k}' given twice")
        env[by_name[k]] = a
    for v in graph.inputs:
        if v not in env:
            raise RuntimeInputError(f"input '{v.name}' ({v.type}) is missing")
        a = env[v]
        if not isinstance(a, np.ndarray) and not (device_arrays and hasattr(a, "gpudata")):
            try:
                a = np.asarray(a)
            except (ValueError, TypeError) as exc:  # ragged lists, objects numpy cannot hold
                raise RuntimeInputError(f"input '{v.name}' ({v.type}) is not an array: {exc}") from None
        if tuple(a.shape) != v.shape or a.dtype != v.dtype.numpy:
            raise RuntimeInputError(
                f"input '{v.name}' expects {v.type} ({v.dtype.numpy}{list(v.shape)}), "
                f"got {a.dtype}{list(a.shape)}"
            )
        env[v] = a
    return env


def run_reference(graph: Graph, *args, **kwargs) -> list[np.ndarray]:
    """Run ``graph`` on numpy arrays (by position or input name); return outputs."""
    env = bind_inputs(graph, args, kwargs)
    return evaluate(graph, env)


def evaluate(graph: Graph, env: Mapping[Value, np.ndarray], keep: bool = False):
    """Evaluate every node given arrays for the inputs.

    Returns the graph outputs, or with ``keep=True`` the dict of every value.
    """
    env = dict(env)
    for v, arr in graph.constants.items():
        if arr is None:
            raise MinicompError(f"constant %{v.name} has no data (it was read from text that "
                                f"showed only its digest); bind it before running")
        env[v] = arr
    for node in graph.nodes:
        opdef = get_op(node.op, node.name)
        arrays = [env[v] for v in node.inputs]
        try:
            result = opdef.reference(*arrays, **dict(node.attrs))
        except MinicompError:
            raise
        except Exception as exc:  # a bug in a reference must still name the node
            raise MinicompError(f"{node.describe()}: reference failed: {exc}") from exc
        results = result if isinstance(result, (list, tuple)) else [result]
        for v, r in zip(node.outputs, results):
            r = np.asarray(r)
            if r.shape != v.shape or r.dtype != v.dtype.numpy:
                raise MinicompError(f"{node.describe()}: reference returned {r.dtype}{list(r.shape)}, "
                                    f"expected {v.type}")
            env[v] = r
    if keep:
        return env
    return [np.array(env[v]) for v in graph.outputs]


def _build_reference(program, stages, opt_level):
    return None  # the interpreter runs the graph itself


register_backend(Backend("reference", "the numpy interpreter (the oracle)", ("simplify",), _build_reference,
                         runs_kernels=False))
