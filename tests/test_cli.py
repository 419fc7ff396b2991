"""The minicomp command: run, compile, ops, help and errors."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.cli import main


def test_run_with_given_input_and_save(model_file, tmp_path, capsys):
    x = np.ones((4, 20), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(model_file), "--input", f"x={tmp_path / 'x.npy'}", "--save", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and "float32[4, 3]" in out and "sum=4" in out
    saved = np.load(tmp_path / "o" / "softmax_1.npy")
    np.testing.assert_allclose(saved, mc.run_reference(mc.parse_graph(model_file.read_text()), x)[0], rtol=1e-5)


def test_run_with_random_inputs(model_file, capsys):
    assert main(["run", str(model_file), "--repeat", "2", "--threads", "1"]) == 0
    assert "mean of 2" in capsys.readouterr().out


@pytest.mark.parametrize("emit, needle", [("loops", "kernel "), ("llvm", "define void @mc_main"),
                                          ("graph", "graph tiny"), ("memory", "lower bound"),
                                          ("llvm-opt", "define"), ("asm", "mc_main")])
def test_compile_emits_each_stage(model_file, capsys, emit, needle):
    assert main(["compile", str(model_file), "--emit", emit]) == 0
    assert needle in capsys.readouterr().out


def test_ops_lists_every_op(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "conv2d(" in out and "softmax(axis=-1)" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "missing.mcir"], "no such file"),
    (["run", "{model}", "--input", "y=nothing.npy"], "no input 'y'"),
    (["run", "{model}", "--input", "x"], "NAME=FILE.npy"),
    (["run", "{model}", "--input", "x=missing.npy"], "cannot read"),
])
def test_errors_are_one_line_and_exit_2(model_file, capsys, argv, message):
    argv = [a.replace("{model}", str(model_file)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("minicomp: error:") and message in err


def test_bad_text_file_reports_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.mcir"
    bad.write_text("graph g(%x: f32[2]) {\n  %y: f32[2] = relu(%z)\n  return %y\n}\n")
    assert main(["run", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "run" in capsys.readouterr().out


def test_compile_instruments(model_file, tmp_path, capsys):
    dump = tmp_path / "dumps"
    assert main(["compile", str(model_file), "--print-after", "fuse", "--dump-dir", str(dump),
                 "--explain-fusion", "--time-passes"]) == 0
    out = capsys.readouterr().out
    assert "// ----- after fuse -----" in out and "# group fused_matmul_softmax_0" in out
    assert "1 kernel\n" in out and "total" in out
    assert (dump / "04-fuse.mcir").exists() and (dump / "07-plan.memory.txt").exists()


def test_compile_without_fusion(model_file, capsys):
    assert main(["compile", str(model_file), "--pipeline", "simplify,lower,schedule,plan", "--emit", "fusion"]) == 0
    assert "2 kernels" in capsys.readouterr().out


def test_passes_lists_pipelines(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold_batch_norm" in out
    assert "default pipeline for llvm: simplify,patches,nchwc,fuse,lower,schedule,plan,legalize" in out


def test_graph_picture_with_graphviz(model_file, tmp_path, capsys):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed here (the next test covers that case)")
    png = tmp_path / "g.png"
    assert main(["compile", str(model_file), "--graph-png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_picture_without_graphviz_says_so(model_file, tmp_path, capsys, monkeypatch):
    import minicomp.viz

    monkeypatch.setattr(minicomp.viz.shutil, "which", lambda name: None)
    png = tmp_path / "g.png"
    assert main(["compile", str(model_file), "--graph-png", str(png)]) == 2
    err = capsys.readouterr().err
    assert "Graphviz's 'dot' program is not installed" in err
    dot_text = (tmp_path / "g.dot").read_text()
    assert "subgraph \"cluster_0\"" in dot_text and "softmax" in dot_text


def onnx_path():
    pytest.importorskip("onnx")
    from minicomp.frontends.onnx_testdata import data_dir

    return f"{data_dir()}/pytorch-converted/test_Conv2d/model.onnx"


def test_run_and_compile_onnx(capsys):
    path = onnx_path()
    assert main(["run", path, "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "float32[2, 4, 5, 4]" in out and "sum=" in out
    assert main(["compile", path, "--emit", "fusion"]) == 0
    assert "1 kernel" in capsys.readouterr().out


def test_bench_onnx_prints_both_columns(capsys):
    assert main(["bench", onnx_path(), "--repeat", "2", "--threads", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "minicomp ms" in out and "onnxruntime ms" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 2


def test_shape_option_errors(model_file, capsys):
    assert main(["run", str(model_file), "--shape", "x=1,2"]) == 2
    assert "applies to .onnx models only" in capsys.readouterr().err
    assert main(["run", onnx_path(), "--shape", "bogus"]) == 2
    assert "--shape expects" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--repeat", "0"], "argument --repeat: must be at least 1, got 0"),
    (["--repeat", "-3"], "argument --repeat: must be at least 1, got -3"),
    (["--threads", "2.5"], "argument --threads: must be a whole number, got '2.5'"),
])
def test_run_refuses_counts_below_one(model_file, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(model_file)] + flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_run_on_a_named_cpu(model_file, capsys):
    assert main(["run", str(model_file), "--target", "haswell"]) == 0
    assert "haswell" in capsys.readouterr().out


def test_run_check_compares_with_the_reference(model_file, capsys):
    assert main(["run", str(model_file), "--check"]) == 0
    out = capsys.readouterr().out
    assert "-> ok" in out and "passed" in out


def test_profile_prints_every_kernel(model_file, capsys):
    assert main(["profile", str(model_file), "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 kernel," in out and "%" in out


def test_time_passes_covers_code_generation_and_the_wall_time(model_file, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["compile", str(model_file), "--time-passes"]) == 0
    out = capsys.readouterr().out
    for needle in ("load model", "simplify", "build: emit LLVM IR", "build: LLVM", "total", "wall time"):
        assert needle in out
    assert main(["compile", str(model_file), "--time-passes"]) == 0  # the second: the whole model is kept
    out = capsys.readouterr().out
    assert "load the whole model from the cache" in out and "simplify" not in out
    assert "no pass ran: `minicomp cache --clear`" in out


def test_emit_of_a_pass_stage_stops_before_code_generation(model_file, capsys, monkeypatch):
    import minicomp.backends.llvm as llvm_backend

    def no_llvm(*args, **kwargs):
        raise AssertionError("code generation ran for --emit loops")

    monkeypatch.setattr(llvm_backend, "JitModule", no_llvm)
    assert main(["compile", str(model_file), "--emit", "loops"]) == 0
    assert "kernel " in capsys.readouterr().out


def test_plugin_registers_a_pass_for_the_pipeline(model_file, tmp_path, capsys):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from minicomp.passes.manager import register_pass\n\n"
        "@register_pass('plugin_identity')\n"
        "def plugin_identity(graph):\n"
        "    return graph.clone()\n")
    argv = ["--plugin", str(plugin), "compile", str(model_file), "--pipeline", "simplify,plugin_identity,fuse,lower,"
            "schedule,plan", "--emit", "fusion"]
    assert main(argv) == 0
    assert main(["--plugin", str(tmp_path / "missing.py"), "ops"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_check_uses_stored_onnx_test_outputs(capsys):
    pytest.importorskip("onnx")
    from minicomp.frontends.onnx_testdata import backend_cases

    case = backend_cases("pytorch-operator")[3]
    assert main(["run", case.model_path, "--check"]) == 0
    out = capsys.readouterr().out
    assert "test_data_set_0" in out and "stored ONNX test outputs: passed" in out


class _Busy:
    """A load reader that reports other programs on half the CPUs."""

    def share(self):
        return 0.5


class _Idle:
    def share(self):
        return 0.0


@pytest.mark.parametrize("command", [["run", "--repeat", "2"], ["profile", "--repeat", "1"]])
def test_timing_commands_warn_when_other_programs_share_the_cpus(model_file, capsys, monkeypatch, command):
    import minicomp.cli as cli

    monkeypatch.setattr(cli, "OtherLoad", _Busy)
    assert main([command[0], str(model_file), "--threads", "2", *command[1:]]) == 0
    err = capsys.readouterr().err
    assert "other programs used 50% of the CPUs" in err and "--threads 1" in err
    monkeypatch.setattr(cli, "OtherLoad", _Idle)
    assert main([command[0], str(model_file), *command[1:]]) == 0
    assert "other programs" not in capsys.readouterr().err


def test_a_dim_param_kept_symbolic_from_the_command_line(tmp_path, capsys):
    """--dim batch=1:128 keeps an ONNX model's batch symbolic; --size picks the random inputs' batch."""
    import onnx

    from tests.backends.test_dynamic import onnx_mlp  # the batch is the dim_param "batch"

    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_mlp(), str(path))
    assert main(["run", str(path), "--dim", "batch=1:128", "--size", "batch=3", "--check"]) == 0
    assert "float32[3, 10]" in capsys.readouterr().out
    assert main(["run", str(path), "--dim", "batch=1:128"]) == 0
    assert "float32[128, 10]" in capsys.readouterr().out  # at its largest
    assert main(["compile", str(path), "--dim", "batch=1:128", "--emit", "loops"]) == 0
    assert "batch in 1..128" in capsys.readouterr().out
    assert main(["run", str(path)]) == 2
    assert "--dim NAME=MIN:MAX" in capsys.readouterr().err
    for argv, message in ((["--dim", "batch=1"], "--dim expects NAME=MIN:MAX"),
                          (["--dim", "batch=1:128", "--size", "rows=3"], "no symbolic dimension 'rows'"),
                          (["--dim", "batch=1:128", "--size", "batch=200"], "declared 1..128")):
        assert main(["run", str(path), *argv]) == 2
        assert message in capsys.readouterr().err


def test_a_text_model_with_dims_runs_at_its_largest_size_or_the_one_given(tmp_path, capsys):
    g = mc.GraphBuilder("scale")
    x = g.input("x", (mc.Dim("rows", 1, 9), 4))
    g.output(x * 2.0)
    path = tmp_path / "scale.mcir"
    path.write_text(mc.print_graph(g.build()))
    assert main(["run", str(path), "--check"]) == 0
    assert "float32[9, 4]" in capsys.readouterr().out
    assert main(["run", str(path), "--size", "rows=2", "--check"]) == 0
    assert "float32[2, 4]" in capsys.readouterr().out
    assert main(["run", str(path), "--dim", "rows=1:4"]) == 2
    assert "declares its dims" in capsys.readouterr().err
