"""LLVM's optimization runs in a helper process: the leaks of llvmlite's pass
builder stay out of the user's process, and a helper that dies is replaced."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import minicomp as mc
from minicomp.backends import llvm_server


def small_graph(scale: float):
    g = mc.GraphBuilder("small")
    x = g.input("x", (4, 8))
    g.output(g.softmax(g.relu(x) * scale, axis=-1))
    return g.build()


X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)


def test_a_helper_that_died_is_replaced():
    mc.compile(small_graph(1.5), cache=False)
    helper = llvm_server._helper.proc
    assert helper is not None and helper.poll() is None
    helper.send_signal(signal.SIGKILL)
    helper.wait()
    model = mc.compile(small_graph(2.5), cache=False)
    np.testing.assert_allclose(model(X)[0], mc.run_reference(small_graph(2.5), X)[0], rtol=1e-6)
    assert llvm_server._helper.proc is not helper


def test_invalid_ir_is_a_compile_error_from_the_helper():
    with pytest.raises(mc.CompileError, match="invalid"):
        llvm_server.compile_in_helper("define void @f( {", "x86-64", "", 3)


@pytest.mark.slow
def test_200_compiles_grow_the_process_by_under_5_mb():
    code = """
import gc, numpy as np, minicomp as mc
g = mc.GraphBuilder("m"); x = g.input("x", (4, 8)); w = g.constant(np.ones((8, 3), np.float32))
g.output(g.softmax(g.relu(x @ w))); graph = g.build()
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
for _ in range(20):
    mc.compile(graph, cache=False)
gc.collect(); before = rss()
for _ in range(200):
    mc.compile(graph, cache=False)(np.ones((4, 8), np.float32))
gc.collect(); print(rss() - before)
"""
    env = {k: v for k, v in os.environ.items() if k != "MINICOMP_LLVM_WORKER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 5 << 20
