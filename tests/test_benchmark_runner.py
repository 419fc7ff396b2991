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
    assert "unknown suite(s) nope; choose from models" in out.stderr
