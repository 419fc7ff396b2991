"""State a model updates: inputs it writes (Graph.writes, a key/value cache), written in place by
``index_copy`` where it can be, and positions checked at each call (Graph.checks)."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import MinicompError, RuntimeInputError, VerifyError

HEADS, LENGTH, DIM = 2, 37, 4  # (a cache length no other loop of these kernels has)
TARGETS = ["llvm", "c", "cuda-emu", "reference"]


def cache_step(steps=None):
    """One decoding step: the step's keys written into the cache at its positions, and the cache's sum over
    positions returned (it reads the new cache, as attention does)."""
    b = mc.GraphBuilder("step")
    cache = b.input("cache", (HEADS, LENGTH, DIM))
    pos = b.input("pos", (steps or 1,), "int64")
    keys = b.input("keys", (HEADS, steps or 1, DIM))
    new = b.index_copy(cache, pos, keys, axis=1)
    b.write(cache, new)
    b.output(b.sum(new, axes=[1]))
    return b.build()


def expected(cache, pos, keys):
    cache = cache.copy()
    cache[:, pos % LENGTH] = keys
    return cache


@pytest.mark.parametrize("target", TARGETS)
def test_a_cache_takes_each_step_in_the_callers_array(target):
    model = mc.compile(cache_step(), target=target)
    rng = np.random.default_rng(0)
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    want = cache.copy()
    for step in [0, 1, 2, 5, 36, 2]:  # (2 again: overwritten)
        keys = rng.standard_normal((HEADS, 1, DIM)).astype(np.float32)
        pos = np.array([step], np.int64)
        outs = model(cache, pos, keys)
        want = expected(want, pos, keys)
        assert len(outs) == 1, "the written cache is not returned"
        np.testing.assert_array_equal(cache, want)
        np.testing.assert_allclose(outs[0], want.sum(1), rtol=1e-6)


@pytest.mark.parametrize("target", ["llvm", "c"])
def test_on_the_host_only_the_steps_slices_are_stored(target):
    model = mc.compile(cache_step(), target=target)
    (new,) = model.memory_plan.written_in_place
    assert model.memory_plan.written_in_place[new].name == "cache"
    assert "%index_copy_0 is written in place into input %cache" in model.stages["memory"]
    kernel = next(k for k in model.kernels if k.group == ["index_copy_0"])
    loops = str(kernel)
    assert "written in place into input %cache" in loops
    assert f"< {LENGTH};" not in loops, "no loop runs over the cache's positions"
    assert loops.count("] = keys[") == 1 and "if (" in loops  # one store, of the step's keys


def test_a_gpu_target_computes_the_new_cache_and_the_call_copies_it_back():
    model = mc.compile(cache_step(), target="cuda-emu")
    assert model.memory_plan.written_in_place == {}


@pytest.mark.parametrize("target", ["llvm", "cuda-emu"])
def test_a_cache_also_read_before_the_step_is_computed_and_copied(target):
    b = mc.GraphBuilder("read_first")
    cache = b.input("cache", (HEADS, LENGTH, DIM))
    pos = b.input("pos", (2,), "int64")
    keys = b.input("keys", (HEADS, 2, DIM))
    old_sum = b.sum(cache, axes=[1])
    new = b.index_copy(cache, pos, keys, axis=1)
    b.write(cache, new)
    b.output(old_sum, b.sum(new, axes=[1]))
    model = mc.compile(b.build(), target=target)
    assert model.memory_plan.written_in_place == {}
    rng = np.random.default_rng(1)
    cache0 = rng.standard_normal((HEADS, LENGTH, DIM)).astype(np.float32)
    cache = cache0.copy()
    keys = rng.standard_normal((HEADS, 2, DIM)).astype(np.float32)
    pos = np.array([4, -1], np.int64)
    old, new_sum = model(cache, pos, keys)
    want = expected(cache0, pos, keys)
    np.testing.assert_array_equal(cache, want)
    np.testing.assert_allclose(old, cache0.sum(1), rtol=1e-5)
    np.testing.assert_allclose(new_sum, want.sum(1), rtol=1e-5)


@pytest.mark.parametrize("target", ["llvm", "c", "cuda-emu"])
def test_a_counter_counts_calls(target):
    b = mc.GraphBuilder("counter")
    count = b.input("count", (), "int64")
    x = b.input("x", (3,))
    b.write(count, count + 1)
    b.output(x * 2.0)
    model = mc.compile(b.build(), target=target)
    count = np.zeros((), np.int64)
    for _ in range(3):
        (y,) = model(count, np.ones(3, np.float32))
    assert int(count) == 3 and y.tolist() == [2.0] * 3


@pytest.mark.parametrize("target", TARGETS)
def test_a_position_outside_the_cache_is_refused_and_nothing_is_written_outside(target):
    model = mc.compile(cache_step(2), target=target)
    size = HEADS * LENGTH * DIM
    memory = np.full(size + 64, 7.0, np.float32)  # the cache, with guard bytes on both sides
    cache = memory[32:32 + size].reshape(HEADS, LENGTH, DIM)
    cache[:] = 0.0
    keys = np.ones((HEADS, 2, DIM), np.float32)
    for bad in (LENGTH, -LENGTH - 1, 1000):
        with pytest.raises(RuntimeInputError, match=r"node 'index_copy_0' \(op index_copy, inputs f32\[2, 37, 4\].*"
                                                    rf"outside axis 1 of the data, \[-37, 37\): got {bad}"):
            model(cache, np.array([3, bad], np.int64), keys)
        assert (memory[:32] == 7.0).all() and (memory[32 + size:] == 7.0).all()
    assert (cache[:, 3] == 1.0).all(), "the position inside was written"


@pytest.mark.parametrize("target", TARGETS)
def test_positions_computed_in_the_graph_are_checked_too(target):
    b = mc.GraphBuilder("computed")
    cache = b.input("cache", (HEADS, LENGTH, DIM))
    step = b.input("step", (1,), "int64")
    keys = b.input("keys", (HEADS, 1, DIM))
    b.output(b.index_copy(cache, step + 1, keys, axis=1))  # (no write: the new cache is returned)
    model = mc.compile(b.build(), target=target)
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    keys = np.ones((HEADS, 1, DIM), np.float32)
    (new,) = model(cache, np.array([LENGTH - 2]), keys)
    assert (new[:, LENGTH - 1] == 1.0).all() and not cache.any()
    with pytest.raises(RuntimeInputError, match=f"got {LENGTH}"):
        model(cache, np.array([LENGTH - 1]), keys)


@pytest.mark.parametrize("target", ["llvm", "c"])
def test_a_fixed_slot_is_computed_and_copied_in(target):
    b = mc.GraphBuilder("fixed")
    cache = b.input("cache", (HEADS, LENGTH, DIM))
    keys = b.input("keys", (HEADS, 1, DIM))
    b.write(cache, b.index_copy(cache, b.constant(np.array([7])), keys, axis=1))
    b.output(keys * 2.0)
    model = mc.compile(b.build(), target=target)
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    model(cache, np.ones((HEADS, 1, DIM), np.float32))
    assert (cache[:, 7] == 1.0).all() and cache.sum() == HEADS * DIM


def test_one_compile_takes_any_number_of_steps():
    n = mc.Dim("n", 1, 16)
    model = mc.compile(cache_step(n))
    rng = np.random.default_rng(2)
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    want = cache.copy()
    for start, count in [(0, 5), (5, 1), (6, 16)]:
        pos = np.arange(start, start + count, dtype=np.int64)
        keys = rng.standard_normal((HEADS, count, DIM)).astype(np.float32)
        model(cache, pos, keys)
        want = expected(want, pos, keys)
        np.testing.assert_array_equal(cache, want)


def test_the_text_form_keeps_writes_and_checks():
    graph = cache_step()
    text = mc.print_graph(graph)
    assert "return %index_copy_0 into %cache, %sum_1, %pos in [-37, 37) \"node 'index_copy_0'" in text
    again = mc.parse_graph(text)
    assert again.writes == graph.writes and again.checks == graph.checks
    assert mc.print_graph(again) == text


def test_a_saved_model_keeps_its_writes_and_checks(tmp_path):
    model = mc.compile(cache_step())
    model.save(str(tmp_path / "step.mcm"))
    loaded = mc.load(str(tmp_path / "step.mcm"))
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    keys = np.ones((HEADS, 1, DIM), np.float32)
    (total,) = loaded(cache, np.array([9], np.int64), keys)
    np.testing.assert_array_equal(cache, expected(np.zeros_like(cache), np.array([9]), keys))
    np.testing.assert_allclose(total, cache.sum(1))
    with pytest.raises(RuntimeInputError, match="outside axis 1"):
        loaded(cache, np.array([99], np.int64), keys)


def test_an_exported_library_refuses_a_model_that_writes_its_inputs(tmp_path):
    with pytest.raises(MinicompError, match="writes input\\(s\\) 'cache'.*an exported C API does not support"):
        mc.compile(cache_step(), target="c").export_c(str(tmp_path / "out"))


def test_a_written_input_must_be_a_writable_array():
    model = mc.compile(cache_step())
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    keys, pos = np.ones((HEADS, 1, DIM), np.float32), np.array([0], np.int64)
    with pytest.raises(RuntimeInputError, match="input 'cache' .* is written by the model.*got list"):
        model(cache.tolist(), pos, keys)
    cache.flags.writeable = False
    with pytest.raises(RuntimeInputError, match="writable numpy array, got ndarray"):
        model(cache, pos, keys)


def test_writes_that_do_not_fit_are_refused():
    b = mc.GraphBuilder("bad")
    x = b.input("x", (3,))
    with pytest.raises(MinicompError, match="must be an input"):
        b.write(x * 2.0, x)
    with pytest.raises(MinicompError, match="types differ"):
        b.write(x, b.input("y", (4,)))
    b.write(x, x + 1.0)
    with pytest.raises(MinicompError, match="already written"):
        b.write(x, x + 2.0)
    graph = b.build()
    graph.writes[0] = 1  # the 4-element input
    with pytest.raises(VerifyError, match="types differ"):
        graph.verify()
