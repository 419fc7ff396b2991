"""CompiledModel: the call boundary, stages, memory plan, profiling, threads."""

import threading

import numpy as np
import pytest

import minicomp as mc
from minicomp.passes.memory import check_plan


@pytest.fixture(scope="module")
def model():
    g = mc.GraphBuilder("net")
    x = g.input("x", (8, 16))
    b = g.input("b", (16,))
    h = g.relu(x + b)
    h = g.softmax(h * 2.0, axis=-1)
    g.output(h.sum(axes=[1]))
    return mc.compile(g.build(), num_threads=2)


def inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)


def test_call_by_position_and_name(model):
    x, b = inputs()
    (a,) = model(x, b)
    (c,) = model(b=b, x=x)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a, mc.run_reference(model.graph, x, b)[0], rtol=1e-5)


def test_repeated_calls_reuse_code_and_return_fresh_arrays(model):
    x, b = inputs()
    (a,) = model(x, b)
    (c,) = model(x * 0, b)
    assert not np.shares_memory(a, c)
    np.testing.assert_allclose(model(x, b)[0], a)


@pytest.mark.parametrize("call, message", [
    (lambda m, x, b: m(x), "input 'b' .* is missing"),
    (lambda m, x, b: m(x, b, x), "takes 2 inputs, got 3"),
    (lambda m, x, b: m(x.astype(np.float64), b), "input 'x' expects f32\\[8, 16\\].*got float64\\[8, 16\\]"),
    (lambda m, x, b: m(x[:4], b), "input 'x' expects f32\\[8, 16\\].*got float32\\[4, 16\\]"),
    (lambda m, x, b: m(np.asfortranarray(x), b), "input 'x' .* must be a C-contiguous"),
    (lambda m, x, b: m(x, b, y=b), "has no input named 'y'"),
    (lambda m, x, b: m(x, x=x, b=b), "input 'x' given twice"),
])
def test_bad_inputs_raise_clear_errors(model, call, message):
    x, b = inputs()
    with pytest.raises(mc.RuntimeInputError, match=message):
        call(model, x, b)


def test_stages_hold_every_stage(model):
    for key in ("graph", "loops", "memory", "llvm", "llvm_opt"):
        assert model.stages[key]
    assert "kernel fused_add_relu_mul_softmax" in model.stages["loops"]
    assert "define void @mc_main" in model.stages["llvm"]


def test_memory_plan_is_valid(model):
    plan = model.memory_plan
    check_plan(plan)
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes
    assert "lower bound" in plan.summary()


def test_profile_lists_every_kernel(model):
    x, b = inputs()
    prof = model.profile(x, b, repeat=2)
    assert [name for name, _ in prof] == [k.name for k in model.kernels]
    assert all(t >= 0 for _, t in prof)


def test_calls_from_several_threads(model):
    x, b = inputs()
    (want,) = model(x, b)
    errors = []

    def worker():
        for _ in range(20):
            (got,) = model(x, b)
            if not np.allclose(got, want):
                errors.append(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_reference_target_has_the_same_interface():
    g = mc.GraphBuilder()
    x = g.input("x", (3,))
    g.output(g.exp(x))
    m = mc.compile(g.build(), target="reference")
    np.testing.assert_allclose(m(np.zeros(3, np.float32))[0], 1.0)


def test_unknown_target_and_digest_constants():
    g = mc.GraphBuilder()
    x = g.input("x", (20,))
    g.output(x + g.constant(np.arange(20, dtype=np.float32)))
    graph = g.build()
    with pytest.raises(mc.UnsupportedError, match="unknown target 'tpu'"):
        mc.compile(graph, target="tpu")
    with pytest.raises(mc.MinicompError, match="has no data"):
        mc.compile(mc.parse_graph(mc.print_graph(graph)))


def test_llvm_vectorizer_remarks_do_not_reach_stderr(capfd):
    """LLVM writes 'loop not vectorized' remarks straight to file descriptor 2
    while it optimizes; they are dropped, every other line is passed on."""
    import os

    from minicomp.backends.llvm_worker import without_vectorizer_remarks

    with without_vectorizer_remarks():
        os.write(2, b"warning: <unknown>:0:0: loop not vectorized: the optimizer was unable to ...\n")
        os.write(2, b"something else LLVM said\n")
    err = capfd.readouterr().err
    assert "loop not vectorized" not in err and "something else LLVM said" in err


@pytest.mark.parametrize("extent", [1, 3, 37])
def test_parallel_loops_give_every_iteration_to_one_thread_at_any_thread_count(extent):
    """Threads claim grains of their share, then of the others' shares: with
    more threads than iterations, or a count that divides nothing, every
    element is still written exactly once, the same as on one thread."""
    g = mc.GraphBuilder()
    x = g.input("x", (extent, 40000))
    g.output(g.exp(x) * 2.0 + 1.0)
    graph = g.build()
    model = mc.compile(graph, num_threads=2, cache=False)
    assert "parallel for" in model.stages["loops"]
    xs = np.random.default_rng(extent).standard_normal((extent, 40000)).astype(np.float32)
    (want,) = model(xs)
    for threads in (1, 2, 3, 7):
        model.set_num_threads(threads)
        (got,) = model(xs)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(want, mc.run_reference(graph, xs)[0], rtol=1e-5)


def test_libgomp_spins_briefly_unless_the_user_chose_a_wait_policy():
    import subprocess
    import sys

    code = ("import os, numpy as np, minicomp as mc\n"
            "g = mc.GraphBuilder(); x = g.input('x', (4,)); g.output(g.relu(x)); mc.compile(g.build(), cache=False)\n"
            "print(os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "10000", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "None", out.stderr


def test_stages_read_as_a_plain_mapping_of_texts():
    g = mc.GraphBuilder()
    g.output(g.relu(g.input("x", (4,))))
    stages = mc.compile(g.build()).stages
    plain = dict(stages)
    assert all(isinstance(text, str) for text in plain.values()) and "llvm" in plain and "loops" in plain
    with pytest.raises(TypeError):
        stages["loops"] = "edited"  # read-only for users


def test_every_compile_logs_one_info_record(caplog):
    import logging

    g = mc.GraphBuilder("logged")
    x = g.input("x", (3, 5))
    g.output(g.exp(x))
    graph = g.build()
    with caplog.at_level(logging.INFO, logger="minicomp"):
        mc.compile(graph, cache=False)
        mc.compile(graph, target="reference")
    records = [r.getMessage() for r in caplog.records if r.name == "minicomp"]
    assert len(records) == 2
    assert records[0].startswith("compiled logged(x: f32[3, 5]) for llvm in ") and "1 kernel" in records[0]
    assert "compile cache miss" in records[0] and "for reference" in records[1]
