"""The pass manager: pipelines, instruments, custom passes, verification."""

import io
import os

import numpy as np
import pytest

import minicomp as mc
from minicomp.backends.registry import default_pipeline
from minicomp.passes.manager import PassManager, Program, parse_pipeline, register_pass


def graph():
    g = mc.GraphBuilder("pm")
    x = g.input("x", (4, 8))
    g.output(g.softmax(g.relu(x * 1.0)))
    return g.build()


def test_pipelines_from_strings_and_lists():
    assert parse_pipeline("simplify, fuse,lower") == ["simplify", "fuse", "lower"]
    assert default_pipeline("llvm") == ["simplify", "patches", "nchwc", "fuse", "lower", "schedule", "plan", "legalize"]
    with pytest.raises(mc.MinicompError, match="unknown pass 'nope'"):
        parse_pipeline("simplify,nope")


def test_print_after_and_timings():
    out = io.StringIO()
    pm = PassManager("simplify,fuse,lower", print_after=["fuse"], print_before="simplify", stream=out)
    program = pm.run(Program(graph()))
    text = out.getvalue()
    assert "// ----- before simplify -----" in text and "// ----- after fuse -----" in text
    assert "# group fused_relu_softmax_0" in text
    assert [n for n, _ in pm.timings] == ["simplify", "fuse", "lower"]
    assert "total" in pm.timing_report()
    assert len(program.kernels) == 1


def test_a_pass_that_changed_nothing_says_so():
    out = io.StringIO()
    # simplify removes x * 1.0; dce then has nothing left to do.
    PassManager("simplify,dce", print_after="all", stream=out).run(Program(graph()))
    text = out.getvalue()
    assert "// ----- after simplify -----" in text and "// ----- after dce (changed nothing) -----" in text


def test_dump_dir_writes_numbered_files(tmp_path):
    mc.compile(graph(), dump_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert files == ["00-input.mcir", "01-simplify.mcir", "02-patches.mcir", "03-nchwc.mcir", "04-fuse.mcir",
                     "05-lower.loops", "06-schedule.loops", "07-plan.memory.txt", "08-legalize.loops"]
    assert "parallel" in (tmp_path / "06-schedule.loops").read_text() or "vectorized" in (
        tmp_path / "06-schedule.loops").read_text()


def test_custom_pass_inserted_by_name():
    calls = []

    @register_pass("test_count_nodes", replace=True)
    def count_nodes(g):
        """Records the node count."""
        calls.append(len(g.nodes))
        return g

    model = mc.compile(graph(), pipeline="simplify,test_count_nodes,fuse,lower,schedule,plan")
    assert calls == [2]
    xs = np.ones((4, 8), np.float32)
    np.testing.assert_allclose(model(xs)[0], mc.run_reference(graph(), xs)[0], rtol=1e-6)


def test_verify_catches_a_broken_pass():
    @register_pass("test_break_graph", replace=True)
    def break_graph(g):
        g = g.clone()
        g.nodes.reverse()
        return g

    with pytest.raises(mc.MinicompError, match="after pass 'test_break_graph'"):
        mc.compile(graph(), pipeline="test_break_graph,lower,plan")


def test_graph_pass_after_fusion_is_refused():
    with pytest.raises(mc.MinicompError, match="cannot run after fusion"):
        mc.compile(graph(), pipeline="fuse,simplify,lower,plan")


def test_duplicate_registration_is_refused():
    with pytest.raises(mc.MinicompError, match="already registered"):
        register_pass("simplify")(lambda g: g)
