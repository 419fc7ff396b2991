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

    def evaluate(expr, env):
        if isinstance(expr, ex.Const):
            return expr.value
        if isinstance(expr, ex.Var):
            return env[expr]
        x, y = evaluate(expr.a, env), evaluate(expr.b, env)
        return {"add": x + y, "sub": x - y, "mul": x * y, "floordiv": x // y if y else 0,
                "mod": x % y if y else 0, "min": min(x, y), "max": max(x, y)}[expr.op]

    for x in range(ni):
        for y in range(nj):
            assert evaluate(s, {i: x, j: y}) == evaluate(e, {i: x, j: y})
