"""The minicomp command as a user runs it: a fresh process per check (subprocess)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import minicomp as mc

PLUGIN = '''
from minicomp.passes.manager import register_pass

@register_pass("plugin_noop")
def plugin_noop(graph):
    """A pass from a plugin: returns the graph as it is."""
    return graph
'''


def minicomp(*args, cwd=None, stdin=None, check_rc=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "minicomp.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, input=stdin)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def test_a_closed_pipe_ends_quietly():
    # 'minicomp ops | head -1': the reader leaves early; no BrokenPipeError traceback.
    proc = subprocess.run(f"{sys.executable} -m minicomp.cli ops | head -1", shell=True, capture_output=True,
                          text=True, timeout=600)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_plugin_before_or_after_the_command(tmp_path, where):
    plugin = tmp_path / "plug.py"
    plugin.write_text(PLUGIN)
    args = ["--plugin", plugin, "passes"] if where == "before" else ["passes", "--plugin", plugin]
    proc = minicomp(*args, check_rc=0)
    assert "plugin_noop" in proc.stdout


def test_unknown_target_lists_every_accepted_name():
    from minicomp.compiler import target_names

    names = target_names()
    assert {"cuda-emu", "haswell", "znver4", "x86-64", "skylake-avx512"} <= set(names)
    g = mc.GraphBuilder("t")
    g.output(g.input("x", (2,)) + 1.0)
    with pytest.raises(mc.UnsupportedError) as exc:
        mc.compile(g.build(), target="tpu")
    for name in names:
        assert name in str(exc.value)


def test_cuda_without_pycuda_gives_command_line_advice(model_file):
    try:
        import pycuda  # noqa: F401

        pytest.skip("pycuda is installed here")
    except ImportError:
        pass
    proc = minicomp("run", model_file, "--target", "cuda", check_rc=2)
    assert "--target cuda-emu" in proc.stderr


def test_input_of_another_dtype_is_refused_or_cast(model_file, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 20), np.float64))
    proc = minicomp("run", model_file, "--input", f"x={tmp_path / 'x.npy'}", check_rc=2)
    assert "--cast" in proc.stderr and "float64" in proc.stderr
    proc = minicomp("run", model_file, "--input", f"x={tmp_path / 'x.npy'}", "--cast", check_rc=0)
    assert "sum=4" in proc.stdout


def test_shared_libraries_in_one_folder_keep_their_own_headers(model_file, tmp_path):
    minicomp("compile", model_file, "--shared-lib", tmp_path / "libone.so", check_rc=0)
    minicomp("compile", model_file, "--shared-lib", tmp_path / "libtwo.so", check_rc=0)
    assert (tmp_path / "one.h").exists() and (tmp_path / "two.h").exists()
    assert "MC_ONE_H" in (tmp_path / "one.h").read_text()


def test_conformance_runner_has_help_and_picks_ops():
    proc = subprocess.run([sys.executable, "-m", "minicomp.frontends.onnx_conformance", "--help"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "--op" in proc.stdout
    pytest.importorskip("onnx")
    proc = subprocess.run([sys.executable, "-m", "minicomp.frontends.onnx_conformance", "--op", "Relu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "onnx node cases:" in proc.stdout, proc.stderr


def test_cuda_emu_run_counts_the_library_build_in_the_compile_time(model_file, tmp_path):
    env = dict(os.environ, MINICOMP_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "minicomp.cli", "run", str(model_file), "--target", "cuda-emu"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    compile_s = float(proc.stdout.split(" in ", 1)[1].split(" s;")[0])
    run_ms = float(proc.stdout.split("one run ", 1)[1].split(" ms")[0])
    # g++ built the library (a fresh cache) before the clock for the run started.
    assert compile_s > run_ms / 1e3
    assert any((tmp_path / "cache").rglob("*.so"))


def test_importing_minicomp_loads_no_large_optional_module():
    """``import minicomp`` stays quick: ml_dtypes (half a second, for bfloat16), networkx, onnx and torch
    load where they are used."""
    code = ("import sys, minicomp; print(','.join(m for m in ('ml_dtypes', 'networkx', 'onnx', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    bf16 = subprocess.run([sys.executable, "-c", "import minicomp as mc; print(mc.ir.dtypes.bfloat16.numpy)"],
                          capture_output=True, text=True, check=True).stdout
    assert bf16.strip() == "bfloat16"
