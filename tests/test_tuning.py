"""The tuner (minicomp/backends/llvm_tuning.py): candidates, the pre-filter, the choice,
the cache, compile(tune=True) and `minicomp tune`."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicomp as mc
from minicomp.backends import llvm_tuning as tuning
from minicomp.compiler import _run_passes
from minicomp.errors import MinicompError
from minicomp.passes.schedules.cpu import DEFAULT_CHOICES, Choices, cpu_schedule
from minicomp.target import Target
from tests.tolerances import assert_close

TARGET = Target.cpu("skylake-avx512", num_threads=2)


def conv_graph(cin=8, cout=40, size=14, kernel=3, stride=1, seed=0, layers=1):
    rng = np.random.default_rng(seed)
    g = mc.GraphBuilder()
    x = g.input("x", (1, cin, size, size))
    h, channels = x, cin
    for _ in range(layers):
        w = g.constant(rng.standard_normal((cout, channels, kernel, kernel)).astype(np.float32))
        h, channels = g.relu(g.conv2d(h, w, strides=stride, padding=kernel // 2)), cout
    g.output(h)
    return g.build()


def lowered(graph):
    """The graph's kernels before scheduling, and its constants."""
    program, *_ = _run_passes(graph, "llvm", pipeline="simplify,fuse,lower", num_threads=2)
    return program.kernels, program.graph.constants


class FakeTimer:
    """Times a candidate by a table (no compiling); counts what was timed."""

    made = []

    def __init__(self, kernel, arrays, target, threads):
        self.kernel = kernel
        FakeTimer.made.append(kernel)

    def seconds(self):
        return FakeTimer.table(self.kernel)


def _notes(k):
    return " ".join(k.notes)


@pytest.fixture
def fake_timer(monkeypatch):
    FakeTimer.made = []
    FakeTimer.table = staticmethod(lambda k: 1.0)
    return FakeTimer


class IdleMachine:
    """An other_load that reports no other program: tests must not depend on the machine's load."""

    def share(self):
        return 0.0


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    # The tuner rightly refuses timings taken while other programs use the CPUs; a test run beside other
    # work must still see the tunings it made cached (the busy path has its own test, with its own reader).
    monkeypatch.setattr(tuning, "OtherLoad", IdleMachine)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINICOMP_CACHE", raising=False)
    return tmp_path / "cache"


def test_choices_change_the_schedule_and_the_rules_stay_the_default():
    (k,), consts = lowered(conv_graph())
    names = {b.name for b, v in zip(k.params, k.param_values) if v in consts}
    rules = cpu_schedule(k, TARGET, 2, names)
    assert str(cpu_schedule(k, TARGET, 2, names, DEFAULT_CHOICES)) == str(rules)
    spatial = cpu_schedule(k, TARGET, 2, names, Choices(lanes="spatial"))
    channels = cpu_schedule(k, TARGET, 2, names, Choices(lanes="channels"))
    assert tuning._loop_text(spatial) != tuning._loop_text(channels)
    assert "tuned: lanes=spatial" in _notes(spatial)
    narrow = cpu_schedule(k, TARGET, 2, names, Choices(lanes="channels", rows=4, vectors=1))
    assert "pack(" in str(narrow) and "16)" in str(narrow)  # weights packed by one vector of channels
    assert tuning._has_parallel(rules)
    assert not tuning._has_parallel(cpu_schedule(k, TARGET, 2, names, Choices(serial=True)))


def test_choices_print_and_round_trip_through_their_dict():
    c = Choices(lanes="channels", rows=8, vectors=1, channel_blocks_outer=False)
    assert Choices(**c.as_dict()) == c
    assert str(c) == "lanes=channels rows=8 vectors=1 channel_blocks_outer=False"
    assert str(DEFAULT_CHOICES) == "default" and DEFAULT_CHOICES.as_dict() == {}


def test_candidates_are_distinct_and_start_with_the_rules():
    (k,), consts = lowered(conv_graph())
    names = {b.name for b, v in zip(k.params, k.param_values) if v in consts}
    cands = tuning.candidates(k, TARGET, 2, names)
    texts = [tuning._loop_text(s) for _, s in cands]
    assert len(set(texts)) == len(texts) >= 6
    assert cands[0][0] == DEFAULT_CHOICES


def test_the_fastest_candidate_is_chosen(fake_timer):
    (k,), consts = lowered(conv_graph())
    # Every schedule with 4-row tiles takes half the time of the others.
    fake_timer.table = staticmethod(lambda s: 0.5 if "rows=4" in _notes(s) else 1.0)
    t = tuning.tune_kernel(k, TARGET, 2, 2, consts, timer=fake_timer)
    assert t.choices.rows == 4
    assert t.rules_s == 1.0 and t.best_s == 0.5 and t.speedup == 2.0
    assert t.measured == len(fake_timer.made) <= tuning.MAX_CANDIDATES


def test_a_gain_under_the_threshold_keeps_the_rules(fake_timer):
    (k,), consts = lowered(conv_graph())
    fake_timer.table = staticmethod(lambda s: 0.99 if "tuned" in _notes(s) else 1.0)
    t = tuning.tune_kernel(k, TARGET, 2, 2, consts, timer=fake_timer)
    assert t.choices == DEFAULT_CHOICES and t.best_s == t.rules_s


def test_no_more_than_max_candidates_are_measured_and_the_cheapest_are_kept(fake_timer):
    (k,), consts = lowered(conv_graph())
    names = {b.name for b, v in zip(k.params, k.param_values) if v in consts}
    assert len(tuning.candidates(k, TARGET, 2, names)) > 3
    t = tuning.tune_kernel(k, TARGET, 2, 2, consts, max_candidates=3, timer=fake_timer)
    assert t.measured == len(fake_timer.made) == 3
    assert str(fake_timer.made[0]) == str(cpu_schedule(k, TARGET, 2, names))  # the rules are always measured


def test_estimate_cost_counts_vector_lanes_and_shared_tile_loads():
    (k,), consts = lowered(conv_graph(cin=16, cout=64, size=28, kernel=1))
    names = {b.name for b, v in zip(k.params, k.param_values) if v in consts}
    tiled = cpu_schedule(k, TARGET, 1, names)
    assert tuning.estimate_cost(tiled, TARGET, 1) < tuning.estimate_cost(k, TARGET, 1) / 8  # k: scalar loops
    assert tuning.estimate_cost(cpu_schedule(k, TARGET, 2, names), TARGET, 2) < tuning.estimate_cost(tiled, TARGET, 1)
    wide = cpu_schedule(k, TARGET, 1, names, Choices(rows=8, vectors=2))
    narrow = cpu_schedule(k, TARGET, 1, names, Choices(rows=4, vectors=1))
    assert tuning.estimate_cost(wide, TARGET, 1) < tuning.estimate_cost(narrow, TARGET, 1)


def test_tunings_are_cached_and_identical_kernels_share_one(fake_timer, cache_dir):
    kernels, consts = lowered(conv_graph(cin=8, cout=24, layers=3))
    assert len(kernels) == 3
    first = tuning.tune_kernels(kernels, TARGET, 2, consts, timer=fake_timer)
    # The second and third convolutions are the same kernel (other weights): tuned once.
    assert [t.from_cache for t in first] == [False, False, True]
    measured = len(fake_timer.made)
    again = tuning.tune_kernels(kernels, TARGET, 2, consts, timer=fake_timer)
    assert len(fake_timer.made) == measured  # nothing measured: all from the cache
    assert all(t.from_cache and t.measured == 0 for t in again)
    assert [t.choices for t in again] == [t.choices for t in first]
    assert any(cache_dir.joinpath("tune").iterdir())
    other = tuning.tune_kernels(kernels, Target.cpu("skylake-avx512", num_threads=1), 2, consts, timer=fake_timer)
    assert not other[0].from_cache  # another thread count is tuned again


def test_the_cache_key_covers_the_steps_and_the_emitters_not_only_the_rules():
    names = {p.name for p in tuning.schedule_sources()}
    assert {"llvm_tuning.py", "cpu.py", "primitives.py", "buffer_steps.py", "llvm_codegen.py", "llvm_simd.py"} <= names
    assert all(p.exists() for p in tuning.schedule_sources())


def test_without_the_cache_every_tuning_is_measured(fake_timer, cache_dir):
    kernels, consts = lowered(conv_graph())
    tuning.tune_kernels(kernels, TARGET, 2, consts, timer=fake_timer)
    n = len(fake_timer.made)
    tuning.tune_kernels(kernels, TARGET, 2, consts, timer=fake_timer, use_cache=False)
    assert len(fake_timer.made) == 2 * n


class CheckingTimer(tuning.KernelTimer):
    """Compiles and runs each candidate for real, and checks its outputs
    against the rules' schedule (the first one timed) on the same inputs."""

    expected = None

    def __init__(self, kernel, arrays, target, threads):
        super().__init__(kernel, arrays, target, threads)
        first = len(kernel.inputs)
        outs = [a.copy() for a in arrays[first:first + len(kernel.outputs)]]
        if CheckingTimer.expected is None:
            CheckingTimer.expected = outs
        for got, want in zip(outs, CheckingTimer.expected):
            assert_close(got, want, scale=10, what=f"{kernel.name}: {' '.join(kernel.notes)}")


@pytest.mark.slow  # 13 s: every candidate of each drawn convolution is compiled and run
@given(cin=st.integers(1, 20), cout=st.integers(1, 70), size=st.integers(3, 20), kernel=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]))
def test_every_candidate_computes_what_the_rules_compute(cin, cout, size, kernel, stride):
    (k,), consts = lowered(conv_graph(cin, cout, size, kernel, stride, seed=cin * cout))
    CheckingTimer.expected = None
    t = tuning.tune_kernel(k, TARGET, 2, 2, consts, max_candidates=8, timer=CheckingTimer)
    assert t.measured >= 1


def test_compile_with_tune_matches_the_reference_and_reuses_the_cache(cache_dir):
    g = conv_graph(cin=8, cout=48, size=12)
    x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32)
    model = mc.compile(g, num_threads=2, tune={"max_candidates": 4})
    assert_close(model(x)[0], mc.run_reference(g, x)[0], scale=10)
    assert len(model.tunings) == len(model.kernels) and model.tunings[0].measured >= 1
    again = mc.compile(g, num_threads=2, tune=True)
    assert all(t.from_cache for t in again.tunings)
    assert again.stages["loops"] == model.stages["loops"]
    assert mc.compile(g, num_threads=2).tunings == []


@pytest.mark.parametrize("tune, message", [
    ("yes", "tune must be True, False or a dict"),
    ({"max_candidates": 0}, "max_candidates must be a whole number >= 1"),
    ({"candidates": 3}, "unknown tune setting"),
])
def test_bad_tune_options_are_clear_errors(tune, message):
    with pytest.raises(MinicompError, match=message):
        mc.compile(conv_graph(), tune=tune)


def test_tuning_needs_a_cpu_target():
    with pytest.raises(MinicompError, match="cannot be tuned"):
        mc.compile(conv_graph(), target="reference", tune=True)


def test_tune_command_prints_kernels_and_whole_model_times(tmp_path, cache_dir, capsys):
    from minicomp.cli import main

    path = tmp_path / "conv.mcir"
    path.write_text(mc.print_graph(conv_graph(cin=4, cout=16, size=10), full_constants=True))
    assert main(["tune", str(path), "--threads", "2", "--max-candidates", "3", "-o", str(tmp_path / "t.mcm")]) == 0
    out = capsys.readouterr().out
    assert "tuned 1 kernel for" in out and "speedup" in out and "by the rules" in out
    assert (tmp_path / "t.mcm").exists()
    assert main(["run", str(path), "--tune", "--check"]) == 0
    assert "passed" in capsys.readouterr().out


class Load:
    """An other_load whose share is set by the test."""

    share_now = 0.0
    made = 0

    def __init__(self):
        Load.made += 1

    def share(self):
        return Load.share_now


def test_a_kernel_tuned_on_a_busy_machine_keeps_the_rules_and_is_not_cached(fake_timer, cache_dir):
    kernels, consts = lowered(conv_graph())
    fake_timer.table = staticmethod(lambda s: 0.5 if "rows=4" in _notes(s) else 1.0)
    Load.share_now, Load.made = 0.5, 0
    busy = tuning.tune_kernels(kernels, TARGET, 2, consts, timer=fake_timer, other_load=Load)
    assert Load.made == 2  # tried twice
    assert busy[0].busy and busy[0].choices == DEFAULT_CHOICES and busy[0].best_s == busy[0].rules_s
    assert "busy" in tuning.format_tunings(busy) and "idle machine" in tuning.format_tunings(busy)
    Load.share_now = 0.0
    quiet = tuning.tune_kernels(kernels, TARGET, 2, consts, timer=fake_timer, other_load=Load)
    assert not quiet[0].from_cache and quiet[0].choices.rows == 4  # measured again, now trusted


def test_other_load_reads_a_share_between_0_and_1(monkeypatch):
    monkeypatch.undo()  # the real reader of /proc/stat
    load = tuning.OtherLoad()
    sum(range(3_000_000))  # our own work is not counted
    assert 0.0 <= load.share() <= 1.0


def attention_graph(S=96, H=2, D=16):
    g = mc.GraphBuilder("attention")
    q, k, v = (g.input(n, (1, H, S, D)) for n in "qkv")
    s = (q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.25))
    g.output(g.softmax(s, axis=-1) @ v)
    return g.build()


def chain_alternatives_of(graph):
    from minicomp.passes.lower import chain_alternatives

    program, *_ = _run_passes(graph, "llvm", pipeline="simplify,fuse,lower", num_threads=2)
    (group,) = [g for g in program.groups if g.chain]
    return chain_alternatives(group, "chain", program.graph.constants, TARGET), program.graph.constants


def test_a_reduction_chain_is_tuned_over_at_most_three_tiles_and_keeps_a_faster_one(fake_timer, tmp_path,
                                                                                     monkeypatch):
    """The tiles of a chain kernel (made scheduled, no Choices) are the tuner's candidates: the rule's
    first, then smaller steps; one beating the rule by more than MIN_GAIN is kept, and the cache
    answers the next time."""
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path))
    alternatives, consts = chain_alternatives_of(attention_graph())
    assert 2 <= len(alternatives) <= 3 and "rows x" in alternatives[0][0]
    fastest = alternatives[-1][1]
    fake_timer.table = staticmethod(lambda k: 0.5 if k is fastest else 1.0)
    t = tuning.tune_alternatives("chain", alternatives, TARGET, 2, consts, True, timer=fake_timer)
    assert t.choices == alternatives[-1][0] and t.changed and t.measured == len(alternatives)
    again = tuning.tune_alternatives("chain", alternatives, TARGET, 2, consts, True, timer=fake_timer)
    assert again.from_cache and again.choices == t.choices
    fake_timer.table = staticmethod(lambda k: 0.99 if k is fastest else 1.0)  # within the noise: the rule
    kept = tuning.tune_alternatives("chain", alternatives, TARGET, 2, consts, False, timer=fake_timer)
    assert kept.choices == alternatives[0][0] and not kept.changed


def test_compile_with_tune_measures_the_chain_tiles_and_stays_right(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path))
    graph = attention_graph()
    model = mc.compile(graph, tune=True)
    (chain,) = [t for t in model.tunings if str(t.choices).startswith("chain tiles")]
    assert 1 <= chain.measured <= 3
    args = [np.random.default_rng(n).standard_normal(v.shape).astype(np.float32) for n, v in enumerate(graph.inputs)]
    assert_close(model(*args)[0], mc.run_reference(graph, *args)[0])
