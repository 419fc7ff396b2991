"""The CUDA backend, proven on the CPU: every op, random graphs and models
compiled for target cuda run through cuda-emu (the same CUDA C, compiled by
g++ with ``cuda_emu.h``) and must match the reference; where nvcc exists, the
same sources must compile to PTX for sm_90."""

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import minicomp as mc
from minicomp.backends.cuda_codegen import NVCC_FLAGS
from minicomp.ir.loops import Barrier
from minicomp.ir.ops import all_ops
from minicomp.passes.manager import register_pass
from tests.strategies import OP_CASES, contraction_graphs, dtype_graph, op_chains, random_dags, single_op_graph
from tests.tolerances import assert_close

ALL = sorted(all_ops())


def few(n: int):
    """A fraction of the profile's examples: each one runs g++ (about half a second)."""
    return settings(max_examples=max(2, settings().max_examples // n))


# benchmarks/gpu_check.sh sets this to "gpu" to run these tests on a real GPU.
DEVICE = os.environ.get("MINICOMP_CUDA_DEVICE", "emu")


def check_emu(graph, inputs, scale=10):
    model = mc.compile(graph, target="cuda", device=DEVICE)
    got = model(*inputs)
    want = mc.run_reference(graph, *inputs)
    for g, w in zip(got, want):
        assert_close(g, w, scale=scale, what=model.stages["cuda"][-6000:])
    return model


@pytest.mark.parametrize("op", ALL)
def test_op_on_cuda_emu_matches_reference(op):
    @few(8)
    @given(OP_CASES[op])
    def check(case):
        inputs, attrs = case
        check_emu(single_op_graph(op, inputs, attrs), inputs)

    check()


@few(4)
@given(random_dags())
def test_random_dags_on_cuda_emu(case):
    check_emu(*case)


@few(4)
@given(op_chains())
def test_random_chains_on_cuda_emu(case):
    check_emu(*case)


@few(2)
@given(contraction_graphs())
def test_random_contractions_on_cuda_emu(case):
    """Matmul, batched matmul and convolution with odd sizes: the shared-memory
    tiles' bounds checks and the folded epilogues."""
    check_emu(*case)


def test_matmul_with_epilogue_is_one_tiled_launch():
    """Odd sizes (bounds checks on every tile edge); bias and relu folded into the tile's store."""
    rng = np.random.default_rng(3)
    g = mc.GraphBuilder()
    a, b = g.input("a", (97, 33)), g.input("b", (33, 65))
    bias = g.constant(rng.standard_normal(65).astype(np.float32))
    g.output(g.relu(a @ b + bias))
    model = check_emu(g.build(), [rng.standard_normal((97, 33)).astype(np.float32),
                                  rng.standard_normal((33, 65)).astype(np.float32)])
    assert len(model.launches) == 1
    assert "__shared__" in model.stages["cuda"] and "__syncthreads();" in model.stages["cuda"]


def test_convolution_at_batch_above_one_is_tiled_over_the_batch():
    """Fusion nests a convolution, its padding and its relu in one loop over the
    batch; the GPU schedule splits that loop so that the convolution is one tiled
    GEMM over every image, not one block per image (which took ResNet-50 at
    batch 32 2.3 s on an H200), with the relu folded into its store."""
    rng = np.random.default_rng(4)
    g = mc.GraphBuilder()
    x = g.input("x", (5, 6, 9, 9))
    g.output(g.relu(g.conv2d(x, g.constant(rng.standard_normal((16, 6, 3, 3)).astype(np.float32)), padding=1)))
    model = check_emu(g.build(), [rng.standard_normal((5, 6, 9, 9)).astype(np.float32)])
    assert "gpu gemm" in model.stages["loops"] and "batch=1" in model.stages["loops"]
    assert [ln.grid[0] > 5 for ln, _ in model.executable.launches] == [True, True]  # padding, then the GEMM


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
def test_dtypes_on_cuda_emu(dtype):
    check_emu(*dtype_graph(dtype))


def _transformer():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
    from transformer_block import build_transformer_block

    return build_transformer_block()


def test_transformer_block_on_cuda_emu_uses_every_gpu_schedule():
    graph = _transformer()
    x = np.random.default_rng(1).standard_normal((2, 32, 64)).astype(np.float32)
    model = check_emu(graph, [x])
    cuda = model.stages["cuda"]
    assert "__shfl_xor_sync" in cuda  # row reductions across a warp (layer norm, softmax)
    assert "__shared__" in cuda and "__syncthreads();" in cuda  # staged matmul tiles
    assert "gpu gemm" in model.stages["loops"]  # the tile choice and its estimate are in the dumps
    assert all(ln.threads % 32 == 0 for ln in model.launches)


# -- a wrong schedule is caught ---------------------------------------------------------

@register_pass("test_drop_barriers", kind="program")
def _drop_barriers(program, ctx):
    """A deliberately wrong schedule: every __syncthreads() removed."""
    from dataclasses import replace

    from minicomp.ir.loops import Seq
    from minicomp.passes.schedules.step import map_stmts

    def drop(s):
        if isinstance(s, Seq):
            return Seq([c for c in s.stmts if not isinstance(c, Barrier)])
        return None

    program.kernels = [replace(k, body=map_stmts(k.body, drop)) for k in program.kernels]
    return program


@pytest.mark.parametrize("build", ["matmul", "softmax"])
def test_a_missing_barrier_gives_a_wrong_answer_under_cuda_emu(build):
    """Threads run as fibers up to each barrier: without the barrier a thread
    reads shared memory the others have not written yet."""
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder()
    if build == "matmul":
        a, b = g.input("a", (64, 64)), g.input("b", (64, 64))
        g.output(a @ b)
        inputs = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2)]
    else:
        x = g.input("x", (8, 256))
        g.output(g.softmax(x, axis=-1))
        inputs = [rng.standard_normal((8, 256)).astype(np.float32)]
    graph = g.build()
    (want,) = mc.run_reference(graph, *inputs)
    good = mc.compile(graph, target="cuda", device="emu")
    assert_close(good(*inputs)[0], want, scale=10)
    bad = mc.compile(graph, target="cuda", device="emu",
                     pipeline="simplify,fuse,lower,schedule,test_drop_barriers,plan")
    assert "__syncthreads" not in bad.stages["cuda"]
    assert not np.allclose(bad(*inputs)[0], want, rtol=1e-3, atol=1e-3)


# -- what needs no GPU, and what does ---------------------------------------------------

def test_compiling_for_cuda_needs_no_gpu_and_calling_says_what_is_missing():
    g = mc.GraphBuilder()
    x = g.input("x", (4, 8))
    g.output(g.relu(x) * 2.0)
    model = mc.compile(g.build(), target="cuda")
    assert 'extern "C" __global__' in model.stages["cuda"]
    x = np.arange(32, dtype=np.float32).reshape(4, 8) - 10
    try:
        import pycuda.autoinit  # noqa: F401
    except Exception:  # no pycuda, driver or GPU: the call says so
        with pytest.raises(mc.MinicompError, match="pycuda|GPU"):
            model(x)
    else:  # on a GPU machine the same model runs
        assert_close(model(x)[0], np.maximum(x, 0) * 2)


def test_unknown_device_and_device_for_a_cpu_target_are_refused():
    g = mc.GraphBuilder()
    g.output(g.relu(g.input("x", (2,))))
    graph = g.build()
    with pytest.raises(mc.MinicompError, match="unknown CUDA device"):
        mc.compile(graph, target="cuda", device="tpu")
    with pytest.raises(mc.MinicompError, match="CUDA targets"):
        mc.compile(graph, target="llvm", device="emu")


def test_cuda_emu_target_name_and_zero_size_and_scalar_outputs():
    g = mc.GraphBuilder()
    x = g.input("x", (0, 3))
    y = g.input("y", ())
    g.output(x * 2.0, y + 1.0, g.sum(x, axes=[0]))
    graph = g.build()
    inputs = [np.zeros((0, 3), np.float32), np.array(2.5, np.float32)]
    model = mc.compile(graph, target="cuda-emu")
    for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs)):
        assert_close(got, want)


def test_a_nest_that_stores_nothing_gets_no_launch():
    """A GPU refuses a grid of zero blocks: x * 2 and the slice of x are empty,
    while the sum over the empty axis still writes its three zeros."""
    g = mc.GraphBuilder()
    x = g.input("x", (0, 3))
    g.output(x * 2.0, g.sum(x, axes=[0]), g.slice(g.relu(g.input("z", (4,))), starts=[2], ends=[2]))
    model = check_emu(g.build(), [np.zeros((0, 3), np.float32), np.ones(4, np.float32)])
    launched = [ln.function for ln, _ in model.executable.launches]
    assert len(launched) == 1 and "sum" in launched[0], launched


def test_profile_times_every_launch():
    g = mc.GraphBuilder()
    x = g.input("x", (16, 64))
    g.output(g.softmax(g.relu(x), axis=-1))
    model = mc.compile(g.build(), target="cuda", device="emu")
    timings = model.profile(np.ones((16, 64), np.float32), repeat=2)
    assert [name for name, _ in timings] == [ln.function for ln in model.launches]
    assert all(t > 0 for _, t in timings)


def test_cli_emits_cuda(tmp_path, capsys):
    from minicomp.cli import main

    src = tmp_path / "g.mcir"
    src.write_text("graph g(%x: f32[8, 64]) {\n  %y: f32[8, 64] = softmax(%x) {axis = -1}\n  return %y\n}\n")
    assert main(["compile", str(src), "--target", "cuda", "--emit", "cuda"]) == 0
    assert "__global__" in capsys.readouterr().out
    assert main(["run", str(src), "--target", "cuda-emu"]) == 0
    assert main(["compile", str(src), "--emit", "cuda"]) == 2  # CUDA C needs --target cuda


# -- nvcc accepts what g++ accepted -------------------------------------------------------

NVCC = shutil.which("nvcc")


def _ptx(source: str) -> tuple[bool, str]:
    """(did nvcc compile ``source`` to PTX and ptxas that to sm_90 machine code, what they printed:
    ptxas's resource report of each kernel too, ``-Xptxas -v``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.cu"
        path.write_text(source)
        proc = subprocess.run([NVCC, "-arch=sm_90", "-cubin", "-Xptxas", "-v", *NVCC_FLAGS, str(path),
                               "-o", str(path) + ".cubin"], capture_output=True, text=True)
        return proc.returncode == 0, proc.stderr


SM90_STATIC_SHARED = 48 * 1024  # bytes of __shared__ arrays a block may declare statically


def resource_problems(printed: str) -> list[str]:
    """What ptxas's report (``-Xptxas -v``) says is wrong: a kernel that spills registers to local
    memory, or that declares more shared memory than a block may have."""
    problems, kernel = [], "?"
    for line in printed.splitlines():
        if "Compiling entry function" in line:
            kernel = line.split("'")[1] if "'" in line else line
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill and spill.groups() != ("0", "0"):
            problems.append(f"{kernel}: {spill.group(0)}")
        smem = re.search(r"(\d+) bytes smem", line)
        if smem and int(smem.group(1)) > SM90_STATIC_SHARED:
            problems.append(f"{kernel}: {smem.group(0)}, more than {SM90_STATIC_SHARED}")
    return problems


@pytest.mark.slow  # 20 s of nvcc
@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_nvcc_compiles_the_cuda_of_every_op_and_the_transformer_to_ptx_without_warnings():
    """Also without a warning: no index or temporary is declared and left
    unused (pycuda shows nvcc's warnings to the user on every compile)."""
    sources = {"transformer": mc.compile(_transformer(), target="cuda").stages["cuda"]}
    from benchmarks.bench_dynamic import mlp  # symbolic sizes: grids and guards read mc_dims

    sources["mlp, batch 1..256"] = mc.compile(mlp(mc.Dim("batch", 1, 256)), target="cuda").stages["cuda"]
    from tests.passes.test_reduction_chain_fusion import attention  # one pass over the keys, a thread a row

    sources["attention, causal"] = mc.compile(attention(300, causal=True), target="cuda").stages["cuda"]
    sources["attention, length 1..512"] = mc.compile(attention(None, seq=mc.Dim("seq", 1, 512), mask="boolean"),
                                                     target="cuda").stages["cuda"]
    g = mc.GraphBuilder("decode")  # one query row over 4096 keys: split into parts, then merged
    q, k, v = g.input("q", (1, 12, 1, 64)), g.input("k", (1, 12, 4096, 64)), g.input("v", (1, 12, 4096, 64))
    g.output(g.softmax((q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.125)), axis=-1) @ v)
    sources["decoding attention"] = mc.compile(g.build(), target="cuda").stages["cuda"]
    for dtype in ("uint64", "uint8", "int32"):  # integer // and % take a sign test only where signed
        g = mc.GraphBuilder()
        a, b = g.input("a", (5, 3), dtype), g.input("b", (5, 3), dtype)
        g.output(g.floor_div(a, b), g.mod(a, b))
        sources[f"floor_div, mod {dtype}"] = mc.compile(g.build(), target="cuda").stages["cuda"]
    for op in ALL:
        @settings(max_examples=1, database=None)
        @given(OP_CASES[op])
        def one(case):
            inputs, attrs = case
            sources[op] = mc.compile(single_op_graph(op, inputs, attrs), target="cuda").stages["cuda"]

        one()
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(sources, pool.map(_ptx, sources.values())))
    failed = {k: text for k, (ok, text) in results.items() if not ok}
    assert not failed, f"nvcc rejected: {failed}"
    warned = {k: text[-3000:] for k, (_, text) in results.items() if "warning" in text}
    assert not warned, f"nvcc warned: {warned}"
    reports = [text for _, text in results.values()]
    assert sum(text.count("Used ") for text in reports) >= len(sources)  # ptxas reported every kernel
    problems = {k: resource_problems(text) for k, (_, text) in results.items() if resource_problems(text)}
    assert not problems, f"ptxas: {problems}"


def test_ptxas_resource_problems_are_found():
    report = ("ptxas info    : Compiling entry function 'k_a' for 'sm_90'\n"
              "ptxas info    : Function properties for k_a\n"
              "    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
              "ptxas info    : Used 255 registers, 50000 bytes smem, 360 bytes cmem[0]\n")
    assert resource_problems(report) == ["k_a: 8 bytes spill stores, 8 bytes spill loads",
                                         "k_a: 50000 bytes smem, more than 49152"]
    assert resource_problems(report.replace("8 bytes spill", "0 bytes spill").replace("50000", "1024")) == []


def test_user_schedule_binds_loops_to_blocks_and_threads():
    g = mc.GraphBuilder()
    x = g.input("x", (40, 70))
    g.output(g.relu(x) * 3.0)
    graph = g.build()
    xs = np.random.default_rng(0).standard_normal((40, 70)).astype(np.float32)
    steps = "split(i1, 35); bind(i0, block.x); bind(i1.o, thread.y); bind(i1.i, threadIdx.x)"  # CUDA names too
    model = mc.compile(graph, target="cuda", device="emu", schedules={"fused_relu_mul": steps})
    assert [(ln.grid, ln.block) for ln in model.launches] == [((40, 1, 1), (35, 2, 1))]
    assert_close(model(xs)[0], np.maximum(xs, 0) * 3)
    # A remainder loop left outside the thread loop would run once per thread: refused.
    with pytest.raises(mc.MinicompError, match="outside every loop bound to a thread axis"):
        mc.compile(graph, target="cuda", schedules={"fused_relu_mul": "split(i1, 32); bind(i0, blockIdx.x); "
                                                                      "bind(i1.i, threadIdx.x)"})


@pytest.mark.parametrize("cols, vector", [(96, True), (30, False)])
def test_elementwise_uses_float4_where_rows_allow(cols, vector):
    """Rows of a multiple of 4 floats: each thread loads and stores a float4
    (bias broadcast along rows too); other widths fall back to scalars."""
    rng = np.random.default_rng(2)
    g = mc.GraphBuilder()
    x, b = g.input("x", (7, cols)), g.input("b", (cols,))
    g.output(g.relu(x + b) * x)
    inputs = [rng.standard_normal((7, cols)).astype(np.float32), rng.standard_normal(cols).astype(np.float32)]
    model = check_emu(g.build(), inputs)
    assert ("reinterpret_cast<const float4*>" in model.stages["cuda"]) == vector


def test_softmax_row_stays_in_registers():
    """The exponentials of a row are held by the threads that computed them: the
    kernel keeps no row workspace in global memory."""
    g = mc.GraphBuilder()
    g.output(g.softmax(g.input("x", (16, 1000)), axis=-1))
    graph = g.build()
    x = np.random.default_rng(4).standard_normal((16, 1000)).astype(np.float32)
    model = check_emu(graph, [x])
    (kernel,) = model.kernels
    assert kernel.workspace == []
    assert model.memory_plan.arena_bytes == 0


def test_a_kernel_written_in_place_drops_restrict_for_its_pair():
    """Unfused, relu writes over the product it reads (which dies there): its
    two pointers are neither const nor __restrict__, and the answer holds."""
    g = mc.GraphBuilder("inplace")
    x = g.input("x", (24, 40))
    h = g.relu(x @ x.transpose([1, 0]))
    g.output(h @ x)
    graph = g.build()
    model = mc.compile(graph, target="cuda", device=DEVICE, pipeline="simplify,lower,schedule,plan")
    relu = next(k for k in model.kernels if k.in_place)
    head = next(line for line in model.stages["cuda"].splitlines() if f"k_{relu.name}(" in line)
    assert "__restrict__" not in head and "const" not in head
    xs = np.random.default_rng(0).standard_normal((24, 40)).astype(np.float32)
    assert_close(model(xs)[0], mc.run_reference(graph, xs)[0], scale=10)


def test_one_compile_with_a_symbolic_batch_runs_every_size():
    """mc.Dim sizes on CUDA: the grid follows each call's batch (on the GPU when gpu_check.sh runs this)."""
    from benchmarks.bench_dynamic import mlp

    graph = mlp(mc.Dim("batch", 1, 300))
    model = mc.compile(graph, target="cuda", device=DEVICE)
    for n in (1, 5, 257, 300):
        x = np.random.default_rng(n).standard_normal((n, 784)).astype(np.float32)
        assert_close(model(x)[0], mc.run_reference(graph, x)[0], scale=10)
