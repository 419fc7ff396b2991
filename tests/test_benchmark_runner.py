"""benchmarks/run.py as a command: its help and its refusal of unknown suites
(the suites themselves are timed by hand, never in tests)."""

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def run(*args):
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_suite():
    from benchmarks.run import SUITES

    out = run("--help")
    assert out.returncode == 0
    for name in SUITES:
        assert f"  {name} " in out.stdout


def test_an_unknown_suite_is_refused_with_the_choices():
    out = run("nope")
    assert out.returncode == 2
    assert "unknown suite(s) or option(s) nope; choose from models" in out.stderr


def test_an_option_goes_only_to_its_suite():
    out = run("onnx", "--fast")
    assert out.returncode == 2 and "--tune (for onnx)" in out.stderr
    out = run("gemm", "--tune")
    assert out.returncode == 2 and "--tune is for the onnx suite, which is not being run" in out.stderr
