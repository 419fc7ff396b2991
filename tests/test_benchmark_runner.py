"""benchmarks/run.py as a command: its help and its refusal of unknown suites
(the suites themselves are timed by hand, never in tests); the decode suite's count of bytes."""

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_decode_benchmark_counts_the_weights_a_token_streams():
    torch = pytest.importorskip("torch")
    from benchmarks.bench_decode import int8_weight_bytes_per_token, weight_bytes_per_token

    class LanguageModel(torch.nn.Module):  # (what the count reads of a transformers model)
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(100, 64)
            self.layer = torch.nn.Linear(64, 128, bias=False)  # 8,192 weights: stored as int8
            self.small = torch.nn.Linear(64, 32, bias=False)  # 2,048: kept in float32
            self.norm = torch.nn.LayerNorm(64, bias=False)
            self.head = torch.nn.Linear(64, 100, bias=False)  # 6,400: int8

        def get_input_embeddings(self):
            return self.embed

    model = LanguageModel()
    floats = 64 * 128 + 64 * 32 + 64 + 64 * 100 + 64  # the layers, the norm, the head, one embedding row
    assert weight_bytes_per_token(model) == 4 * floats
    assert int8_weight_bytes_per_token(model) == 4 * floats - 3 * (64 * 128 + 64 * 100) + 4 * (128 + 100)


def test_the_zoo_benchmark_exports_attention_as_plain_ops():
    """run.py zoo's export: nn.MultiheadAttention in eval mode (torch's fused fast path) still exports,
    and minicomp imports and runs what it wrote."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    import numpy as np

    import minicomp as mc
    from benchmarks.bench_zoo import export

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    module = SelfAttention().eval()
    x = torch.randn(1, 5, 16)
    data, exporter = export(module, (x,))
    assert exporter in ("dynamo", "torchscript")  # (dynamo where onnxscript is installed: the [bench] extra)
    (got,) = mc.compile(mc.from_onnx(onnx.load_from_string(data)))(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_the_zoo_benchmark_has_help_and_refuses_unknown_options(capsys):
    from benchmarks.bench_zoo import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--help"])
    assert stop.value.code == 0 and "--all" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse_args(["--bogus"])
    assert parse_args(["resnet18"]).models == ["resnet18"] and parse_args(["--all"]).all
