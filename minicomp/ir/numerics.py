"""Numeric rules that lowering and every code generator share (see ``passes/legalize.py`` for the list).

Facts about loop-IR expressions, kept in the IR layer so that lowering and
the emitters read one definition: which operand a float max/min keeps on a
tie, which product an accumulation may fuse into an FMA, and how a 16-bit
float result is rounded where it stays in a register.
"""

from __future__ import annotations

from minicomp.ir import expr as ex
from minicomp.ir.dtypes import DType, float16, float32
from minicomp.ir.loops import Store


def round16(x: ex.Expr) -> ex.Expr:
    """``x`` rounded to its float16/bfloat16 dtype as a store would round it (other dtypes unchanged).

    16-bit floats are computed in float32; an op's result kept in a register inside a fused kernel must
    still be the 16-bit value numpy and the reference give (``(x * 2) / 2`` overflows to inf at 40000)."""
    if not x.dtype.is_narrow_float:
        return x
    return ex.Cast(x.dtype, ex.Cast(float32, x))


def extremum_keeps_first_on_tie(dt: DType) -> bool:
    """Whether float ``max(a, b)``/``min(a, b)`` answer ``a`` when ``a == b`` (+0 and -0): numpy's float16 loops
    do, its float32, float64 and bfloat16 loops answer ``b``."""
    return dt == float16


def accumulated_product(s: Store) -> tuple[ex.BinOp, ex.BinOp | None] | None:
    """``(combine, product)`` of an accumulation ``buf[i] = buf[i] + term`` (or ``*``, ``max``, ``min``) in
    ``s``: the combining operation, which may reassociate, and the term when it is a product ``a*b`` added
    on, the only multiplication that may contract into an FMA. None if ``s`` accumulates nothing.

    A max/min reduction's combine keeps NaN but may order -0 below +0 (LLVM's ``llvm.maximum``, which its
    vectorizer reduces in vector registers): which zero a row of zeros reduces to is not numpy's promise
    either, while elementwise max/min keep numpy's tie rule."""
    v = s.value
    if not (isinstance(v, ex.BinOp) and v.op in ("add", "mul", "max", "min") and v.dtype.is_float):
        return None
    key = [ex.format_expr(i) for i in s.indices]
    for side, term in ((v.a, v.b), (v.b, v.a)):
        if isinstance(side, ex.Load) and side.tensor is s.buffer and [ex.format_expr(i) for i in side.indices] == key:
            product = term if v.op == "add" and isinstance(term, ex.BinOp) and term.op == "mul" else None
            return v, product
    return None
