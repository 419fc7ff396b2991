"""Scalar and index expressions, shared by compute definitions and loop IR.

Expressions are small immutable trees. Every node knows its dtype. Index
variables (:class:`Var`) are ``int64``. A :class:`Load` reads one element of a
tensor-like object (anything with ``name``, ``shape`` and ``dtype``: a compute
stage, a placeholder, a loop-IR buffer). A :class:`Reduce` combines a body over
reduction axes; it only appears at the top of a compute stage.

Nodes compare by identity; :func:`simplify` folds constants and cleans up
index arithmetic (``x*1``, ``x+0``, and ``//``/``%`` of affine terms whose
ranges are known).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from minicomp.errors import MinicompError
from minicomp.ir import dtypes, index_symbolic
from minicomp.ir.dims import Size, SymbolicSizeError, upper
from minicomp.ir.dtypes import DType

# ``tdiv``: truncating integer division for divisors other than 0 and -1 (the
# hardware's divide); legalization (passes/legalize.py) turns ``div`` into it.
# ``and``/``or``/``xor`` are logical on bool and bitwise on integers; ``shl``
# and ``shr`` shift integers (``shr`` is arithmetic for signed types).
ARITH_OPS = ("add", "sub", "mul", "div", "tdiv", "floordiv", "mod", "max", "min", "pow", "and", "or", "xor",
             "shl", "shr")
CMP_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
CALL_FNS = ("exp", "log", "sqrt", "tanh", "erf", "neg", "abs", "not", "floor")
# Functions of one float that code generators call by their C math-library
# name (``sin`` for double, ``sinf`` for float): the built-in sin and cos, and
# any a user adds with :func:`register_call`.
EXTERN_CALLS: dict[str, str] = {"sin": "sin", "cos": "cos"}
EXTERN_NUMPY: dict = {"sin": np.sin, "cos": np.cos}  # how the compute evaluator computes them


def register_call(fn: str, c_name: str | None = None, numpy_fn=None) -> None:
    """Let expressions call ``fn``, generated as the C math function ``c_name``
    (default ``fn``; the float version adds ``f``, as C's ``sinf``) and
    evaluated by ``numpy_fn`` where loop code is checked in numpy."""
    if fn in CALL_FNS:
        raise MinicompError(f"{fn} is a built-in function")
    EXTERN_CALLS[fn] = c_name or fn
    EXTERN_NUMPY[fn] = numpy_fn if numpy_fn is not None else getattr(np, c_name or fn)
REDUCE_OPS = ("sum", "max", "min", "prod")

_counter = itertools.count()


class Expr:
    """Base class of expression nodes; gives them Python operators."""

    dtype: DType

    def _wrap(self, other) -> Expr:
        return as_expr(other, self.dtype)

    def __add__(self, o):
        return binop("add", self, self._wrap(o))

    def __radd__(self, o):
        return binop("add", self._wrap(o), self)

    def __sub__(self, o):
        return binop("sub", self, self._wrap(o))

    def __rsub__(self, o):
        return binop("sub", self._wrap(o), self)

    def __mul__(self, o):
        return binop("mul", self, self._wrap(o))

    def __rmul__(self, o):
        return binop("mul", self._wrap(o), self)

    def __truediv__(self, o):
        return binop("div", self, self._wrap(o))

    def __rtruediv__(self, o):
        return binop("div", self._wrap(o), self)

    def __floordiv__(self, o):
        return binop("floordiv", self, self._wrap(o))

    def __mod__(self, o):
        return binop("mod", self, self._wrap(o))

    def __neg__(self):
        return call("neg", self)

    def __repr__(self) -> str:
        return format_expr(self)


@dataclass(eq=False, repr=False)
class Const(Expr):
    value: int | float | bool
    dtype: DType


@dataclass(eq=False, repr=False)
class Var(Expr):
    """An index variable (loop or reduction axis)."""

    name: str
    dtype: DType = dtypes.int64


@dataclass(eq=False, repr=False)
class DimVar(Var):
    """A symbolic dimension in an expression: the size a call gives it, from ``lo`` to ``hi``
    (see :mod:`minicomp.ir.dims`). One object per dimension (:func:`dim_var`), so it compares
    by identity like any variable; code generators read its value from the kernel's arguments."""

    lo: int = 0
    hi: int = 0


_dim_vars: dict = {}


def dim_var(name: str, lo: int, hi: int) -> DimVar:
    """The variable of dimension ``name`` declared ``lo..hi`` (the same object every time)."""
    key = (name, lo, hi)
    if key not in _dim_vars:
        _dim_vars[key] = DimVar(name, dtypes.int64, lo, hi)
    return _dim_vars[key]


def size_expr(size) -> Expr:
    """A size (an int, or a :class:`~minicomp.ir.dims.Size` over dimensions) as an int64 expression."""
    if isinstance(size, Size):
        total: Expr | None = None
        for key, c in sorted(size.terms.items()):
            term: Expr = Const(c, dtypes.int64)
            for name, lo, hi in key:
                term = dim_var(name, lo, hi) if _is_const(term, 1) else BinOp("mul", term, dim_var(name, lo, hi))
            total = term if total is None else BinOp("add", total, term)
        return total
    return Const(int(size), dtypes.int64)


def with_sizes(e: Expr, sizes: dict) -> Expr:
    """``e`` with every dimension variable replaced by its size in ``sizes`` (name -> int), simplified."""
    return simplify(substitute(e, {v: Const(sizes[v.name], dtypes.int64) for v in walk(e) if isinstance(v, DimVar)}))


def size_div(size, k: int):
    """``size // k`` for a positive int ``k``: an int, an exact :class:`~minicomp.ir.dims.Size`, or an
    int64 expression (a loop over the whole blocks of a symbolic extent)."""
    if isinstance(size, Size):
        try:
            return size // k
        except SymbolicSizeError:
            return simplify(BinOp("floordiv", size_expr(size), Const(k, dtypes.int64)))
    if isinstance(size, Expr):
        return simplify(BinOp("floordiv", size, Const(k, dtypes.int64)))
    return size // k


def size_mod(size, k: int):
    """``size % k`` for a positive int ``k``: an int, or an int64 expression (what a symbolic extent
    leaves after its whole blocks)."""
    if isinstance(size, Size):
        try:
            return size % k
        except SymbolicSizeError:
            return simplify(BinOp("mod", size_expr(size), Const(k, dtypes.int64)))
    if isinstance(size, Expr):
        return simplify(BinOp("mod", size, Const(k, dtypes.int64)))
    return size % k


@dataclass(eq=False, repr=False)
class BinOp(Expr):
    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> DType:
        return dtypes.bool_ if self.op in CMP_OPS else self.a.dtype


@dataclass(eq=False, repr=False)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]

    @property
    def dtype(self) -> DType:
        return self.args[0].dtype


@dataclass(eq=False, repr=False)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    @property
    def dtype(self) -> DType:
        return self.a.dtype


@dataclass(eq=False, repr=False)
class Cast(Expr):
    dtype: DType
    x: Expr


@dataclass(eq=False, repr=False)
class InRangeCast(Cast):
    """A float-to-int conversion defined only for values inside the integer
    range (C's cast, LLVM's ``fptosi``): legalization makes it, behind the
    selects that saturate a :class:`Cast` on targets without a saturating
    instruction (``passes/legalize.py``)."""


@dataclass(eq=False, repr=False)
class Bitcast(Expr):
    """The bits of ``x`` read as another type of the same size (float32 <-> int32,
    int8 <-> uint8, bool -> uint8...): no conversion of the value."""

    dtype: DType
    x: Expr


@dataclass(eq=False, repr=False)
class Load(Expr):
    tensor: object
    indices: tuple[Expr, ...]

    @property
    def dtype(self) -> DType:
        return self.tensor.dtype


@dataclass(eq=False, repr=False)
class Reduce(Expr):
    """``op`` over ``axes`` (pairs of Var and extent) of ``body``."""

    op: str
    body: Expr
    axes: tuple[tuple[Var, int], ...]

    @property
    def dtype(self) -> DType:
        return self.body.dtype


# -- constructors ------------------------------------------------------------

def as_expr(x, dtype: DType | None = None) -> Expr:
    """Wrap a Python or numpy scalar as a Const (of ``dtype`` when given)."""
    if isinstance(x, Expr):
        return x
    if isinstance(x, Size):
        return size_expr(x)
    if isinstance(x, (bool, np.bool_)):
        return Const(bool(x), dtype or dtypes.bool_)
    if isinstance(x, (int, np.integer)):
        d = dtype or dtypes.int64
        return Const(float(x) if d.is_float else d.wrap(int(x)), d)
    if isinstance(x, (float, np.floating)):
        d = dtype or dtypes.float32
        return Const(float(x) if d.is_float else int(x), d)
    raise MinicompError(f"cannot use {x!r} in an expression")


def const(value, dtype) -> Const:
    """A constant of the given dtype."""
    d = dtypes.as_dtype(dtype)
    if d.is_bool:
        return Const(bool(value), d)
    return Const(float(value) if d.is_float else d.wrap(int(value)), d)


def binop(op: str, a, b) -> Expr:
    """Build ``a op b``; the operands must have the same dtype."""
    if not isinstance(a, Expr):
        a = as_expr(a, b.dtype if isinstance(b, Expr) else None)
    if not isinstance(b, Expr):
        b = as_expr(b, a.dtype)
    if a.dtype != b.dtype:
        raise MinicompError(f"expression {op} mixes dtypes {a.dtype} and {b.dtype}")
    return BinOp(op, a, b)


def call(fn: str, *args) -> Expr:
    """Build an intrinsic call such as ``exp(x)``."""
    if fn not in CALL_FNS and fn not in EXTERN_CALLS:
        raise MinicompError(f"unknown function {fn!r}: register it with minicomp.ir.expr.register_call "
                            f"(or mc.register_unary_function for a whole op)")
    return Call(fn, tuple(args))


def select(cond, a, b) -> Expr:
    """``a`` where ``cond`` holds, else ``b``."""
    if not isinstance(a, Expr):
        a = as_expr(a, b.dtype if isinstance(b, Expr) else None)
    if not isinstance(b, Expr):
        b = as_expr(b, a.dtype)
    return Select(cond, a, b)


def cast(dtype, x: Expr) -> Expr:
    d = dtypes.as_dtype(dtype)
    return x if x.dtype == d else Cast(d, x)


def maximum(a, b):
    return binop("max", a, b)


def minimum(a, b):
    return binop("min", a, b)


def lt(a, b):
    return binop("lt", a, b)


def le(a, b):
    return binop("le", a, b)


def gt(a, b):
    return binop("gt", a, b)


def ge(a, b):
    return binop("ge", a, b)


def eq(a, b):
    return binop("eq", a, b)


def logical_and(a, b):
    return binop("and", a, b)


def flat_index(indices, shape) -> Expr:
    """The row-major element offset of ``indices`` in a tensor of ``shape``."""
    flat: Expr = const(0, "int64")
    stride = 1
    for i, d in reversed(list(zip(indices, shape))):
        flat = i * stride + flat if stride != 1 else i + flat
        stride *= d
    return flat


def fresh_var(prefix: str = "i") -> Var:
    """A new index variable with a readable, unique name."""
    return Var(f"{prefix}{next(_counter)}")


# -- traversal -----------------------------------------------------------------

def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, BinOp):
        return (e.a, e.b)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, (Cast, Bitcast)):
        return (e.x,)
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, Reduce):
        return (e.body,)
    return ()


def rebuild(e: Expr, kids: tuple[Expr, ...]) -> Expr:
    """A copy of ``e`` with new children (returns ``e`` if they are the same)."""
    if all(a is b for a, b in zip(kids, children(e))):
        return e
    if isinstance(e, BinOp):
        return BinOp(e.op, *kids)
    if isinstance(e, Call):
        return Call(e.fn, tuple(kids))
    if isinstance(e, Select):
        return Select(*kids)
    if isinstance(e, (Cast, Bitcast)):
        return type(e)(e.dtype, kids[0])
    if isinstance(e, Load):
        return Load(e.tensor, tuple(kids))
    if isinstance(e, Reduce):
        return Reduce(e.op, kids[0], e.axes)
    return e


def walk(e: Expr):
    """Yield every node of ``e`` (pre-order)."""
    stack = [e]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def substitute(e: Expr, mapping: dict) -> Expr:
    """Replace Vars (keys of ``mapping``) by expressions, bottom-up."""
    memo: dict[int, Expr] = {}

    def go(n):
        key = id(n)
        if key in memo:
            return memo[key]
        if isinstance(n, Var):
            out = mapping.get(n, n)
        else:
            out = rebuild(n, tuple(go(c) for c in children(n)))
        memo[key] = out
        return out

    return go(e)


def transform_loads(e: Expr, fn) -> Expr:
    """Rebuild ``e`` with each Load replaced by ``fn(load)`` (or kept if None)."""
    memo: dict[int, Expr] = {}

    def go(n):
        key = id(n)
        if key in memo:
            return memo[key]
        new = rebuild(n, tuple(go(c) for c in children(n)))
        if isinstance(new, Load):
            replaced = fn(new)
            if replaced is not None:
                new = replaced
        memo[key] = new
        return new

    return go(e)


def loaded_tensors(e: Expr) -> list:
    """Tensors read by ``e``, in first-use order, without repeats."""
    out = []
    for n in walk(e):
        if isinstance(n, Load) and not any(n.tensor is t for t in out):
            out.append(n.tensor)
    return out


def free_vars(e: Expr) -> list[Var]:
    out: list[Var] = []
    for n in walk(e):
        if isinstance(n, Var) and not any(n is v for v in out):
            out.append(n)
    return out


# -- printing ------------------------------------------------------------------

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
          "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
          "xor": "^", "shl": "<<", "shr": ">>"}


def format_const(c: Const) -> str:
    if c.dtype.is_bool:
        return "true" if c.value else "false"
    if c.dtype.is_float:
        v = float(c.value)
        text = repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
        return text if c.dtype == dtypes.float32 else f"{text}:{c.dtype.short}"
    return str(c.value) if c.dtype == dtypes.int64 else f"{c.value}:{c.dtype.short}"


def format_expr(e: Expr) -> str:
    """C-like text of an expression, for loop-IR dumps and error messages."""
    if isinstance(e, Const):
        return format_const(e)
    if isinstance(e, Var):
        return e.name
    if isinstance(e, BinOp):
        if e.op in ("and", "or"):  # logical on bool, bitwise on integers, as in C
            sym = {"and": "&", "or": "|"}[e.op] * (1 + e.dtype.is_bool)
            return f"({format_expr(e.a)} {sym} {format_expr(e.b)})"
        if e.op in _INFIX:
            return f"({format_expr(e.a)} {_INFIX[e.op]} {format_expr(e.b)})"
        return f"{e.op}({format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(format_expr(a) for a in e.args)})"
    if isinstance(e, Select):
        return f"select({format_expr(e.cond)}, {format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, InRangeCast):
        return f"{e.dtype.short}_in_range({format_expr(e.x)})"
    if isinstance(e, Cast):
        return f"{e.dtype.short}({format_expr(e.x)})"
    if isinstance(e, Bitcast):
        return f"bits_as_{e.dtype.short}({format_expr(e.x)})"
    if isinstance(e, Load):
        return f"{e.tensor.name}[{', '.join(format_expr(i) for i in e.indices)}]"
    if isinstance(e, Reduce):
        axes = ", ".join(f"{v.name}<{n}" for v, n in e.axes)
        return f"{e.op}({format_expr(e.body)}; {axes})"
    return f"<{type(e).__name__}>"


# -- simplification ------------------------------------------------------------

def _fold_scalar(op: str, a, b, dtype: DType):
    """Evaluate ``a op b`` with the semantics of generated code."""
    if op in CMP_OPS:
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b,
                "eq": a == b, "ne": a != b}[op]
    if dtype.is_float:
        npa, npb = dtype.numpy.type(a), dtype.numpy.type(b)
        with np.errstate(all="ignore"):
            r = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                 "max": np.maximum, "min": np.minimum, "pow": np.power,
                 "floordiv": np.floor_divide, "mod": np.fmod}[op](npa, npb)
        return float(r)
    if op in ("and", "or", "xor"):
        r = {"and": a & b, "or": a | b, "xor": a ^ b}[op]
        return bool(r) if dtype.is_bool else r
    if op in ("shl", "shr"):
        if not 0 <= b < dtype.bits:
            return None  # legalization's guard decides
        return a << b if op == "shl" else a >> b  # Python's >> on the wrapped value: arithmetic or logical
    if op in ("div", "tdiv", "floordiv", "mod") and b == 0:
        return None  # leave it to the code generator's zero guard
    if op in ("div", "tdiv"):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    fns = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "floordiv": lambda: a // b,
           "mod": lambda: a % b, "max": lambda: max(a, b), "min": lambda: min(a, b)}
    return fns[op]() if op in fns else None


def bounds(e: Expr, ranges: dict) -> tuple[int, int] | None:
    """Inclusive integer bounds of an index expression, or None if unknown."""
    if isinstance(e, Const) and e.dtype.is_int:
        return (e.value, e.value)
    if isinstance(e, DimVar):
        return (e.lo, e.hi)
    if isinstance(e, Var):
        ext = ranges.get(e)
        return (0, upper(ext) - 1) if ext is not None else None
    if isinstance(e, BinOp) and e.dtype.is_int:
        ba, bb = bounds(e.a, ranges), bounds(e.b, ranges)
        if ba is None or bb is None:
            return None
        if e.op == "add":
            return (ba[0] + bb[0], ba[1] + bb[1])
        if e.op == "sub":
            return (ba[0] - bb[1], ba[1] - bb[0])
        if e.op == "mul":
            prods = [x * y for x in ba for y in bb]
            return (min(prods), max(prods))
        if e.op == "max":
            return (max(ba[0], bb[0]), max(ba[1], bb[1]))
        if e.op == "min":
            return (min(ba[0], bb[0]), min(ba[1], bb[1]))
        if e.op in ("floordiv", "mod") and bb[0] == bb[1] and bb[0] > 0 and ba[0] >= 0:
            d = bb[0]
            if ba[0] == ba[1]:  # both known: the value itself
                v = ba[0] // d if e.op == "floordiv" else ba[0] % d
                return (v, v)
            if e.op == "floordiv":
                return (ba[0] // d, ba[1] // d)
            return (0, d - 1) if ba[1] >= d else ba
    return None


def _affine(e: Expr):
    """``e`` as ({atom: coeff}, const) if it is affine in its atoms, else None."""
    return affine_terms(e, _int_value, _recombine_divmod)


def _int_value(e: Expr):
    return e.value if isinstance(e, Const) and e.dtype.is_int else None


def affine_terms(e: Expr, constant, merge=None):
    """``e`` as ({atom: coefficient}, constant) if it is affine in its atoms, else None.
    ``constant(x)``: the value of a subexpression that is a constant (an int; or, for symbolic sizes,
    a polynomial over the dimensions), else None; ``merge`` rewrites the terms of a sum."""
    value = constant(e)
    if value is not None:
        return {}, value
    if isinstance(e, BinOp) and e.dtype.is_int and e.op in ("add", "sub", "mul"):
        la, lb = affine_terms(e.a, constant, merge), affine_terms(e.b, constant, merge)
        if la is None or lb is None:
            return None
        if e.op in ("add", "sub"):
            sign = 1 if e.op == "add" else -1
            terms = dict(la[0])
            for t, c in lb[0].items():
                terms[t] = terms.get(t, 0) + sign * c
            terms = {t: c for t, c in terms.items() if not _is_zero(c)}
            return (merge(terms) if merge else terms), la[1] + sign * lb[1]
        if not la[0]:
            la, lb = lb, la
        if lb[0]:
            return None  # product of two non-constants is not affine
        k = lb[1]
        return {t: c * k for t, c in la[0].items() if not _is_zero(c * k)}, la[1] * k
    if e.dtype.is_int:
        return {e: 1}, 0
    return None


def _is_zero(c) -> bool:
    """A coefficient that is 0 (an int; a polynomial over dimensions is never 0: it would be an int)."""
    return not isinstance(c, Size) and c == 0


def _recombine_divmod(terms: dict) -> dict:
    """``(x // d) * d*k + (x % d) * k`` is ``x * k``: merge such pairs of atoms
    (they appear when one loop runs over two axes of a row-major layout)."""
    divs = [t for t in terms if isinstance(t, BinOp) and t.op == "floordiv" and isinstance(t.b, Const)]
    for q in divs:
        if q not in terms:
            continue
        d = q.b.value
        for r in list(terms):
            if (isinstance(r, BinOp) and r.op == "mod" and _same(r.a, q.a) and isinstance(r.b, Const)
                    and r.b.value == d and terms[q] == terms[r] * d):
                k = terms.pop(r)
                del terms[q]
                terms[q.a] = terms.get(q.a, 0) + k
                break
    return {t: c for t, c in terms.items() if c}


def _same(a: Expr, b: Expr) -> bool:
    """The same expression: one object, or two that print alike (a rewrite
    may rebuild the two halves of an ``x // d``, ``x % d`` pair separately)."""
    return a is b or format_expr(a) == format_expr(b)


def _from_affine(terms: dict, c: int, dtype: DType) -> Expr:
    out: Expr | None = None
    for t, k in terms.items():
        term = t if k == 1 else BinOp("mul", t, Const(k, dtype))
        out = term if out is None else BinOp("add", out, term)
    if out is None:
        return Const(c, dtype)
    return BinOp("add", out, Const(c, dtype)) if c else out


def _divmod_by_common_factor(e: BinOp, terms: dict, c: int, ranges: dict) -> Expr | None:
    """``(g*A + s) // (g*k) -> A // k`` and ``% (g*k) -> (A % k)*g + s`` when
    ``0 <= s < g`` and ``A >= 0``: the index of an axis that a reshape split
    and a broadcast repeated (grouped-query attention's K/V heads,
    ``(h*16384 + r*128 + i) // 32768`` is ``h // 2``)."""
    d = e.b.value
    for g in sorted({math.gcd(k, d) for k in terms.values()} - {1, d}, reverse=True):
        big = {t: k // g for t, k in terms.items() if k % g == 0}
        small = _from_affine({t: k for t, k in terms.items() if k % g}, c % g, e.dtype)
        quotient = _from_affine(big, c // g, e.dtype)
        bs, bq = bounds(small, ranges), bounds(quotient, ranges)
        if not big or bs is None or bq is None or bs[0] < 0 or bs[1] >= g or bq[0] < 0:
            continue
        inner = BinOp(e.op, quotient, Const(d // g, e.dtype))
        inner = _simplify_divmod(inner, ranges) or inner
        if e.op == "floordiv":
            return inner
        return BinOp("add", BinOp("mul", inner, Const(g, e.dtype)), small)
    return None


def _simplify_divmod(e: BinOp, ranges: dict) -> Expr | None:
    """``(d*q + r) // d -> q`` and ``% d -> r`` when ``0 <= r < d``; when
    ``r`` may reach ``d``, ``-> q + r // d`` and ``-> r % d`` (both sides
    non-negative: the index of a reshaped axis, ``(i*768 + k) // 64``)."""
    if not (isinstance(e.b, Const) and e.b.value > 0):
        return None
    d = e.b.value
    aff = _affine(e.a)
    if aff is None:
        return None
    terms, c = aff
    whole = {t: k // d for t, k in terms.items() if k % d == 0}
    rest = {t: k for t, k in terms.items() if k % d != 0}
    rest_expr = _from_affine(rest, c % d, e.dtype)
    b = bounds(rest_expr, ranges)
    if b is None or b[0] < 0:
        return None
    if b[1] >= d:
        # Only worth it when a whole part comes out; floor and truncation
        # agree because everything is non-negative.
        total = bounds(e.a, ranges)
        if not whole or total is None or total[0] < 0:
            return _divmod_by_common_factor(e, terms, c, ranges)
        inner = BinOp(e.op, rest_expr, e.b)
        inner = _simplify_divmod(inner, ranges) or inner
        if e.op == "mod":
            return inner
        return BinOp("add", _from_affine(whole, c // d, e.dtype), inner)
    if e.op == "floordiv":
        return _from_affine(whole, c // d, e.dtype)
    return rest_expr


def simplify(e: Expr, ranges: dict | None = None) -> Expr:
    """Fold constants and simplify index arithmetic.

    ``ranges`` maps Vars to their extents; with it, ``//`` and ``%`` of affine
    expressions and redundant ``min``/``max`` clamps are removed.
    """
    ranges = ranges or {}
    memo: dict[int, Expr] = {}

    def go(n: Expr) -> Expr:
        key = id(n)
        if key not in memo:
            memo[key] = _simplify_node(rebuild(n, tuple(go(c) for c in children(n))), ranges)
        return memo[key]

    if ranges:
        return go(e)

    # Without ranges, a node this function returned once is returned as it is: codegen simplifies
    # an index again after putting a lane or a tile offset into it, and all but that spine is done.
    def go_marked(n: Expr) -> Expr:
        key = id(n)
        if key not in memo:
            if getattr(n, "_simplified", False):
                memo[key] = n
            else:
                out = _simplify_node(rebuild(n, tuple(go_marked(c) for c in children(n))), ranges)
                out._simplified = True
                memo[key] = out
        return memo[key]

    return go_marked(e)


def _is_const(e, value=None) -> bool:
    return isinstance(e, Const) and (value is None or e.value == value)


def _simplify_node(e: Expr, ranges: dict) -> Expr:
    if isinstance(e, BinOp):
        a, b = e.a, e.b
        if _is_const(a) and _is_const(b):
            r = _fold_scalar(e.op, a.value, b.value, a.dtype)
            if r is not None:
                return const(r, e.dtype)
        op = e.op
        if op == "add":
            if _is_const(b, 0):
                return a
            if _is_const(a, 0):
                return b
        if op == "sub" and _is_const(b, 0):
            return a
        if op == "mul":
            if _is_const(b, 1):
                return a
            if _is_const(a, 1):
                return b
            if e.dtype.is_int and (_is_const(a, 0) or _is_const(b, 0)):
                return Const(0, e.dtype)
        if op in ("div", "tdiv", "floordiv") and _is_const(b, 1):
            return a
        if op == "mod" and _is_const(b, 1) and e.dtype.is_int:
            return Const(0, e.dtype)
        if e.dtype.is_int and op in ("floordiv", "mod"):
            r = _simplify_divmod(e, ranges)
            if r is None and index_symbolic.mentions_dim(e):  # strides or divisor over dimensions
                r = index_symbolic.simplify_divmod(e, ranges)
            if r is not None:
                return simplify(r, ranges) if r is not e else r
        if e.dtype.is_int and op in ("add", "sub", "mul"):
            aff = _affine(e)
            if aff is not None:
                terms, c = aff
                # Merge like terms only when it actually shrinks the expression.
                flat = _from_affine(terms, c, e.dtype)
                if _size(flat) < _size(e):
                    return flat
        if e.dtype.is_int and op in ("max", "min"):
            ba, bb = bounds(a, ranges), bounds(b, ranges)
            if ba and bb:
                if op == "max":
                    if ba[0] >= bb[1]:
                        return a
                    if bb[0] >= ba[1]:
                        return b
                else:
                    if ba[1] <= bb[0]:
                        return a
                    if bb[1] <= ba[0]:
                        return b
        if op in CMP_OPS and e.a.dtype.is_int:
            ba, bb = bounds(a, ranges), bounds(b, ranges)
            if ba and bb:
                lo, hi = ba[0] - bb[1], ba[1] - bb[0]  # range of a - b
                decided = {"lt": (hi < 0, lo >= 0), "le": (hi <= 0, lo > 0),
                           "gt": (lo > 0, hi <= 0), "ge": (lo >= 0, hi < 0)}.get(op)
                if decided and decided[0]:
                    return Const(True, dtypes.bool_)
                if decided and decided[1]:
                    return Const(False, dtypes.bool_)
        if op == "and":
            if _is_const(a):
                return b if a.value else a
            if _is_const(b):
                return a if b.value else b
        return e
    if isinstance(e, Select) and _is_const(e.cond):
        return e.a if e.cond.value else e.b
    if isinstance(e, Cast) and _is_const(e.x):
        v = e.x.value
        if e.dtype.is_bool:
            return Const(bool(v), e.dtype)
        if e.dtype.is_int and isinstance(v, float):
            if not math.isfinite(v):
                return e
            v = int(v)
        return const(v, e.dtype)
    if isinstance(e, Cast) and e.dtype == e.x.dtype:
        return e.x
    return e


def _size(e: Expr) -> int:
    """The number of nodes of ``e`` (kept on each node: the simplifier asks it of every sum and
    product it rebuilds, bottom up, so each node is counted once)."""
    n = getattr(e, "_node_count", None)
    if n is None:
        n = 1 + sum(_size(c) for c in children(e))
        e._node_count = n
    return n
