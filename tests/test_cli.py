"""The minicomp command: run, compile, ops, help and errors."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.cli import main


@pytest.fixture()
def model_file(tmp_path):
    g = mc.GraphBuilder("tiny")
    x = g.input("x", (4, 20))
    w = g.constant(np.arange(60, dtype=np.float32).reshape(20, 3) / 60, name="w")
    g.output(g.softmax(x @ w, axis=-1))
    path = tmp_path / "tiny.mcir"
    path.write_text(mc.print_graph(g.build(), full_constants=True))
    return path


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
