"""PyTorch -> Graph.

    graph = minicomp.from_torch(model.eval(), (torch.randn(1, 3, 224, 224),))

``torch.export.export`` captures the module on the example inputs, the core
ATen decompositions run (keeping the few higher-level ops minicomp has a
better kernel for, such as ``scaled_dot_product_attention`` and ``silu``),
and each node of the exported FX graph is converted by a function registered
with :func:`register_torch_op`; the built-in ones live in
``minicomp/frontends/pytorch_ops.py`` (and, for the fused layers of
torch's fast paths, ``pytorch_fused_ops.py``).

Parameters and buffers become constants named after their module path
(``encoder.layer0.attn.q.weight``); nodes are named after the module that
made them (``layer1.0.conv1.convolution_3``). A node whose tensor inputs are
all constants is evaluated by torch itself at import time (shape arithmetic,
``arange``, masks, transposed weights), so it needs no converter. Every
other node needs one: the whole graph is checked first, and every op without
one is listed in one ``UnsupportedError`` before any work is done. After each
node, the converted tensor's shape and dtype are checked against the ones
torch recorded, so a converter that goes wrong is caught at import, naming
the node.

The ``torch.compile`` backend built on this lives in
``minicomp/frontends/pytorch_dynamo.py``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable

import numpy as np

from minicomp.errors import MinicompError, UnsupportedError
from minicomp.frontends.builder import GraphBuilder, Tensor
from minicomp.ir.dims import Dim, Size, SymbolicSizeError, bounds
from minicomp.ir.dtypes import ALL_DTYPES
from minicomp.ir.graph import Graph, drop_unused_constants
from minicomp.registries import LazyRegistry

# torch dtypes by name -> minicomp dtype names (those minicomp computes in).
TORCH_DTYPES = {d.name: d.name for d in ALL_DTYPES}  # torch spells every minicomp dtype the same way

# A constant torch computes at import time may be at most this large; larger
# results are left to a converter (an expand of a constant to a huge shape).
FOLD_LIMIT_ELEMENTS = 1 << 26

# Ops the core-ATen decompositions would break into smaller ones that
# minicomp has a single, better op (or fused kernel) for.
KEEP_UNDECOMPOSED = ("scaled_dot_product_attention.default", "silu.default", "upsample_nearest2d.vec",
                     "upsample_bilinear2d.vec", "upsample_nearest2d.default", "upsample_bilinear2d.default",
                     "upsample_bicubic2d.vec", "upsample_bicubic2d.default")

Converter = Callable[["TorchContext", dict], object]
def _load_builtin():
    from minicomp.frontends import pytorch_fused_ops, pytorch_ops  # noqa: F401


_CONVERTERS = LazyRegistry("a torch converter for", _load_builtin)


def register_torch_op(*names: str, replace: bool = False):
    """Decorator: ``fn(ctx, args) -> tensor(s)`` converts the named ATen ops.

    A name is an overload (``"aten.add.Tensor"``) or a whole overload packet
    (``"aten.add"``, every overload); the overload's own registration wins.
    ``args`` maps the ATen schema's argument names to their values (fx nodes
    already converted to builder Tensors, defaults filled in): ``args["self"]``,
    ``args["dim"]``. ``ctx.op(...)`` records a minicomp op named after the node,
    ``ctx.out_shape()``/``ctx.out_dtype()`` give what torch computed. Return
    one Tensor, or a tuple for an op with several outputs.
    """

    def wrap(fn):
        for name in names:
            _CONVERTERS.register(name, fn, replace=replace)
        return fn

    return wrap


def torch_converters() -> dict[str, Converter]:
    """Registered converters by ATen op name."""
    return _CONVERTERS.as_dict()


def _torch():
    try:
        import torch
    except ImportError:
        raise MinicompError("PyTorch import needs torch: pip install 'minicomp[torch]'") from None
    return torch


def converter_for(target) -> Converter | None:
    """The converter of an ATen op overload, by its own name or its packet's."""
    name = str(target)
    if name in _CONVERTERS:
        return _CONVERTERS[name]
    packet = getattr(target, "overloadpacket", None)
    return _CONVERTERS.get(str(packet)) if packet is not None else None


def minicomp_dtype(torch_dtype, what: str) -> str:
    """The minicomp dtype name of a torch dtype; UnsupportedError for the others."""
    name = str(torch_dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise UnsupportedError(f"{what} has dtype {name}; minicomp supports {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def to_numpy(t) -> np.ndarray:
    """A CPU tensor's values as a numpy array (shared memory where torch allows)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if getattr(t, "is_conj", lambda: False)() or getattr(t, "is_neg", lambda: False)():
        t = t.resolve_conj().resolve_neg()
    if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: the same 16 bits as ml_dtypes' type
        import ml_dtypes
        import torch

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def from_numpy(a: np.ndarray):
    """A torch tensor sharing ``a``'s memory (bfloat16 included)."""
    import torch

    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


class TorchContext:
    """What a converter sees while converting one FX node."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder
        self.values: dict = {}  # fx node -> Tensor, tuple of Tensors, or a Python value
        self.node = None
        self._module_path = ""
        self.dims: dict = {}  # torch's size symbols (sympy) -> mc.Dim, for programs exported with dynamic shapes

    def size(self, d):
        """A size torch recorded (an int, or a SymInt over the exported dimensions) as an int or a
        symbolic :class:`~minicomp.ir.dims.Size`."""
        torch = _torch()
        if isinstance(d, torch.SymInt):
            return _sympy_size(d.node.expr, self.dims)
        return int(d)

    # -- the node being converted ------------------------------------------------
    def describe(self, node=None) -> str:
        node = node or self.node
        return f"node '{node.name}' ({node.target})"

    def meta(self, node=None):
        """The FakeTensor (or tuple of them) torch recorded for the node's output."""
        return (node or self.node).meta.get("val")

    def out_shape(self, k: int | None = None) -> tuple:
        val = self.meta()
        val = val[k] if k is not None else val
        return tuple(self.size(d) for d in val.shape)

    def out_dtype(self, k: int | None = None) -> str:
        val = self.meta()
        val = val[k] if k is not None else val
        return minicomp_dtype(val.dtype, self.describe())

    def used_outputs(self) -> set[int]:
        """Which items of a tuple-valued node the graph reads (through getitem)."""
        import operator

        return {u.args[1] for u in self.node.users if u.target is operator.getitem}

    # -- building ------------------------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        base = f"{self._module_path}.{self.node.name}" if self._module_path else self.node.name
        if hint:
            base = f"{base}.{hint}"
        name, k = base, 1
        while name in self.builder._names:
            name, k = f"{base}_{k}", k + 1
        return name

    def op(self, op: str, *inputs, **attrs):
        """Record a minicomp op for the current node (named after it)."""
        return self.builder.op(op, *inputs, name=self.fresh_name(), **attrs)

    def const(self, array, dtype=None) -> Tensor:
        """A new constant (named after the current node)."""
        return self.builder.constant(np.asarray(array, dtype=dtype), name=self.fresh_name("const"))

    def tensor(self, x, dtype: str) -> Tensor:
        """``x`` (a Tensor, a Python scalar, or a size known only at the call) as a Tensor of ``dtype``."""
        if isinstance(x, Size):  # (a static cache's counter plus the prompt's symbolic length)
            x = self.op("iota", length=1, start=x).reshape(())
        if isinstance(x, Tensor):
            return x if x.dtype.name == dtype else self.op("cast", x, dtype=dtype)
        return self.const(np.array(x, dtype=dtype))


def _sympy_size(e, dims: dict):
    """torch's symbolic size ``e`` (a sympy expression over the exported dimensions) as an mc size."""
    import sympy

    if isinstance(e, (int, sympy.Integer)):
        return int(e)
    if isinstance(e, sympy.Symbol):
        if e not in dims:
            raise UnsupportedError(f"size {e} is not a dimension of the inputs (torch made it inside the model)")
        return dims[e]
    args = [_sympy_size(a, dims) for a in e.args]
    if isinstance(e, sympy.Add):
        return sum(args[1:], args[0])
    if isinstance(e, sympy.Mul):
        return math.prod(args[1:], start=args[0])
    if isinstance(e, sympy.Pow) and isinstance(args[1], int) and args[1] >= 0:
        return math.prod([args[0]] * args[1], start=1)
    if type(e).__name__ == "FloorDiv":
        return args[0] // args[1]
    if type(e).__name__ in ("Mod", "PythonMod"):
        return args[0] % args[1]
    if type(e).__name__ in ("Min", "Max"):  # where the ranges decide it (min(24, s) with s at most 24)
        ranges = [bounds(a) for a in args]
        for k, (a, (lo, hi)) in enumerate(zip(args, ranges)):
            if all((hi <= o_lo) if type(e).__name__ == "Min" else (lo >= o_hi)
                   for j, (o_lo, o_hi) in enumerate(ranges) if j != k):
                return a
    raise SymbolicSizeError(f"the size {e} is not a sum of products of dimensions, which minicomp carries")


def _bind_args(node, values: dict) -> dict:
    """The node's arguments by the ATen schema's names, with defaults filled in."""
    import torch.fx

    def resolve(a):
        if isinstance(a, torch.fx.Node):
            return values[a]
        if isinstance(a, (list, tuple)):
            return type(a)(resolve(x) for x in a)
        return a

    schema = node.target._schema
    bound = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            raw = node.args[i]
        elif arg.name in node.kwargs:
            raw = node.kwargs[arg.name]
        elif arg.has_default_value():
            raw = arg.default_value
        else:
            raw = None
        bound[arg.name] = resolve(raw)
    return bound


def _is_random(target) -> bool:
    torch = _torch()
    return torch.Tag.nondeterministic_seeded in getattr(target, "tags", ())


def _shapes_of(node) -> str:
    import torch.fx

    shapes = []
    for a in node.all_input_nodes:
        v = a.meta.get("val")
        if isinstance(v, torch.fx.Node) or not hasattr(v, "shape"):
            continue
        shapes.append(f"{str(v.dtype).removeprefix('torch.')}{list(v.shape)}")
    return ", ".join(shapes)


def _constant_nodes(gm, const_placeholders: set[str]) -> set:
    """The FX nodes whose value is known at import time (torch can compute them)."""
    import operator

    known = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if n.name in const_placeholders:
                known.add(n)
        elif n.op == "get_attr":
            known.add(n)
        elif n.op == "call_function":
            if n.target is not operator.getitem and not hasattr(n.target, "_schema"):
                continue
            if n.target is not operator.getitem and _is_random(n.target):
                continue
            if all(a in known for a in n.all_input_nodes):
                known.add(n)
    return known


def unsupported_nodes(gm, const_placeholders: set[str]) -> list[str]:
    """Every node minicomp cannot convert, described with its op and input shapes."""
    import operator

    known = _constant_nodes(gm, const_placeholders)
    missing = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is not operator.getitem and n not in known and \
                not _is_size_node(n):
            if not hasattr(n.target, "_schema"):
                function = getattr(n.target, "__name__", n.target)
                missing.append(f"node '{n.name}' (Python function {function}){_source_line(n)}")
            elif converter_for(n.target) is None:
                why = ", random" if _is_random(n.target) else ""
                missing.append(f"node '{n.name}' (op {n.target}{why}; inputs {_shapes_of(n)}){_source_line(n)}")
        elif n.op in ("call_module", "call_method"):
            missing.append(f"node '{n.name}' ({n.op} {n.target})")
    return missing


def _decomposition_table():
    torch = _torch()
    table = torch.export.default_decompositions()
    for name in KEEP_UNDECOMPOSED:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
        if op is not None and op in table:
            del table[op]
    return table


@contextlib.contextmanager
def _without_torch_deprecations():
    """torch.export copies its tree specs through a check that torch itself deprecated: every export
    printed a FutureWarning about LeafSpec that no user of minicomp can act on. Hide that one only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        yield


def export_module(module, example_inputs, example_kwargs=None, dynamic_shapes=None):
    """``torch.export`` of the module on the examples (``dynamic_shapes`` as torch.export takes them),
    decomposed to core ATen."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise MinicompError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    try:
        with torch.no_grad(), _without_torch_deprecations():
            ep = torch.export.export(module, tuple(example_inputs), kwargs=example_kwargs,
                                     dynamic_shapes=dynamic_shapes)
            return ep.run_decompositions(_decomposition_table())
    except MinicompError:
        raise
    except Exception as exc:  # export failures carry torch's own, long explanations
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MinicompError(f"torch.export could not capture {type(module).__name__}: {type(exc).__name__}: "
                            f"{first}") from exc


def _train_mode_layers():
    nn = _torch().nn
    return (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def from_torch(module, example_inputs=None, dynamic=None, example_kwargs: dict | None = None,
               name: str | None = None, dynamic_shapes=None) -> Graph:
    """Import a ``torch.nn.Module`` (in eval mode) as a verified Graph.

    ``example_inputs`` (a tuple of tensors, or one tensor) fix the input
    shapes and dtypes; the graph's inputs are named after ``forward``'s
    arguments. ``module`` may also be a ``torch.export.ExportedProgram``
    (``torch.export.load("model.pt2")``), taken with the shapes it was
    exported with (no example inputs then).

    ``dynamic_shapes`` is ``torch.export``'s own: ``{"x": {0: Dim("batch",
    min=1, max=256)}}`` keeps that axis symbolic (an ``mc.Dim`` of the same
    name and range), so that one compile serves every size in the range
    (docs/dynamic.md); each dimension needs a maximum. ``dynamic`` must be
    None or False (name the dimensions with ``dynamic_shapes`` instead).
    """
    torch = _torch()
    if dynamic not in (None, False):
        raise MinicompError("from_torch(dynamic=True) does not say which sizes vary, nor over what range: pass "
                            "torch.export's dynamic_shapes={'x': {0: torch.export.Dim('batch', min=1, max=256)}}")
    if isinstance(module, torch.export.ExportedProgram):
        if example_inputs is not None or example_kwargs is not None:
            raise MinicompError("an exported program keeps the shapes it was exported with: call "
                                "from_torch(program) without example inputs, or export again for new shapes")
        with _without_torch_deprecations():
            ep = module.run_decompositions(_decomposition_table())
        return from_exported_program(ep, name=name or "exported_program")
    if example_inputs is None:
        raise MinicompError("from_torch needs example inputs for a module: from_torch(model, (x,))")
    if isinstance(module, torch.nn.Module) and module.training:
        trains = sorted({type(m).__name__ for m in module.modules() if isinstance(m, _train_mode_layers())})
        if trains:
            raise MinicompError(f"{type(module).__name__} is in training mode, where its {', '.join(trains)} "
                                f"layers train; minicomp compiles inference: call module.eval() first")
    ep = export_module(module, example_inputs, example_kwargs, dynamic_shapes)
    return from_exported_program(ep, name=name or type(module).__name__, dim_names=_dim_names(ep, dynamic_shapes))


def _dim_names(ep, dynamic_shapes) -> dict:
    """torch's size symbol -> the name of the ``torch.export.Dim`` the user gave for it (the exported
    program keeps only the symbols: ``s77``), found where a named Dim stands for a whole input axis."""
    torch = _torch()
    if not dynamic_shapes:
        return {}
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user = [placeholders.get(getattr(s.arg, "name", None)) for s in ep.graph_signature.input_specs
            if s.kind == InputKind.USER_INPUT]  # (None for a constant input, a number)
    specs = list(dynamic_shapes.values()) if isinstance(dynamic_shapes, dict) else list(dynamic_shapes)
    names = {}
    for node, spec in zip(user, specs):
        if node is None or not spec:
            continue
        axes = spec.items() if isinstance(spec, dict) else enumerate(spec)
        val = node.meta.get("val")
        for axis, dim in axes:
            name = getattr(dim, "__name__", None)
            size = val.shape[axis] if isinstance(val, torch.Tensor) and axis < val.dim() else None
            if name and isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                names[size.node.expr] = name
    return names


def from_exported_program(ep, name: str = "torch_model", constant_inputs: dict | None = None,
                          dim_names: dict | None = None, literal_outputs: dict | None = None) -> Graph:
    """Convert a core-ATen ``ExportedProgram`` to a Graph.

    ``constant_inputs`` maps user-input placeholder names to ``(name, tensor)``:
    those inputs become constants of that name (the torch.compile backend
    passes the module's parameters so). A program exported with dynamic
    shapes gets symbolic dimensions (``mc.Dim``) with the ranges torch
    recorded, named by ``dim_names`` (torch's symbol -> name) or after the
    symbol (``s77``). ``literal_outputs``, a dict, takes the outputs that are
    Python numbers (a window size a model returns beside its tensors), by
    position among all outputs, where they would be refused.
    """
    _torch()
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    constant_inputs = dict(constant_inputs or {})
    # An input the module updates in place (a static key/value cache, a step counter) becomes an input
    # the compiled model writes (Graph.writes); a module's own buffer that changes is state minicomp's
    # constants cannot hold.
    bad_outputs = [f"{s.kind.name.lower()} of '{s.target}'" for s in sig.output_specs
                   if s.kind not in (OutputKind.USER_OUTPUT, OutputKind.USER_INPUT_MUTATION)
                   or (s.kind == OutputKind.USER_INPUT_MUTATION and s.target in (constant_inputs or {}))]
    if bad_outputs:
        raise UnsupportedError(f"the module changes its own state as it runs ({', '.join(bad_outputs)}); "
                               f"minicomp compiles inference: call module.eval(), and pass state it updates "
                               f"(a cache) as an input")
    gm = ep.graph_module
    state = {}
    for spec in sig.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            src = ep.state_dict if spec.target in ep.state_dict else ep.constants
            state[spec.arg.name] = (spec.target, src[spec.target])
        elif spec.kind == InputKind.USER_INPUT and spec.arg.name in constant_inputs:
            state[spec.arg.name] = constant_inputs.pop(spec.arg.name)
        elif spec.kind != InputKind.USER_INPUT:
            raise UnsupportedError(f"input '{spec.arg.name}' is a {spec.kind.name.lower()}, which minicomp "
                                   f"cannot take")
    if constant_inputs:
        raise MinicompError(f"constant_inputs name unknown inputs {', '.join(constant_inputs)}")
    missing = unsupported_nodes(gm, set(state))
    if missing:
        raise UnsupportedError(f"the module uses {len(missing)} unsupported node(s): " + "; ".join(missing))

    builder = GraphBuilder(name)
    ctx = TorchContext(builder)
    ctx.dims = _exported_dims(ep, dim_names or {})
    known = _constant_nodes(gm, set(state))
    eager: dict = {}  # fx node -> its torch value, for the nodes known at import time
    for n in gm.graph.nodes:
        ctx.node = n
        if _is_size_node(n):  # a size computed from the inputs' symbolic shapes (sym_size, operator.mul)
            ctx.values[n] = _size_value(ctx, n)
        elif n.op == "placeholder":
            _convert_placeholder(ctx, n, state, eager)
        elif n.op == "get_attr":
            eager[n] = getattr(gm, n.target)
            ctx.values[n] = _as_constant(ctx, eager[n], n.target)
        elif n.op == "call_function":
            if n in known and _fold(ctx, n, eager):
                continue
            _convert_node(ctx, n)
        elif n.op == "output":
            _set_outputs(ctx, n, literal_outputs)
    graph = builder.graph
    inputs = {n.name: ctx.values[n].value for n in gm.graph.nodes
              if n.op == "placeholder" and isinstance(ctx.values.get(n), Tensor)}
    literals = sorted(literal_outputs or ())
    for k, spec in enumerate(sig.output_specs):
        if spec.kind == OutputKind.USER_INPUT_MUTATION:  # (its place among the tensors: numbers are not outputs)
            graph.writes[k - sum(1 for j in literals if j < k)] = graph.inputs.index(inputs[spec.target])
    return drop_unused_constants(builder.build())


# Nodes that only assert facts about sizes (torch.export's runtime checks): nothing to compute.
SIZE_ASSERTIONS = ("_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size", "_assert_async")


def _is_size_node(n) -> bool:
    """Does the FX node compute a size (a SymInt) or assert one, rather than a tensor?"""
    torch = _torch()
    if n.op != "call_function":
        return False
    return isinstance(n.meta.get("val"), (torch.SymInt, torch.SymBool)) or \
        getattr(n.target, "__name__", "").split(".")[0] in SIZE_ASSERTIONS


def _size_value(ctx: TorchContext, n):
    """The size a node computes (from what torch recorded), or None for an assertion."""
    torch = _torch()
    val = n.meta.get("val")
    if not isinstance(val, torch.SymInt):
        return None
    try:
        return ctx.size(val)
    except SymbolicSizeError as exc:
        raise UnsupportedError(f"{ctx.describe()}: {exc}{_source_line(n)}") from None


def size_range(vr) -> tuple[int, int | None]:
    """The least and greatest value of a torch symbol's range (``ValueRanges``); None for no maximum."""
    try:
        return int(vr.lower), int(vr.upper)
    except (TypeError, ValueError, OverflowError, AttributeError):  # torch's int_oo has no int
        return int(vr.lower), None


def _exported_dims(ep, names: dict) -> dict:
    """torch's size symbols -> mc.Dim, with the ranges torch.export recorded; each must be bounded."""
    torch = _torch()
    used = set()  # the symbols of the inputs' shapes (torch may record others that no input has)
    for n in ep.graph.nodes:
        val = n.meta.get("val") if n.op == "placeholder" else None
        for d in (val.shape if isinstance(val, torch.Tensor) else ()):
            if isinstance(d, torch.SymInt):
                used |= d.node.expr.free_symbols
    dims = {}
    for sym, vr in getattr(ep, "range_constraints", {}).items():
        if sym not in used:
            continue
        name = names.get(sym, str(sym))
        lo, hi = size_range(vr)
        if hi is None:
            raise MinicompError(f"dimension {name} has the range {vr.lower}..{vr.upper}: minicomp plans memory "
                                f"for the largest size, so give it a maximum (torch.export.Dim('{name}', "
                                f"min=1, max=...))")
        dims[sym] = Dim(name if name.isidentifier() else f"s_{name}", max(lo, 0), hi)
    return dims


def _convert_placeholder(ctx: TorchContext, n, state: dict, eager: dict) -> None:
    torch = _torch()
    if n.name in state:
        fqn, value = state[n.name]
        eager[n] = value
        ctx.values[n] = _as_constant(ctx, value, fqn) if isinstance(value, torch.Tensor) else value
        return
    val = n.meta.get("val")
    if isinstance(val, (bool, int, float)):  # a Python number export specialized to its example value
        ctx.values[n] = val
        return
    if not isinstance(val, torch.Tensor):
        raise UnsupportedError(f"input '{n.name}' is a {type(val).__name__}; minicomp graphs take tensors")
    dtype = minicomp_dtype(val.dtype, f"input '{n.name}'")
    ctx.values[n] = ctx.builder.input(n.name, tuple(ctx.size(d) for d in val.shape), dtype)


def _as_constant(ctx: TorchContext, value, name: str):
    torch = _torch()
    if not isinstance(value, torch.Tensor):
        return value
    arr = to_numpy(value)
    dtype = minicomp_dtype(value.dtype, f"constant '{name}'")
    taken = name in ctx.builder._names
    return ctx.builder.constant(np.asarray(arr, dtype=dtype), name=None if taken else name)


def _fold(ctx: TorchContext, n, eager: dict) -> bool:
    """Compute a node whose inputs are known with torch itself; False if too large."""
    import torch.fx

    torch = _torch()
    ctx._module_path = _module_path(n)
    val = n.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else [val]
    if sum(v.numel() for v in vals if isinstance(v, torch.Tensor)) > FOLD_LIMIT_ELEMENTS:
        return False
    args = torch.fx.node.map_arg(n.args, lambda a: eager[a])
    kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: eager[a])
    with torch.no_grad():
        result = n.target(*args, **kwargs)
    eager[n] = result
    if isinstance(result, (tuple, list)):
        ctx.values[n] = tuple(_as_constant(ctx, r, ctx.fresh_name(f"out{k}")) for k, r in enumerate(result))
    else:  # a tensor becomes a constant; a Python number stays one
        ctx.values[n] = _as_constant(ctx, result, ctx.fresh_name())
    return True


def _module_path(n) -> str:
    stack = n.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # Paths read like Python attributes ("L['self'].layer1[0]" under dynamo): keep the dotted form.
    return path.replace("L['self'].", "").replace("[", ".").replace("]", "").replace("'", "")


def _convert_node(ctx: TorchContext, n) -> None:
    import operator

    if n.target is operator.getitem:
        src, k = ctx.values[n.args[0]], n.args[1]
        ctx.values[n] = src[k]
        return
    ctx._module_path = _module_path(n)
    fn = converter_for(n.target)
    try:
        out = fn(ctx, _bind_args(n, ctx.values))
    except MinicompError as exc:
        msg = str(exc)
        # Errors of the ops a converter made name their node after this one ("node 'index_2' (op take..."):
        # a bare mention of the name ("indexing") is not that.
        named = f"node '{n.name}'" in msg or f"node '{n.name}_" in msg
        msg = msg if named else f"{ctx.describe()} (inputs {_shapes_of(n)}): {msg}"
        raise type(exc)(msg + _source_line(n)) from None
    except Exception as exc:  # a converter bug must still name the node
        raise MinicompError(f"{ctx.describe()}: conversion failed: {type(exc).__name__}: {exc}") from exc
    _check_against_torch(ctx, n, out)
    ctx.values[n] = out


def _source_line(n) -> str:
    """``; at File "model.py", line 12, in forward``: where in the user's code torch recorded the node
    (the innermost frame of its stack trace), or nothing."""
    trace = (n.meta.get("stack_trace") or "").strip()
    frames = [ln.strip() for ln in trace.splitlines() if ln.strip().startswith("File ")]
    return f"; at {frames[-1]}" if frames else ""


def _check_against_torch(ctx: TorchContext, n, out) -> None:
    """The converted tensors must have the shapes and dtypes torch recorded."""
    torch = _torch()
    val = n.meta.get("val")
    pairs = zip(out, val) if isinstance(out, tuple) else [(out, val)]
    for got, want in pairs:
        if got is None or not isinstance(want, torch.Tensor):
            continue
        shape = tuple(ctx.size(d) for d in want.shape)
        dtype = minicomp_dtype(want.dtype, ctx.describe())
        if not isinstance(got, Tensor) or got.shape != shape or got.dtype.name != dtype:
            desc = f"{got.dtype.name}{list(got.shape)}" if isinstance(got, Tensor) else repr(got)
            raise MinicompError(f"{ctx.describe()}: the converter made {desc}, but torch computes "
                                f"{dtype}{list(shape)} (inputs {_shapes_of(n)})")


def _set_outputs(ctx: TorchContext, n, literal_outputs: dict | None = None) -> None:
    import torch.fx

    outs = []
    for k, a in enumerate(torch.fx.node.map_aggregate(n.args[0], lambda x: x)):
        v = ctx.values.get(a) if isinstance(a, torch.fx.Node) else a
        if literal_outputs is not None and isinstance(v, (bool, int, float)):
            literal_outputs[k] = v
            continue
        if not isinstance(v, Tensor):
            raise UnsupportedError(f"output {k} of the module is {type(v).__name__}, not a tensor; "
                                   f"minicomp graphs return tensors")
        outs.append(v)
    # Outputs read "output" (or "output_0", "output_1", ...), as torch.onnx names them.
    names = ["output"] if len(outs) == 1 else [f"output_{k}" for k in range(len(outs))]
    for t, name in zip(outs, names):
        v = t.value
        if v.producer is not None and name not in ctx.builder._names and sum(o.value is v for o in outs) == 1:
            ctx.builder._names.discard(v.name)
            v.name = name
            ctx.builder._names.add(name)
    ctx.builder.output(*outs)
