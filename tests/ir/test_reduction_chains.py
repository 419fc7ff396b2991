"""The one-pass form of reduction chains, proved against the definition in exact arithmetic.

Values are Fractions and exp is ``x -> B**x`` for a random rational B > 0 (exact for integer
exponents), which satisfies the identities the derivation uses (exp(a + b) = exp(a) exp(b)) and
nothing that only holds for floats. Mirage checks its rewrites the same way, over finite fields.
"""

import dataclasses
import random
from fractions import Fraction

import pytest

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.reduction_chains import (
    ChainRefusedError,
    Link,
    derive,
    merge,
    old,
    result,
    run_one_pass,
    run_split,
    run_two_pass,
    why_not_split,
)

F32 = dtypes.float32
x, v, mask, bias = (ex.Var(n, F32) for n in ("x", "v", "mask", "bias"))  # values at one element
ELEMENT = {"x", "v", "mask", "bias"}
m, lse_l, l_ = result("m"), result("l"), result("l")
NEG_INF_STANDIN = ex.Const(-1000.0, F32)  # a masked score: far below every other, exact


def along(e):
    return any(isinstance(n, ex.Var) and n.name in ELEMENT for n in ex.walk(e))


def exp_(e):
    return ex.call("exp", e)


def c(value):
    return ex.Const(float(value), F32)


def masked(e):
    return ex.Select(ex.BinOp("gt", mask, c(0)), e, NEG_INF_STANDIN)


def attention(score):
    """softmax(score) . v over the axis, as three links."""
    return [Link("m", "max", score),
            Link("l", "sum", exp_(ex.BinOp("sub", score, m))),
            Link("o", "sum", ex.BinOp("mul", ex.BinOp("div", exp_(ex.BinOp("sub", score, m)), l_), v))]


CHAINS = {
    "attention": attention(x),
    "scaled attention": attention(ex.BinOp("mul", c(3), x)),
    "scaled after the shift": [Link("m", "max", x),
                               Link("l", "sum", exp_(ex.BinOp("mul", ex.BinOp("sub", x, m), c(2)))),
                               Link("o", "sum", ex.BinOp("mul", v, ex.BinOp("div", exp_(
                                   ex.BinOp("mul", c(2), ex.BinOp("sub", x, m))), l_)))],
    "additive mask": attention(ex.BinOp("add", x, bias)),
    "boolean mask": attention(masked(x)),
    "zeroed terms": [Link("m", "max", masked(x)),
                     Link("l", "sum", ex.Select(ex.BinOp("gt", mask, c(0)), exp_(ex.BinOp("sub", x, m)), c(0))),
                     Link("o", "sum", ex.BinOp("mul", ex.Select(ex.BinOp("gt", mask, c(0)),
                                                                exp_(ex.BinOp("sub", x, m)), c(0)), v))],
    "normalized after a sum": [Link("m", "max", x), Link("l", "sum", exp_(ex.BinOp("sub", x, m))),
                               Link("o", "sum", ex.BinOp("div", ex.BinOp("mul", v, exp_(ex.BinOp("sub", x, m))),
                                                         ex.BinOp("mul", c(2), l_)))],
    "a weighted sum by a shifted max": [Link("m", "max", ex.BinOp("add", x, c(4))),
                                        Link("w", "sum", ex.BinOp("mul", v, exp_(ex.BinOp("sub", x, m))))],
    "a max of shifted terms": [Link("s", "sum", v), Link("m", "max", ex.BinOp("sub", x, result("s")))],
    "plain sums": [Link("s", "sum", v), Link("q", "sum", ex.BinOp("mul", x, v))],
    "a row chosen away whole": [Link("m", "max", x), Link("l", "sum", exp_(ex.BinOp("sub", x, m))),
                                Link("o", "sum", ex.BinOp("mul", ex.Select(
                                    ex.BinOp("gt", ex.Var("row_masked", F32), c(0)), c(0),
                                    ex.BinOp("div", exp_(ex.BinOp("sub", x, m)), l_)), v))],
}


def _exp_of(base):
    def exp(e):
        assert e.denominator == 1, "the proofs keep exponents whole"
        return base ** int(e)
    return exp


def _elements(rng, n):
    return [{"x": Fraction(rng.randint(-6, 6)), "v": Fraction(rng.randint(-5, 5), rng.randint(1, 4)),
             "mask": Fraction(rng.choice([0, 1, 1])), "bias": Fraction(rng.randint(-3, 3))} for _ in range(n)]


def _agree(chain, plan, trials=40, seed=0):
    rng = random.Random(seed)
    for _ in range(trials):
        exp = _exp_of(Fraction(rng.randint(2, 5), rng.randint(1, 3)))
        elements = _elements(rng, rng.randint(1, 9))
        row_masked = Fraction(rng.choice([0, 1]))  # the same for every element: a choice made once a row
        for e in elements:
            e["row_masked"] = row_masked
        if "mask" in repr(chain) and not any(e["mask"] for e in elements):
            elements[0]["mask"] = Fraction(1)
        if run_one_pass(plan, elements, exp) != run_two_pass(chain, elements, exp):
            return False
    return True


@pytest.mark.parametrize("name", CHAINS)
def test_the_one_pass_form_equals_the_definition_exactly(name):
    chain = CHAINS[name]
    plan = derive(chain, along)
    assert _agree(chain, plan), plan.describe()


def test_the_derivation_names_its_rules_and_rescales_by_the_moved_max():
    plan = derive(CHAINS["scaled attention"], along)
    l_pass, o_pass = plan.links[1], plan.links[2]
    assert "online-rescale" in l_pass.rules and "exp-split" in l_pass.rules
    assert ex.format_expr(l_pass.rescale) == ex.format_expr(exp_(ex.BinOp("sub", old("m"), m)))
    assert "after-pass" in o_pass.rules  # 1 / l multiplies once, after the pass
    assert "/ l" in ex.format_expr(o_pass.finish).replace("(", "").replace(")", "")


@pytest.mark.parametrize("body, why", [
    (ex.BinOp("mul", ex.BinOp("sub", x, m), ex.BinOp("sub", x, m)), "is not a product"),
    (exp_(ex.call("tanh", ex.BinOp("sub", x, m))), "not a sum of the two"),
    (ex.BinOp("mul", exp_(ex.BinOp("sub", x, m)), m), "not an exponential"),
    (ex.Select(ex.BinOp("gt", x, m), v, c(0)), "chooses by a result"),
])
def test_chains_whose_terms_do_not_factor_are_refused_with_the_reason(body, why):
    with pytest.raises(ChainRefusedError, match=why):
        derive([Link("m", "max", x), Link("s", "sum", body)], along)


def test_a_link_that_reads_a_later_result_is_refused():
    with pytest.raises(ChainRefusedError, match="not computed before it"):
        derive([Link("s", "sum", ex.BinOp("mul", v, m)), Link("m", "max", x)], along)


def _planted(plan):
    """Wrong variants of the derived attention update (softmax(2 (s - max s)) . v with s = 3 masked(x) + bias):
    each must be caught."""
    mx, ls, os = plan.links

    def swap(k, **changes):
        links = list(plan.links)
        links[k] = dataclasses.replace(links[k], **changes)
        return dataclasses.replace(plan, links=links)

    inverted = ex.call("exp", ex.BinOp("sub", ls.rescale.args[0].b, ls.rescale.args[0].a))
    old_max = ex.substitute(ls.term, {n: old("m") for n in ex.walk(ls.term) if isinstance(n, ex.Var) and n.name == "m"})
    unscaled = ex.call("exp", ex.BinOp("sub", old("m"), m))
    return {
        "rescale inverted": swap(1, rescale=inverted),
        "no rescale": swap(1, rescale=c(1)),
        "rescale squared": swap(1, rescale=ex.BinOp("mul", ls.rescale, ls.rescale)),
        "max never updated": swap(0, term=NEG_INF_STANDIN),
        "term at the old max": swap(1, term=old_max),
        "after-pass factor dropped": swap(2, finish=result("o")),
        "after-pass factor twice": swap(2, finish=ex.BinOp("mul", os.finish, os.finish)),
        "mask applied after the max": swap(0, term=ex.BinOp("add", ex.BinOp("mul", c(3), x), c(0))),
        "rescale by the sum, not the max": swap(1, rescale=ex.call("exp", ex.BinOp("sub", old("l"), l_))),
        "rescale without the scale": swap(1, rescale=unscaled),
        "rescale on the new term too": swap(1, term=ex.BinOp("mul", ls.term, ls.rescale)),
    }


def test_every_planted_wrong_variant_is_caught():
    score = ex.BinOp("add", ex.BinOp("mul", c(3), masked(x)), bias)
    shifted = exp_(ex.BinOp("mul", c(2), ex.BinOp("sub", score, m)))  # a temperature after the shift
    chain = [Link("m", "max", score), Link("l", "sum", shifted),
             Link("o", "sum", ex.BinOp("mul", ex.BinOp("div", shifted, l_), v))]
    plan = derive(chain, along)
    assert _agree(chain, plan)
    variants = _planted(plan)
    assert len(variants) >= 10
    missed = [name for name, wrong in variants.items() if _agree(chain, wrong)]
    assert not missed, f"not caught: {missed}"


def _agree_split(chain, plan, trials=40, seed=1, run=run_split):
    rng = random.Random(seed)
    for _ in range(trials):
        exp = _exp_of(Fraction(rng.randint(2, 5), rng.randint(1, 3)))
        elements = _elements(rng, rng.randint(1, 9))
        for e in elements:
            e["row_masked"] = Fraction(0)
        if "mask" in repr(chain) and not any(e["mask"] for e in elements):
            elements[0]["mask"] = Fraction(1)
        cuts = sorted(rng.sample(range(1, len(elements)), min(rng.randint(0, 3), len(elements) - 1)))
        parts = [elements[a:b] for a, b in zip([0, *cuts], [*cuts, len(elements)])]
        if run(plan, parts, exp) != run_two_pass(chain, elements, exp):
            return False
    return True


SPLITTABLE = [name for name in CHAINS if why_not_split(derive(CHAINS[name], along)) is None]


@pytest.mark.parametrize("name", SPLITTABLE)
def test_parts_of_the_axis_merged_equal_the_definition_exactly(name):
    """Flash-decoding: each part of the axis in one pass, the parts' running results merged by the
    rescale the derivation gave, then the finishing factors."""
    chain = CHAINS[name]
    assert _agree_split(chain, derive(chain, along))


def test_every_chain_splits_unless_a_term_reads_a_running_sum():
    assert SPLITTABLE == list(CHAINS)  # (the max of shifted terms moves its sum after the pass)
    import minicomp.ir.reduction_chains as rc

    s_pass = rc.LinkPass(Link("s", "sum", v), v, c(1), result("s"))
    reads_sum = rc.LinkPass(Link("m", "max", x), ex.BinOp("sub", x, result("s")), c(1), m)
    assert "reads the running s" in why_not_split(rc.OnePass([s_pass, reads_sum]))


def test_a_merge_without_the_rescale_is_caught():
    """A planted wrong merge (the parts' sums added as they are) disagrees with the definition."""
    import minicomp.ir.reduction_chains as rc

    chain = CHAINS["attention"]
    plan = derive(chain, along)
    unscaled = rc.OnePass([dataclasses.replace(lp, rescale=c(1)) for lp in plan.links])

    def wrong(plan_, parts, exp):
        states = [rc._running(plan, p, exp) for p in parts if p]  # each part right, the merge wrong
        consts = {f"p{k}.{n}": v for k, st in enumerate(states) for n, v in st.items()}
        exprs = merge(unscaled, [{n: ex.Var(f"p{k}.{n}", F32) for n in st} for k, st in enumerate(states)])
        state = {n: rc.evaluate(exprs[n], consts, exp) for n in ("m", "l", "o")}
        return rc._finished(plan, state, parts[0][0], exp)

    assert not _agree_split(chain, plan, run=wrong)
