"""What a graph TorchDynamo hands the backend needs before ``torch.export`` can take it.

Three things dynamo does for its own reasons stop ``torch.export``:

- **Python floats as inputs.** Dynamo passes a module's float attributes (a
  layer norm's eps, a dropout's p, an attention's scale) as 0-d float64
  tensors and reads them back with ``.item()``, so that a changed float does
  not retrace. ``torch.export`` cannot guard on such a value
  (``GuardOnDataDependentSymNode``). :func:`fold_scalars` writes each value
  into a copy of the graph; the backend compiles again if one changes.
- **Sizes as inputs.** With dynamic shapes dynamo passes each size symbol as
  an input of its own, beside the tensors that have it. :func:`symbolic_plan`
  reads each one from a tensor instead and gives ``torch.export`` the ranges.
- **Sizes as outputs.** At a graph break dynamo's graph may return a size
  beside its tensors; the plan takes it out and computes it from the inputs'
  shapes at each call (:meth:`SymbolicPlan.outputs`).

``dynamic=True`` makes every size symbolic, also where only one value works
(an opaque fused op's width): ``symbolic_plan(..., fixed=...)`` keeps such
sizes static, and the backend asks for that when a conversion fails on them.

A size torch leaves without a maximum (``dynamic=True``, automatic dynamic
shapes) gets one here, since minicomp plans memory and schedules for the
largest size: ``max_size`` when the user gave it, else the largest power of
two up to :data:`DEFAULT_MAX_SIZE` at which the graph's tensors fit in a
share of the machine's memory (:func:`default_max_size`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_MAX_SIZE = 4096
# The tensors of a graph at its default maximum may take this share of the machine's memory. The arena
# is planned for the largest sizes but only the pages a call touches are ever used; the share keeps its
# address range well inside what the system will hand out.
MEMORY_SHARE = 0.25


def scalar_slots(gm) -> list[int]:
    """The input slots where dynamo passes a Python float as a 0-d tensor."""
    import torch

    slots = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, n in enumerate(placeholders):
        arg, val = n.meta.get("grapharg"), n.meta.get("example_value")
        if (getattr(arg, "pass_arg_as_tensor", False) and isinstance(val, torch.Tensor) and val.dim() == 0
                and val.is_floating_point()):
            slots.append(i)
    return slots


def fold_scalars(gm, values: dict[int, float]):
    """A copy of ``gm`` without the placeholders at the slots of ``values`` (input slots of ``gm``):
    each ``.item()`` of one becomes its Python value, any other use a constant tensor of it."""
    import torch

    graph = torch.fx.Graph()
    copied: dict = {}
    graph.output(graph.graph_copy(gm.graph, copied))
    placeholders = [copied[n] for n in gm.graph.nodes if n.op == "placeholder"]
    for i, value in values.items():
        node = placeholders[i]
        for user in list(node.users):
            if user.op == "call_method" and user.target == "item":
                _replace_uses(user, value)
                graph.erase_node(user)
        if node.users:
            dtype = node.meta["example_value"].dtype
            with graph.inserting_after(node):
                const = graph.call_function(torch.tensor, (value,), {"dtype": dtype})
            node.replace_all_uses_with(const)
        graph.erase_node(node)
    return torch.fx.GraphModule(gm, graph)


def _replace_uses(node, value) -> None:
    """Every use of ``node`` reads the Python ``value`` instead."""
    from torch.fx.node import map_arg

    for reader in list(node.users):
        reader.args = map_arg(reader.args, lambda a: value if a is node else a)
        reader.kwargs = map_arg(reader.kwargs, lambda a: value if a is node else a)


@dataclass
class SymbolicPlan:
    """How a graph with symbolic sizes is exported: ``module`` reads every size from a tensor and
    takes only the other inputs; ``spec`` is torch.export's ``dynamic_shapes`` for all of dynamo's
    inputs (one entry each, in order; None at a size's slot)."""

    module: object
    spec: list
    sizes: set  # the input slots of sizes, which ``module`` reads from tensors (so takes no more)
    max_size: int | None  # the maximum given to the sizes torch left unbounded (None: there are none)
    unbounded: dict  # symbol -> (input slot, axis) where a call gives each of those sizes
    # Sizes dynamo's graph returns (at a graph break): output position -> (torch's expression of the
    # size, {symbol: (input slot, axis)}). ``module`` returns only the tensors; a call computes these.
    size_outputs: dict = field(default_factory=dict)
    output_count: int = 0  # of dynamo's graph, sizes included
    # Symbols kept static (minicomp could not convert the graph with them symbolic), and where a call
    # gives their sizes: symbol -> (input slot, axis). Their sizes are part of the compile's signature.
    fixed: frozenset = frozenset()
    fixed_axes: dict = field(default_factory=dict)
    symbolic: dict = field(default_factory=dict)  # symbol -> (input slot, axis), each one kept symbolic

    def outputs(self, tensors, args) -> tuple:
        """Dynamo's outputs: ``tensors`` (what ``module`` returns) with the sizes put back in place."""
        if not self.size_outputs:
            return tensors
        tensors, out = iter(tensors), []
        for k in range(self.output_count):
            if k in self.size_outputs:
                expr, where = self.size_outputs[k]
                out.append(int(expr.subs({sym: args[slot].shape[axis] for sym, (slot, axis) in where.items()})))
            else:
                out.append(next(tensors))
        return tuple(out)


def symbolic_plan(gm, max_size: int | None = None, fixed=frozenset()) -> SymbolicPlan:
    """The plan for a dynamo graph with symbolic sizes. A size with no maximum from torch takes
    ``max_size``, or :func:`default_max_size` when that is None. The symbols in ``fixed`` are kept
    static at the size of the call (one compile per size of theirs)."""
    import torch
    from torch.export import Dim

    from minicomp.frontends.pytorch import size_range

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    axes: dict = {}  # symbol -> (slot, placeholder, axis) where it stands alone
    for i, n in enumerate(placeholders):
        val = n.meta.get("example_value")
        if isinstance(val, torch.Tensor):
            for k, d in enumerate(val.shape):
                if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol:
                    axes.setdefault(d.node.expr, (i, n, k))
    ranges = {}
    for sym, (_, n, k) in axes.items():
        ranges[sym] = size_range(n.meta["example_value"].shape[k].node.shape_env.var_to_range.get(sym))
    fixed_axes = {sym: (i, k) for sym, (i, _, k) in axes.items() if sym in fixed}
    unbounded = {sym: (i, k) for sym, (i, _, k) in axes.items() if ranges[sym][1] is None and sym not in fixed}
    if unbounded and max_size is None:
        known = {s: hi for s, (_, hi) in ranges.items() if hi is not None and s not in fixed}
        known.update({s: _hint(gm, s) or 1 for s in fixed_axes})
        max_size = default_max_size(gm, known, unbounded)
    # AUTO: torch.export keeps a size static where the graph needs one value (a reshape to a width
    # dynamo traced as a symbol). (dynamic=True leaves 0 in the range: no model's input is empty.)
    dims = {sym: Dim.AUTO(min=max(lo, 1), max=max(hi if hi is not None else max_size, 1))
            for sym, (lo, hi) in ranges.items() if sym not in fixed}
    graph = torch.fx.Graph()
    copied: dict = {}
    graph.output(graph.graph_copy(gm.graph, copied))
    size_outputs, count = _sizes_returned(graph, {sym: (i, k) for sym, (i, _, k) in axes.items()})
    sizes = set()
    for i, n in enumerate(placeholders):  # a size given as its own input: read it from the tensor that has it
        val = n.meta.get("example_value")
        if isinstance(val, torch.SymInt) and val.node.expr.is_number:  # one torch has fixed
            _replace_uses(copied[n], int(val.node.expr))
        elif isinstance(val, torch.SymInt) and val.node.expr in axes:
            _, source, axis = axes[val.node.expr]
            with graph.inserting_after(copied[source]):
                size = graph.call_function(torch.ops.aten.sym_size.int, (copied[source], axis))
            copied[n].replace_all_uses_with(size)
        else:
            continue
        graph.erase_node(copied[n])
        sizes.add(i)
    spec = []
    for n in placeholders:
        val = n.meta.get("example_value")
        spec.append({k: dims[d.node.expr] for k, d in enumerate(val.shape)
                     if isinstance(d, torch.SymInt) and d.node.expr in dims}
                    if isinstance(val, torch.Tensor) else None)
    return SymbolicPlan(torch.fx.GraphModule(gm, graph), spec, sizes, max_size if unbounded else None, unbounded,
                        size_outputs, count, frozenset(fixed), fixed_axes,
                        {sym: (i, k) for sym, (i, _, k) in axes.items() if sym not in fixed})


def _sizes_returned(graph, axes: dict) -> tuple[dict, int]:
    """Take out of ``graph``'s outputs the sizes it returns, where the inputs' shapes give them:
    (output position -> (expression, {symbol: (slot, axis)}), the count of outputs before)."""
    import torch

    out = next(n for n in graph.nodes if n.op == "output")
    values = out.args[0]
    if not isinstance(values, (tuple, list)):
        return {}, 0
    sizes, tensors = {}, []
    for k, v in enumerate(values):
        val = v.meta.get("example_value") if isinstance(v, torch.fx.Node) else v
        if isinstance(val, torch.SymInt) and val.node.expr.free_symbols <= set(axes):
            sizes[k] = (val.node.expr, {sym: axes[sym] for sym in val.node.expr.free_symbols})
        else:
            tensors.append(v)
    if sizes:
        out.args = (tuple(tensors),)
    return sizes, len(values)


def default_max_size(gm, bounded: dict, unbounded) -> int:
    """The largest power of two up to :data:`DEFAULT_MAX_SIZE` at which the tensors of ``gm`` (each
    size torch left unbounded at it, the others at their maxima) take at most :data:`MEMORY_SHARE`
    of the machine's memory; never less than the sizes of the examples dynamo traced with."""
    hints = [_hint(gm, sym) for sym in unbounded]
    least = _power_of_two_at_least(max([h for h in hints if h is not None] or [1]))
    budget = MEMORY_SHARE * _machine_memory()
    size = DEFAULT_MAX_SIZE
    while size > least and _tensor_bytes(gm, {**bounded, **{s: size for s in unbounded}}) > budget:
        size //= 2
    return max(size, least)


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def widened_max(size: int) -> int:
    """The maximum to compile again with when a call passes the default one: room to double."""
    return _power_of_two_at_least(size)


def _hint(gm, sym) -> int | None:
    """The size dynamo saw for ``sym`` when it traced."""
    import torch

    for n in gm.graph.nodes:
        val = n.meta.get("example_value")
        for d in (val.shape if isinstance(val, torch.Tensor) else ()):
            if isinstance(d, torch.SymInt) and d.node.expr == sym:
                env = d.node.shape_env  # (torch 2.13 renamed var_to_val)
                hint = getattr(env, "backed_var_to_val", None) or env.var_to_val
                hint = hint.get(sym)
                return int(hint) if hint is not None else None
    return None


def _tensor_bytes(gm, sizes: dict) -> int:
    """The bytes of every tensor ``gm`` makes or takes, at ``sizes`` (an upper bound of its memory)."""
    import torch

    total = 0
    for n in gm.graph.nodes:
        val = n.meta.get("example_value")
        if not isinstance(val, torch.Tensor):
            continue
        count = 1
        for d in val.shape:
            try:
                count *= int(d.node.expr.subs(sizes)) if isinstance(d, torch.SymInt) else int(d)
            except (TypeError, ValueError):  # a size of no symbol of the inputs (data-dependent): not counted
                pass
        total += count * val.element_size()
    return total


def _machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
