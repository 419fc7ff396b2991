"""Target semantics that every code generator shares, made explicit on loop IR.

An operation of the loop IR means the same on every target. Where hardware
disagrees, legalization rewrites it into operations that every emitter maps
directly onto an instruction:

- integer ``div`` truncates and never traps: ``x / 0 == 0`` and
  ``x / -1 == -x`` (wrapping). It becomes ``tdiv`` — the hardware's
  truncating division, defined only for divisors other than 0 and -1 — behind
  selects that handle those two (unsigned division only needs the 0 guard).
- shifts (``shl``, ``shr``) by an amount outside [0, bits) give 0, or for a
  signed ``shr`` the sign (0 or -1), as numpy does; the hardware's shift is
  defined only inside that range, so a select guards it.

Two rules a target may spell with an instruction of its own; where it has
none, legalization writes them out (:data:`NUMERIC_RULES`; each backend names
the rules it spells in ``Backend.numerics``, and ``minicomp targets`` prints
the table):

- ``nan_extremum``: float ``max``/``min`` are numpy's: NaN if either operand
  is NaN, else the larger (smaller); on a tie (+0 and -0) the second operand,
  but for float16 the first, as numpy's float16 loops answer
  (``ir/numerics.py``). Written out: ``select(a > b || a != a, a, b)``;
  integer ``max``/``min`` become ``select(a > b, a, b)``;
- ``saturating_cast``: float-to-int casts saturate, and NaN becomes 0.
  Written out: selects around an :class:`~minicomp.ir.expr.InRangeCast`, the
  plain conversion (C's cast), which is then only reached in range.

What stays, and every emitter must provide as it is:

- float16 and bfloat16 values are computed in float32 and rounded to 16 bits
  (to nearest even) at every store and every cast to them; lowering rounds
  each op's result (``ir/numerics.round16``), so a value kept in a register inside a
  fused kernel is the value numpy would have stored. Where the rounding
  happens is already explicit in the loop IR (a cast to the 16-bit type, a
  store into a 16-bit buffer); what is left to an emitter is how its
  language converts float to the 16 bits and back, a spelling of the type
  like an integer's width, not a rule to write out (``c_like.CRenderer``:
  ``to_narrow``/``from_narrow``; LLVM's ``fptrunc`` to ``half``);
- a float operation is never contracted into an FMA, except the product an
  accumulation adds (``acc = acc + a*b``: ``ir/numerics.accumulated_product``). An
  expression computed in several places of a kernel then gives the same bits
  in each (``fma(x, x, -m)`` is not ``round(x*x) - m``).

The ``legalize`` pass runs last in every pipeline of a backend that runs
kernels (``compile()`` adds it, with ``lower`` and ``plan``, when a
pipeline of your own stops early), so an emitter never sees an integer
``div``; ``--print-after legalize`` shows what it wrote out.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from minicomp.ir import expr as ex
from minicomp.ir.loops import Kernel, map_exprs
from minicomp.ir.numerics import extremum_keeps_first_on_tie
from minicomp.passes.manager import register_pass

# The rules a target may spell natively (Backend.numerics names them, with how); legalization writes
# out the others for it.
NUMERIC_RULES = {
    "nan_extremum": "float max/min propagate NaN and keep numpy's operand on a tie",
    "saturating_cast": "float-to-int casts saturate, and NaN becomes 0",
}


def legalize_expr(e: ex.Expr, native=frozenset(NUMERIC_RULES)) -> ex.Expr:
    """``e`` with every integer ``div`` guarded and made a ``tdiv``, and the
    numeric rules not in ``native`` written out (see the module docs)."""
    memo: dict[int, ex.Expr] = {}

    def go(n: ex.Expr) -> ex.Expr:
        key = id(n)
        if key in memo:
            return memo[key]
        out = ex.rebuild(n, tuple(go(c) for c in ex.children(n)))
        if isinstance(out, ex.BinOp) and out.op == "div" and out.dtype.is_int:
            out = _safe_int_div(out.a, out.b)
        elif isinstance(out, ex.BinOp) and out.op in ("shl", "shr") and not _shift_in_range(out.b):
            out = _safe_shift(out)
        elif isinstance(out, ex.BinOp) and out.op in ("max", "min") and "nan_extremum" not in native:
            out = _extremum_as_select(out)
        elif (type(out) is ex.Cast and out.x.dtype.is_float and out.dtype.is_int
              and "saturating_cast" not in native):
            out = _saturating_cast(out)
        memo[key] = out
        return out

    return go(e)


def _safe_int_div(a: ex.Expr, b: ex.Expr) -> ex.Expr:
    if isinstance(b, ex.Const) and b.value not in (0, -1):
        return ex.BinOp("tdiv", a, b)
    dt = a.dtype
    if dt.is_unsigned:
        zero = ex.const(0, dt)
        is_zero = ex.eq(b, zero)
        return ex.select(is_zero, zero, ex.BinOp("tdiv", a, ex.select(is_zero, ex.const(1, dt), b)))
    zero, minus_one = ex.const(0, dt), ex.const(-1, dt)
    is_zero, is_minus_one = ex.eq(b, zero), ex.eq(b, minus_one)
    safe = ex.select(ex.BinOp("or", is_zero, is_minus_one), ex.const(1, dt), b)
    return ex.select(is_zero, zero, ex.select(is_minus_one, ex.BinOp("sub", zero, a), ex.BinOp("tdiv", a, safe)))


def _shift_in_range(amount: ex.Expr) -> bool:
    return isinstance(amount, ex.Const) and 0 <= amount.value < amount.dtype.bits


def _safe_shift(e: ex.BinOp) -> ex.Expr:
    dt = e.dtype
    zero = ex.const(0, dt)
    outside = ex.ge(e.b, ex.const(dt.bits, dt))
    if not dt.is_unsigned:
        outside = ex.BinOp("or", outside, ex.lt(e.b, zero))
    fill = zero
    if e.op == "shr" and not dt.is_unsigned:
        fill = ex.select(ex.lt(e.a, zero), ex.const(-1, dt), zero)
    return ex.select(outside, fill, ex.BinOp(e.op, e.a, ex.select(outside, zero, e.b)))


def _extremum_as_select(e: ex.BinOp) -> ex.Expr:
    """``max(a, b)`` as ``select(a > b || a != a, a, b)`` (``min``: ``<``): NaN in ``a`` keeps ``a``, NaN in
    ``b`` fails the compare and keeps ``b``; float16 keeps ``a`` on a tie (``>=``)."""
    a, b = e.a, e.b
    op = ("gt" if e.op == "max" else "lt") if not extremum_keeps_first_on_tie(e.dtype) else \
        ("ge" if e.op == "max" else "le")
    wins = ex.BinOp(op, a, b)
    if e.dtype.is_float:
        wins = ex.BinOp("or", wins, ex.BinOp("ne", a, a))
    return ex.Select(wins, a, b)


def _saturating_cast(e: ex.Cast) -> ex.Expr:
    """A float-to-int cast as selects around the plain conversion: NaN gives 0, values at or beyond the
    integer range give its ends. The ends are compared in the float type, where the top one rounds up
    (2**31 - 1 is 2.0**31 in float32), so every value that reaches the conversion fits."""
    x, dt = e.x, e.dtype
    info = np.iinfo(dt.numpy)
    lo, hi = ex.const(float(info.min), x.dtype), ex.const(float(info.max), x.dtype)
    return ex.Select(ex.BinOp("ne", x, x), ex.const(0, dt),
                     ex.Select(ex.BinOp("le", x, lo), ex.const(info.min, dt),
                               ex.Select(ex.BinOp("ge", x, hi), ex.const(info.max, dt), ex.InRangeCast(dt, x))))


def legalize_kernel(kernel: Kernel, native=frozenset(NUMERIC_RULES)) -> Kernel:
    """``kernel`` with every expression legalized (see the module docs); ``native``: the numeric rules
    the target spells itself (the others are written out)."""
    native = frozenset(native)
    return replace(kernel, body=map_exprs(kernel.body, lambda e: legalize_expr(e, native)))


@register_pass("legalize", kind="program", shows="loops")
def legalize_pass(program, ctx):
    """Make target semantics explicit on every kernel: guarded integer division and shifts, and the
    numeric rules the backend does not spell written out (ctx.options.native_numerics)."""
    native = ctx.options.get("native_numerics", frozenset(NUMERIC_RULES))
    program.kernels = [legalize_kernel(k, native) for k in program.kernels or []]
    return program
