"""Schedules as data: primitives rewrite named loops, check legality with
clear errors, print and parse back, and keep results equal to the
unscheduled kernel on random legal step sequences."""

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import minicomp as mc
from minicomp.ir.loops import loops, top_statements, walk_stmts
from minicomp.passes.manager import PassManager, Program
from minicomp.passes.schedules import (
    Bind,
    CacheRead,
    CacheWrite,
    ComputeAt,
    DecomposeReduction,
    Distribute,
    Fuse,
    Join,
    Localize,
    Pack,
    Parallel,
    Partition,
    Reorder,
    ReverseComputeInline,
    ScheduleError,
    Simd,
    Split,
    Tile,
    Unroll,
    Vectorize,
    apply_schedule,
    format_schedule,
    parse_schedule,
)
from minicomp.passes.schedules.cpu import cpu_schedule
from minicomp.target import Target
from tests.strategies import contraction_graphs
from tests.tolerances import assert_close


def lowered(graph, name=None):
    kernels = PassManager("fuse,lower").run(Program(graph)).kernels
    return kernels[0] if name is None else next(k for k in kernels if k.name == name)


def exp_graph():
    g = mc.GraphBuilder()
    x = g.input("x", (4, 6, 8))
    g.output(g.exp(x))
    return g.build()


def matmul_graph(m=37, k=53, n=71, epilogue=True):
    g = mc.GraphBuilder()
    a, b = g.input("a", (m, k)), g.input("b", (k, n))
    y = a @ b
    g.output(g.relu(y + 0.5) if epilogue else y)
    return g.build()


def matmul_inputs(m=37, k=53, n=71):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)]


def test_steps_rewrite_loops_and_are_recorded():
    k2 = apply_schedule(lowered(exp_graph()), [Fuse("i0", "i1"), Parallel("i0_i1"), Vectorize("i2")])
    text = str(k2)
    assert "parallel for (i0_i1 = 0; i0_i1 < 24; i0_i1++)" in text
    assert "vectorized for (i2" in text
    assert "// schedule: fuse(i0, i1); parallel(i0_i1); vectorize(i2)" in text
    assert "x[(i0_i1 // 6), (i0_i1 % 6), i2]" in text


def test_lowering_is_plain_loops_with_unique_names():
    k = lowered(matmul_graph())
    kinds = {lp.kind for lp in loops(k.body)}
    assert kinds == {"serial"}
    names = [lp.var.name for lp in loops(k.body)]
    assert len(names) == len(set(names))
    # out[i] = 0; for r: out[i] += a * b, then the epilogue nest on its own
    assert "relu_3[i0, i1] = 0.0;" in str(k)


def test_split_reorder_and_remainder_loops():
    k = apply_schedule(lowered(exp_graph()), "split(i2, 4); reorder(i2.o, i1)")
    assert [lp.var.name for lp in loops(k.body)] == ["i0", "i2.o", "i1", "i2.i"]
    k = apply_schedule(lowered(exp_graph()), "split(i2, 3)")
    names = [lp.var.name for lp in loops(k.body)]
    assert names[:4] == ["i0", "i1", "i2.o", "i2.i"]
    tail = next(lp for lp in loops(k.body) if lp.var.name == "i2.t")
    assert tail.extent == 2  # 8 = 2 * 3 + 2
    with pytest.raises(ScheduleError, match="not perfectly nested"):
        apply_schedule(k, "reorder(i2.i, i1)")  # i1 holds the blocks and the remainder


def test_a_widened_tail_is_one_full_block_ending_at_the_last_iteration():
    """split(i2, 3, widen) on 8 iterations: blocks 0-2 and 3-5, then a tail of
    3 over 5-7 (iteration 5 runs twice, writing the same value)."""
    graph = exp_graph()
    k = apply_schedule(lowered(graph), "split(i2, 3, widen)")
    tail = next(lp for lp in loops(k.body) if lp.var.name == "i2.t")
    assert tail.extent == 3 and "x[i0, i1, (i2.t + 5)]" in str(k)
    xs = np.random.default_rng(0).standard_normal((4, 6, 8)).astype(np.float32)
    model = mc.compile(graph, schedules={k.name: k.schedule})
    np.testing.assert_allclose(model(xs)[0], np.exp(xs), rtol=1e-6)
    assert str(k.schedule[0]) == "split(i2, 3, widen)"
    # A reduction reset by its initialisation inside the loop may run again ...
    apply_schedule(lowered(matmul_graph(8, 5, 13, epilogue=False)), "split(i1, 4, widen)")
    # ... but not updates onto results that an earlier iteration's values reach
    with pytest.raises(ScheduleError, match="reads matmul_0, which it writes"):
        apply_schedule(lowered(matmul_graph(8, 5, 13, epilogue=False)),
                       "decompose_reduction(i0); reorder(r0, i1); split(r0, 2, widen)")
    with pytest.raises(ScheduleError, match="tail must be exact or widen"):
        apply_schedule(lowered(graph), "split(i2, 3, wide)")


def test_a_widened_tail_over_a_symbolic_extent_shorter_than_a_block_repeats_the_last_iteration():
    """split(i0, 8, widen) over rows 1..20: at 3 rows the tail runs 0, 1, 2, 2, 2, 2, 2, 2 (the last
    row again, the same value written again); at 13, blocks 0-7 and a tail over 5-12."""
    rows = mc.Dim("rows", 1, 20)
    g = mc.GraphBuilder()
    x = g.input("x", (rows, 6))
    g.output(g.exp(x))
    graph = g.build()
    k = apply_schedule(lowered(graph), "split(i0, 8, widen)")
    assert "min((max((rows - 8), 0) + i0.t), (rows - 1))" in str(k)
    model = mc.compile(graph, schedules={k.name: k.schedule})
    for n in (1, 3, 8, 13, 20):
        xs = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
        np.testing.assert_allclose(model(xs)[0], np.exp(xs), rtol=1e-6)


def test_partition_runs_the_same_iterations_in_two_loops():
    k = apply_schedule(lowered(exp_graph()), "partition(i2, 3)")
    first, rest = (next(lp for lp in loops(k.body) if lp.var.name == n) for n in ("i2", "i2.p"))
    assert (first.extent, rest.extent) == (3, 5)
    assert "x[i0, i1, (i2.p + 3)]" in str(k)
    with pytest.raises(ScheduleError, match="must be inside the loop"):
        apply_schedule(lowered(exp_graph()), "partition(i2, 8)")
    with pytest.raises(ScheduleError, match="serial or vectorized"):
        apply_schedule(lowered(exp_graph()), "parallel(i0); partition(i0, 2)")


def test_a_concatenation_fused_into_a_reduction_is_partitioned_at_its_seams():
    """A concatenation read as a matmul's reduction: the select between the
    inputs (and both loads) is gone from the loops, each part reads one
    input, and the results are the reference's."""
    rng = np.random.default_rng(1)
    g = mc.GraphBuilder()
    parts = [g.input(f"x{i}", (5, n)) for i, n in enumerate((24, 40, 8))]
    w = g.constant(rng.standard_normal((72, 48)).astype(np.float32))
    g.output(g.concat(*parts, axis=1) @ w)
    graph = g.build()
    model = mc.compile(graph, num_threads=2)
    loops_text = model.stages["loops"]
    assert "partition(r0, 24)" in loops_text and "select(" not in loops_text.split("kernel", 1)[1]
    inputs = [rng.standard_normal((5, n)).astype(np.float32) for n in (24, 40, 8)]
    assert_close(model(*inputs)[0], mc.run_reference(graph, *inputs)[0], scale=10)


def test_register_tile_by_hand_matches_reference():
    graph = matmul_graph(12, 9, 64, epilogue=False)
    steps = parse_schedule("""
        tile(i0, i1, 6, 16)
        cache_write(matmul_0, i1.o, local)
        decompose_reduction(i0.i)
        reorder(r0, i0.i, i1.i)
        unroll(i0.i); simd(i1.i); unroll(i0.i.init); simd(i1.i.init); unroll(i0.i.wb); simd(i1.i.wb)
        parallel(i0.o)
    """)
    model = mc.compile(graph, schedules={"matmul_0": steps})
    assert "local f32 matmul_0_local[6, 16]" in model.stages["loops"]
    ins = matmul_inputs(12, 9, 64)
    assert_close(model(*ins)[0], ins[0] @ ins[1], scale=10)


@pytest.mark.parametrize("m, n", [(48, 40), (50, 40), (50, 96), (6, 16)])
def test_tile_handles_row_and_column_remainders(m, n):
    # docs/scheduling.md's tile(i0, i1, 6, 16) where the rows, the columns or both do not divide.
    graph = matmul_graph(m, 70, n)
    model = mc.compile(graph, schedules={"fused_matmul_add_relu_0": "tile(i0, i1, 6, 16); parallel(i0.o)"})
    loops_text = model.stages["loops"]
    assert "i1.o" in loops_text and "i0.i" in loops_text
    assert ("i1.t" in loops_text) == (n % 16 != 0) and ("i0.t" in loops_text) == (m % 6 != 0)
    ins = matmul_inputs(m, 70, n)
    assert_close(model(*ins)[0], mc.run_reference(graph, *ins)[0], scale=10)


def test_tile_refuses_in_the_users_own_terms():
    with pytest.raises(ScheduleError, match=r"tile\(i0, i1, 6, 128\): factor 128 must be between 1 and the "
                                            r"extent of i1 \(71\)"):
        apply_schedule(lowered(matmul_graph()), "tile(i0, i1, 6, 128)")
    with pytest.raises(ScheduleError, match=r"tile\(i0, r0, 6, 16\): loop r0 must be the only statement"):
        apply_schedule(lowered(matmul_graph()), "tile(i0, r0, 6, 16)")


@pytest.mark.parametrize("text, message", [
    ("vectorize(nope)", "no loop named nope"),
    ("fuse(i0, i2)", "i2 is not directly inside i0"),
    ("parallel(i1)", "must be at the top level"),
    ("split(i1, 0)", "factor 0 must be between 1 and the extent of i1"),
    ("split(i1, 7)", "factor 7 must be between 1 and the extent of i1"),
    ("bind(i0, warp.x)", "unknown axis"),
    ("cache_write(nothing, i0)", "no buffer named nothing"),
    ("cache_write(exp_0, i0, texture)", "unknown scope"),
    ("decompose_reduction(i0)", "does not hold a reduction"),
    ("unroll(i0); unroll(i0)", "already unrolled"),
])
def test_bad_steps_raise_naming_kernel_step_and_loop(text, message):
    with pytest.raises(ScheduleError, match=message) as info:
        apply_schedule(lowered(exp_graph()), text)
    assert "kernel exp_0" in str(info.value)


def test_reduction_steps_check_legality():
    k = lowered(matmul_graph(epilogue=False))
    with pytest.raises(ScheduleError, match="r0 is a reduction"):
        apply_schedule(k, "bind(r0, thread.x)")
    with pytest.raises(ScheduleError, match="not perfectly nested"):
        apply_schedule(k, "reorder(r0, i1)")  # the initialisation sits between them
    copied = apply_schedule(k, "decompose_reduction(i0); reorder(r0, i1); cache_write(matmul_0, r0)")
    assert "i1.rd" in str(copied) and "i1.wb" in str(copied)  # read before written: copied in first
    with pytest.raises(ScheduleError, match="is read before"):
        apply_schedule(lowered(matmul_graph()), "reverse_compute_inline(i2)")


def test_schedule_text_round_trips():
    k = lowered(matmul_graph())
    scheduled = cpu_schedule(k, Target.host(), 2)
    text = format_schedule(scheduled.schedule)
    steps = parse_schedule(text)
    assert steps == scheduled.schedule
    assert format_schedule(steps) == text
    assert str(apply_schedule(k, steps)) == str(scheduled)
    for bad in ("frobnicate(i0)", "split(i0)", "split(i0, many)", "split i0"):
        with pytest.raises(ScheduleError):
            parse_schedule(bad)


def test_every_step_prints_and_parses():
    steps = [Split("i0", 4), Split("i0", 4, "widen"), Reorder(("a", "b", "c")), Fuse("a", "b"), Distribute("a"),
             Join("a", "b"), Tile("a", "b", 6, 32), Parallel("a"),
             Vectorize("a"), Simd("a"), Unroll("a"), Bind("a", "thread.x"), CacheWrite("buf", "a", "shared"),
             CacheRead("buf", "a", "local"), DecomposeReduction("a"), ComputeAt("a", "b"), ReverseComputeInline("a"),
             Pack("w", 1, 16), Localize("buf", "a"), Partition("a", 3)]
    assert parse_schedule(format_schedule(steps)) == steps


def test_user_schedules_by_key_and_unknown_keys():
    graph = exp_graph()
    model = mc.compile(graph, schedules={"exp": "unroll(i1); vectorize(i2)"})
    assert "unrolled for (i1" in model.stages["loops"]
    xs = np.random.default_rng(0).standard_normal((4, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(model(xs)[0], np.exp(xs), rtol=1e-6)
    with pytest.raises(mc.MinicompError, match="kernel 'exp_7', which does not exist; kernels: exp_0"):
        mc.compile(graph, schedules={"exp_7": "unroll(i1)"})


def test_cache_read_copies_the_box_and_keeps_results():
    graph = matmul_graph(8, 16, 32, epilogue=False)
    steps = "split(i0, 4); cache_read(b, i0.i, local)"
    model = mc.compile(graph, schedules={"matmul_0": steps})
    assert "local f32 b_local[16, 32]" in model.stages["loops"]
    ins = matmul_inputs(8, 16, 32)
    assert_close(model(*ins)[0], ins[0] @ ins[1], scale=10)


def padded_conv():
    rng = np.random.default_rng(4)
    g = mc.GraphBuilder()
    x = g.input("x", (1, 4, 9, 9))
    g.output(g.conv2d(x, g.constant(rng.standard_normal((5, 4, 3, 3)).astype(np.float32)), padding=1))
    return g.build(), [rng.standard_normal((1, 4, 9, 9)).astype(np.float32)]


def test_distribute_gives_each_nest_of_a_loop_its_own_loop():
    """A padded convolution at batch 3 is one loop over the images holding the padding and the
    convolution; distributed, each is its own loop over the images, and the results stay."""
    rng = np.random.default_rng(5)
    g = mc.GraphBuilder()
    x = g.input("x", (3, 4, 9, 9))
    g.output(g.conv2d(x, g.constant(rng.standard_normal((5, 4, 3, 3)).astype(np.float32)), padding=1))
    graph, xs = g.build(), rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    k = lowered(graph)
    assert len(top_statements(k.body)) == 1
    split = apply_schedule(k, "distribute(i0)")
    assert [lp.var.name for lp in top_statements(split.body)] == ["i0_0", "i0_1"]
    model = mc.compile(graph, schedules={k.name: "distribute(i0); fuse(i0_1, i4); parallel(i0_1_i4)"})
    assert_close(model(xs)[0], mc.run_reference(graph, xs)[0])
    with pytest.raises(ScheduleError, match="its body is one statement"):
        apply_schedule(lowered(exp_graph()), "distribute(i0)")


def test_distribute_refuses_iterations_that_share_a_buffer():
    """``for i: {t[0] = x[i]; y[i] = t[0]}``: t is one element for every iteration, so the first
    statement of all iterations cannot run before the second of any."""
    from minicomp.ir import dtypes
    from minicomp.ir import expr as ex
    from minicomp.ir.loops import Buffer, For, Kernel, Seq, Store

    i = ex.Var("i")
    xb, tb, yb = Buffer("x", (4,), dtypes.float32), Buffer("t", (1,), dtypes.float32), Buffer("y", (4,), dtypes.float32)
    zero = ex.Const(0, dtypes.int64)
    body = Seq([Store(tb, (zero,), ex.Load(xb, (i,))), Store(yb, (i,), ex.Load(tb, (zero,)))])
    k = Kernel("shared", [xb], [yb], For(i, 4, body), workspace=[tb])
    with pytest.raises(ScheduleError, match="not touched in one block per index of i"):
        apply_schedule(k, "distribute(i)")


def _copy_kernel(second_reads, extent2=4):
    """``for i < 4: t[i*4 + l] = x[i*4 + l] (l < 4); for j < extent2: y[j] = t[second_reads(j)]``."""
    from minicomp.ir import dtypes
    from minicomp.ir import expr as ex
    from minicomp.ir.loops import Buffer, For, Kernel, Seq, Store

    i, l, j = ex.Var("i"), ex.Var("l"), ex.Var("j")
    xb, tb, yb = (Buffer(n, (16,), dtypes.float32) for n in "xty")
    block = i * 4 + l
    first = For(i, 4, For(l, 4, Store(tb, (block,), ex.Load(xb, (block,)))))
    second = For(j, extent2, Store(yb, (j,), ex.Load(tb, (second_reads(j),))))
    return Kernel("copies", [xb], [yb], Seq([first, second]), workspace=[tb])


def test_join_runs_two_loops_as_one_where_each_index_owns_a_block():
    """``join`` is ``distribute`` backwards: the second loop's iteration j reads t[j * 4], written
    in the first loop's iteration j (block [4j, 4j + 4)), so the two bodies run in one loop."""
    k = _copy_kernel(lambda j: j * 4)
    joined = apply_schedule(k, "join(i, j)")
    (top,) = top_statements(joined.body)
    assert top.var.name == "i" and len(top_statements(top.body)) == 2
    # Run both: the same values as the loops one after the other.
    x = np.arange(16, dtype=np.float32)
    for kern in (k, joined):
        t, y = np.zeros(16, np.float32), np.zeros(16, np.float32)
        _run_copies(kern.body, {"x": x, "t": t, "y": y}, {})
        assert y[:4].tolist() == [0, 4, 8, 12]


def _run_copies(s, bufs, env):
    """A tiny interpreter for the loops of :func:`_copy_kernel` (For, Seq, Store of a Load)."""
    from minicomp.ir import expr as ex
    from minicomp.ir.loops import For, Seq, Store

    def value(e):
        if isinstance(e, ex.Const):
            return e.value
        if isinstance(e, ex.Var):
            return env[e]
        if isinstance(e, ex.Load):
            return bufs[e.tensor.name][value(e.indices[0])]
        a, b = value(e.a), value(e.b)
        return {"add": a + b, "mul": a * b, "sub": a - b}[e.op]

    if isinstance(s, Seq):
        for c in s.stmts:
            _run_copies(c, bufs, env)
    elif isinstance(s, For):
        for n in range(s.extent):
            env[s.var] = n
            _run_copies(s.body, bufs, env)
    elif isinstance(s, Store):
        bufs[s.buffer.name][value(s.indices[0])] = value(s.value)


def test_join_refuses_loops_that_depend_across_iterations_or_differ_in_extent():
    """Iteration j reading t[j * 4 + 4] needs the first loop's iteration j + 1, which a joined loop
    runs later; an index j * 5 leaves j's block; 3 iterations do not join 4; nor do loops apart."""
    with pytest.raises(ScheduleError, match="not touched in one block per index of i"):
        apply_schedule(_copy_kernel(lambda j: j * 4 + 4), "join(i, j)")
    with pytest.raises(ScheduleError, match="not touched in one block per index of i"):
        apply_schedule(_copy_kernel(lambda j: j * 5), "join(i, j)")
    with pytest.raises(ScheduleError, match="run 4 and 3 iterations"):
        apply_schedule(_copy_kernel(lambda j: j * 4, extent2=3), "join(i, j)")
    with pytest.raises(ScheduleError, match="does not come right after"):
        apply_schedule(_copy_kernel(lambda j: j * 4), "join(j, i)")


def test_symbolic_row_tails_run_in_one_parallel_loop():
    """Rows 1..256 in tiles of 8 leave tiles of 4, 2 and 1 for the remainder; they run in one
    parallel loop over the blocks of columns (not one each), and stay right at every remainder."""
    from benchmarks.bench_dynamic import mlp

    model = mc.compile(mlp(mc.Dim("batch", 1, 256)), num_threads=2)
    first = model.kernels[0]
    parallel = [lp for lp in top_statements(first.body) if lp.kind == "parallel"]
    assert len(parallel) == 2, model.stages["loops"]
    assert "join(" in model.stages["loops"]
    for n in (1, 3, 7, 8, 13, 15):
        x = np.random.default_rng(n).standard_normal((n, 784)).astype(np.float32)
        assert_close(model(x)[0], mc.run_reference(model.graph, x)[0])


def test_compute_at_pads_only_the_rows_each_output_row_reads():
    graph, ins = padded_conv()
    k = lowered(graph)
    assert [lp.var.name for lp in loops(k.body)][:3] == ["i0", "i1", "i2"]  # the padding nest
    done = apply_schedule(k, "compute_at(i0, i4)")
    assert "i0" not in {lp.var.name for lp in loops(done.body)}
    box = [lp.extent for lp in loops(done.body) if lp.var.name.startswith(k.workspace[0].name)]
    assert box == [4, 3, 11]  # 3 padded rows of 11 for each output row (one batch: no loop)
    model = mc.compile(graph, schedules={k.name: "compute_at(i0, i4)"})
    assert_close(model(*ins)[0], mc.run_reference(graph, *ins)[0], scale=10)
    with pytest.raises(ScheduleError, match="must come after the producer"):
        apply_schedule(k, "compute_at(i0, i1)")
    with pytest.raises(ScheduleError, match="not a serial perfect nest"):
        apply_schedule(k, "compute_at(i3, i4)")


def test_localize_gives_each_row_its_own_stack_buffer():
    g = mc.GraphBuilder()
    x = g.input("x", (64, 100))
    g.output(g.softmax(x, axis=-1))
    graph = g.build()
    k = lowered(graph)
    assert len(k.workspace) == 3  # lowering: max, exp and sum of every row in the arena
    done = apply_schedule(k, "localize(softmax_0_ws1, i0)")
    assert len(done.workspace) == 2 and "local f32 softmax_0_ws1[100];" in str(done)
    with pytest.raises(ScheduleError, match="is not a workspace"):
        apply_schedule(k, "localize(x, i0)")
    with pytest.raises(ScheduleError, match="used outside r0"):
        apply_schedule(k, "localize(softmax_0_ws1, r0)")
    model = mc.compile(graph)  # the CPU schedule localizes all three
    assert model.kernels[0].workspace == [] and model.memory_plan.arena_bytes == 0
    xs = np.random.default_rng(0).standard_normal((64, 100)).astype(np.float32)
    assert_close(model(xs)[0], mc.run_reference(graph, xs)[0])


def test_pack_relays_a_constant_once():
    rng = np.random.default_rng(1)
    g = mc.GraphBuilder()
    a = g.input("a", (5, 24))
    w = g.constant(rng.standard_normal((24, 40)).astype(np.float32))
    g.output(a @ w)
    graph = g.build()
    name = lowered(graph).inputs[1].name
    model = mc.compile(graph, schedules={"matmul_0": f"pack({name}, 1, 16)"})
    assert f"{name}_p16[3, 24, 16]" in model.stages["loops"]
    x = rng.standard_normal((5, 24)).astype(np.float32)
    assert_close(model(x)[0], x @ graph.constants[graph.nodes[0].inputs[1]], scale=10)
    g2 = mc.GraphBuilder()
    a, b = g2.input("a", (5, 24)), g2.input("b", (24, 40))
    g2.output(a @ b)
    with pytest.raises(mc.MinicompError, match="only constants are packed"):
        mc.compile(g2.build(), schedules={"matmul_0": "pack(b, 1, 16)"})


def test_gpu_bindings_need_a_gpu_target():
    with pytest.raises(mc.VerifyError, match="needs a GPU target"):
        mc.compile(exp_graph(), schedules={"exp_0": "bind(i0, blockIdx.x)"})


# -- random legal step sequences --------------------------------------------------

STEP_KINDS = ("split", "partition", "reorder", "fuse", "distribute", "join", "unroll", "vectorize", "simd", "parallel",
              "cache_write", "decompose_reduction", "tile", "compute_at")


@st.composite
def random_steps(draw, kernel, max_steps=6):
    """A sequence of steps drawn against the kernel as it evolves; steps
    the kernel refuses are dropped, so the result is a legal sequence."""
    steps = []
    for _ in range(draw(st.integers(1, max_steps))):
        names = [lp.var.name for lp in loops(kernel.body)]
        if not names:
            break
        kind = draw(st.sampled_from(STEP_KINDS))
        a, b = draw(st.sampled_from(names)), draw(st.sampled_from(names))
        buffers = [s.buffer.name for s in walk_stmts(kernel.body) if hasattr(s, "buffer") and hasattr(s, "indices")]
        step = {
            "split": lambda: Split(a, draw(st.integers(2, 8)), draw(st.sampled_from(("exact", "widen")))),
            "partition": lambda: Partition(a, draw(st.integers(1, 8))),
            "reorder": lambda: Reorder((a, b)),
            "fuse": lambda: Fuse(a, b),
            "distribute": lambda: Distribute(a),
            "join": lambda: Join(a, b),
            "unroll": lambda: Unroll(a),
            "vectorize": lambda: Vectorize(a),
            "simd": lambda: Simd(a),
            "parallel": lambda: Parallel(a),
            "cache_write": lambda: CacheWrite(draw(st.sampled_from(buffers)), a),
            "decompose_reduction": lambda: DecomposeReduction(a),
            "tile": lambda: Tile(a, b, draw(st.integers(2, 6)), draw(st.integers(2, 8))),
            "compute_at": lambda: ComputeAt(a, b),
        }[kind]()
        try:
            kernel = apply_schedule(kernel, [step])
        except ScheduleError:
            continue
        steps.append(step)
    return steps


@settings(deadline=None)
@given(st.data())
def test_random_legal_schedules_keep_results(data):
    graph, inputs = data.draw(contraction_graphs())
    k = lowered(graph)
    steps = data.draw(random_steps(k))
    note(format_schedule(steps))
    model = mc.compile(graph, schedules={k.name: steps}, num_threads=2)
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs)):
        assert_close(got, want, scale=10)


def test_register_tile_rows_divide_the_row_count_where_they_can():
    from minicomp.passes.schedules.cpu_tiles import dividing_rows

    assert [dividing_rows(n, 8) for n in (5, 8, 14, 28, 56, 13, 169)] == [5, 8, 7, 7, 8, 8, 8]
    assert [dividing_rows(n, 6) for n in (12, 10, 25)] == [6, 6, 6], "16-register targets keep tiles of 6"


@pytest.mark.parametrize("dtype, width", [("float32", 16), ("float32", 64), ("float32", 80), ("uint8", 128),
                                          ("bool", 128)])
def test_rows_of_whole_vectors_run_as_lanes_and_never_past_the_most_lanes(dtype, width):
    """An elementwise nest over rows of one to four whole vectors runs its rows as explicit lanes;
    128 one-byte lanes are two vectors but past what one simd loop runs (DeBERTa's masks failed
    the schedule), and 80 floats are not whole vectors: both stay vectorize hints."""
    g = mc.GraphBuilder()
    x = g.input("x", (64, width), dtype=dtype)
    g.output(g.op("logical_not", x) if dtype == "bool" else x + x)
    model = mc.compile(g.build(), num_threads=2, cache=False)
    lanes = Target.host().vector_lanes(mc.ir.dtypes.as_dtype(dtype))
    as_lanes = width % lanes == 0 and width <= min(4 * lanes, 64)
    assert ("simd for (i1" in model.stages["loops"]) == as_lanes
    xs = (np.arange(64 * width) % 7).reshape(64, width).astype(dtype)
    np.testing.assert_array_equal(model(x=xs)[0], ~xs if dtype == "bool" else xs + xs)
