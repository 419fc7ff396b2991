"""The examples run, and the transformer block equals an independent numpy
formulation written here."""

import math
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

import minicomp as mc

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
sys.path.insert(0, EXAMPLES)

from transformer_block import DIMS, build_transformer_block, make_params  # noqa: E402


def numpy_encoder_block(x, p, heads):
    """Pre-norm encoder block: x + MHA(LN(x)); then + MLP(LN(.)) with exact GELU."""
    b, s, d = x.shape
    dh = d // heads

    def layer_norm(t, g, beta):
        t = t.astype(np.float64)
        mu = t.mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(t.var(-1, keepdims=True) + 1e-5) * g + beta

    h = layer_norm(x, p["ln1_g"], p["ln1_b"])
    out = np.zeros((b, s, d))
    for bi in range(b):
        heads_out = []
        for hi in range(heads):
            cols = slice(hi * dh, (hi + 1) * dh)
            q = h[bi] @ p["wq"][:, cols] + p["bq"][cols]
            k = h[bi] @ p["wk"][:, cols] + p["bk"][cols]
            v = h[bi] @ p["wv"][:, cols] + p["bv"][cols]
            scores = q @ k.T / math.sqrt(dh)
            w = np.exp(scores - scores.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            heads_out.append(w @ v)
        out[bi] = np.concatenate(heads_out, axis=1) @ p["wo"] + p["bo"]
    x1 = x + out
    h2 = layer_norm(x1, p["ln2_g"], p["ln2_b"])
    a = h2 @ p["w1"] + p["b1"]
    gelu = 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))
    return x1 + gelu @ p["w2"] + p["b2"]


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_transformer_block_matches_independent_numpy(target):
    graph = build_transformer_block(**DIMS)
    x = np.random.default_rng(5).standard_normal((DIMS["batch"], DIMS["seq"], DIMS["d_model"])).astype(np.float32)
    (got,) = mc.compile(graph, target=target)(x)
    want = numpy_encoder_block(x, make_params(DIMS["d_model"], DIMS["d_ff"]), DIMS["heads"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("script", ["mlp.py", "transformer_block.py", "custom_pass.py", "cnn.py", "add_an_op.py",
                                    "schedule_matmul.py", "cuda_matmul.py"])
def test_example_scripts_run(script, tmp_path):
    # A fresh process from another folder, as a new user runs it: nothing an
    # earlier test imported or registered can hide a failure.
    proc = subprocess.run([sys.executable, os.path.abspath(os.path.join(EXAMPLES, script))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "max |diff| vs reference" in out
    diff = float(out.rsplit("max |diff| vs reference:", 1)[1].split(";")[0].split()[0])
    assert diff < 1e-4


def test_custom_pass_rewrites_pow():
    mod = runpy.run_path(os.path.join(EXAMPLES, "custom_pass.py"))
    graph = mod["build"]()
    assert "pow" in [n.op for n in graph.nodes]
    out = mod["square_to_mul"](graph)
    assert "pow" not in [n.op for n in out.nodes] and "mul" in [n.op for n in out.nodes]


@pytest.mark.slow
def test_resnet50_example(tmp_path):
    pytest.importorskip("onnx")
    proc = subprocess.run([sys.executable, os.path.abspath(os.path.join(EXAMPLES, "resnet50_onnx.py")),
                           "--repeat", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "top-5 classes:" in out and "ms per image" in out
    if "onnxruntime (" in out:
        assert "top-5 agree" in out


def test_the_torch_helper_says_it_is_not_an_example(tmp_path):
    proc = subprocess.run([sys.executable, os.path.abspath(os.path.join(EXAMPLES, "_torch_compare.py"))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "torch_resnet.py" in proc.stderr


def test_generate_example_decodes_eagers_tokens_through_minicomp(tmp_path):
    """examples/generate.py: transformers' generate with a static cache, every step compiled by minicomp."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    proc = subprocess.run([sys.executable, os.path.abspath(os.path.join(EXAMPLES, "generate.py")), "--check",
                           "--new-tokens", "8", "--layers", "2", "--hidden", "128"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same tokens as eager: yes" in proc.stdout and "tokens/s]" in proc.stdout
    assert "runs this graph eagerly" not in proc.stderr
