"""compile(quantize="int8-weight"): matrix products' constant weights stored as int8 with a scale per
column, widened inside the product's loads (passes/quantize.py)."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import MinicompError
from minicomp.passes.quantize import int8_per_column, quantize_weights


def linear_graph(rows: int, k: int = 256, n: int = 128, bias_relu: bool = True):
    rng = np.random.default_rng(0)
    b = mc.GraphBuilder("linear")
    x = b.input("x", (rows, k))
    y = x @ b.constant(rng.standard_normal((k, n)).astype(np.float32) * 0.05, name="w")
    if bias_relu:
        y = b.relu(y + b.constant(rng.standard_normal(n).astype(np.float32), name="bias"))
    b.output(y)
    return b.build()


def test_each_weight_is_within_half_a_step_of_its_column():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 5)).astype(np.float32)
    w[:, 3] = 0.0
    q, s = int8_per_column(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (5,)
    assert np.abs(q.astype(np.float32) * s - w).max(axis=0).tolist() <= (s / 2 * 1.0001).tolist()
    assert s[3] == 1.0 and not q[:, 3].any()
    assert np.abs(q).max() == 127


@pytest.mark.parametrize("target", ["llvm", "c", "cuda-emu"])
@pytest.mark.parametrize("rows", [1, 5])
def test_the_product_reads_int8_weights_in_its_own_kernel_and_stays_close(target, rows):
    graph = linear_graph(rows)
    x = np.random.default_rng(2).standard_normal((rows, 256)).astype(np.float32)
    (want,) = mc.compile(graph, target=target)(x)
    model = mc.compile(graph, target=target, quantize="int8-weight")
    (got,) = model(x)
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert len(model.kernels) == 1, [k.name for k in model.kernels]  # the widening is inside the product
    assert "i8* w_int8" in model.stages["loops"] and "f32(w_int8" in model.stages["loops"]


def test_small_matrices_and_weights_computed_at_run_time_stay_float32():
    b = mc.GraphBuilder("kept")
    x = b.input("x", (2, 32))
    w = b.input("w", (32, 256))
    small = b.constant(np.ones((32, 64), np.float32), name="small")  # 2,048 elements
    b.output(x @ w, x @ small)
    graph = b.build()
    assert quantize_weights(graph) is graph


def test_an_unknown_scheme_is_refused():
    with pytest.raises(MinicompError, match="quantize must be one of int8-weight"):
        mc.compile(linear_graph(1), quantize="int4")


def test_torch_compile_passes_the_option_on():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 128).eval()
    x = torch.randn(1, 256)
    torch._dynamo.reset()
    fast = torch.compile(layer, backend="minicomp", options={"quantize": "int8-weight"})
    with torch.no_grad():
        got, want = fast(x), layer(x)
    error = (got - want).abs().max() / want.abs().max()
    assert 0 < error < 0.02  # (not float32's result: the weights were rounded)
    torch._dynamo.reset()
