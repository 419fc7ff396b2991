"""Expressions: the simplifier folds constants and cleans index arithmetic."""

from hypothesis import given
from hypothesis import strategies as st

from minicomp.ir import expr as ex


def v(name):
    return ex.Var(name)


def test_identities_and_folding():
    i = v("i")
    assert ex.simplify(i * 1 + 0) is i
    assert ex.format_expr(ex.simplify((i + 2) * 3 - 6)) == "(i * 3)"
    assert ex.simplify(ex.const(6, "int64") // 4).value == 1
    assert ex.simplify(i * 0).value == 0


def test_div_mod_of_affine_terms():
    i, j = v("i"), v("j")
    ranges = {i: 10, j: 4}
    flat = i * 4 + j
    assert ex.simplify(flat // 4, ranges) is i
    assert ex.simplify(flat % 4, ranges) is j
    # Without the range of j nothing can be said.
    assert ex.format_expr(ex.simplify(flat // 4)) == "(((i * 4) + j) // 4)"


def test_div_mod_split_off_whole_multiples():
    """A transpose read through a reshape: ``(i*768 + k) // 64 % 12`` with k
    in [0, 768) is ``k // 64``; the remainder may exceed the divisor."""
    i, ko, ki = v("i"), v("ko"), v("ki")
    ranges = {i: 128, ko: 3, ki: 256}
    k = ko * 256 + ki
    assert ex.format_expr(ex.simplify(((i * 768 + k) // 64) % 12, ranges)) == "((ko * 4) + (ki // 64))"
    assert ex.format_expr(ex.simplify((i * 768 + k) % 64, ranges)) == "(ki % 64)"
    # A term that may be negative keeps the division whole.
    assert "//" in ex.format_expr(ex.simplify((i * 64 + ki - 5) // 64, ranges))


@given(st.integers(1, 9), st.integers(1, 12), st.integers(1, 4), st.integers(0, 7), st.integers(0, 5),
       st.integers(1, 6))
def test_splitting_whole_multiples_keeps_value(ni, nj, m, b, c, d):
    i, j = v("i"), v("j")
    ranges = {i: ni, j: nj}
    for e in ((i * (d * m) + j * b + c) // d, (i * (d * m) + j * b + c) % d):
        s = ex.simplify(e, ranges)
        for x in range(ni):
            for y in range(nj):
                env = {i: x, j: y}
                assert _evaluate(s, env) == _evaluate(e, env)


def test_div_mod_by_a_common_factor():
    """Grouped-query attention reads K/V heads through a reshape and a broadcast:
    ``(h*16384 + r*128 + i) // 32768`` is ``h // 2`` (r*128 + i < 16384)."""
    h, r, i = v("h"), v("r"), v("i")
    ranges = {h: 4, r: 128, i: 128}
    flat = h * 16384 + r * 128 + i
    assert ex.format_expr(ex.simplify(flat // 32768, ranges)) == "(h // 2)"
    assert ex.format_expr(ex.simplify(flat % 32768, ranges)) == "(((h % 2) * 16384) + ((r * 128) + i))"
    # A remainder that reaches the factor keeps the division.
    assert "//" in ex.format_expr(ex.simplify((h * 16384 + r * 129) // 32768, ranges))


@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.integers(0, 9),
       st.integers(1, 5))
def test_dividing_by_a_common_factor_keeps_value(ni, nj, g, k, c, m):
    """``(g*m*i + j + c) // (g*k)`` and ``%``, j below g or not: each simplified form keeps its value."""
    i, j = v("i"), v("j")
    ranges = {i: ni, j: nj}
    for e in ((i * (g * m) + j + c) // (g * k), (i * (g * m) + j + c) % (g * k)):
        s = ex.simplify(e, ranges)
        for x in range(ni):
            for y in range(nj):
                env = {i: x, j: y}
                assert _evaluate(s, env) == _evaluate(e, env), (ex.format_expr(e), ex.format_expr(s))


def _evaluate(expr, env):
    if isinstance(expr, ex.Const):
        return expr.value
    if isinstance(expr, ex.Var):
        return env[expr]
    x, y = _evaluate(expr.a, env), _evaluate(expr.b, env)
    ops = {"add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y, "floordiv": lambda: x // y,
           "mod": lambda: x % y, "min": lambda: min(x, y), "max": lambda: max(x, y)}
    return ops[expr.op]()


def test_redundant_clamps_and_comparisons():
    i = v("i")
    ranges = {i: 8}
    assert ex.simplify(ex.minimum(ex.maximum(i, 0), 7), ranges) is i
    assert ex.simplify(ex.lt(i, 8), ranges).value is True
    assert ex.simplify(ex.ge(i - 1, 0), ranges) is not None


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 8), st.integers(0, 8), st.integers(1, 5))
def test_simplify_keeps_value(ni, nj, a, b, d):
    """Simplified index expressions evaluate like the originals on every point."""
    i, j = v("i"), v("j")
    ranges = {i: ni, j: nj}
    e = ((i * a + j * b + 3) // d) % (d + 1) + ex.minimum(i, j) * 2
    s = ex.simplify(e, ranges)
    for x in range(ni):
        for y in range(nj):
            assert _evaluate(s, {i: x, j: y}) == _evaluate(e, {i: x, j: y})
