"""The portable C target: every op, random graphs and the example models
compiled for target c (C99 built by the system C compiler) match the
reference, and ``export_c`` writes C that builds with ``cc -std=c99 -O2
-fopenmp -Wall -Werror`` and runs without minicomp."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import minicomp as mc
from minicomp.errors import MinicompError
from minicomp.ir.ops import all_ops
from tests.strategies import OP_CASES, contraction_graphs, dtype_graph, op_chains, random_dags, single_op_graph
from tests.tolerances import assert_close

ALL = sorted(all_ops())
EXAMPLES = Path(__file__).parents[2] / "examples"


def few(n: int):
    """A fraction of the profile's examples: each one runs the C compiler."""
    return settings(max_examples=max(3, settings().max_examples // n))


def check_c(graph, inputs, threads=2, scale=10):
    model = mc.compile(graph, target="c", num_threads=threads)
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs), strict=True):
        assert_close(got, want, scale=scale, what=model.stages["c"][-6000:])
    return model


@pytest.mark.parametrize("op", ALL)
def test_op_on_c_matches_reference(op):
    @few(4)
    @given(OP_CASES[op])
    def check(case):
        inputs, attrs = case
        check_c(single_op_graph(op, inputs, attrs), inputs)

    check()


def test_a_padded_stage_before_a_fused_multiply_add_is_right():
    """GCC 12 at -O3 vectorized this kernel's padded stage (a guarded load, then fmaf) into code that
    wrote zeros and garbage (found by the op test above, one example in a few runs); the C target
    now loads a select's operands before the select."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 2, 5, 5)).astype(np.float32),
              rng.standard_normal((1, 2, 1, 1, 1, 2)).astype(np.float32)]
    attrs = {"strides": (1, 1), "padding": (1, 0, 0, 1), "dilations": (1, 1), "groups": 1}
    check_c(single_op_graph("conv2d_nchwc", inputs, attrs), inputs)


@few(2)
@given(random_dags())
def test_random_dags_on_c(case):
    check_c(*case)


@few(2)
@given(op_chains())
def test_random_chains_on_c(case):
    check_c(*case)


@few(2)
@given(contraction_graphs())
def test_random_contractions_on_c(case):
    check_c(*case)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8"])
def test_dtypes_on_c(dtype):
    check_c(*dtype_graph(dtype))


def _example(module: str, builder: str, **kwargs):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return getattr(__import__(module), builder)(**kwargs)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("module, builder, kwargs, shape", [
    ("mlp", "build_mlp", {"batch": 8}, (8, 784)),
    ("cnn", "build_cnn", {"batch": 2}, None),
    ("transformer_block", "build_transformer_block", {}, (2, 32, 64)),
])
def test_example_models_on_c(module, builder, kwargs, shape):
    graph = _example(module, builder, **kwargs)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(v.shape).astype(v.dtype.numpy) for v in graph.inputs]
    model = check_c(graph, inputs)
    assert "#pragma omp parallel for" in model.stages["c"]  # the CPU schedule's parallel loops
    model.set_num_threads(1)
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs)):
        assert_close(got, want, scale=10)


def test_c_model_reports_and_refuses_like_the_others():
    g = mc.GraphBuilder("small")
    x = g.input("x", (3, 4))
    g.output(g.exp(x))
    model = mc.compile(g.build(), target="c")
    assert "target=c" in repr(model) and "void k_" in model.stages["c"]
    assert [name for name, _ in model.profile(np.ones((3, 4), np.float32))] == [k.name for k in model.kernels]
    with pytest.raises(MinicompError, match="expects f32"):
        model(np.ones((3, 5), np.float32))
    with pytest.raises(MinicompError, match="llvm"):
        model.save("/tmp/never.mcm")
    with pytest.raises(MinicompError, match="target 'c'"):
        mc.compile(g.build()).export_c("/tmp/never")


# -- export_c: C that runs without minicomp ---------------------------------------------

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

static void *read_file(const char *path, size_t n) {
  void *p = malloc(n ? n : 1);
  FILE *f = fopen(path, "rb");
  if (!p || !f || fread(p, 1, n, f) != n) { fprintf(stderr, "cannot read %s\n", path); exit(1); }
  fclose(f);
  return p;
}

static void write_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
  fclose(f);
}

int main(void) {
  NAME_model *m = NAME_load("model.bin");
  if (!m) { fprintf(stderr, "cannot load the model\n"); return 1; }
  NAME_set_num_threads(2);
DECLARE
  NAME_run(m, ARGS);
WRITE
  NAME_free(m);
  return 0;
}
"""


def build_and_run_export(model, inputs, folder: Path) -> list[np.ndarray]:
    """Export ``model``, build it with a driver under the strict flags, run it and read its outputs."""
    model.export_c(folder, name="net")
    graph = model.graph
    declare, args, write = [], [], []
    for i, a in enumerate(inputs):
        np.ascontiguousarray(a).tofile(folder / f"in{i}.raw")
        declare.append(f'  void *in{i} = read_file("in{i}.raw", {a.nbytes});')
        args.append(f"in{i}")
    for i, v in enumerate(graph.outputs):
        n = int(np.prod(v.shape, dtype=np.int64)) * v.dtype.itemsize
        declare.append(f"  void *out{i} = malloc({max(n, 1)});")
        args.append(f"out{i}")
        write.append(f'  write_file("out{i}.raw", out{i}, {n});')
    driver = DRIVER.replace("NAME", "net").replace("DECLARE", "\n".join(declare))
    (folder / "main.c").write_text(driver.replace("ARGS", ", ".join(args)).replace("WRITE", "\n".join(write)))
    cc = shutil.which("cc") or shutil.which("gcc")
    build = subprocess.run([cc, "-std=c99", "-O2", "-fopenmp", "-Wall", "-Werror", "model.c", "main.c", "-o", "net",
                            "-lm"], cwd=folder, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run(["./net"], cwd=folder, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return [np.fromfile(folder / f"out{i}.raw", dtype=v.dtype.numpy).reshape(v.shape)
            for i, v in enumerate(graph.outputs)]


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler")
def test_exported_transformer_builds_strictly_and_runs_without_minicomp(tmp_path):
    graph = _example("transformer_block", "build_transformer_block")
    x = np.random.default_rng(2).standard_normal((2, 32, 64)).astype(np.float32)
    model = mc.compile(graph, target="c")
    got = build_and_run_export(model, [x], tmp_path)
    for g, w in zip(got, mc.run_reference(graph, x)):
        assert_close(g, w, scale=10)
    text = (tmp_path / "model.c").read_text()
    assert "minicomp" not in (tmp_path / "model.h").read_text().split("\n", 1)[1]  # the API, not a dependency
    assert "Python" not in text and "llvm" not in text.lower()


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler")
def test_exported_outputs_that_are_inputs_constants_repeated_or_16_bit(tmp_path):
    g = mc.GraphBuilder("odd outputs")
    x = g.input("x", (5, 3), "float16")
    c = g.input("c", (5, 3), "bool")
    w = g.constant(np.arange(15, dtype=np.float16).reshape(5, 3), "w")
    y = g.where(c, x * w, -x)
    g.output(y, x, w, y, y.astype("int32"), c)
    graph = g.build()
    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal((5, 3)).astype(np.float16), rng.integers(0, 2, (5, 3)).astype(bool)]
    got = build_and_run_export(mc.compile(graph, target="c"), inputs, tmp_path)
    for g_, w_ in zip(got, mc.run_reference(graph, *inputs), strict=True):
        np.testing.assert_array_equal(g_, w_)


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler")
@few(4)
@given(random_dags())
def test_exported_random_graphs_build_strictly_and_match(case):
    import tempfile

    graph, inputs = case
    with tempfile.TemporaryDirectory() as tmp:
        got = build_and_run_export(mc.compile(graph, target="c"), inputs, Path(tmp))
    for g, w in zip(got, mc.run_reference(graph, *inputs), strict=True):
        assert_close(g, w, scale=10)


def test_cli_emits_and_exports_c(tmp_path, capsys):
    from minicomp.cli import main

    src = tmp_path / "m.mcir"
    g = mc.GraphBuilder("m")
    x = g.input("x", (4, 4))
    g.output(g.relu(x))
    src.write_text(mc.print_graph(g.build()))
    assert main(["compile", str(src), "--target", "c", "--emit", "c"]) == 0
    assert "void mc_main(void **table)" in capsys.readouterr().out
    assert main(["compile", str(src), "--target", "c", "--export-c", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.c").exists() and (tmp_path / "out" / "model.bin").exists()
    assert main(["compile", str(src), "--emit", "c"]) == 2
    assert "--emit c needs --target c" in capsys.readouterr().err
    assert main(["run", str(src), "--target", "c", "--check"]) == 0
