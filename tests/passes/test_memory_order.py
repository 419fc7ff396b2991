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
            if oa < ob + b.type.nbytes and ob < oa + a.type.nbytes and not written_in_place(model, a, b, first, last):
                bad.append((a.name, b.name))
    return bad


def written_in_place(model, a, b, first, last) -> bool:
    """Is one of ``a``, ``b`` written exactly over the other by the kernel
    where the other dies, which declares it (and so drops noalias for them)?"""
    for old, new in ((a, b), (b, a)):
        if last[old] == first[new] and model.memory_plan.offsets[old] == model.memory_plan.offsets[new]:
            k = model.kernels[first[new]]
            names = {v: buf.name for buf, v in zip(k.params, k.param_values)}
            if (names.get(new), names.get(old)) in k.in_place and old.type == new.type:
                return True
    return False


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


def elementwise_chain():
    g = mc.GraphBuilder("chain")
    x = g.input("x", (32, 48))
    w = g.constant(np.random.default_rng(0).standard_normal((48, 48)).astype(np.float32) / 8)
    h = g.exp(g.relu(x @ w)) * 2.0  # three elementwise kernels after the product
    g.output(h @ w, (h + 1.0).transpose([1, 0]))
    return g.build()


def test_elementwise_kernels_write_over_inputs_that_die_there():
    """Without fusion, relu, exp and mul each take the memory of the buffer
    they read (it dies there); the add takes mul's only if it runs after the
    second product, mul's other reader. The pairs lose noalias in the LLVM
    IR, the plan's figures count them, and results equal the reference on 1
    and 2 threads."""
    graph = elementwise_chain()
    model = mc.compile(graph, pipeline="simplify,lower,schedule,plan", num_threads=2, cache=False)
    plan = model.memory_plan
    pairs = [(k.name.rsplit("_", 1)[0], pair) for k in model.kernels for pair in k.in_place]
    assert [name for name, _ in pairs][:3] == ["relu", "exp", "mul"] and len(pairs) == len(plan.aliases)
    assert f"{len(pairs)} written in place" in plan.summary()
    assert "// in place: relu_" in model.stages["loops"]
    check_plan(plan)
    assert independent_overlaps(model) == []
    relu = next(k for k in model.kernels if k.in_place and "relu" in k.name)
    signature = next(line for line in model.stages["llvm"].splitlines() if f"@k_{relu.name}(" in line
                     and line.startswith("define"))
    assert "noalias" not in signature
    x = np.random.default_rng(1).standard_normal((32, 48)).astype(np.float32)
    for threads in (1, 2):
        model.set_num_threads(threads)
        for got, want in zip(model(x), mc.run_reference(graph, x)):
            assert_close(got, want, scale=10)


def test_no_kernel_writes_over_an_input_read_later_or_at_other_elements():
    g = mc.GraphBuilder("kept")
    x = g.input("x", (16, 16))
    h = x @ x
    g.output(g.relu(h) + h.transpose([1, 0]))
    model = mc.compile(g.build(), pipeline="simplify,lower,schedule,plan", cache=False)
    # relu: h is read after it; the transpose, where h dies, reads it at
    # other elements than it writes; the add writes the graph's output,
    # which is outside the arena.
    assert [k.name.rsplit("_", 1)[0] for k in model.kernels] == ["matmul", "relu", "transpose", "add"]
    assert all(k.in_place == [] for k in model.kernels) and model.memory_plan.aliases == {}


def test_a_kernel_that_initialises_its_output_first_does_not_write_over_an_input():
    """(1, 1) @ (1, 5): the product stores 0 to each element, then adds; had it
    taken the right operand's memory, the first store would clobber the
    operand before the second read it (a GRU of hidden size 1 did)."""
    g = mc.GraphBuilder("init")
    a, b = g.input("a", (1, 1)), g.input("b", (1, 5))
    g.output(g.exp(a) @ g.tanh(b) + 1.0)
    graph = g.build()
    model = mc.compile(graph, pipeline="simplify,lower,schedule,plan", cache=False)
    product = next(k for k in model.kernels if "matmul" in k.name)
    assert product.in_place == []
    xs = [np.full((1, 1), 0.5, np.float32), np.linspace(-1, 1, 5, dtype=np.float32).reshape(1, 5)]
    assert_close(model(*xs)[0], mc.run_reference(graph, *xs)[0], scale=10)


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
    model = mc.compile(graph, pipeline="simplify,lower,schedule,plan", memory={"in_place": False})
    plan = model.memory_plan
    assert plan.lower_bound_bytes < plan.baseline_peak_bytes
    assert plan.arena_bytes == plan.lower_bound_bytes and plan.order_is_optimal
    assert_close(model(x)[0], mc.run_reference(graph, x)[0], scale=10)
    kept = mc.compile(graph, pipeline="simplify,lower,schedule,plan", memory={"order": "fusion", "in_place": False})
    assert kept.memory_plan.lower_bound_bytes == plan.baseline_peak_bytes
    # The adds and multiplies after exp and tanh write over them: less again
    shared = mc.compile(graph, pipeline="simplify,lower,schedule,plan").memory_plan
    assert len(shared.aliases) == 2 and shared.lower_bound_bytes < plan.lower_bound_bytes
    with pytest.raises(mc.MinicompError, match="in_place must be True or False"):
        mc.compile(graph, memory={"in_place": "no"})


def test_memory_budget_keeps_fusion_order_when_it_fits_and_says_the_best_peak_when_nothing_does():
    graph = two_branches()
    pipe, whole = "simplify,lower,schedule,plan", {"in_place": False}  # the order's own figures
    free = mc.compile(graph, pipeline=pipe, memory=whole).memory_plan
    roomy = mc.compile(graph, pipeline=pipe, memory=whole, memory_budget=free.baseline_peak_bytes)
    assert roomy.memory_plan.order_strategy == "fusion"
    tight = mc.compile(graph, pipeline=pipe, memory=whole, memory_budget=free.lower_bound_bytes)
    assert tight.memory_plan.arena_bytes <= free.lower_bound_bytes
    with pytest.raises(mc.MinicompError, match=f"least peak found is {free.lower_bound_bytes:,}"):
        mc.compile(graph, pipeline=pipe, memory=whole, memory_budget=free.lower_bound_bytes - 64)
    # Writing in place fits a budget the order alone cannot
    shared = mc.compile(graph, pipeline=pipe, memory_budget=free.lower_bound_bytes - 64).memory_plan
    assert shared.aliases and shared.arena_bytes <= free.lower_bound_bytes - 64
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
    assert main(["plan", str(src), "--png", str(png), "-v", "--no-in-place", *unfused]) == 0
    out = capsys.readouterr().out
    assert "optimal (lower bound)" in out and "order:" in out and png.stat().st_size > 1000
    assert main(["plan", str(src), *unfused]) == 0
    assert "2 written in place" in capsys.readouterr().out
    assert main(["plan", str(src), "--budget", "64", *unfused]) == 2
    # Without matplotlib the picture is a clear error, not a traceback.
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    plan = mc.compile(two_branches()).memory_plan
    with pytest.raises(mc.MinicompError, match="needs matplotlib"):
        plan.draw(str(tmp_path / "again.png"))
