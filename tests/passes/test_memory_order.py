"""Memory scheduling: execution orders, offsets, budgets, the picture.

Orders are checked against brute force on tiny problems; compiled models are
checked against the reference under every order and offset strategy, and
their plans against lifetimes recomputed here from the kernels themselves."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicomp as mc
from minicomp.passes.memory import check_plan, plan_arena
from minicomp.passes.memory_order import OrderProblem, choose_order, exact_order, greedy_order, is_topological, peak_of
from tests.passes.test_memory import lifetimes
from tests.strategies import random_dags
from tests.tolerances import assert_close


@st.composite
def order_problems(draw, max_kernels=7):
    """A random DAG of kernels, each writing one buffer read by some later kernels."""
    n = draw(st.integers(1, max_kernels))
    preds = [set(draw(st.lists(st.integers(0, k - 1), max_size=3))) if k else set() for k in range(n)]
    writes = [[f"b{k}"] for k in range(n)]
    reads = [[f"b{p}" for p in sorted(preds[k])] for k in range(n)]
    size = {f"b{k}": 64 * draw(st.integers(0, 40)) for k in range(n)}
    workspace = [64 * draw(st.integers(0, 5)) for _ in range(n)]
    return OrderProblem([f"k{k}" for k in range(n)], preds, writes, reads, size, workspace)


def brute_force_peak(p: OrderProblem) -> int:
    return min(peak_of(p, list(o)) for o in itertools.permutations(range(p.n)) if is_topological(p, list(o)))


@given(order_problems())
def test_exact_search_agrees_with_brute_force(p):
    exact = exact_order(p)
    assert is_topological(p, exact)
    assert peak_of(p, exact) == brute_force_peak(p)


@given(order_problems(max_kernels=14))
def test_greedy_and_chosen_orders_are_topological_and_no_worse_than_fusion(p):
    greedy = greedy_order(p)
    assert is_topological(p, greedy)
    choice = choose_order(p)
    assert is_topological(p, choice.order)
    assert choice.peak <= choice.baseline_peak == peak_of(p, list(range(p.n)))
    if "exact" in choice.peaks:  # the heuristic's gap is measured, never negative
        assert choice.peaks["greedy"] >= choice.peaks["exact"] == choice.peak


@pytest.mark.parametrize("strategy", ["best", "size", "breadth", "search"])
@given(lts=lifetimes())
def test_every_offset_strategy_keeps_live_buffers_apart(strategy, lts):
    plan = plan_arena(lts, strategy)
    check_plan(plan)
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes or not lts
    if strategy == "best":
        assert all(plan.arena_bytes <= plan_arena(lts, s).arena_bytes for s in ("size", "breadth"))


def independent_overlaps(model):
    """Pairs of planned values live at the same step that share bytes, from the kernels' own parameters."""
    graph, plan = model.graph, model.memory_plan
    external = set(graph.inputs) | set(graph.constants) | set(graph.outputs)
    first, last = {}, {}
    for step, k in enumerate(model.kernels):
        n_in = len(k.inputs)
        for pos, v in enumerate(k.param_values[:n_in + len(k.outputs)]):
            if v is None or v in external:
                continue
            if pos >= n_in:
                first.setdefault(v, step)
            last[v] = step
    bad = []
    values = [v for v in first if v.type.nbytes]
    for a, b in itertools.combinations(values, 2):
        if first[a] <= last[b] and first[b] <= last[a]:
            oa, ob = plan.offsets[a], plan.offsets[b]
            if oa < ob + b.type.nbytes and ob < oa + a.type.nbytes:
                bad.append((a.name, b.name))
    return bad


@settings(max_examples=max(3, settings().max_examples // 4))
@given(random_dags(max_nodes=10), st.sampled_from(["fusion", "greedy", "exact"]),
       st.sampled_from(["size", "breadth", "search"]))
def test_compiled_results_match_under_every_strategy(case, order, offsets):
    graph, inputs = case
    model = mc.compile(graph, pipeline="simplify,lower,schedule,plan", num_threads=2,
                       memory={"order": order, "offsets": offsets})
    assert model.memory_plan.order_strategy == order and model.memory_plan.offset_strategy == offsets
    assert independent_overlaps(model) == []
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs)):
        assert_close(got, want, scale=10)


def two_branches():
    """Two branches that each make a big buffer and shrink it; the graph lists
    both big steps first, so fusion-free order keeps both big buffers live."""
    g = mc.GraphBuilder("branches")
    x = g.input("x", (64, 64))
    big_a, big_b = g.exp(x) + 1.0, g.tanh(x) * 2.0
    small_a = g.sum(big_a, axes=[1], keepdims=True)
    small_b = g.max(big_b, axes=[1], keepdims=True)
    g.output(small_a + small_b)
    return g.build()


def test_a_better_order_lowers_the_peak_and_keeps_the_answer():
    graph = two_branches()
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    model = mc.compile(graph, pipeline="simplify,lower,schedule,plan")
    plan = model.memory_plan
    assert plan.lower_bound_bytes < plan.baseline_peak_bytes
    assert plan.arena_bytes == plan.lower_bound_bytes and plan.order_is_optimal
    assert_close(model(x)[0], mc.run_reference(graph, x)[0], scale=10)
    kept = mc.compile(graph, pipeline="simplify,lower,schedule,plan", memory={"order": "fusion"})
    assert kept.memory_plan.lower_bound_bytes == plan.baseline_peak_bytes


def test_memory_budget_keeps_fusion_order_when_it_fits_and_says_the_best_peak_when_nothing_does():
    graph = two_branches()
    free = mc.compile(graph, pipeline="simplify,lower,schedule,plan").memory_plan
    roomy = mc.compile(graph, pipeline="simplify,lower,schedule,plan", memory_budget=free.baseline_peak_bytes)
    assert roomy.memory_plan.order_strategy == "fusion"
    tight = mc.compile(graph, pipeline="simplify,lower,schedule,plan", memory_budget=free.lower_bound_bytes)
    assert tight.memory_plan.arena_bytes <= free.lower_bound_bytes
    with pytest.raises(mc.MinicompError, match=f"least peak found is {free.lower_bound_bytes:,}"):
        mc.compile(graph, pipeline="simplify,lower,schedule,plan", memory_budget=free.lower_bound_bytes - 64)
    with pytest.raises(mc.MinicompError, match="memory_budget"):
        mc.compile(graph, memory_budget=-1)


def test_unknown_memory_options_are_refused():
    graph = two_branches()
    with pytest.raises(mc.MinicompError, match="unknown memory order"):
        mc.compile(graph, memory={"order": "random"})
    with pytest.raises(mc.MinicompError, match="unknown memory option"):
        mc.compile(graph, memory={"colour": "red"})


def test_plan_picture_and_cli(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from minicomp.cli import main

    src = tmp_path / "g.mcir"
    src.write_text(mc.print_graph(two_branches(), full_constants=True))
    png = tmp_path / "plan.png"
    unfused = ["--pipeline", "simplify,lower,schedule,plan"]
    assert main(["plan", str(src), "--png", str(png), "-v", *unfused]) == 0
    out = capsys.readouterr().out
    assert "optimal (lower bound)" in out and "order:" in out and png.stat().st_size > 1000
    assert main(["plan", str(src), "--budget", "64", *unfused]) == 2
    # Without matplotlib the picture is a clear error, not a traceback.
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    plan = mc.compile(two_branches()).memory_plan
    with pytest.raises(mc.MinicompError, match="needs matplotlib"):
        plan.draw(str(tmp_path / "again.png"))
