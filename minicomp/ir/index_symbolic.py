"""Index arithmetic over symbolic sizes: ``//`` and ``%`` whose divisor or strides name dimensions.

A reshape over a symbolic axis leaves indices such as
``((i0*(64*seq) + i1*64 + r0) // 64) % seq``. The integer rules of
:func:`minicomp.ir.expr.simplify` see ``64*seq`` as an opaque product and
keep the whole expression, so every load computes divisions and the
schedules cannot see the plain ``[i1, i0*64 + r0]`` it is. The rules here
are the same two, with coefficients that are polynomials over the
dimensions (:class:`~minicomp.ir.dims.Size`):

- ``(d*q + r) // d = q`` and ``(d*q + r) % d = r`` when ``0 <= r < d``;
- ``(d*q + r) // d = q + r // d`` when both sides are non-negative.

``r < d`` is proved for every size in the declared ranges: ``r``'s greatest
value is a polynomial (a loop ``i < seq`` is at most ``seq - 1``), and
``d - r`` is bounded below by at least 1 (:func:`~minicomp.ir.dims.bounds`).
"""

from __future__ import annotations

from minicomp.ir.dims import Size, SymbolicSizeError, bounds, make


def dim_poly(e):
    """``e`` as a polynomial over dimensions (an int or a Size) if it is made of ints and dimension
    variables by ``+``, ``-`` and ``*``; else None."""
    from minicomp.ir import expr as ex

    if isinstance(e, ex.Const):
        return e.value if e.dtype.is_int and not isinstance(e.value, bool) else None
    if isinstance(e, ex.DimVar):
        return make({((e.name, e.lo, e.hi),): 1})
    if isinstance(e, ex.BinOp) and e.op in ("add", "sub", "mul"):
        a, b = dim_poly(e.a), dim_poly(e.b)
        if a is None or b is None:
            return None
        return a + b if e.op == "add" else a - b if e.op == "sub" else a * b
    return None


def _poly_of_extent(ext):
    """A loop extent (int, Size or expression over dimensions) as a polynomial, or None."""
    from minicomp.ir import expr as ex

    if isinstance(ext, (int, Size)):
        return ext
    return dim_poly(ext) if isinstance(ext, ex.Expr) else None


def _affine(e):
    """``e`` as ({atom: coefficient}, constant) with polynomial coefficients, or None."""
    from minicomp.ir import expr as ex

    return ex.affine_terms(e, dim_poly)


def _at_least(p, q) -> bool:
    """``p >= q`` at every size in the ranges (False where unproved)."""
    try:
        return bounds(p - q)[0] >= 0
    except SymbolicSizeError:
        return False


def _atom_bounds(atom, ranges: dict):
    """The least and greatest value of an atom of an affine form, as polynomials, or None."""
    from minicomp.ir import expr as ex

    if isinstance(atom, ex.Var) and not isinstance(atom, ex.DimVar) and atom in ranges:
        ext = _poly_of_extent(ranges[atom])
        return (0, ext - 1) if ext is not None else None
    if isinstance(atom, ex.BinOp) and atom.op == "mod":
        d, lo = dim_poly(atom.b), _bounds(atom.a, ranges)
        if d is not None and lo is not None and _at_least(lo[0], 0) and _at_least(d, 1):
            return 0, d - 1
    return ex.bounds(atom, ranges)


def _bounds(e, ranges: dict):
    aff = _affine(e)
    return None if aff is None else _affine_bounds(aff[0], aff[1], ranges)


def _affine_bounds(terms: dict, const, ranges: dict):
    lo = hi = const
    for atom, k in terms.items():
        b = _atom_bounds(atom, ranges)
        if b is None:
            return None
        if _at_least(k, 0):
            lo, hi = lo + k * b[0], hi + k * b[1]
        elif _at_least(0, k):
            lo, hi = lo + k * b[1], hi + k * b[0]
        else:
            return None
    return lo, hi


def _is_zero(p) -> bool:
    from minicomp.ir import expr as ex

    return ex._is_zero(p)


def _exact_quotient(p, d):
    """``p / d`` if ``d`` divides ``p`` as polynomials (``d`` an int or one term); else None."""
    if _is_zero(p):
        return 0
    if not isinstance(d, Size):
        if not isinstance(p, Size):
            return p // d if p % d == 0 else None
        return make({k: c // d for k, c in p.terms.items()}) if all(c % d == 0 for c in p.terms.values()) else None
    if len(d.terms) != 1:
        return 1 if p == d else None
    (d_key, d_c), = d.terms.items()
    quotient = {}
    for key, c in (p.terms.items() if isinstance(p, Size) else [((), p)]):
        rest = list(key)
        for factor in d_key:
            if factor not in rest:
                return None
            rest.remove(factor)
        if c % d_c:
            return None
        quotient[tuple(rest)] = c // d_c
    return make(quotient)


def _from_affine(terms: dict, const):
    from minicomp.ir import expr as ex

    out = None
    for atom, k in terms.items():
        term = atom if (not isinstance(k, Size) and k == 1) else ex.BinOp("mul", atom, ex.size_expr(k))
        out = term if out is None else ex.BinOp("add", out, term)
    if out is None:
        return ex.size_expr(const)
    return out if _is_zero(const) else ex.BinOp("add", out, ex.size_expr(const))


def simplify_divmod(e, ranges: dict):
    """``e`` (an int ``a // d`` or ``a % d``) without the division where the rules above prove it,
    else None."""
    from minicomp.ir import expr as ex

    d = dim_poly(e.b)
    if d is None or not _at_least(d, 1):
        return None
    aff = _affine(e.a)
    if aff is None:
        return None
    terms, const = aff
    whole, rest = {}, {}
    for atom, k in terms.items():
        q = _exact_quotient(k, d)
        if q is None:
            rest[atom] = k
        else:
            whole[atom] = q
    whole_const = _exact_quotient(const, d)
    rest_const = 0 if whole_const is not None else const
    whole_const = whole_const or 0
    b = _affine_bounds(rest, rest_const, ranges)
    if b is None or not _at_least(b[0], 0):
        return None
    rest_expr = _from_affine(rest, rest_const)
    if _at_least(d - 1, b[1]):  # 0 <= rest < d
        return _from_affine(whole, whole_const) if e.op == "floordiv" else rest_expr
    if not whole:
        return None
    whole_bounds = _affine_bounds(whole, whole_const, ranges)
    if whole_bounds is None or not _at_least(whole_bounds[0], 0):
        return None
    inner = ex.BinOp(e.op, rest_expr, e.b)
    if e.op == "mod":
        return inner
    return ex.BinOp("add", _from_affine(whole, whole_const), inner)


def mentions_dim(e) -> bool:
    """Whether a dimension variable appears in ``e`` (kept on each node: the simplifier asks it of
    every division it cannot simplify, bottom up, so each node is looked at once)."""
    from minicomp.ir import expr as ex

    found = getattr(e, "_mentions_dim", None)
    if found is None:
        found = isinstance(e, ex.DimVar) or any(mentions_dim(c) for c in ex.children(e))
        e._mentions_dim = found
    return found

