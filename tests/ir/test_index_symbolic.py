"""Index arithmetic over symbolic sizes: divisions whose strides or divisor name dimensions
simplify as the integer ones do, where the declared ranges prove it, and keep their value."""

from hypothesis import given
from hypothesis import strategies as st

from minicomp.ir import expr as ex
from minicomp.ir.dims import Dim

SEQ = Dim("seq", 1, 512)


def seq():
    return ex.size_expr(SEQ)


def show(e, ranges):
    return ex.format_expr(ex.simplify(e, ranges))


def test_a_reshape_over_a_symbolic_axis_reads_its_plain_index():
    """BERT's query, viewed (12, seq, 64) through (1, seq, 768): the flat index of [i0, i1, r0]
    divided back into rows and columns is i1 and i0*64 + r0."""
    i0, i1, r0 = ex.Var("i0"), ex.Var("i1"), ex.Var("r0")
    ranges = {i0: 12, i1: SEQ, r0: 64}
    flat = i0 * (64 * seq()) + i1 * 64 + r0
    assert show((flat // 64) % seq(), ranges) == "i1"
    assert show(flat // (64 * seq()), ranges) == "i0"
    assert show(flat % (64 * seq()), ranges) == "((i1 * 64) + r0)"


def test_squares_of_a_dimension():
    i0, i1, r0 = ex.Var("i0"), ex.Var("i1"), ex.Var("r0")
    ranges = {i0: 12, i1: SEQ, r0: SEQ}
    flat = i0 * (seq() * seq()) + i1 * seq() + r0
    assert show((flat // (seq() * seq())) % 12, ranges) == "i0"
    assert show((flat // seq()) % seq(), ranges) == "i1"
    assert show(flat % seq(), ranges) == "r0"


def test_what_the_ranges_do_not_prove_stays():
    i1, r0 = ex.Var("i1"), ex.Var("r0")
    ranges = {i1: SEQ + 1, r0: 64}  # i1 may reach seq: i1*64 + r0 may pass 64*seq
    assert "//" in show((i1 * 64 + r0) // (64 * seq()), ranges)
    assert "%" in show((i1 * 64 + r0) % (64 * seq()), ranges)
    assert "//" in show((i1 * 64 + r0 - 1) // 64, ranges)  # may be negative


@st.composite
def divisions(draw):
    """A random row-major index over axes with symbolic and static extents, divided or taken modulo
    a stride of it, or a multiple of one."""
    n = draw(st.integers(1, 4))
    extents = [draw(st.sampled_from([1, 3, 4, 12, "seq", "2seq", "seq+1"])) for _ in range(n)]
    as_size = {"seq": SEQ, "2seq": 2 * SEQ, "seq+1": SEQ + 1}
    extents = [as_size.get(e, e) for e in extents]
    variables = [ex.Var(f"i{k}") for k in range(n)]
    strides, stride = [], 1
    for e in reversed(extents):
        strides.insert(0, stride)
        stride = stride * e
    flat = None
    for v, s in zip(variables, strides):
        term = v * ex.size_expr(s)
        flat = term if flat is None else flat + term
    flat = flat + draw(st.integers(0, 2))
    divisor = draw(st.sampled_from(strides + [stride])) * draw(st.sampled_from([1, 2, 3]))
    op = draw(st.sampled_from(["floordiv", "mod"]))
    return ex.BinOp(op, flat, ex.size_expr(divisor)), dict(zip(variables, extents)), draw(st.data())


@given(divisions())
def test_a_simplified_division_keeps_its_value_at_every_size(case):
    e, ranges, data = case
    simple = ex.simplify(e, ranges)
    def edge_or_any(lo, hi):  # the ends of a range, where an off-by-one shows, and anything between
        return data.draw(st.one_of(st.just(lo), st.just(hi), st.integers(lo, hi)))

    for _ in range(5):
        at = {"seq": edge_or_any(1, 512)}
        values = {v: edge_or_any(0, ex.with_sizes(ex.size_expr(n), at).value - 1) for v, n in ranges.items()}

        def value(x):
            fixed = ex.substitute(x, {v: ex.Const(k, x.dtype) for v, k in values.items()})
            return ex.with_sizes(fixed, at).value

        assert value(simple) == value(e), (ex.format_expr(e), ex.format_expr(simple), at, values)
