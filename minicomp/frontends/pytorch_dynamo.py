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
``target``, ``max_size`` (below), and any other :func:`minicomp.compile` keyword.

Dynamic shapes: a graph dynamo traces with symbolic sizes
(``torch._dynamo.mark_dynamic(x, 1, min=1, max=512)``, or ``dynamic=True``
with ``options={"max_size": 512}`` for every size torch leaves unbounded)
compiles once for every size in the ranges (docs/dynamic.md). Without a
maximum it compiles once per shape, with one warning. torch itself
specializes sizes 0 and 1 unless ``torch.fx.experimental._config.
backed_size_oblivious`` is set: then a call at size 1 runs the same compile.
"""

from __future__ import annotations

import contextlib
import re
import warnings

from minicomp.errors import MinicompError, UnsupportedError

BACKEND_NAME = "minicomp"


def minicomp_backend(gm, example_inputs, options: dict | None = None):
    """The torch.compile backend: a callable that runs ``gm`` with minicomp."""
    opts = dict(options or {})
    compile_options = {"num_threads": opts.pop("threads", None), "target": opts.pop("target", "llvm")}
    max_size = opts.pop("max_size", None)
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise MinicompError(f"option max_size must be a whole number >= 1, got {max_size!r}")
    from inspect import signature

    from minicomp.compiler import compile as mc_compile

    allowed = set(signature(mc_compile).parameters) - {"graph"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise MinicompError(f"unknown minicomp option(s) {', '.join(unknown)}; options are threads, target, max_size, "
                            f"{', '.join(sorted(allowed - {'num_threads', 'target'}))}")
    compile_options.update(opts)
    runner = MinicompGraph(gm, compile_options, max_size)
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

    def __init__(self, gm, compile_options: dict, max_size: int | None = None):
        self.gm = gm
        self.max_size = max_size  # the largest size of a dynamic dimension torch leaves unbounded
        self.compile_options = compile_options
        self.constant_slots = self._find_constant_slots(gm)
        self._models: dict = {}
        self._weights: dict[int, tuple] = {}  # slot -> (tensor, version) the models were compiled with
        self._warned_grad = False
        self.eager = False  # set when minicomp cannot convert the graph
        # With dynamic shapes (torch.compile(dynamic=True), mark_dynamic): the dimensions and their
        # ranges, to compile once for all sizes (None: one compile per shape, as for a static graph).
        self.symbolic = None

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
            return
        self.symbolic = symbolic_plan(self.gm, self.max_size)
        if self.symbolic is None:
            warnings.warn("minicomp compiles this graph once per input shape: its dynamic sizes have no maximum. "
                          "Give each one (torch._dynamo.mark_dynamic(x, 1, min=1, max=512)), or all of them "
                          "(options={'max_size': 512}), to compile once for every size in the range", stacklevel=3)

    def _signature(self, args) -> tuple:
        import torch

        if self.symbolic is not None:  # one compile: the sizes are read at each call
            return ("symbolic",) + tuple(a.dtype for i, a in enumerate(args)
                                         if i not in self.constant_slots and isinstance(a, torch.Tensor))
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
        from minicomp.frontends.pytorch import _dim_names, export_module, from_exported_program

        gm, spec = (self.gm, None) if self.symbolic is None else self.symbolic
        try:
            with _sizes_not_specialized():
                ep = export_module(gm, tuple(args), dynamic_shapes=spec)
        except MinicompError as exc:  # a graph torch.export cannot take runs eagerly
            raise UnsupportedError(str(exc)) from exc
        user = ep.graph_signature.user_inputs
        constants = {user[i]: (name, args[i]) for i, name in self.constant_slots.items()}
        graph = from_exported_program(ep, name="dynamo_graph", constant_inputs=constants,
                                      dim_names=_dim_names(ep, spec) if spec else None)
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


def symbolic_plan(gm, max_size: int | None = None):
    """For a dynamo graph with symbolic sizes: (a copy of the graph whose size inputs are read from the
    tensors instead, and torch.export's dynamic_shapes for it), or None when a size
    has no finite maximum (memory is planned for the largest sizes) and ``max_size`` gives none."""
    import torch
    from torch.export import Dim

    from minicomp.frontends.pytorch import size_range

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    axes: dict = {}  # symbol -> (placeholder, axis) where it stands alone
    for n in placeholders:
        val = n.meta.get("example_value")
        if isinstance(val, torch.Tensor):
            for k, d in enumerate(val.shape):
                if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol:
                    axes.setdefault(d.node.expr, (n, k))
    dims = {}
    for sym, (n, k) in axes.items():
        vr = n.meta["example_value"].shape[k].node.shape_env.var_to_range.get(sym)
        lo, hi = size_range(vr)
        if hi is None:  # no maximum
            if max_size is None:
                return None
            hi = max_size
        # (dynamic=True leaves 0 in the range: a tensor of no elements is no model's input)
        dims[sym] = Dim(str(sym), min=max(lo, 1), max=max(hi, 1))
    graph = torch.fx.Graph()
    copied: dict = {}
    graph.output(graph.graph_copy(gm.graph, copied))
    for n in placeholders:  # a size given as its own input: read it from the tensor that has it
        val = n.meta.get("example_value")
        if isinstance(val, torch.SymInt) and val.node.expr in axes:
            source, axis = axes[val.node.expr]
            with graph.inserting_after(copied[source]):
                size = graph.call_function(torch.ops.aten.sym_size.int, (copied[source], axis))
            copied[n].replace_all_uses_with(size)
    spec = []
    for n in placeholders:
        val = n.meta.get("example_value")
        spec.append({k: dims[d.node.expr] for k, d in enumerate(val.shape)
                     if isinstance(d, torch.SymInt) and d.node.expr in dims}
                    if isinstance(val, torch.Tensor) else None)
    return torch.fx.GraphModule(gm, graph), spec


@contextlib.contextmanager
def _sizes_not_specialized():
    """torch.export without its special case for sizes 0 and 1 (a symbolic size stays symbolic at 1)."""
    import torch.fx.experimental._config as fx_config

    if not hasattr(fx_config, "backed_size_oblivious"):  # an older torch: its own behaviour
        yield
        return
    with fx_config.patch(backed_size_oblivious=True):
        yield


def register_backend() -> None:
    """Register "minicomp" in torch's dynamo backend registry (once; torch must be importable)."""
    from torch._dynamo.backends.registry import _BACKENDS, _COMPILER_FNS
    from torch._dynamo.backends.registry import register_backend as torch_register

    # An entry point torch has found loads itself on first use (and imports this module to do so).
    if BACKEND_NAME not in _COMPILER_FNS and _BACKENDS.get(BACKEND_NAME) is None:
        torch_register(compiler_fn=minicomp_backend, name=BACKEND_NAME)
