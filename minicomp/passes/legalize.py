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

What stays, and every emitter must provide as it is:

- float ``max``/``min`` are numpy's: NaN if either operand is NaN, else the
  larger (smaller); on a tie (+0 and -0) the second operand, but for
  float16 the first, as numpy's float16 loops answer
  (``ir/numerics.py``);
- float-to-int casts saturate, and NaN becomes 0;
- float16 and bfloat16 values are computed in float32 and rounded to 16 bits
  (to nearest even) at every store and every cast to them; lowering rounds
  each op's result (``ir/numerics.round16``), so a value kept in a register inside a
  fused kernel is the value numpy would have stored;
- a float operation is never contracted into an FMA, except the product an
  accumulation adds (``acc = acc + a*b``: ``ir/numerics.accumulated_product``). An
  expression computed in several places of a kernel then gives the same bits
  in each (``fma(x, x, -m)`` is not ``round(x*x) - m``).

``compile()`` legalizes every kernel after the pass pipeline, whatever the
pipeline, so an emitter never sees an integer ``div``.
"""

from __future__ import annotations

from dataclasses import replace

from minicomp.ir import expr as ex
from minicomp.ir.loops import Kernel, map_exprs


def legalize_expr(e: ex.Expr) -> ex.Expr:
    """``e`` with every integer ``div`` guarded and made a ``tdiv``."""
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


def legalize_kernel(kernel: Kernel) -> Kernel:
    """``kernel`` with every expression legalized (see the module docs)."""
    return replace(kernel, body=map_exprs(kernel.body, legalize_expr))

