"""Symbolic sizes end to end: one compile serves every size in the declared range (docs/dynamic.md)."""

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicomp as mc
from benchmarks.bench_dynamic import mlp  # 784-256-10 with relu and softmax
from minicomp.errors import CompileError, RuntimeInputError
from tests.strategies import _CHAIN_BINARY, _CHAIN_UNARY, _apply_unary, _rng

BATCH = mc.Dim("batch", 1, 256)


@pytest.mark.parametrize("target", ["llvm", "c", "cuda-emu"])
def test_an_mlp_compiled_once_is_right_at_every_size_and_refuses_the_rest(target):
    graph = mlp(BATCH)
    model = mc.compile(graph, target=target)
    rng = np.random.default_rng(0)
    for n in (1, 7, 64, 256, 3):
        x = rng.standard_normal((n, 784)).astype(np.float32)
        (got,) = model(x)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, mc.run_reference(graph, x)[0], rtol=1e-5, atol=1e-6)
    for n in (257, 0):
        with pytest.raises(RuntimeInputError, match=rf"has {n} at axis 0, dimension batch, which is declared 1\.\.256"):
            model(np.zeros((n, 784), np.float32))


def test_the_loops_show_the_symbols_and_memory_is_planned_at_the_largest_size():
    model = mc.compile(mlp(BATCH))
    loops = model.stages["loops"]
    assert "sizes known at the call: batch in 1..256" in loops and "(batch // 8)" in loops
    # The hidden layer, 256 x 256 floats at the largest batch, has its place in the arena.
    assert model.memory_plan.arena_bytes >= 256 * 256 * 4
    assert len(model.profile(np.ones((5, 784), np.float32), repeat=1)) == len(model.layout.calls)


def test_a_saved_model_keeps_its_dims_and_their_ranges(tmp_path):
    model = mc.compile(mlp(BATCH))
    model.save(str(tmp_path / "m.mcm"))
    loaded = mc.load(str(tmp_path / "m.mcm"))
    assert loaded.graph.inputs[0].shape == (BATCH, 784)
    for n in (1, 9, 256):
        x = np.random.default_rng(n).standard_normal((n, 784)).astype(np.float32)
        np.testing.assert_array_equal(loaded(x)[0], model(x)[0])
    with pytest.raises(RuntimeInputError, match="declared 1..256"):
        loaded(np.zeros((257, 784), np.float32))


def test_the_cuda_grid_follows_the_sizes_of_the_call():
    model = mc.compile(mlp(BATCH), target="cuda-emu")
    grids = [ln.grid for ln in model.launches]
    assert any(not isinstance(d, int) for grid in grids for d in grid)  # blocks over the batch
    assert "mc_dims" in model.stages["cuda"]
    assert {ln.grid_at({"batch": 1}) for ln in model.launches} != {ln.grid_at({"batch": 256}) for ln in model.launches}


SIZED_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "mlp.h"
int main(int argc, char** argv) {
  int64_t sizes[MC_NUM_DIMS] = {atoll(argv[1])};
  int64_t n = sizes[0];
  float* x = malloc(n * 784 * sizeof(float));
  float* y = malloc(n * 10 * sizeof(float));
  for (int64_t i = 0; i < n * 784; ++i) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
  const void* in[] = {x};
  void* out[] = {y};
  int rc = mc_run(sizes, in, out);
  if (rc) return 10 + rc;
  for (int64_t i = 0; i < n * 10; ++i) printf("%.8g\n", y[i]);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_an_exported_library_takes_the_sizes_of_each_call(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    graph = mlp(BATCH)
    header = open(mc.compile(graph).export_library(str(tmp_path / "libmlp.so"))).read()
    assert "sizes[0]: batch, from 1 to 256" in header and "[0] x: float [batch, 784]" in header
    (tmp_path / "main.c").write_text(SIZED_PROGRAM)
    subprocess.run([cc, "main.c", "-I.", "-L.", "-lmlp", "-Wl,-rpath,.", "-o", "main"], cwd=tmp_path, check=True)
    run_sized_program(tmp_path, graph, out_of_range=257)


def run_sized_program(folder, graph, out_of_range: int):
    """Run ``folder/main N`` (an MLP of batch N on inputs it makes) at batch 1, 7 and 256 against the
    reference; at ``out_of_range`` it must exit with 12 (the model's run said 2: a size out of range)."""
    for n in (1, 7, 256):
        out = subprocess.run(["./main", str(n)], cwd=folder, capture_output=True, text=True, check=True).stdout
        x = (((np.arange(n * 784) * 37) % 101).astype(np.float32) / 50.0 - 1.0).reshape(n, 784)
        np.testing.assert_allclose(np.array(out.split(), np.float32).reshape(n, 10),
                                   mc.run_reference(graph, x)[0], rtol=1e-5, atol=1e-6)
    assert subprocess.run(["./main", str(out_of_range)], cwd=folder).returncode == 12


EXPORTED_C_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(int argc, char** argv) {
  int64_t sizes[1] = {atoll(argv[1])};
  int64_t n = sizes[0];
  float* x = malloc(n * 784 * sizeof(float));
  float* y = malloc(n * 10 * sizeof(float));
  for (int64_t i = 0; i < n * 784; ++i) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
  net_model* m = net_load("model.bin");
  if (!m) return 1;
  int rc = net_run(m, sizes, x, y);
  if (rc) return 10 + rc;
  for (int64_t i = 0; i < n * 10; ++i) printf("%.8g\n", y[i]);
  net_free(m);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_exported_c_takes_the_sizes_of_each_call(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    graph = mlp(BATCH)
    mc.compile(graph, target="c").export_c(str(tmp_path), name="net")
    header = (tmp_path / "model.h").read_text()
    assert "sizes[0]: batch, from 1 to 256" in header and "in0: x, float32[batch, 784]" in header
    (tmp_path / "main.c").write_text(EXPORTED_C_DRIVER)
    subprocess.run([cc, "-std=c99", "-O2", "-fopenmp", "-Wall", "-Werror", "main.c", "model.c", "-o", "main", "-lm"],
                   cwd=tmp_path, check=True)
    run_sized_program(tmp_path, graph, out_of_range=0)


def test_what_does_not_take_symbolic_sizes_yet_says_so(tmp_path):
    from dataclasses import replace

    from minicomp.backends import registry

    registry.register_backend(replace(registry.get_backend("c"), name="c-static-only", symbolic=False,
                                       make_target=None, aliases=()))
    try:
        with pytest.raises(CompileError, match=r"target c-static-only does not compile symbolic sizes yet "
                                               r"\(batch \(1\.\.256\)\); compile for one of c, cuda, llvm, reference"):
            mc.compile(mlp(BATCH), target="c-static-only")
    finally:
        del registry._BACKENDS["c-static-only"]


def test_positions_and_the_last_row_of_a_symbolic_axis():
    n = mc.Dim("n", 2, 40)
    g = mc.GraphBuilder("last")
    x = g.input("x", (n, 4))
    positions = g.iota(length=n, dtype="float32").reshape(n, 1)  # 0, 1, ... n - 1
    shifted = x + positions
    last = g.slice(shifted, starts=[n - 1], ends=[n], axes=[0])  # x[-1:]
    g.output(last, g.broadcast_to(last, shape=(n, 4)))
    graph = g.build()
    model = mc.compile(graph)
    for size in (2, 3, 40):
        a = np.random.default_rng(size).standard_normal((size, 4)).astype(np.float32)
        for got, want in zip(model(a), mc.run_reference(graph, a)):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(model(a)[0], a[-1:] + np.float32(size - 1))
    with pytest.raises(mc.ShapeError, match="slice bound .* outside an axis of n elements"):
        g.slice(x, starts=[n], ends=[n + 1], axes=[0])


@st.composite
def symbolic_dags(draw, max_nodes=7):
    """A random DAG over inputs whose first axis is the symbolic dimension ``n`` (or 1, broadcast),
    with elementwise ops, products with constants and of a tensor with its transpose, reductions
    and softmax over any axis (the symbolic one too), transposes and flattening. Returns (graph,
    the sizes of ``n`` to call it at)."""
    hi = draw(st.sampled_from([5, 17, 64]))
    n = mc.Dim("n", draw(st.sampled_from([1, min(8, hi)])), hi)  # (from 8 up, whole tiles and a widened one)
    rest = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=2)))
    rng = _rng(draw)
    g = mc.GraphBuilder("symbolic")
    pool = [g.input("in0", (n,) + rest)]
    if draw(st.booleans()):
        pool.append(g.input("in1", (1,) + rest if draw(st.booleans()) else (n,) + rest))
    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "dense", "contract", "reduce", "softmax", "layout"]))
        x = draw(st.sampled_from(pool))
        try:
            if kind == "unary":
                y = _apply_unary(g, x, draw(st.sampled_from(_CHAIN_UNARY)))
            elif kind == "binary":
                y = g.op(draw(st.sampled_from(_CHAIN_BINARY)), x, draw(st.sampled_from(pool)))
            elif kind == "dense":
                w = rng.uniform(-1, 1, size=(x.shape[-1], draw(st.integers(1, 40)))).astype(np.float32)
                y = x @ g.constant(w)
            elif kind == "contract":  # x^T x: a product over the axes of x, the symbolic one too
                y = x.transpose(list(reversed(range(x.ndim)))) @ x
            elif kind == "reduce":
                y = g.op(draw(st.sampled_from(["sum", "max", "mean"])), x, axes=[draw(st.integers(0, x.ndim - 1))],
                         keepdims=draw(st.booleans()))
            elif kind == "softmax":
                y = g.softmax(x, axis=draw(st.integers(0, x.ndim - 1)))
            else:
                y = x.transpose(list(reversed(range(x.ndim)))) if draw(st.booleans()) else x.reshape(-1)
        except mc.MinicompError:
            continue  # shapes that do not join, an op that needs a static size
        if y.ndim:
            pool.append(y)
    g.output(pool[-1])
    sizes = draw(st.lists(st.integers(n.min, n.max), min_size=1, max_size=3)) + [n.max]
    return g.build(), sizes


@settings(max_examples=40, deadline=None)
@given(symbolic_dags(), st.sampled_from(["llvm", "cuda-emu"]))
def test_random_symbolic_graphs_compiled_once_match_the_reference_at_every_size(case, target):
    graph, sizes = case
    model = mc.compile(graph, target=target)
    rng = np.random.default_rng(0)
    for n in sizes:
        arrays = [rng.uniform(-2, 2, size=tuple(n if isinstance(d, mc.Dim) else d for d in v.shape))
                  .astype(np.float32) for v in graph.inputs]
        want = mc.run_reference(graph, *arrays)
        for got, ref in zip(model(*arrays), want):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5)


def onnx_mlp():
    """An ONNX MLP whose batch is the dim_param ``batch``."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 8, name)
             for name, s in (("w1", (64, 48)), ("b1", (48,)), ("w2", (48, 10)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Softmax", ["h3"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_onnx_dim_param_with_a_range_stays_symbolic_and_matches_onnx_runtime():
    ort = pytest.importorskip("onnxruntime")
    model = onnx_mlp()
    graph = mc.from_onnx(model, dims={"batch": (1, 128)})
    assert graph.inputs[0].shape == (mc.Dim("batch", 1, 128), 64)
    compiled = mc.compile(graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3, 128):
        x = np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)
        np.testing.assert_allclose(compiled(x)[0], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(mc.MinicompError, match=r"dims names 'N', which no input's shape has; .* are batch"):
        mc.from_onnx(model, dims={"N": (1, 4)})
    with pytest.raises(mc.MinicompError, match=r"give a named one a range with dims="):
        mc.from_onnx(model)


def test_rows_a_symbolic_size_apart_are_still_stored_as_vectors():
    """A tile's row lies ``i * (64 * seq)`` elements from the first: its lanes are still contiguous, so
    the write-back is vector stores, not one scalar store per lane."""
    g = mc.GraphBuilder("rows")
    x = g.input("x", (2, mc.Dim("seq", 1, 64), 64))
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g.output(x @ g.constant(w))
    graph = g.build()
    model = mc.compile(graph, cache=False)
    assert "extractelement" not in model.stages["llvm"]
    a = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
    np.testing.assert_allclose(model(a)[0], a @ w, rtol=1e-5, atol=1e-5)
