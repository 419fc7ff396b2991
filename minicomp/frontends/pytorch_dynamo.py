"""``torch.compile(model, backend="minicomp")``.

TorchDynamo captures FX graphs from Python (splitting them at graph breaks,
which run eagerly as usual) and hands each one to :func:`minicomp_backend`
with example inputs. The backend returns a :class:`MinicompGraph`, which on
each call:

1. runs the graph eagerly when autograd needs it (a user input that requires
   grad, with grad enabled): minicomp compiles inference only;
2. otherwise picks the compiled model for the inputs' shapes and dtypes,
   compiling on first sight (``torch.export`` of the FX graph, then
   :func:`~minicomp.frontends.pytorch.from_exported_program`): each new shape
   compiles once, which is how dynamic shapes are met;
3. passes numpy views of the tensors (no copies where they are contiguous)
   and returns the outputs as tensors sharing the numpy arrays' memory.

The module's parameters and buffers are compiled in as constants (weights
are re-laid and folded once). Each call checks that they are the same
tensors at the same version; a changed weight (``param.data.copy_(...)``,
an optimizer step) recompiles, so results never go stale.

A graph with ops minicomp cannot convert runs eagerly, with one warning
naming the ops, as torch does for code it cannot capture.

Registered with torch under the name "minicomp" when minicomp is imported
after torch, and through the ``torch_dynamo_backends`` entry point (so
``torch.compile(..., backend="minicomp")`` works without importing minicomp).
Options pass through ``torch.compile(..., options={...})``: ``threads``,
``target``, and any other :func:`minicomp.compile` keyword.
"""

from __future__ import annotations

import re
import warnings

from minicomp.errors import MinicompError, UnsupportedError

BACKEND_NAME = "minicomp"


def minicomp_backend(gm, example_inputs, options: dict | None = None):
    """The torch.compile backend: a callable that runs ``gm`` with minicomp."""
    opts = dict(options or {})
    compile_options = {"num_threads": opts.pop("threads", None), "target": opts.pop("target", "llvm")}
    from inspect import signature

    from minicomp.compiler import compile as mc_compile

    allowed = set(signature(mc_compile).parameters) - {"graph"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise MinicompError(f"unknown minicomp option(s) {', '.join(unknown)}; options are threads, target, "
                            f"{', '.join(sorted(allowed - {'num_threads', 'target'}))}")
    compile_options.update(opts)
    runner = MinicompGraph(gm, compile_options)
    try:
        runner.prepare(example_inputs)
    except UnsupportedError as exc:
        warnings.warn(f"minicomp runs this graph eagerly: {exc}", stacklevel=2)
        return gm.forward
    return runner


_SOURCE_KEY = re.compile(r"\['([^']*)'\]|\[(\d+)\]|\.([A-Za-z_]\w*)")


def _constant_name(source_name: str) -> str:
    """``L['self']._modules['fc']._parameters['weight']`` -> ``fc.weight``."""
    parts = []
    for key, index, attr in _SOURCE_KEY.findall(source_name):
        part = key or index or attr
        if part not in ("_modules", "_parameters", "_buffers"):
            parts.append(part)
    return ".".join(parts[1:]) or source_name  # parts[0] is the module argument itself


class MinicompGraph:
    """One dynamo graph compiled by minicomp, once per input signature."""

    def __init__(self, gm, compile_options: dict):
        self.gm = gm
        self.compile_options = compile_options
        self.constant_slots = self._find_constant_slots(gm)
        self._models: dict = {}
        self._weights: dict[int, tuple] = {}  # slot -> (tensor, version) the models were compiled with
        self._warned_grad = False
        self.eager = False  # set when minicomp cannot convert the graph

    @staticmethod
    def _find_constant_slots(gm) -> dict[int, str]:
        """Input slots that hold module parameters or buffers, with their dotted names."""
        slots = {}
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for i, n in enumerate(placeholders):
            arg = n.meta.get("grapharg")
            source = getattr(getattr(arg, "source", None), "name", None)
            source = source() if callable(source) else source
            if isinstance(source, str) and ("._parameters[" in source or "._buffers[" in source):
                slots[i] = _constant_name(source)
        return slots

    def prepare(self, args) -> None:
        """Compile for these inputs now, so unsupported ops are found at torch.compile time (with
        dynamic shapes, dynamo's examples hold symbolic sizes: then the first call compiles)."""
        import torch

        if not any(isinstance(a, torch.SymInt) for a in args):
            self._model_for(list(args))

    def _signature(self, args) -> tuple:
        import torch

        key = []
        for i, a in enumerate(args):
            if i in self.constant_slots:
                continue
            key.append((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("value", a))
        return tuple(key)

    def _weights_changed(self, args) -> bool:
        for i in self.constant_slots:
            held = self._weights.get(i)
            if held is None or held[0] is not args[i] or held[1] != args[i]._version:
                return True
        return False

    def _model_for(self, args):
        if self._weights_changed(args):
            self._models.clear()
            self._weights = {i: (args[i], args[i]._version) for i in self.constant_slots}
        key = self._signature(args)
        if key not in self._models:
            self._models[key] = self._compile(args)
        return self._models[key]

    def _compile(self, args):

        from minicomp.compiler import compile as mc_compile
        from minicomp.frontends.pytorch import export_module, from_exported_program

        try:
            ep = export_module(self.gm, tuple(args))
        except MinicompError as exc:  # a graph torch.export cannot take runs eagerly
            raise UnsupportedError(str(exc)) from exc
        user = ep.graph_signature.user_inputs
        constants = {user[i]: (name, args[i]) for i, name in self.constant_slots.items()}
        graph = from_exported_program(ep, name="dynamo_graph", constant_inputs=constants)
        model = mc_compile(graph, **self.compile_options)
        return model, ep.call_spec.out_spec, [i for i in range(len(args)) if i not in self.constant_slots]

    def __call__(self, *args):
        import torch

        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for i, a in enumerate(args) if i not in self.constant_slots):
            if not self._warned_grad:
                warnings.warn("minicomp compiles inference only: an input requires grad, so this graph runs "
                              "eagerly (call the model under torch.no_grad() to use minicomp)", stacklevel=2)
                self._warned_grad = True
            return self.gm.forward(*args)
        if self.eager:
            return self.gm.forward(*args)
        try:
            model, out_spec, user_slots = self._model_for(list(args))
        except UnsupportedError as exc:
            warnings.warn(f"minicomp runs this graph eagerly: {exc}", stacklevel=2)
            self.eager = True
            return self.gm.forward(*args)
        from minicomp.frontends.pytorch import from_numpy, to_numpy

        arrays = [to_numpy(args[i].contiguous()) for i in user_slots if isinstance(args[i], torch.Tensor)]
        outs = [from_numpy(o) for o in model(*arrays)]
        return torch.utils._pytree.tree_unflatten(outs, out_spec)


def register_backend() -> None:
    """Register "minicomp" in torch's dynamo backend registry (once; torch must be importable)."""
    from torch._dynamo.backends.registry import _BACKENDS, _COMPILER_FNS
    from torch._dynamo.backends.registry import register_backend as torch_register

    # An entry point torch has found loads itself on first use (and imports this module to do so).
    if BACKEND_NAME not in _COMPILER_FNS and _BACKENDS.get(BACKEND_NAME) is None:
        torch_register(compiler_fn=minicomp_backend, name=BACKEND_NAME)
