"""Targets as data: the register tile follows the target's vector width and
registers, named CPUs compile and run (AVX2 code runs on this machine), and
targets this machine cannot run are refused."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.ir import dtypes
from minicomp.passes.schedules.cpu_choices import register_tile
from minicomp.target import Target
from tests.tolerances import assert_close


def matmul(m=37, k=53, n=71):
    g = mc.GraphBuilder()
    a, b = g.input("a", (m, k)), g.input("b", (k, n))
    g.output(g.relu(a @ b + 0.5))
    rng = np.random.default_rng(3)
    return g.build(), [rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)]


def test_register_tiles_fit_the_target_registers():
    avx2, avx512 = Target.cpu("haswell"), Target.cpu("skylake-avx512")
    rows, cols = register_tile(avx2, dtypes.float32)
    assert (rows, cols) == (6, 16) and rows * cols <= 96  # 12 of 16 ymm registers
    assert register_tile(avx512, dtypes.float32) == (8, 32)  # 16 of 32 zmm registers
    assert register_tile(avx512, dtypes.float64) == (8, 16)
    assert register_tile(Target.cpu("x86-64"), dtypes.float32) == (6, 8)


def test_haswell_code_runs_and_matches_reference():
    graph, ins = matmul()
    model = mc.compile(graph, target="haswell", num_threads=2)
    loops = model.stages["loops"]
    assert "relu_3_local[6, 16]" in loops and "[6, 32]" not in loops
    assert "haswell" in str(model.target)
    assert "zmm" not in model.assembly()  # AVX2 code: no 512-bit registers
    assert_close(model(*ins)[0], mc.run_reference(graph, *ins)[0], scale=10)


def test_targets_by_hand_and_gpu_description():
    t = Target(name="llvm", num_threads=1, llvm_cpu="haswell", vector_bits=256, vector_registers=16)
    assert t.vector_lanes(dtypes.float32) == 8 and t.vector_lanes(dtypes.float64) == 4
    gpu = Target.cuda()
    assert gpu.gpu.warp_size == 32 and gpu.gpu.arch == "sm_90" and gpu.gpu.shared_bytes_per_block == 48 * 1024
    host = Target.host()
    assert host.vector_bits in (128, 256, 512) and host.l1_bytes


def test_dot_product_units_are_read_from_the_features():
    """An Intel Xeon with AMX reports it, a Zen 4 VNNI and BF16, a CPU without either nothing."""
    xeon = Target(features="+avx512f,+avx512vnni,+amx-int8,+amx-bf16,-avxvnni")
    assert xeon.dot_units == ["AVX-512 VNNI (int8)", "AMX (int8)", "AMX (bf16)"]
    zen4 = Target(features="+avx512f,+avx512vnni,+avx512bf16")
    assert zen4.dot_units == ["AVX-512 VNNI (int8)", "AVX-512 BF16"]
    assert Target(features="+avx2,-avx512vnni").dot_units == [] and Target.cuda().dot_units == []


def test_unknown_and_unrunnable_targets_are_refused():
    graph, _ = matmul(4, 4, 4)
    with pytest.raises(mc.UnsupportedError, match="unknown CPU 'pentium'"):
        Target.cpu("pentium")
    with pytest.raises(mc.UnsupportedError, match="unknown target 'tpu'; choose one of"):
        mc.compile(graph, target="tpu")
    alien = Target(name="llvm", num_threads=1, llvm_cpu="haswell", requires=("avx10.9",))
    with pytest.raises(mc.CompileError, match="needs avx10.9, which this machine lacks"):
        mc.compile(graph, target=alien)


def test_program_pairs_kernels_with_groups_and_knows_dependencies():
    from minicomp.passes.manager import PassManager, Program

    g = mc.GraphBuilder()
    x = g.input("x", (8, 16))
    h = g.softmax(g.exp(x) @ g.constant(np.ones((16, 16), np.float32)), axis=-1)
    g.output(g.sum(h, axes=[0]))
    program = PassManager("simplify,fuse,lower").run(Program(g.build()))
    for group, kernel in zip(program.groups, program.kernels):
        assert program.kernel_for(group) is kernel
    deps = program.dependencies()
    assert sorted(deps.nodes) == list(range(len(program.groups)))
    for a, b in deps.edges:
        assert a < b and deps.edges[a, b]["values"]


@pytest.mark.parametrize("target", ["llvm", "haswell"])
def test_large_matrix_products_get_cache_blocks(target):
    graph, ins = matmul(37, 1024, 512)  # the right operand (2 MiB) is larger than half of any L2
    model = mc.compile(graph, target=target, num_threads=2)
    schedule = model.stages["loops"].split("// schedule: ", 1)[1].split("\n", 1)[0]
    assert "split(r0, 256)" in schedule and "cache_read(b, r0.o, local)" in schedule
    assert "parallel(i1.o)" in schedule  # column blocks shared out to the threads
    assert_close(model(*ins)[0], mc.run_reference(graph, *ins)[0], scale=10)


def test_a_large_constant_right_operand_is_packed_not_copied_per_block():
    """ViT's and BERT's weights (768 x 3072): cache blocks read the panels packed at compile time,
    with no copy of each block at every call."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((1024, 512)).astype(np.float32)  # 2 MiB: larger than half of any L2
    g = mc.GraphBuilder()
    x = g.input("x", (37, 1024))
    g.output(x @ g.constant(w))
    graph = g.build()
    model = mc.compile(graph, num_threads=2)
    schedule = model.stages["loops"].split("// schedule: ", 1)[1].split("\n", 1)[0]
    assert "split(r0, 256)" in schedule and "pack(const_0, 1, 32)" in schedule
    assert "cache_read" not in schedule
    xs = rng.standard_normal((37, 1024)).astype(np.float32)
    assert_close(model(xs)[0], xs @ w, scale=10)


def test_constant_right_operands_are_packed_into_panels_once():
    rng = np.random.default_rng(5)
    g = mc.GraphBuilder()
    x = g.input("x", (37, 64))
    w = rng.standard_normal((64, 71)).astype(np.float32)
    g.output(g.relu(x @ g.constant(w)))
    graph = g.build()
    model = mc.compile(graph, num_threads=2)
    assert "pack(const_0, 1, 32)" in model.stages["loops"] and "const_0_p32[3, 64, 32]" in model.stages["loops"]
    packed = next(a for v, a in model.graph.constants.items() if v.name == "const_0_p32")
    np.testing.assert_array_equal(packed[1, :, :], w[:, 32:64])  # panel 1: columns 32..63, rows in order
    assert (packed[2, :, 7:] == 0).all()  # the last panel is zero-padded past column 71
    xs = rng.standard_normal((37, 64)).astype(np.float32)
    assert_close(model(xs)[0], np.maximum(xs @ w, 0), scale=10)


def test_compile_leaves_the_callers_target_as_it_was():
    target = mc.Target.host("llvm", 2)
    before = repr(target)
    g = mc.GraphBuilder()
    g.output(g.input("x", (2,)) + 1.0)
    model = mc.compile(g.build(), target=target, num_threads=1)
    assert repr(target) == before and target.num_threads == 2 and model.num_threads == 1
