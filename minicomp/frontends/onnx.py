"""ONNX -> Graph.

    graph = minicomp.from_onnx("model.onnx", shapes={"input": (1, 3, 224, 224)})

The importer checks the whole model first: every op without an importer is
listed (node name, op type, opset) in one MinicompError before any work is
done. Then it walks the nodes in order and builds the graph with the
:class:`~minicomp.frontends.builder.GraphBuilder`. A node whose inputs are all
known constants is evaluated at once (this folds shape computations such as
Shape -> Gather -> Concat -> Reshape, and weights made by ConstantOfShape).

Each ONNX op has an importer function registered with
:func:`register_onnx_importer`; the built-in ones live in
``minicomp/frontends/onnx_*_ops.py`` (by family), and ``docs/adding-an-op.md``
shows how to add one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from minicomp.errors import MinicompError, UnsupportedError
from minicomp.frontends.builder import GraphBuilder, Tensor
from minicomp.ir.dims import Dim
from minicomp.ir.dtypes import ALL_DTYPES
from minicomp.ir.graph import Graph, Value, check_shape, drop_unused_constants
from minicomp.ir.ops import get_op
from minicomp.registries import LazyRegistry

# ONNX TensorProto element types that minicomp has a dtype for.
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
ONNX_TYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32",
                   7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64",
                   14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16"}

SUPPORTED_NAMES = frozenset(d.name for d in ALL_DTYPES)  # (numpy's dtype names are minicomp's)

# A folded constant may grow this much beyond its inputs (weights made by
# ConstantOfShape are the point of folding, so the limit is generous).
FOLD_LIMIT_ELEMENTS = 1 << 28


@dataclass
class OnnxNode:
    """The parts of an ONNX NodeProto an importer needs, with decoded attributes."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    domain: str = ""

    def describe(self) -> str:
        return f"node '{self.name}' ({self.op_type})"


Importer = Callable[["ImportContext", OnnxNode], list]
def _load_builtin():
    from minicomp.frontends import (  # noqa: F401
        onnx_attention,
        onnx_elementwise_ops,
        onnx_grid_ops,
        onnx_layout_ops,
        onnx_math_ops,
        onnx_nn_ops,
        onnx_quant_ops,
        onnx_reduce_ops,
        onnx_rnn_ops,
        onnx_scatter_ops,
        onnx_sequence_ops,
        onnx_shape_ops,
    )


_IMPORTERS = LazyRegistry("an ONNX importer for", _load_builtin)


def register_onnx_importer(op_type: str, domain: str = "", replace: bool = False):
    """Decorator: ``fn(ctx, node) -> [output tensors]`` imports ``op_type``.

    ``ctx.input(i)`` gives input i as a builder Tensor (None if absent),
    ``ctx.constant(i)`` its value when it is a known constant, ``ctx.op(...)``
    records a minicomp op named after the ONNX node, ``ctx.opset`` is the
    model's opset. Return one Tensor (or None for an unused optional output)
    per ONNX output.
    """
    key = (domain if domain != "ai.onnx" else "", op_type)

    def wrap(fn):
        _IMPORTERS.register(key, fn, replace=replace, label=op_type)
        return fn

    return wrap


def onnx_importers() -> dict[tuple[str, str], Importer]:
    """Registered importers by (domain, op type)."""
    return _IMPORTERS.as_dict()


class ImportContext:
    """What an importer sees while converting one node."""

    def __init__(self, builder: GraphBuilder, opset: int):
        self.builder = builder
        self.opset = opset
        self.values: dict[str, Tensor] = {}
        self.node: OnnxNode | None = None
        self._count = 0

    # -- inputs ----------------------------------------------------------------------
    def input(self, i: int) -> Tensor | None:
        """Input ``i`` of the current node (None if it is absent or empty)."""
        names = self.node.inputs
        if i >= len(names) or names[i] == "":
            return None
        try:
            return self.values[names[i]]
        except KeyError:
            raise MinicompError(f"{self.node.describe()}: input '{names[i]}' is not defined") from None

    def inputs(self) -> list[Tensor]:
        return [self.input(i) for i in range(len(self.node.inputs)) if self.node.inputs[i]]

    def constant(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value if it is a constant known at import time."""
        t = self.input(i)
        if t is None:
            return None
        return self.builder.graph.constants.get(t.value)

    def required_constant(self, i: int, what: str) -> np.ndarray:
        arr = self.constant(i)
        if arr is None:
            raise UnsupportedError(f"{self.node.describe()}: {what} (input {i}) must be a constant known at "
                                   f"import time; fix the input shapes so that it can be computed")
        return arr

    def attr(self, name: str, default=None):
        return self.node.attrs.get(name, default)

    # -- outputs ---------------------------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        base = self.node.name if hint is None else f"{self.node.name}/{hint}"
        name, k = base, 1
        while name in self.builder._names:
            name, k = f"{base}_{k}", k + 1
        return name

    def op(self, op: str, *inputs, **attrs) -> Tensor:
        """Record a minicomp op for the current node (named after it)."""
        return self.builder.op(op, *inputs, name=self.fresh_name(), **attrs)

    def const(self, array, dtype=None) -> Tensor:
        """A new constant (named after the current node)."""
        arr = np.asarray(array, dtype=dtype)
        return self.builder.constant(arr, name=self.fresh_name("const"))


def _attr_value(attr):
    from onnx import helper, numpy_helper

    value = helper.get_attribute_value(attr)
    if hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def load_model(model, base_dir: str | None = None):
    """A ModelProto from a path, bytes or a ModelProto; MinicompError if unreadable."""
    try:
        import onnx
    except ImportError:
        raise MinicompError("ONNX import needs the onnx package: pip install 'minicomp[onnx]'") from None
    if isinstance(model, onnx.ModelProto):
        if base_dir:
            load_external_data(model, base_dir)
        return model
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as exc:
            raise MinicompError(f"cannot parse the ONNX model bytes: {exc}") from None
        return proto
    if not isinstance(model, (str, os.PathLike)):
        raise MinicompError(f"from_onnx needs a path, bytes or an onnx.ModelProto, got {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.exists(path):
        raise MinicompError(f"no such ONNX file: {path}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated files...
        raise MinicompError(f"cannot read ONNX model {path}: {type(exc).__name__}: {exc}") from None
    if not proto.HasField("graph") or not proto.graph.node and not proto.graph.output:
        raise MinicompError(f"{path} holds no ONNX graph (is it an ONNX model file?)")
    load_external_data(proto, os.path.dirname(os.path.abspath(path)))
    return proto


def load_external_data(proto, base_dir: str) -> None:
    """Read every initializer kept in an external file into the model, in place.

    minicomp's own reader, whatever the onnx version: a location must name a
    file inside ``base_dir`` once links are resolved (a model may not read
    ``../../etc/passwd``, nor a link pointing out of its folder), and its offset
    and length must lie inside that file. Any problem is a MinicompError
    naming the tensor."""
    from onnx import TensorProto

    root = os.path.realpath(base_dir)
    tensors = [t for t in _all_tensors(proto.graph) if t.data_location == TensorProto.EXTERNAL]
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        where = f"initializer '{t.name}': external data"
        location = info.get("location", "")
        if not location or os.path.isabs(location):
            raise MinicompError(f"{where} needs a location relative to the model's folder, got {location!r}")
        path = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, path]) != root:
            raise MinicompError(f"{where} {location!r} lies outside the model's folder {root}: refused")
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
            size = os.path.getsize(path)
        except (ValueError, OSError) as exc:
            raise MinicompError(f"{where} {location!r}: {exc}") from None
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise MinicompError(f"{where} {location!r}: bytes {offset}..{offset + length} are not inside the "
                                f"file ({size} bytes)")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                t.raw_data = f.read(length)
        except OSError as exc:
            raise MinicompError(f"{where} {location!r}: {exc}") from None
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]


def _all_tensors(graph):
    """Initializers and constant attributes of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for g in a.graphs:
                yield from _all_tensors(g)


def load_for_import(model, base_dir: str | None = None):
    """(ModelProto, WeightReader) for :func:`from_onnx`: a file is parsed
    without its weights' bytes, which the reader then reads one at a time
    straight into their arrays (see ``onnx_weights.py``); a ModelProto or
    bytes are taken as they are."""
    from minicomp.frontends.onnx_weights import WeightReader, scan_model

    if isinstance(model, (str, os.PathLike)) and os.path.isfile(os.fspath(model)):
        path = os.fspath(model)
        scanned = scan_model(path)
        if scanned is not None:
            import onnx

            proto = onnx.ModelProto()
            try:
                proto.ParseFromString(scanned[0])
            except Exception:
                return load_model(path), WeightReader()  # its own error, or a model read the usual way
            if proto.HasField("graph") and (proto.graph.node or proto.graph.output):
                load_external_data(proto, os.path.dirname(os.path.abspath(path)))
                return proto, WeightReader(path, scanned[1])
    return load_model(model, base_dir), WeightReader()


def model_opset(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1 if not proto.opset_import else 21


MIN_OPSET = 6


def check_opset(opset: int) -> None:
    """Refuse opsets minicomp cannot read: below 6, or newer than the installed onnx package knows."""
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UnsupportedError(f"the model's default-domain opset is {opset}; minicomp reads opsets "
                               f"{MIN_OPSET} to {newest} (the newest the installed onnx package knows)")


# Ops whose output length depends on the values they read: a static-shape
# compiler cannot give them an output type, whatever importer it has.
DATA_DEPENDENT_OPS = {"NonMaxSuppression": "how many boxes survive", "NonZero": "how many elements are nonzero",
                      "Unique": "how many values are distinct"}


def unsupported_ops(proto) -> list[str]:
    """Every node whose op has no importer, described with name and opset (and,
    for the ops whose output length depends on the data, that reason)."""
    opset = model_opset(proto)
    missing = []
    for i, n in enumerate(proto.graph.node):
        domain = "" if n.domain in ("", "ai.onnx") else n.domain
        if (domain, n.op_type) not in _IMPORTERS:
            name = n.name or (n.output[0] if n.output else f"#{i}")
            where = f"{domain}." if domain else ""
            why = DATA_DEPENDENT_OPS.get(n.op_type) if not domain else None
            why = f": its output's length depends on {why}, and minicomp compiles static shapes" if why else ""
            missing.append(f"node '{name}' (op {where}{n.op_type}, opset {opset}{why})")
    return missing


def _value_info_shape(vi) -> tuple[list, int]:
    tt = vi.type.tensor_type
    dims = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?"))
    return dims, tt.elem_type


def _onnx_dtype(elem_type: int, what: str) -> str:
    if elem_type not in ONNX_DTYPES:
        raise UnsupportedError(f"{what} has ONNX type {ONNX_TYPE_NAMES.get(elem_type, elem_type)}; "
                               f"minicomp supports {', '.join(ONNX_TYPE_NAMES[k] for k in ONNX_DTYPES)}")
    return ONNX_DTYPES[elem_type]


def _declared_dims(dims: dict | None, input_shapes: list) -> dict:
    """``dims`` ({dim_param: (min, max)}) as mc.Dim objects, each checked to name a dimension of an input."""
    named = sorted({d for shape in input_shapes for d in shape if isinstance(d, str) and d != "?"})
    out = {}
    for key, span in (dims or {}).items():
        if key not in named:
            raise MinicompError(f"dims names {key!r}, which no input's shape has; the model's named dimensions are "
                                f"{', '.join(named) or 'none'}")
        if not (isinstance(span, (tuple, list)) and len(span) == 2):
            raise MinicompError(f"dims[{key!r}] must be a (min, max) pair, got {span!r}")
        out[key] = Dim(key, *span)
    return out


def from_onnx(model, shapes: dict | None = None, base_dir: str | None = None, name: str | None = None,
              constants: dict | None = None, dims: dict | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a verified Graph.

    ``shapes`` fixes dynamic input dimensions: ``{"input": (1, 3, 224, 224)}``.
    ``dims`` keeps named ones symbolic over a range: ``{"batch": (1, 128)}``
    makes every ``dim_param`` called ``batch`` an ``mc.Dim("batch", 1, 128)``,
    so that one compile serves every batch in the range (docs/dynamic.md).
    ``constants`` binds inputs to fixed values, which become constants of the
    graph; that is how a model whose output shape depends on an input's
    *value* (a target shape fed to Expand or Reshape) gets static shapes.
    ``base_dir`` locates external data for a ModelProto already in memory.
    """
    proto, weights = load_for_import(model, base_dir)
    missing = unsupported_ops(proto)
    if missing:
        raise UnsupportedError(f"the model uses {len(missing)} unsupported node(s): " + "; ".join(missing))
    opset = model_opset(proto)
    check_opset(opset)
    g = proto.graph
    builder = GraphBuilder(name or g.name or "onnx_model")
    ctx = ImportContext(builder, opset)
    shapes = dict(shapes or {})

    # One weight at a time, each read once into the array the graph keeps
    # (from a file, straight from the file: the protobuf never holds them).
    inits = set()
    with weights:
        for t in g.initializer:
            try:
                arr = weights.array(t)
            except Exception as exc:
                raise MinicompError(f"initializer '{t.name}' cannot be read: {exc}") from None
            if arr.dtype.name not in SUPPORTED_NAMES:
                raise UnsupportedError(f"initializer '{t.name}' has dtype {arr.dtype}, which minicomp does not "
                                       f"support")
            ctx.values[t.name] = builder.constant(arr, name=t.name)
            inits.add(t.name)

    constants = dict(constants or {})
    symbolic = _declared_dims(dims, [_value_info_shape(vi)[0] for vi in g.input if vi.name not in inits])
    # A misspelled name is reported first: otherwise the input it meant to fix would fail as "dynamic".
    input_names = [vi.name for vi in g.input if vi.name not in inits]
    unknown = [k for k in list(shapes) + list(constants) if k not in input_names]
    if unknown:
        raise MinicompError(f"shapes/constants name unknown input(s) {', '.join(unknown)}; the model's inputs "
                            f"are {', '.join(input_names)}")
    for vi in g.input:
        if vi.name in inits:
            continue  # older models list initializers as inputs too
        dims, elem = _value_info_shape(vi)
        dims = [symbolic.get(d, d) if isinstance(d, str) else d for d in dims]
        dtype = _onnx_dtype(elem, f"input '{vi.name}'")
        if vi.name in constants:
            shapes.pop(vi.name, None)  # the constant's own shape decides
            arr = np.asarray(constants.pop(vi.name))
            if arr.ndim != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, arr.shape)):
                raise MinicompError(f"constants['{vi.name}'] has shape {list(arr.shape)}, but the model "
                                    f"declares {dims}")
            ctx.values[vi.name] = builder.constant(arr.astype(dtype), name=vi.name)
            continue
        if vi.name in shapes:
            spec = shapes.pop(vi.name)
            if not isinstance(spec, (tuple, list)):
                raise MinicompError(f"shapes['{vi.name}'] must be a tuple of dimensions, got {spec!r}")
            fixed = check_shape(spec)
            if len(fixed) != len(dims) or any(isinstance(d, int) and d != f for d, f in zip(dims, fixed)):
                raise MinicompError(f"shapes['{vi.name}'] = {list(fixed)} does not fit the model's input "
                                    f"shape {dims}")
            dims = list(fixed)
        if any(isinstance(d, str) for d in dims):
            raise MinicompError(f"input '{vi.name}' has dynamic dimensions {dims}; fix them with "
                                f"from_onnx(..., shapes={{'{vi.name}': (...)}}), or give a named one a range "
                                f"with dims={{'name': (min, max)}}")
        ctx.values[vi.name] = builder.input(vi.name, tuple(dims), dtype)

    writers = {name: "a graph input or initializer" for name in ctx.values}
    for i, n in enumerate(g.node):
        node = OnnxNode(n.op_type, n.name or (n.output[0] if n.output else f"{n.op_type}_{i}"),
                        list(n.input), list(n.output), {a.name: _attr_value(a) for a in n.attribute},
                        "" if n.domain in ("", "ai.onnx") else n.domain)
        for out in filter(None, node.outputs):  # ONNX graphs are SSA: one writer per name
            if out in writers:
                raise MinicompError(f"{node.describe()} writes '{out}', which {writers[out]} already "
                                    f"produces: an ONNX value has exactly one producer")
            writers[out] = f"node '{node.name}' ({node.op_type})"
        _import_node(ctx, node)

    outs = []
    for vi in g.output:
        if vi.name not in ctx.values or ctx.values[vi.name] is None:
            raise MinicompError(f"graph output '{vi.name}' is never produced")
        outs.append(ctx.values[vi.name])
    # Outputs keep their ONNX names, so that saved results and dumps match the model.
    taken = {v.name for v in builder.graph.values()}
    for vi, t in zip(g.output, outs):
        v = t.value
        if v.name != vi.name and vi.name not in taken and v not in builder.graph.inputs:
            taken.discard(v.name)
            v.name = vi.name
            taken.add(vi.name)
    builder.output(*outs)
    graph = builder.build()
    return drop_unused_constants(graph)


def _import_node(ctx: ImportContext, node: OnnxNode) -> None:
    ctx.node = node
    fn = _IMPORTERS[(node.domain, node.op_type)]
    graph = ctx.builder.graph
    start = len(graph.nodes)
    try:
        outs = fn(ctx, node)
    except MinicompError as exc:
        msg = str(exc)
        raise type(exc)(msg if node.name in msg else f"{node.describe()}: {msg}") from None
    except Exception as exc:  # an importer bug must still name the node
        raise MinicompError(f"{node.describe()}: import failed: {type(exc).__name__}: {exc}") from exc
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    if len(outs) < len(node.outputs):
        outs += [None] * (len(node.outputs) - len(outs))
    ins = [ctx.values.get(x) for x in node.inputs if x]
    if all(t is not None and t.value in graph.constants for t in ins) and len(graph.nodes) > start:
        outs = _fold(ctx, start, outs)
    for name, t in zip(node.outputs, outs):
        if name:
            ctx.values[name] = t


def _fold(ctx: ImportContext, start: int, outs: list) -> list:
    """Evaluate the nodes just added (all their inputs are constants)."""
    graph = ctx.builder.graph
    new_nodes = graph.nodes[start:]
    if sum(v.type.size for n in new_nodes for v in n.outputs) > FOLD_LIMIT_ELEMENTS:
        return outs
    env = dict(graph.constants)
    for n in new_nodes:
        result = get_op(n.op).reference(*[env[v] for v in n.inputs], **dict(n.attrs))
        results = result if isinstance(result, (list, tuple)) else [result]
        for v, r in zip(n.outputs, results):
            env[v] = np.asarray(r, dtype=v.dtype.numpy)
    del graph.nodes[start:]
    folded = []
    for t in outs:
        if t is None or t.value in graph.constants:
            folded.append(t)
            continue
        v: Value = t.value
        v.producer = None
        graph.constants[v] = np.array(env[v], order="C")
        folded.append(t)
    return folded
