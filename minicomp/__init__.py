"""minicomp: a small deep-learning compiler.

Public API:

- :class:`GraphBuilder` / :class:`Tensor`: write a model in Python;
- :func:`compile`: compile a Graph for a target, returning a callable
  :class:`CompiledModel`; :func:`default_pipeline` lists a target's passes;
- :class:`Dim`: a symbolic size with a range, wherever a size goes (``docs/dynamic.md``);
- :func:`run_reference`: run a Graph with the numpy reference interpreter;
- :func:`load`: a model saved with ``model.save(path)``, ready to run;
- :func:`parse_graph` / :func:`print_graph`: the IR text format;
- :func:`from_onnx`: import an ONNX model; :func:`register_onnx_importer` adds ops;
- :func:`from_torch`: import a PyTorch module; :func:`register_torch_op` adds ATen ops
  (``torch.compile(model, backend="minicomp")`` works once minicomp is installed);
- :class:`MinicompError` and its subclasses.
"""

from minicomp.backends.llvm_saved import load_model as load
from minicomp.backends.reference import run_reference
from minicomp.backends.registry import default_pipeline
from minicomp.compiler import Target, compile
from minicomp.errors import (
    CompileError,
    MinicompError,
    ParseError,
    RuntimeInputError,
    ShapeError,
    UnsupportedError,
    VerifyError,
)
from minicomp.frontends.builder import GraphBuilder, Tensor
from minicomp.frontends.onnx import from_onnx, register_onnx_importer
from minicomp.frontends.pytorch import from_torch, register_torch_op
from minicomp.ir.dims import Dim
from minicomp.ir.graph import Graph, Node, TensorType, Value
from minicomp.ir.opdefs.elementwise import register_unary_function
from minicomp.ir.text import parse_graph, print_graph
from minicomp.runtime import CompiledModel

__version__ = "0.1.0"

# torch.compile(model, backend="minicomp"): torch finds the backend through the
# torch_dynamo_backends entry point; register it directly too when torch is
# already loaded (an uninstalled checkout has no entry points). minicomp never
# imports torch itself: it is large and optional.
if "torch" in __import__("sys").modules:
    from minicomp.frontends.pytorch_dynamo import register_backend as _register_torch_backend

    _register_torch_backend()

__all__ = [
    "CompileError", "CompiledModel", "Dim", "Graph", "GraphBuilder", "MinicompError", "Node", "ParseError",
    "RuntimeInputError", "ShapeError", "Target", "Tensor", "TensorType", "UnsupportedError", "Value",
    "VerifyError", "compile", "default_pipeline", "from_onnx", "load", "parse_graph", "print_graph",
    "register_onnx_importer", "register_torch_op", "register_unary_function", "run_reference", "from_torch",
]
