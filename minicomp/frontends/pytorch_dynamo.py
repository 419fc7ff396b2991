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
(``torch._dynamo.mark_dynamic(x, 1, min=1, max=512)``, ``dynamic=True``, or
torch's automatic dynamic shapes at the second size) compiles once for every
size in the ranges (docs/dynamic.md). A size torch leaves without a maximum
takes ``options={"max_size": N}``, else a default one
(:mod:`~minicomp.frontends.pytorch_dynamo_graph`); a call past a default
maximum compiles again for twice the range, with a warning. torch itself
specializes sizes 0 and 1 unless ``torch.fx.experimental._config.
backed_size_oblivious`` is set; under ``dynamic=True`` a graph dynamo traced
so (an input with a size of 0 or 1) runs eagerly at its first call and
compiles at its second, since dynamo traces again with symbolic sizes at the
next size, and that compile serves all of them.
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
        from minicomp.frontends.pytorch_dynamo_graph import scalar_slots

        self.gm = gm
        self.max_size = max_size  # the largest size of a dynamic dimension torch leaves unbounded
        self.compile_options = compile_options
        self.constant_slots = self._find_constant_slots(gm)
        self.scalar_slots = scalar_slots(gm)  # Python floats dynamo passes as 0-d tensors
        self._models: dict = {}
        self._weights: dict[int, tuple] = {}  # slot -> (tensor, version) the models were compiled with
        self._warned_grad = False
        self.eager = False  # set when minicomp cannot convert the graph
        # With dynamic shapes (torch.compile(dynamic=True), mark_dynamic): how the graph is exported to
        # compile once for all sizes (a SymbolicPlan; None for a graph of static shapes).
        self.symbolic = None
        self.eager_first_call = False  # (prepare)

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

        from minicomp.frontends.pytorch_dynamo_graph import symbolic_plan

        if any(isinstance(a, torch.SymInt) for a in args):
            self.symbolic = symbolic_plan(self.gm, self.max_size)
        if not torch._dynamo.config.assume_static_by_default and self._has_size_zero_or_one(args):
            # dynamic=True, and torch specialized a size of 0 or 1: if it was one that varies, dynamo
            # traces again with it symbolic at the next size, and that compile serves every size.
            # This graph runs eagerly once and compiles only if it is called again.
            self.eager_first_call = True
        elif self.symbolic is None:
            self._model_for(list(args))

    def _has_size_zero_or_one(self, args) -> bool:
        import torch

        return any(isinstance(a, torch.Tensor) and any(isinstance(d, int) and d in (0, 1) for d in a.shape)
                   for i, a in enumerate(args) if i not in self.constant_slots)

    def _signature(self, args) -> tuple:
        import torch

        scalars = tuple(("value", args[i].item()) for i in self.scalar_slots)
        if self.symbolic is not None:  # one compile: the sizes are read at each call (but the fixed ones)
            fixed = tuple(args[slot].shape[axis] for slot, axis in self.symbolic.fixed_axes.values())
            return ("symbolic",) + scalars + fixed + tuple(
                a.dtype for i, a in enumerate(args)
                if i not in self.constant_slots and i not in self.scalar_slots and isinstance(a, torch.Tensor))
        key = list(scalars)
        for i, a in enumerate(args):
            if i in self.constant_slots or i in self.scalar_slots:
                continue
            key.append((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("value", a))
        return tuple(key)

    def _weights_changed(self, args) -> bool:
        for i in self.constant_slots:
            held = self._weights.get(i)
            if held is None or held[0] is not args[i] or held[1] != args[i]._version:
                return True
        return False

    def _widen_past_default_maximum(self, args) -> None:
        """A call past the maximum minicomp chose for sizes torch leaves unbounded: plan again for
        room to double, and compile again (with a warning; a maximum the user gave refuses instead)."""
        plan = self.symbolic
        if plan is None or not plan.unbounded or self.max_size is not None:
            return
        largest = max(args[slot].shape[axis] for slot, axis in plan.unbounded.values())
        if largest <= plan.max_size:
            return
        from minicomp.frontends.pytorch_dynamo_graph import symbolic_plan, widened_max

        wider = widened_max(largest)
        warnings.warn(f"minicomp compiles this graph again, for sizes up to {wider}: a call has a size of "
                      f"{largest}, past the default maximum {plan.max_size} (options={{'max_size': N}} "
                      f"gives one)", stacklevel=3)
        self.symbolic = symbolic_plan(self.gm, wider, plan.fixed)  # (the sizes a conversion needed fixed stay so)
        self._models.clear()

    def _model_for(self, args):
        if self._weights_changed(args):
            self._models.clear()
            self._weights = {i: (args[i], args[i]._version) for i in self.constant_slots}
        self._widen_past_default_maximum(args)
        key = self._signature(args)
        if key not in self._models:
            model = self._compile(args)
            self._models[self._signature(args)] = model  # (compiling may have fixed some sizes: a new key)
            return model
        return self._models[key]

    def _compile(self, args):
        """Compile for ``args``. A graph with symbolic sizes that minicomp cannot convert with some of
        them symbolic (an opaque fused op that needs its feature width, which dynamic=True left
        symbolic) is converted again with the sizes its error names fixed at this call's values."""
        from minicomp.frontends.pytorch_dynamo_graph import symbolic_plan

        while True:
            try:
                return self._compile_once(args)
            except _SizesNotKeptError as exc:
                if not exc.symbols:
                    raise
                self.symbolic = symbolic_plan(self.gm, self.max_size, self.symbolic.fixed | exc.symbols)

    def _compile_once(self, args):
        from minicomp.compiler import compile as mc_compile
        from minicomp.frontends.pytorch import _dim_names, export_module, from_exported_program
        from minicomp.frontends.pytorch_dynamo_graph import fold_scalars

        gm, spec, sizes = self.gm, None, set()
        if self.symbolic is not None:
            gm, spec, sizes = self.symbolic.module, self.symbolic.spec, self.symbolic.sizes
        inputs = [i for i in range(len(args)) if i not in sizes]  # the input slots of gm
        if self.scalar_slots:
            gm = fold_scalars(gm, {inputs.index(i): args[i].item() for i in self.scalar_slots})
        kept = [i for i in inputs if i not in self.scalar_slots]  # the inputs of gm now
        spec = spec and [spec[i] for i in kept]
        try:
            with _sizes_not_specialized():
                ep = export_module(gm, tuple(args[i] for i in kept), dynamic_shapes=spec)
        except MinicompError as exc:  # a graph torch.export cannot take runs eagerly
            raise UnsupportedError(str(exc)) from exc
        user = ep.graph_signature.user_inputs
        constants = {user[kept.index(i)]: (name, args[i]) for i, name in self.constant_slots.items()}
        try:
            literals: dict = {}  # outputs that are numbers: given back as they are, beside the tensors
            graph = from_exported_program(ep, name="dynamo_graph", constant_inputs=constants,
                                          dim_names=_dim_names(ep, spec) if spec else None, literal_outputs=literals)
        except MinicompError as exc:  # torch runs it, so it runs eagerly (with a warning) rather than fail
            raise _SizesNotKeptError(str(exc), self._symbols_named(ep, kept, str(exc))) from exc
        model = mc_compile(graph, **self.compile_options)
        # The numbers' places among the outputs the caller gets (the program's updates of inputs come first).
        returned = [k for k, s in enumerate(ep.graph_signature.output_specs) if s.kind.name == "USER_OUTPUT"]
        numbers = {returned.index(k): v for k, v in literals.items() if k in returned}
        return model, ep.call_spec.out_spec, [i for i in kept if i not in self.constant_slots], numbers

    def _symbols_named(self, ep, kept: list, message: str) -> frozenset:
        """Dynamo's symbols for the sizes a conversion error names: the exported program's symbols
        (its own names, which the error shows) found at an input's axis, taken back to the symbol
        dynamo has there."""
        import torch

        plan = self.symbolic
        if plan is None:
            return frozenset()
        # The reason, after the nodes and input types the error names first ("node 'x' (op matmul,
        # inputs f32[1, s98, s82], ...): contracted dimensions differ: s82 ..."): only its sizes.
        message = message.rsplit("): ", 1)[-1]
        at = {where: sym for sym, where in plan.symbolic.items()}
        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        found = set()
        for position, name in enumerate(ep.graph_signature.user_inputs):
            val = placeholders[name].meta.get("val") if name in placeholders else None
            for axis, d in enumerate(val.shape if isinstance(val, torch.Tensor) else ()):
                if (isinstance(d, torch.SymInt) and re.search(rf"\b{re.escape(str(d.node.expr))}\b", message)
                        and (kept[position], axis) in at):
                    found.add(at[kept[position], axis])
        return frozenset(found)

    def __call__(self, *args):
        import torch

        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for i, a in enumerate(args) if i not in self.constant_slots):
            if not self._warned_grad:
                warnings.warn("minicomp compiles inference only: an input requires grad, so this graph runs "
                              "eagerly (call the model under torch.no_grad() to use minicomp)", stacklevel=2)
                self._warned_grad = True
            return self.gm.forward(*args)
        if self.eager or self.eager_first_call:
            self.eager_first_call = False
            return self.gm.forward(*args)
        try:
            model, out_spec, user_slots, numbers = self._model_for(list(args))
        except UnsupportedError as exc:
            warnings.warn(f"minicomp runs this graph eagerly: {exc}", stacklevel=2)
            self.eager = True
            return self.gm.forward(*args)
        from minicomp.frontends.pytorch import from_numpy, to_numpy

        tensors = [args[i] for i in user_slots if isinstance(args[i], torch.Tensor)]
        arrays = [to_numpy(t.contiguous()) for t in tensors]
        results = model(*arrays)
        for i in model.signature.writes.values():  # an input the graph updates (a cache) was written into its array:
            if not tensors[i].is_contiguous():  # a copy, where torch's tensor is strided
                tensors[i].copy_(from_numpy(arrays[i]))
        flat = [from_numpy(o) for o in results]
        for k in sorted(numbers):
            flat.insert(k, numbers[k])
        outs = torch.utils._pytree.tree_unflatten(flat, out_spec)
        return outs if self.symbolic is None else self.symbolic.outputs(outs, args)


class _SizesNotKeptError(UnsupportedError):
    """A graph minicomp could not convert; ``symbols``: dynamo's symbols for the sizes the error
    names, which a conversion with them static may get past."""

    def __init__(self, message: str, symbols: frozenset):
        super().__init__(message)
        self.symbols = symbols


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
