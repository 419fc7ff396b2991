"""LLVM in a child process: a module compiled there is linked into a shared
library that this process loads without LLVM, and a later process loads it
from the cache, LLVM never entering either."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minicomp as mc
from minicomp.backends import llvm_native
from minicomp.errors import CompileError, MinicompError

pytestmark = pytest.mark.skipif(llvm_native.linker() is None, reason="no C compiler to link with")


@pytest.fixture
def worker(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINICOMP_CACHE", raising=False)
    monkeypatch.setenv("MINICOMP_LLVM_WORKER", "always")
    return tmp_path


def graph():
    g = mc.GraphBuilder()
    x = g.input("x", (6, 40))
    w = g.constant(np.linspace(-1, 1, 40 * 24, dtype=np.float32).reshape(40, 24))
    g.output(g.softmax(g.relu(x @ w), axis=-1))
    return g.build()


X = np.linspace(-3, 3, 240, dtype=np.float32).reshape(6, 40)


def test_a_module_compiled_by_the_worker_runs_from_a_library(worker):
    first = mc.compile(graph())
    assert isinstance(first.native, llvm_native.NativeModule) and not first.cache_hit
    np.testing.assert_allclose(first(X)[0], mc.run_reference(graph(), X)[0], rtol=1e-5, atol=1e-6)
    assert "define" in first.stages["llvm_opt"] and "define" in first.stages["llvm"]
    assert "ret" in first.assembly()
    first.set_num_threads(1)
    np.testing.assert_allclose(first(X)[0], mc.run_reference(graph(), X)[0], rtol=1e-5, atol=1e-6)
    second = mc.compile(graph())
    assert isinstance(second.native, llvm_native.NativeModule) and second.cache_hit
    np.testing.assert_array_equal(second(X)[0], first(X)[0])
    assert len(first.profile(X)) == len(first.kernels)


def two_kernels():
    g = mc.GraphBuilder()
    x = g.input("x", (6, 40))
    w = g.constant(np.linspace(-1, 1, 40 * 40, dtype=np.float32).reshape(40, 40))
    h = g.softmax(g.relu(x @ w), axis=-1)
    g.output(g.layer_norm(h @ w, g.constant(np.ones(40, np.float32)), g.constant(np.zeros(40, np.float32))), h)
    return g.build()


def test_a_module_split_over_two_workers_links_into_one_library(worker, monkeypatch):
    """Each part is compiled by its own child at once; kernels, their outlined
    loops, mc_main and the thread-count global must all find each other."""
    monkeypatch.setattr(llvm_native, "worker_count", lambda ir_bytes: 2)
    graph = two_kernels()
    model = mc.compile(graph)
    assert len(model.kernels) >= 2 and isinstance(model.native, llvm_native.NativeModule)
    assert model.stages["llvm_opt"].count("; ---- module part") == 2
    for threads in (1, 2):
        model.set_num_threads(threads)
        for got, want in zip(model(X), mc.run_reference(graph, X)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    path = worker / "two.mcm"
    model.save(str(path))  # the parts' objects as one relocatable object
    np.testing.assert_array_equal(mc.load(str(path))(X)[0], model(X)[0])
    assert "ret" in model.assembly()


def test_save_load_and_export_from_a_library(worker):
    model = mc.compile(graph())
    path = worker / "m.mcm"
    model.save(str(path))
    np.testing.assert_array_equal(mc.load(str(path))(X)[0], model(X)[0])
    header = model.export_library(str(worker / "libm.so"))
    assert "mc_run" in open(header).read()


def test_a_fresh_process_never_loads_llvm(worker):
    """Compiled in a child, then loaded from the cache: llvmlite stays out of both parents."""
    script = textwrap.dedent("""
        import sys, numpy as np, minicomp as mc
        from tests.backends.test_llvm_worker import graph, X
        model = mc.compile(graph())
        got = model(X)[0]
        np.testing.assert_allclose(got, mc.run_reference(graph(), X)[0], rtol=1e-5, atol=1e-6)
        print(model.cache_hit, "llvmlite" in sys.modules)
    """)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["False", "False"], ["True", "False"]], \
        [r.stderr[-2000:] for r in runs]


def test_invalid_ir_is_a_compile_error_and_a_failed_link_falls_back(worker, monkeypatch):
    with pytest.raises(CompileError, match="invalid"):
        llvm_native.compile_in_worker("define nonsense", "", "", 3, "")
    monkeypatch.setattr(llvm_native, "linker", lambda: "/nonexistent/cc")
    model = mc.compile(graph())
    assert not isinstance(model.native, llvm_native.NativeModule)
    np.testing.assert_allclose(model(X)[0], mc.run_reference(graph(), X)[0], rtol=1e-5, atol=1e-6)


def test_an_unknown_worker_mode_is_refused(monkeypatch):
    monkeypatch.setenv("MINICOMP_LLVM_WORKER", "sometimes")
    with pytest.raises(MinicompError, match="MINICOMP_LLVM_WORKER"):
        mc.compile(graph())
