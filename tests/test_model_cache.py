"""The whole-model cache: a second compile of the same graph, options and target loads the compiled model in
one step (no pass runs); anything else that differs, or any damage, costs only a compile."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minicomp as mc
from minicomp.backends import llvm_model_cache

LOADED = "load the whole model from the cache"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINICOMP_CACHE", raising=False)
    return tmp_path / "cache"


def mlp(seed=0, hidden=48):
    rng = np.random.default_rng(seed)
    b = mc.GraphBuilder("mlp")
    x = b.input("x", (3, 32))
    w1 = b.constant(rng.standard_normal((32, hidden)).astype(np.float32), "w1")
    w2 = b.constant(rng.standard_normal((hidden, 10)).astype(np.float32), "w2")
    h = b.relu(b.matmul(x, w1))
    b.output(b.softmax(b.matmul(h, w2), axis=-1))
    return b.build()


X = np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32)


def from_the_cache(model) -> bool:
    assert model.from_the_model_cache == any(name == LOADED for name, _ in model.pass_timings)
    return model.from_the_model_cache


def entries(cache_dir) -> list:
    return sorted((cache_dir / "models").glob("*.model")) if (cache_dir / "models").exists() else []


def test_a_second_compile_loads_the_whole_model(cache_dir):
    first = mc.compile(mlp())
    assert not from_the_cache(first) and len(entries(cache_dir)) == 1
    second = mc.compile(mlp())
    assert from_the_cache(second) and second.cache_hit
    assert [name for name, _ in second.pass_timings] == ["verify and print the input", LOADED]
    np.testing.assert_array_equal(second(X)[0], first(X)[0])
    np.testing.assert_allclose(second(X)[0], mc.run_reference(mlp(), X)[0], rtol=1e-5, atol=1e-6)


def test_what_the_passes_made_is_made_again_when_read(cache_dir):
    first = mc.compile(mlp())
    second = mc.compile(mlp())
    assert "_kernels" not in second.__dict__, "the passes ran for a model the cache gave"
    assert [k.name for k in second.kernels] == [k.name for k in first.kernels]
    assert len(second.graph.nodes) == len(first.graph.nodes) and second.fusion is not None
    assert second.tunings == []
    assert list(second.stages) == list(first.stages)
    for stage in ("graph", "fusion", "loops", "memory", "llvm"):
        untimed = [re.sub(r"planned in [\d.]+ ms", "", m.stages[stage]) for m in (first, second)]
        assert untimed[0] == untimed[1], stage
    np.testing.assert_array_equal(second(X)[0], first(X)[0])  # (reading them changed nothing)


@pytest.mark.parametrize("change", ["weights", "shape", "options", "threads", "cpu"])
def test_another_graph_option_or_target_is_another_entry(cache_dir, change):
    mc.compile(mlp())
    graph, options = mlp(), {}
    if change == "weights":
        graph = mlp(seed=1)
    elif change == "shape":
        graph = mlp(hidden=40)
    elif change == "options":
        options = {"fusion": {"horizontal": False, "max_group_nodes": 2}}
    elif change == "threads":
        options = {"num_threads": 3}
    else:
        options = {"target": "x86-64"}
    model = mc.compile(graph, **options)
    assert not from_the_cache(model)
    np.testing.assert_allclose(model(X)[0], mc.run_reference(graph, X)[0], rtol=1e-5, atol=1e-6)
    assert len(entries(cache_dir)) == 2


def test_the_cache_off_instruments_or_ops_of_ones_own_run_the_passes(cache_dir, monkeypatch, tmp_path):
    mc.compile(mlp())
    assert not from_the_cache(mc.compile(mlp(), cache=False))
    assert not from_the_cache(mc.compile(mlp(), print_after=["fuse"], dump_dir=str(tmp_path / "dump")))
    monkeypatch.setenv("MINICOMP_CACHE", "0")
    assert not from_the_cache(mc.compile(mlp()))
    monkeypatch.delenv("MINICOMP_CACHE")
    from minicomp.passes.manager import _PASSES, register_pass

    @register_pass("noop_for_the_model_cache_test")
    def noop(graph):
        return graph

    pipeline = ["noop_for_the_model_cache_test"] + list(mc.default_pipeline("llvm"))
    try:  # a pass of one's own may change: its code is not in the key, so no model is kept or found
        assert not from_the_cache(mc.compile(mlp(), pipeline=pipeline))
        assert not from_the_cache(mc.compile(mlp(), pipeline=pipeline))
        assert from_the_cache(mc.compile(mlp()))  # (one that is not in the pipeline changes nothing)
    finally:
        _PASSES.unregister("noop_for_the_model_cache_test")


@pytest.mark.parametrize("damage", ["a weight", "the description", "cut short", "the machine code gone"])
def test_a_damaged_entry_is_compiled_again(cache_dir, damage):
    mc.compile(mlp())
    (entry,) = entries(cache_dir)
    data = bytearray(entry.read_bytes())
    if damage == "a weight":
        data[-5] ^= 0x40
    elif damage == "the description":
        data[len(llvm_model_cache.MAGIC) + 40] ^= 0x01
    elif damage == "cut short":
        data = data[:len(data) - 64]
    if damage == "the machine code gone":
        for f in (cache_dir / "llvm").iterdir():
            f.unlink()
    else:
        entry.write_bytes(bytes(data))
    again = mc.compile(mlp())
    assert not from_the_cache(again)
    np.testing.assert_allclose(again(X)[0], mc.run_reference(mlp(), X)[0], rtol=1e-5, atol=1e-6)
    assert from_the_cache(mc.compile(mlp()))  # written again


def test_models_that_write_their_inputs_and_read_sizes_at_each_call(cache_dir):
    from tests.backends.test_writes import DIM, HEADS, LENGTH, cache_step, expected

    mc.compile(cache_step())
    model = mc.compile(cache_step())
    assert from_the_cache(model)
    cache = np.zeros((HEADS, LENGTH, DIM), np.float32)
    keys = np.ones((HEADS, 1, DIM), np.float32)
    (total,) = model(cache, np.array([4], np.int64), keys)
    want = expected(np.zeros_like(cache), np.array([4]), keys)
    np.testing.assert_array_equal(cache, want)
    np.testing.assert_allclose(total, want.sum(1))
    with pytest.raises(mc.MinicompError, match="outside"):
        model(cache, np.array([LENGTH], np.int64), keys)

    b = mc.GraphBuilder("dyn")
    n = mc.Dim("n", 1, 64)
    x = b.input("x", (n, 8))
    b.output(b.exp(x) * 2.0)
    mc.compile(b.build())
    dyn = mc.compile(b.build())
    assert from_the_cache(dyn)
    for rows in (1, 5, 64):
        xs = np.full((rows, 8), 0.5, np.float32)
        np.testing.assert_allclose(dyn(xs)[0], np.exp(xs) * 2.0, rtol=1e-6)


def test_the_least_recently_used_entries_go_beyond_the_limit(cache_dir, monkeypatch):
    mc.compile(mlp(seed=0))
    (oldest,) = entries(cache_dir)
    os.utime(oldest, (1, 1))
    monkeypatch.setattr(llvm_model_cache, "LIMIT_BYTES", oldest.stat().st_size + 1)
    monkeypatch.setattr(llvm_model_cache, "_written_since_look", None)  # (it looks at its next entry)
    mc.compile(mlp(seed=1))
    (kept,) = entries(cache_dir)
    assert kept != oldest
    assert from_the_cache(mc.compile(mlp(seed=1))) and not from_the_cache(mc.compile(mlp(seed=0)))


def test_a_new_process_loads_the_model_without_running_a_pass(cache_dir):
    """The whole point: a process that compiles a model compiled before runs no pass (and has no
    working state of the compiler to lean on)."""
    script = (
        "import sys, numpy as np, minicomp as mc\n"
        "from tests.test_model_cache import mlp, X, from_the_cache\n"
        "m = mc.compile(mlp())\n"
        "print('hit' if from_the_cache(m) else 'miss', float(m(X)[0].sum()))\n")
    env = dict(os.environ, MINICOMP_CACHE_DIR=str(cache_dir))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    (first, total1), (second, total2) = (run.stdout.split() for run in runs)
    assert (first, second) == ("miss", "hit")
    assert float(total1) == pytest.approx(3.0) and total1 == total2


def test_cli_cache_counts_whole_models(cache_dir, capsys):
    from minicomp.cli import main

    mc.compile(mlp())
    assert main(["cache"]) == 0
    assert "1 whole model" in capsys.readouterr().out
