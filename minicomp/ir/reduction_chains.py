"""Chains of reductions over one axis, and their one-pass form derived from algebra.

A *chain* is a list of reductions (``max`` or ``sum``) over the same axis,
where a later one's term may use the results of earlier ones: softmax's
``m = max_k x_k``, ``l = sum_k exp(x_k - m)``, and attention's
``o = sum_k exp(x_k - m) / l * v_k``. Read as written, each link needs the
one before it complete, so the axis is walked once per link and the terms in
between (the score matrix) are kept in memory. This module derives the form
that walks the axis once (FlashAttention's online softmax, which RedFuser
derives for TVM), from facts about the ops rather than from a pattern:

- a term of a ``sum`` that factors as ``G(x_k) * H(results)`` is summed as
  ``G * H`` at the results so far, and the sum so far is multiplied by
  ``H(new) / H(old)`` whenever a result changes (a linear reduction commutes
  with scaling);
- ``exp(a + b) = exp(a) * exp(b)`` splits an exponential of a shifted term,
  and ``exp(a) / exp(b) = exp(a - b)`` writes the rescale without dividing;
- factors of results that only grow with the axis walked (a running
  ``max``) stay in the loop: they keep each term small (``exp(x - m) <= 1``);
  factors of other results (``1 / l``) multiply the sum once, after the pass;
- ``max_k(a_k + c) = max_k(a_k) + c``: a ``max`` whose term is shifted by
  results takes the shift after the pass.

A chain whose terms do not factor is refused with the reason:
``sum_k (x_k - m)^2`` (a sum, not a product, of a term of the axis and a
result) or ``sum_k exp(sin(x_k - m))`` (no rule splits ``sin``).

:func:`derive` returns a :class:`OnePass` (the update of each link at one
element and what is applied after the pass, as expressions) or raises
:class:`ChainRefusedError`; :func:`run_one_pass` and :func:`run_two_pass` evaluate
a chain both ways, with any arithmetic (the tests use exact fractions and an
"exponential" ``b**x`` that satisfies the same identities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from minicomp.errors import MinicompError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex

COMBINERS = ("max", "sum")

# The facts the derivation uses, by name: each step of a derivation names the ones it used.
RULES = {
    "free": "a term that uses no result is summed as it is",
    "product": "a product (or quotient) of factored terms is the product of their parts",
    "exp-split": "exp(a + b) = exp(a) * exp(b): the part of the exponent with the results is a factor",
    "linear-scale": "a sum times a factor constant along the axis is that factor times the sum",
    "mask": "a term that is 0 where a mask (of no result) is false factors as its other branch; a mask of a "
            "whole row chooses the after-pass factor too",
    "online-rescale": "exp(a) / exp(b) = exp(a - b): the sum so far is rescaled when the running result moves",
    "after-pass": "a factor of results that are only final at the end multiplies the sum once, after the pass",
    "max-shift": "max_k(a_k + c) = max_k(a_k) + c: a shift by results is added after the pass",
    "max-plain": "a max of terms that use no result is updated as max(so far, term)",
}


class ChainRefusedError(MinicompError):
    """The chain does not run in one pass: no rule factors a link's term. The message names the
    link, the subterm and why."""


@dataclass(frozen=True)
class Link:
    """One reduction of the chain: ``name = op_k body``. ``body`` reads the element of the axis
    (whatever the ``along`` predicate of :func:`derive` says varies along it) and earlier links'
    results as ``result(name)``."""

    name: str
    op: str
    body: ex.Expr


def result(name: str, dtype=dtypes.float32) -> ex.Var:
    """The result of the link ``name``, as it appears in later links' terms."""
    return ex.Var(f"{name}", dtype)


def old(name: str, dtype=dtypes.float32) -> ex.Var:
    """The result of link ``name`` before the current element (in a rescale factor)."""
    return ex.Var(f"{name}.old", dtype)


@dataclass
class LinkPass:
    """How one link runs in the single pass.

    At each element, in chain order: ``max`` links set ``name = max(name.old, term)``;
    ``sum`` links set ``name = name.old * rescale + term`` (``rescale`` over ``X.old`` and ``X``
    of the running links its term uses; 1 when none). ``term`` may read the running results
    (already updated for this element). After the pass: ``name = finish`` (over ``name`` and the
    other links' final results)."""

    link: Link
    term: ex.Expr
    rescale: ex.Expr
    finish: ex.Expr
    rules: list[str] = field(default_factory=list)

    def describe(self) -> str:
        upd = (f"{self.link.name} = max({self.link.name}.old, {ex.format_expr(self.term)})"
               if self.link.op == "max" else
               f"{self.link.name} = {self.link.name}.old * {ex.format_expr(self.rescale)} + "
               f"{ex.format_expr(self.term)}")
        return f"{upd}; after the pass {self.link.name} = {ex.format_expr(self.finish)}  // rules: " + \
            ", ".join(self.rules)


@dataclass
class OnePass:
    """A chain's single-pass form: one :class:`LinkPass` per link, in order."""

    links: list[LinkPass]

    def describe(self) -> str:
        return "\n".join(lp.describe() for lp in self.links)


# -- the derivation ---------------------------------------------------------------------

ONE = ex.Const(1.0, dtypes.float32)
ZERO = ex.Const(0.0, dtypes.float32)


def _mul(a, b):
    if ex._is_const(a, 1.0):
        return b
    if ex._is_const(b, 1.0):
        return a
    if isinstance(b, ex.BinOp) and b.op == "div" and ex._is_const(b.a, 1.0):  # a * (1 / y) is a / y
        return ex.BinOp("div", a, b.b)
    return ex.BinOp("mul", a, b)


def _div(a, b):
    return a if ex._is_const(b, 1.0) else ex.BinOp("div", a, b)


def _add(a, b):
    if ex._is_const(a, 0.0):
        return b
    if ex._is_const(b, 0.0):
        return a
    if isinstance(b, ex.Call) and b.fn == "neg":  # a + -y is a - y
        return ex.BinOp("sub", a, b.args[0])
    return ex.BinOp("add", a, b)


def _sub(a, b):
    if ex._is_const(b, 0.0):
        return a
    if ex._is_const(a, 0.0):
        return _neg(b)
    if all(isinstance(t, ex.Call) and t.fn == "neg" for t in (a, b)):  # -p - -q is q - p
        return ex.BinOp("sub", b.args[0], a.args[0])
    return ex.BinOp("sub", a, b)


def _neg(a):
    return a if ex._is_const(a, 0.0) else ex.call("neg", a)


class _Deriver:
    def __init__(self, chain: list[Link], along):
        self.chain = chain
        self.along = along
        self.ops = {lk.name: lk.op for lk in chain}
        self.link: Link | None = None
        self.rules: list[str] = []

    def results_in(self, e: ex.Expr) -> set[str]:
        return {n.name for n in ex.walk(e) if isinstance(n, ex.Var) and n.name in self.ops}

    def running(self, e: ex.Expr) -> bool:
        """Whether ``e`` uses a result that moves during the pass in the direction that bounds
        the terms (a running max): such factors stay in the loop."""
        return any(self.ops[n] == "max" for n in self.results_in(e))

    def refuse(self, sub: ex.Expr, why: str):
        raise ChainRefusedError(f"link {self.link.name} = {self.link.op}_k {ex.format_expr(self.link.body)}: "
                           f"{ex.format_expr(sub)} {why}")

    def use(self, rule: str):
        if rule not in self.rules:
            self.rules.append(rule)

    # A term as (together, online, after): term == together * after, where together is the
    # term with the after-pass factors taken out (kept in its own shape, so exp(x - m) stays
    # one exponential rather than exp(x) * exp(-m), which would overflow), online is the
    # factor of running results inside together, and after the factor applied after the pass.
    def factor(self, e: ex.Expr):
        if not self.results_in(e):
            return e, ONE, ONE
        if not self.along(e):  # a factor of results alone
            if self.running(e):
                if isinstance(e, ex.Call) and e.fn == "exp":
                    return e, e, ONE
                self.refuse(e, "is a factor of the running max that is not an exponential: "
                               "no rule rescales it without dividing by its old value")
            self.use("after-pass")
            return ONE, ONE, e
        if isinstance(e, ex.BinOp) and e.op in ("mul", "div"):
            ta, oa, fa = self.factor(e.a)
            tb, ob, fb = self.factor(e.b)
            self.use("product")
            if e.op == "mul":
                return _mul(ta, tb), _mul(oa, ob), _mul(fa, fb)
            return _div(ta, tb), _div(oa, ob), _div(fa, fb)
        if isinstance(e, ex.Call) and e.fn == "exp":
            free, moving, fixed = self.split(e.args[0])
            self.use("exp-split")
            together = ex.call("exp", _add(free, moving))
            online = ex.call("exp", moving) if not ex._is_const(moving, 0.0) else ONE
            after = ex.call("exp", fixed) if not ex._is_const(fixed, 0.0) else ONE
            if not ex._is_const(fixed, 0.0):
                self.use("after-pass")
            return together, online, after
        if isinstance(e, ex.Call) and e.fn == "neg":
            t, o, f = self.factor(e.args[0])
            return _neg(t), o, f
        if isinstance(e, ex.Select):
            if self.results_in(e.cond):
                self.refuse(e.cond, "chooses by a result: the terms it picks change as the result moves")
            branches = []
            for b in (e.a, e.b):
                branches.append(None if ex._is_const(b, 0.0) else self.factor(b))
            live = [b for b in branches if b is not None]
            if any(ex.format_expr(b[1]) != ex.format_expr(live[0][1]) or
                   ex.format_expr(b[2]) != ex.format_expr(live[0][2]) for b in live):
                self.refuse(e, "has branches with different factors of the results")
            self.use("mask")
            t = [ZERO if b is None else b[0] for b in branches]
            after = live[0][2]
            if not self.along(e.cond) and len(live) == 1 and not ex._is_const(after, 1.0):
                # A choice made once a row (a row with every element masked) also chooses the after-pass
                # factor: where it picks 0 the factor (1 / l, l = 0 there) is never computed.
                after = ex.Select(e.cond, ZERO, after) if branches[0] is None else ex.Select(e.cond, after, ZERO)
            return ex.Select(e.cond, t[0], t[1]), live[0][1], after
        if isinstance(e, ex.BinOp) and e.op in ("add", "sub"):
            self.refuse(e, "adds a term of the axis to a term of a result: it is not a product G(x)·H(result)")
        self.refuse(e, f"uses a result inside {getattr(e, 'fn', getattr(e, 'op', type(e).__name__))}, "
                       f"which no rule splits")

    # An exponent (or a max's term) as (free, moving, fixed): e == free + moving + fixed, with
    # free using no result, moving the running results' part and fixed the other results' part.
    def split(self, e: ex.Expr):
        if not self.results_in(e):
            return e, ZERO, ZERO
        if isinstance(e, ex.BinOp) and e.op in ("add", "sub"):
            a, b = self.split(e.a), self.split(e.b)
            if e.op == "add":
                return tuple(_add(x, y) for x, y in zip(a, b))
            return tuple(_sub(x, y) for x, y in zip(a, b))
        if isinstance(e, ex.Call) and e.fn == "neg":
            return tuple(_neg(x) for x in self.split(e.args[0]))
        if isinstance(e, ex.BinOp) and e.op in ("mul", "div"):
            # A constant multiple (the attention scale) distributes over the parts.
            scale_first = e.op == "mul" and self.constant(e.a)
            scale, inner = (e.a, e.b) if scale_first else (e.b, e.a)
            if self.constant(scale):
                self.use("linear-scale")
                return tuple(x if ex._is_const(x, 0.0) else
                             ex.BinOp(e.op, scale, x) if scale_first else ex.BinOp(e.op, x, scale)
                             for x in self.split(inner))
        if not self.along(e):
            return (ZERO, e, ZERO) if self.running(e) else (ZERO, ZERO, e)
        self.refuse(e, "mixes a term of the axis and a result in a way that is not a sum of the two")

    def constant(self, e: ex.Expr) -> bool:
        """The same at every element and in every pass: no result, nothing of the axis."""
        return not self.results_in(e) and not self.along(e)

    def link_pass(self, link: Link) -> LinkPass:
        self.link, self.rules = link, []
        earlier = {lk.name for lk in self.chain[:self.chain.index(link)]}
        if self.results_in(link.body) - earlier:
            self.refuse(link.body, "uses a result that is not computed before it in the chain")
        me = result(link.name, link.body.dtype)
        if link.op == "max":
            free, moving, fixed = self.split(link.body)
            shift = _add(moving, fixed)
            if not ex._is_const(shift, 0.0):
                self.use("max-shift")
            self.use("max-plain")
            return LinkPass(link, free, ONE, _add(me, shift), self.rules)
        together, online, after = self.factor(link.body)
        if not self.results_in(link.body):
            self.use("free")
        rescale = ONE
        if not ex._is_const(online, 1.0):
            rescale = self.rescale(online)
            self.use("online-rescale")
        return LinkPass(link, together, rescale, _mul(me, after), self.rules)

    def rescale(self, online: ex.Expr) -> ex.Expr:
        """``online(new) / online(old)`` with exp(a) / exp(b) written exp(a - b)."""
        names = self.results_in(online)
        before = ex.substitute(online, {n: old(n.name, n.dtype) for n in ex.walk(online)
                                        if isinstance(n, ex.Var) and n.name in names})
        exps_new, exps_old = _exponents(online), _exponents(before)
        if exps_new is None or exps_old is None:
            return _div(online, before)
        return ex.call("exp", _sub(exps_new, exps_old))


def _exponents(e: ex.Expr) -> ex.Expr | None:
    """The exponent of a product or quotient of exponentials (``exp(a) * exp(b)`` -> ``a + b``)."""
    if isinstance(e, ex.Call) and e.fn == "exp":
        return e.args[0]
    if isinstance(e, ex.BinOp) and e.op in ("mul", "div"):
        a, b = _exponents(e.a), _exponents(e.b)
        if a is None or b is None:
            return None
        return ex.BinOp("add" if e.op == "mul" else "sub", a, b)
    return None


def derive(chain: list[Link], along) -> OnePass:
    """The single-pass form of ``chain``. ``along(e)``: whether the expression ``e`` varies along
    the reduced axis. Raises :class:`ChainRefusedError` with the reason when a link does not factor."""
    for lk in chain:
        if lk.op not in COMBINERS:
            raise ChainRefusedError(f"link {lk.name}: {lk.op} reductions are not derived (only {', '.join(COMBINERS)})")
    d = _Deriver(chain, along)
    return OnePass([d.link_pass(lk) for lk in chain])


# -- partial results: the axis split into parts (flash-decoding) ---------------------------------

def why_not_split(plan: OnePass) -> str | None:
    """Why the running results of parts of the axis cannot be merged (None: they can). A part's
    results merge as one more element does when every term reads only running maxima, which the
    rescale moves, and no max link's term reads a running result."""
    maxima = {lp.link.name for lp in plan.links if lp.link.op == "max"}
    names = {lp.link.name for lp in plan.links}
    for lp in plan.links:
        read = {n.name for n in ex.walk(lp.term) if isinstance(n, ex.Var) and n.name in names}
        if lp.link.op == "max" and read:
            return f"the max link {lp.link.name} reads the running {', '.join(sorted(read))}"
        if read - maxima:
            return f"the link {lp.link.name} reads the running sum {', '.join(sorted(read - maxima))}"
    return None


def merge(plan: OnePass, parts: list[dict], maxima: dict | None = None) -> dict:
    """The running results of the whole axis from those of its parts (``parts``: one dict per part,
    link name -> its running value there, as expressions): each max link the max of the parts'; each
    sum link the sum of the parts', each rescaled from its part's maxima to the merged ones by the
    link's own rescale (``X.old`` read as the part's ``X``). ``maxima`` gives the merged maxima
    (else they are the max expressions). Check :func:`why_not_split` first."""
    merged = dict(maxima or {})
    for lp in plan.links:
        if lp.link.op == "max" and lp.link.name not in merged:
            # A balanced tree: a target that writes max out as selects reads each operand several
            # times, so a chain of 16 would grow as 3^16.
            values = [part[lp.link.name] for part in parts]
            while len(values) > 1:
                values = [ex.maximum(*values[k:k + 2]) if k + 1 < len(values) else values[k]
                          for k in range(0, len(values), 2)]
            merged[lp.link.name] = values[0]
    for lp in plan.links:
        if lp.link.op != "sum" or any(lp.link.name not in part for part in parts):
            continue  # (a link the parts do not give is left out)
        total = None
        for part in parts:
            moved = ex.substitute(lp.rescale, {
                **{n: part[n.name[:-4]] for n in ex.walk(lp.rescale) if isinstance(n, ex.Var)
                   and n.name.endswith(".old")},
                **{n: merged[n.name] for n in ex.walk(lp.rescale) if isinstance(n, ex.Var) and n.name in merged}})
            value = _mul(part[lp.link.name], moved)
            total = value if total is None else _add(total, value)
        merged[lp.link.name] = total
    return merged


# -- evaluation, for the proofs and the reference -------------------------------------------

def evaluate(e: ex.Expr, env: dict, exp) -> object:
    """``e`` with Vars read from ``env`` (name -> value) in the arithmetic of the values
    (Fractions stay exact; float constants become the Fractions they are); ``exp`` is the
    exponential to use."""
    if isinstance(e, ex.Const):  # a float constant as the exact rational it is
        return Fraction(e.value) if isinstance(e.value, float) and math.isfinite(e.value) else e.value
    if isinstance(e, ex.Var):
        return env[e.name]
    if isinstance(e, ex.Call):
        x = evaluate(e.args[0], env, exp)
        if e.fn == "exp":
            return exp(x)
        if e.fn == "neg":
            return -x
        raise MinicompError(f"evaluate: no rule for {e.fn}")
    if isinstance(e, ex.Select):
        return evaluate(e.a, env, exp) if evaluate(e.cond, env, exp) else evaluate(e.b, env, exp)
    if isinstance(e, ex.BinOp):
        a, b = evaluate(e.a, env, exp), evaluate(e.b, env, exp)
        ops = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / b,
               "max": lambda: max(a, b), "min": lambda: min(a, b), "lt": lambda: a < b, "le": lambda: a <= b,
               "gt": lambda: a > b, "ge": lambda: a >= b, "eq": lambda: a == b, "ne": lambda: a != b,
               "and": lambda: a and b, "or": lambda: a or b}
        if e.op in ops:
            return ops[e.op]()
    raise MinicompError(f"evaluate: no rule for {ex.format_expr(e)}")


def run_two_pass(chain: list[Link], elements: list[dict], exp) -> dict:
    """The chain as defined: each link over all ``elements`` (dicts of the element's values),
    with the earlier links' final results."""
    results: dict = {}
    for lk in chain:
        terms = [evaluate(lk.body, {**el, **results}, exp) for el in elements]
        results[lk.name] = max(terms) if lk.op == "max" else sum(terms[1:], terms[0])
    return results


def run_split(plan: OnePass, parts: list[list[dict]], exp) -> dict:
    """The chain over the concatenation of ``parts``: each part's running results in one pass, then
    :func:`merge`, then the finishing factors (flash-decoding's two steps, exactly)."""
    states = [_running(plan, elements, exp) for elements in parts if elements]
    consts = {f"p{k}.{n}": v for k, st in enumerate(states) for n, v in st.items()}
    exprs = merge(plan, [{n: ex.Var(f"p{k}.{n}", dtypes.float32) for n in st} for k, st in enumerate(states)])
    state = {}
    for lp in plan.links:  # maxima first: the sums' rescales read them
        if lp.link.op == "max":
            state[lp.link.name] = evaluate(exprs[lp.link.name], consts, exp)
    for lp in plan.links:
        if lp.link.op == "sum":
            state[lp.link.name] = evaluate(exprs[lp.link.name], {**consts, **state}, exp)
    return _finished(plan, state, parts[0][0] if parts and parts[0] else {}, exp)


def run_one_pass(plan: OnePass, elements: list[dict], exp) -> dict:
    """The chain in one walk over ``elements``, as ``plan`` derives it. The running results start
    at the first element (no identity needed: exact arithmetic has no -inf)."""
    return _finished(plan, _running(plan, elements, exp), elements[0] if elements else {}, exp)


def _running(plan: OnePass, elements: list[dict], exp) -> dict:
    """The running results after one walk over ``elements``."""
    state: dict = {}
    for k, el in enumerate(elements):
        before = {f"{n}.old": v for n, v in state.items()}
        for lp in plan.links:
            name = lp.link.name
            env = {**el, **before, **state}
            term = evaluate(lp.term, env, exp)
            if k == 0:  # the first element starts each result; "before" it is that start
                state[name] = term
                before[f"{name}.old"] = term
            elif lp.link.op == "max":
                state[name] = max(state[name], term)
            else:
                state[name] = state[name] * evaluate(lp.rescale, {**env, **state}, exp) + term
    return state


def _finished(plan: OnePass, state: dict, row: dict, exp) -> dict:
    """The results: each link's finishing factor applied to the running results. (What a factor
    reads of the row, a row's mask, is the same at every element: ``row`` is any of them.)"""
    final = dict(state)
    for lp in plan.links:
        final[lp.link.name] = evaluate(lp.finish, {**row, **state, **final, lp.link.name: state[lp.link.name]}, exp)
    return final
