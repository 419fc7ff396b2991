"""The IR text format: a printer and a parser that reads it back.

    graph mlp(%x: f32[64, 784]) {
      %w: f32[784, 10] = constant dense<"sha256:1f0e...">
      %b: f32[2] = constant [0.5, -1.0]
      %mm: f32[64, 10] = matmul(%x, %w)
      %s: f32[64, 1] = sum(%mm) {axes = [1], keepdims = true} @row_sum
      return %s
    }

One line per node with the type of every value. Small constants are shown
inline; large ones by shape and a short digest, or in full as base64
(``data<"...">``) with ``print_graph(g, full_constants=True)``. ``@name``
gives the node's name when it differs from its first output's. ``#`` starts
a comment. See docs/ir.md for the grammar.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re

import numpy as np

from minicomp.errors import MinicompError, ParseError
from minicomp.ir.dims import Dim, Size
from minicomp.ir.dtypes import as_dtype
from minicomp.ir.graph import Graph, Node, TensorType, Value
from minicomp.ir.ops import get_op

INLINE_LIMIT = 16  # constants with at most this many elements print inline
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


# -- printing ------------------------------------------------------------------

def _name(n: str) -> str:
    return n if _SIMPLE_NAME.match(n) else json.dumps(n)


def _scalar(v) -> str:
    if isinstance(v, Size):
        return str(v)
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, np.floating):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        text = str(v)  # numpy prints the shortest text that reads back to the same value
        return text if any(c in text for c in ".en") else text + ".0"
    if type(v).__name__ == "bfloat16":  # ml_dtypes' scalar is not an np.floating: print its exact value as a float
        v = float(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    raise MinicompError(f"cannot print {v!r}")


def format_attr(v) -> str:
    """Text of one attribute value."""
    if v is None:
        return "none"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    return _scalar(v)


def _array_literal(arr: np.ndarray) -> str:
    if arr.ndim == 0:
        return _scalar(arr[()])
    return "[" + ", ".join(_array_literal(a) for a in arr) + "]"


def constant_bytes(arr: np.ndarray) -> np.ndarray:
    """A constant's bytes as a flat uint8 view, for hashing: no copy of a
    contiguous array (hashing a large model's weights through ``tobytes``
    copied each one, twice per print)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def constant_digest(arr: np.ndarray) -> str:
    """A short, stable digest of a constant's bytes."""
    return "sha256:" + hashlib.sha256(constant_bytes(arr)).hexdigest()[:16]


def _format_constant(v: Value, arr, full: bool, digests: dict) -> str:
    if arr is None:
        return f'dense<"{digests.get(v, "unknown")}">'
    if arr.size <= INLINE_LIMIT:
        return _array_literal(arr)
    if full:
        return 'data<"' + base64.b64encode(np.array(arr, order="C").tobytes()).decode() + '">'
    return f'dense<"{digests.get(v) or constant_digest(arr)}">'


def _digests_at_once(graph: Graph) -> dict:
    """The digests of a graph's large constants, hashed on several threads where they hold many megabytes
    (hashlib lets go of the interpreter's lock: ResNet-50's 100 MB take half the time on two cores);
    empty where hashing them one by one, as they are printed, is as quick."""
    import os

    large = [(v, a) for v, a in graph.constants.items() if a is not None and a.size > INLINE_LIMIT]
    threads = min(4, os.cpu_count() or 1)
    if threads < 2 or sum(a.nbytes for _, a in large) < (16 << 20):
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip([v for v, _ in large], pool.map(constant_digest, [a for _, a in large])))


def print_graph(graph: Graph, full_constants: bool = False, annotate=None) -> str:
    """The text of ``graph``.

    ``full_constants`` writes large constants in full (base64) so the text
    can be run; ``annotate(node)`` may return a comment for each node line.
    """
    digests = getattr(graph, "constant_digests", {})
    if not full_constants:
        digests = {**digests, **_digests_at_once(graph)}
    params = ", ".join(f"%{_name(v.name)}: {v.type}" for v in graph.inputs)
    lines = [f"dim {name} = [{lo}, {hi}]" for name, lo, hi in graph.dims()]
    lines.append(f"graph {_name(graph.name)}({params}) {{")
    for v, arr in graph.constants.items():
        lines.append(f"  %{_name(v.name)}: {v.type} = constant {_format_constant(v, arr, full_constants, digests)}")
    for node in graph.nodes:
        outs = ", ".join(f"%{_name(v.name)}: {v.type}" for v in node.outputs)
        args = ", ".join(f"%{_name(v.name)}" for v in node.inputs)
        text = f"  {outs} = {node.op}({args})"
        if node.attrs:
            text += " {" + ", ".join(f"{k} = {format_attr(v)}" for k, v in node.attrs.items()) + "}"
        if not node.outputs or node.name != node.outputs[0].name:
            text += f" @{_name(node.name)}"
        note = annotate(node) if annotate else None
        if note:
            text += f"  # {note}"
        lines.append(text)
    # An output written back into an input (a cache the model updates) reads "%new into %cache".
    returned = [f"%{_name(v.name)}" for v in graph.outputs]
    for k, i in graph.writes.items():
        returned[k] += f" into %{_name(graph.inputs[i].name)}"
    for k, (low, high, message) in graph.checks.items():  # "%pos in [0, 17) "message""
        returned[k] += f" in [{low}, {high}) {json.dumps(message)}"
    lines.append("  return " + ", ".join(returned))
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- parsing ------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<value>%(?:[A-Za-z_][A-Za-z0-9_.]*|"(?:[^"\\]|\\.)*"))
  | (?P<at>@(?:[A-Za-z_][A-Za-z0-9_./:-]*|"(?:[^"\\]|\\.)*"))
  | (?P<number>-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)(?![A-Za-z_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{},:=<>*+])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str, int]] = []
        self.dims: dict[str, Dim] = {}  # declared by "dim name = [min, max]" lines
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ParseError(f"{self.where(pos)}: unexpected character {text[pos]!r}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group(), pos))
            pos = m.end()
        self.i = 0

    def where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "", len(self.text))

    def error(self, msg: str) -> ParseError:
        kind, text, pos = self.peek()
        found = "end of input" if kind == "eof" else repr(text)
        return ParseError(f"{self.where(pos)}: {msg} (found {found})")

    def take(self, kind: str, text: str | None = None) -> str:
        k, t, _ = self.peek()
        if k != kind or (text is not None and t != text):
            raise self.error(f"expected {text or kind}")
        self.i += 1
        return t

    def accept(self, kind: str, text: str | None = None) -> str | None:
        k, t, _ = self.peek()
        if k == kind and (text is None or t == text):
            self.i += 1
            return t
        return None


def _unquote(name: str) -> str:
    return json.loads(name) if name.startswith('"') else name


def _parse_number(text: str):
    if text.lstrip("-") in ("inf", "nan") or any(c in text for c in ".eE"):
        return float(text)
    return int(text)


def _parse_type(t: _Tokens) -> TensorType:
    dt = t.take("ident")
    try:
        dtype = as_dtype(dt)
    except MinicompError:
        raise t.error(f"unknown dtype {dt!r}") from None
    t.take("punct", "[")
    dims = []
    while not t.accept("punct", "]"):
        if _starts_size(t):
            dims.append(_parse_size(t))
        else:
            text = t.take("number")
            if not text.isdigit():
                t.i -= 1
                raise t.error("a dimension must be a whole number >= 0")
            dims.append(int(text))
        if not t.accept("punct", ","):
            t.take("punct", "]")
            break
    try:
        return TensorType(tuple(dims), dtype)
    except MinicompError as exc:
        raise t.error(str(exc)) from None


def parse_size(text: str, dims: dict):
    """A size written as the IR text writes one (``784``, ``batch*seq-1``) over the dimensions ``dims``
    (name -> mc.Dim): an int or a Size; a ParseError for anything else."""
    t = _Tokens(text)
    t.dims = dict(dims)
    size = _parse_size(t)
    if t.peek()[0] != "eof":
        raise t.error("expected the end of the size")
    return size


def _starts_size(t: _Tokens) -> bool:
    """Does a symbolic size start here: a name (not a keyword) or a number times something?"""
    kind, text, _ = t.peek()
    following = t.toks[t.i + 1] if t.i + 1 < len(t.toks) else ("eof", "", 0)
    return (kind == "ident" and text not in ("true", "false", "none")) or (
        kind == "number" and following[:2] == ("punct", "*"))


def _parse_size(t: _Tokens):
    """A symbolic size: a sum of products of declared dimensions and integers (``12*batch*seq-1``)."""
    def factor():
        kind, text, _ = t.peek()
        if kind == "ident":
            if text not in t.dims:
                raise t.error(f"dimension {text} is not declared (dim {text} = [min, max] before the graph)")
            t.i += 1
            return t.dims[text]
        if kind == "number" and text.lstrip("-").isdigit():
            t.i += 1
            return int(text)
        raise t.error("expected a dimension or a whole number")

    def term():
        value = factor()
        while t.accept("punct", "*"):
            value = value * factor()
        return value

    total = term()
    while True:
        if t.accept("punct", "+"):
            total = total + term()
        elif t.peek()[0] == "number" and t.peek()[1].startswith("-"):
            total = total + term()  # "batch-1": the minus belongs to the number
        else:
            return total


MAX_NESTING = 64  # lists nested deeper than any tensor's rank


def _parse_literal(t: _Tokens, depth: int = 0):
    """A scalar, string, ``none``, bool or (nested) list."""
    kind, text, _ = t.peek()
    if depth > MAX_NESTING:
        raise t.error(f"lists nested more than {MAX_NESTING} deep")
    if t.accept("punct", "["):
        items = []
        while not t.accept("punct", "]"):
            items.append(_parse_literal(t, depth + 1))
            if not t.accept("punct", ","):
                t.take("punct", "]")
                break
        return items
    if _starts_size(t):
        return _parse_size(t)
    if kind == "number":
        t.i += 1
        return _parse_number(text)
    if kind == "string":
        t.i += 1
        return json.loads(text)
    if kind == "ident" and text in ("true", "false", "none"):
        t.i += 1
        return {"true": True, "false": False, "none": None}[text]
    raise t.error("expected a value")


def _flat_literal(lit):
    """The numbers of a (nested list) literal."""
    if isinstance(lit, list):
        for x in lit:
            yield from _flat_literal(x)
    else:
        yield lit


def _parse_constant(t: _Tokens, vtype: TensorType, vname: str):
    if t.accept("ident", "dense"):
        t.take("punct", "<")
        digest = json.loads(t.take("string"))
        t.take("punct", ">")
        return None, digest
    if t.accept("ident", "data"):
        t.take("punct", "<")
        try:
            raw = base64.b64decode(json.loads(t.take("string")), validate=True)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise t.error(f"constant %{vname}: bad base64 data ({exc})") from None
        t.take("punct", ">")
        if len(raw) != vtype.nbytes:
            raise t.error(f"constant %{vname} holds {len(raw)} bytes, but {vtype} needs {vtype.nbytes}")
        return np.frombuffer(raw, dtype=vtype.dtype.numpy).reshape(vtype.shape).copy(), None
    lit = _parse_literal(t)
    try:
        arr = np.array(lit, dtype=vtype.dtype.numpy)
    except (ValueError, TypeError, OverflowError) as exc:
        raise t.error(f"constant %{vname}: {exc}") from None
    if not vtype.dtype.is_float and not vtype.dtype.is_bool and any(
            isinstance(x, float) and not float(x).is_integer() for x in _flat_literal(lit)):
        # As '300' is refused for u8: a literal the dtype cannot hold is an error, not truncated.
        raise t.error(f"constant %{vname}: {vtype.dtype.name} cannot hold the fraction in {str(lit)[:40]}")
    if arr.shape != vtype.shape:
        raise t.error(f"constant %{vname} has shape {list(arr.shape)}, declared {vtype}")
    return arr, None


def parse_graph(text: str) -> Graph:
    """Read a graph from its text form (see :func:`print_graph`); verified."""
    t = _Tokens(text)
    while t.accept("ident", "dim"):  # dim batch = [1, 256]
        dim_name = t.take("ident")
        t.take("punct", "=")
        lo_hi = _parse_literal(t)
        if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(x, int) for x in lo_hi)):
            raise t.error(f"dim {dim_name}: expected [min, max]")
        try:
            t.dims[dim_name] = Dim(dim_name, *lo_hi)
        except MinicompError as exc:
            raise t.error(str(exc)) from None
    t.take("ident", "graph")
    kind, name, _ = t.peek()
    if kind not in ("ident", "string"):
        raise t.error("expected the graph name")
    t.i += 1
    graph = Graph(name=_unquote(name))
    graph.constant_digests = {}
    env: dict[str, Value] = {}

    def define(v: Value):
        if v.name in env:
            raise t.error(f"value %{v.name} is defined twice")
        env[v.name] = v

    def use(ref: str) -> Value:
        n = _unquote(ref[1:])
        if n not in env:
            raise t.error(f"value %{n} is used before it is defined")
        return env[n]

    t.take("punct", "(")
    while not t.accept("punct", ")"):
        vname = _unquote(t.take("value")[1:])
        t.take("punct", ":")
        v = Value(vname, _parse_type(t))
        define(v)
        graph.inputs.append(v)
        if not t.accept("punct", ","):
            t.take("punct", ")")
            break
    t.take("punct", "{")
    while not t.accept("ident", "return"):
        stmt_pos = t.peek()[2]
        outs = []
        while True:
            vname = _unquote(t.take("value")[1:])
            t.take("punct", ":")
            outs.append(Value(vname, _parse_type(t)))
            if not t.accept("punct", ","):
                break
        t.take("punct", "=")
        op = t.take("ident")
        if op == "constant":
            if len(outs) != 1:
                raise t.error("a constant defines exactly one value")
            arr, digest = _parse_constant(t, outs[0].type, outs[0].name)
            define(outs[0])
            graph.constants[outs[0]] = arr
            if digest:
                graph.constant_digests[outs[0]] = digest
            continue
        t.take("punct", "(")
        args = []
        while not t.accept("punct", ")"):
            args.append(use(t.take("value")))
            if not t.accept("punct", ","):
                t.take("punct", ")")
                break
        attrs = {}
        if t.accept("punct", "{"):
            while not t.accept("punct", "}"):
                key = t.take("ident")
                t.take("punct", "=")
                attrs[key] = _parse_literal(t)
                if not t.accept("punct", ","):
                    t.take("punct", "}")
                    break
        at = t.accept("at")
        node_name = _unquote(at[1:]) if at else outs[0].name
        try:
            opdef = get_op(op, node_name)
            types = [a.type for a in args]
            frozen = opdef.make_attrs(types, attrs, node_name)
            inferred = opdef.infer_types(types, frozen, node_name)
        except MinicompError as exc:
            raise ParseError(f"{t.where(stmt_pos)}: {exc}") from None
        if inferred != [v.type for v in outs]:
            raise ParseError(
                f"{t.where(stmt_pos)}: node '{node_name}' (op {op}) declares "
                f"{', '.join(str(v.type) for v in outs)} but its inputs give "
                f"{', '.join(str(x) for x in inferred)}"
            )
        for v in outs:
            define(v)
        graph.nodes.append(Node(op, tuple(args), frozen, tuple(outs), node_name))
    kind, _, _ = t.peek()
    while kind == "value":
        graph.outputs.append(use(t.take("value")))
        if t.accept("ident", "into"):
            written = use(t.take("value"))
            if written not in graph.inputs:
                raise t.error(f"%{written.name} is not a graph input: only inputs can be written")
            graph.writes[len(graph.outputs) - 1] = graph.inputs.index(written)
        elif t.accept("ident", "in"):
            t.take("punct", "[")
            low = _parse_number(t.take("number"))
            t.take("punct", ",")
            high = _parse_number(t.take("number"))
            t.take("punct", ")")
            graph.checks[len(graph.outputs) - 1] = (low, high, json.loads(t.take("string")))
        if not t.accept("punct", ","):
            break
        kind, _, _ = t.peek()
    t.take("punct", "}")
    if t.peek()[0] != "eof":
        raise t.error("expected the end of the graph")
    return graph.verify()
