"""The lazily loaded registries (ops, passes, ONNX importers, torch converters):
their order of use does not matter, and first uses from several threads do not race.

Each check runs in a fresh process, where the built-ins are not loaded yet:
in this test process earlier tests would already have loaded them.
"""

import subprocess
import sys
import textwrap

import pytest

from minicomp.errors import MinicompError
from minicomp.registries import LazyRegistry


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_a_replacement_registered_before_the_builtins_load_wins():
    loads = []

    def load():
        loads.append(1)
        registry.register("relu", "builtin relu")
        registry.register("add", "builtin add")

    registry = LazyRegistry("op", load)
    registry.register("relu", "mine", replace=True)
    assert registry["relu"] == "mine" and registry["add"] == "builtin add"
    assert loads == [1]
    registry.register("relu", "mine again", replace=True)
    assert registry["relu"] == "mine again"
    with pytest.raises(MinicompError, match="op add is already registered"):
        registry.register("add", "mine")


def test_a_plain_registration_that_collides_with_a_builtin_is_refused_whichever_comes_first():
    registry = LazyRegistry("op", lambda: registry.register("add", "builtin"))
    registry.register("add", "mine")
    with pytest.raises(MinicompError, match="pass replace=True"):
        registry.ensure_loaded()


def test_a_failed_load_is_tried_again():
    attempts = []

    def load():
        attempts.append(1)
        if len(attempts) == 1:
            raise ImportError("first try fails")
        registry.register("x", 1)

    registry = LazyRegistry("op", load)
    with pytest.raises(ImportError):
        registry.ensure_loaded()
    assert registry["x"] == 1


def test_onnx_importer_replaced_before_any_import_works_in_a_fresh_process():
    pytest.importorskip("onnx")
    proc = run_fresh("""
        import minicomp as mc

        @mc.register_onnx_importer("HardSwish", replace=True)
        def mine(ctx, node):
            return [ctx.input(0)]

        from minicomp.frontends.onnx import onnx_importers
        assert onnx_importers()[("", "HardSwish")] is mine
        assert ("", "Relu") in onnx_importers()
        print("ok")
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_first_compiles_from_several_threads_in_a_fresh_process():
    proc = run_fresh("""
        import threading
        import numpy as np
        import minicomp as mc

        errors = []

        def work(i):
            try:
                g = mc.GraphBuilder(f"t{i}")
                x = g.input("x", (4, 4))
                g.output(g.relu(x @ g.constant(np.eye(4, dtype=np.float32))))
                (y,) = mc.compile(g.build(), cache=False)(np.ones((4, 4), np.float32))
                assert y.sum() == 16
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("errors:", errors)
        assert not errors
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
