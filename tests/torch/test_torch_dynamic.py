"""from_torch with torch.export's dynamic_shapes: one compile for every size in the ranges (docs/dynamic.md)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import MinicompError, RuntimeInputError
from tests.torch.conftest import require_torch, require_transformers

torch = require_torch()
Dim = torch.export.Dim

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from torch_gpt import GPT, GPTConfig  # noqa: E402


def eager(model, *args):
    with torch.no_grad():
        return model(*args).numpy()


def test_a_small_gpt_with_a_symbolic_sequence_matches_eager_at_every_length():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    seq = Dim("seq", min=1, max=64)
    graph = mc.from_torch(model, (torch.randint(0, 64, (1, 5)),), dynamic_shapes={"idx": {1: seq}})
    assert graph.inputs[0].shape == (1, mc.Dim("seq", 1, 64))  # named after the user's Dim
    compiled = mc.compile(graph)
    for n in (1, 2, 17, 64):
        idx = torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(n))
        np.testing.assert_allclose(compiled(idx.numpy())[0], eager(model, idx), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeInputError, match=r"dimension seq, which is declared 1\.\.64"):
        compiled(np.zeros((1, 65), np.int64))


class LastToken(torch.nn.Module):
    """Batch and sequence both symbolic: a linear layer, a softmax over the sequence, the last row."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, x):
        b, t, d = x.shape
        h = self.proj(x.reshape(b * t, d))
        return torch.softmax(h.reshape(b, t, 8), dim=1)[:, -1]


def test_sizes_made_of_two_dims_and_a_position_from_the_end():
    model = LastToken().eval()
    batch, seq = Dim("batch", min=2, max=8), Dim("seq", min=2, max=32)  # (export specializes 1 here)
    graph = mc.from_torch(model, (torch.randn(2, 5, 16),), dynamic_shapes={"x": {0: batch, 1: seq}})
    text = mc.print_graph(graph)
    assert "shape = [batch*seq, 16]" in text and "starts = [0, seq-1, 0]" in text
    compiled = mc.compile(graph)
    for b, t in ((2, 2), (3, 7), (8, 32)):
        x = torch.randn(b, t, 16)
        np.testing.assert_allclose(compiled(x.numpy())[0], eager(model, x), rtol=1e-5, atol=1e-6)


def test_an_exported_program_with_dynamic_shapes_needs_a_maximum():
    model = torch.nn.Linear(4, 3).eval()
    unbounded = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: Dim("batch")},))
    with pytest.raises(MinicompError, match=r"dimension s\w+ has the range \d+\.\.int_oo.*give it a maximum"):
        mc.from_torch(unbounded)
    bounded = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: Dim("batch", max=16)},))
    compiled = mc.compile(mc.from_torch(bounded))
    for n in (2, 9, 16):
        x = torch.randn(n, 4)
        np.testing.assert_allclose(compiled(x.numpy())[0], eager(model, x), rtol=1e-5, atol=1e-6)


@pytest.fixture
def sizes_not_specialized():
    """torch specializes sizes 0 and 1 unless told not to (docs/dynamic.md)."""
    import torch.fx.experimental._config as fx_config

    torch._dynamo.reset()
    with fx_config.patch(backed_size_oblivious=True):
        yield
    torch._dynamo.reset()


@contextlib.contextmanager
def no_eager_fallback():
    """Inference, with any warning an error: no graph may fall back to eager (it warns when it does)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def compiles(caplog) -> int:
    return sum(1 for r in caplog.records if r.name == "minicomp" and r.getMessage().startswith("compiled"))


def small_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()


def test_torch_compile_with_marked_dynamic_sizes_compiles_once(sizes_not_specialized, caplog):
    caplog.set_level("INFO", logger="minicomp")
    model = small_gpt()
    fast = torch.compile(model, backend="minicomp")
    for n in (8, 1, 33, 64):
        idx = torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(n))
        torch._dynamo.mark_dynamic(idx, 1, min=1, max=64)
        with torch.no_grad():
            np.testing.assert_allclose(fast(idx).numpy(), eager(model, idx), rtol=1e-4, atol=1e-5)
    assert compiles(caplog) == 1


def test_dynamic_true_without_a_maximum_takes_a_default_one_and_widens_past_it(sizes_not_specialized, caplog,
                                                                              monkeypatch):
    from minicomp.frontends import pytorch_dynamo_graph

    caplog.set_level("INFO", logger="minicomp")
    model = LastToken().eval()
    bounded = torch.compile(model, backend="minicomp", dynamic=True, options={"max_size": 64})
    for b, t in ((2, 5), (1, 9), (3, 40)):
        x = torch.randn(b, t, 16)
        with torch.no_grad():
            np.testing.assert_allclose(bounded(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
    assert compiles(caplog) == 1
    torch._dynamo.reset()
    monkeypatch.setattr(pytorch_dynamo_graph, "DEFAULT_MAX_SIZE", 16)  # (4096 otherwise)
    unbounded = torch.compile(model, backend="minicomp", dynamic=True)
    with torch.no_grad():
        for t in (5, 9, 16):
            x = torch.randn(2, t, 16)
            np.testing.assert_allclose(unbounded(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
        assert compiles(caplog) == 2
        x = torch.randn(2, 40, 16)
        with pytest.warns(UserWarning, match="again, for sizes up to 64: a call has a size of 40, past the "
                                             "default maximum 16"):
            np.testing.assert_allclose(unbounded(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
    assert compiles(caplog) == 3


def test_a_default_maximum_fits_the_graph_in_memory(monkeypatch):
    """Attention's (seq, seq) scores at 4096 would take more than the share of memory given: the default
    maximum halves until they fit, and never falls below the sizes dynamo traced with."""
    from minicomp.frontends import pytorch_dynamo_graph as dg

    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    def attention(x):
        return torch.softmax(x @ x.transpose(1, 2), dim=-1) @ x

    torch._dynamo.reset()
    fn = torch.compile(attention, backend=backend, dynamic=True)
    fn(torch.randn(2, 8, 16))
    gm = seen[-1]
    assert len(dg.symbolic_plan(gm).unbounded) == 3  # dynamic=True: every size of x, 16 too
    # At n for all three, the graph's five tensors (x, its transpose, the scores, the softmax, the
    # result) take 5 * 4 * n**3 bytes: a quarter of 64 MiB holds n = 64, not 128
    monkeypatch.setattr(dg, "_machine_memory", lambda: 64 << 20)
    assert dg.symbolic_plan(gm).max_size == 64
    monkeypatch.setattr(dg, "_machine_memory", lambda: 1 << 50)
    assert dg.symbolic_plan(gm).max_size == dg.DEFAULT_MAX_SIZE
    monkeypatch.setattr(dg, "_machine_memory", lambda: 1 << 10)
    assert dg.symbolic_plan(gm).max_size == 16  # nothing fits: the traced sizes' power of two (2, 8, 16)
    torch._dynamo.reset()


class Normed(torch.nn.Module):
    """A layer norm and a scaled product: dynamo passes eps and the scale as 0-d tensors."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16, eps=1e-5)
        self.scale = 0.25

    def forward(self, x):
        return self.norm(x) * self.scale


def test_floats_dynamo_passes_as_tensors_are_compiled_in_and_recompile_when_changed(caplog):
    caplog.set_level("INFO", logger="minicomp")
    torch._dynamo.reset()
    model = Normed().eval()
    fast = torch.compile(model, backend="minicomp", dynamic=True)
    with no_eager_fallback():
        for t in (3, 5, 9):
            x = torch.randn(2, t, 16)
            np.testing.assert_allclose(fast(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
        assert compiles(caplog) == 1
        model.scale = 0.5
        x = torch.randn(2, 7, 16)
        np.testing.assert_allclose(fast(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
    assert compiles(caplog) == 2
    torch._dynamo.reset()


def test_dynamic_true_runs_a_graph_specialized_at_size_one_eagerly_once(caplog):
    """torch traces the first call at length 1 with the 1 specialized, then traces again with a
    symbolic length at 8: minicomp compiles only the second graph, which serves every length."""
    caplog.set_level("INFO", logger="minicomp")
    torch._dynamo.reset()
    model = small_gpt()
    fast = torch.compile(model, backend="minicomp", dynamic=True)
    with torch.no_grad():
        for n in (1, 8, 33, 64, 1):
            idx = torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(n))
            np.testing.assert_allclose(fast(idx).numpy(), eager(model, idx), rtol=1e-4, atol=1e-5)
            if n == 64:
                assert compiles(caplog) == 1
    assert compiles(caplog) == 2  # the graph for length 1, called again, compiles
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_bert_base_layer_under_dynamic_true_compiles_once_for_lengths_1_to_512(attention, caplog):
    """transformers' BertLayer (BERT-base sizes, random weights) at lengths 1, 8, 33, 128, 200 and 512:
    one minicomp compile, and eager's results at each."""
    tf = require_transformers()
    from transformers.models.bert.modeling_bert import BertLayer

    caplog.set_level("INFO", logger="minicomp")
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = BertLayer(tf.BertConfig(attn_implementation=attention)).eval()
    fast = torch.compile(layer, backend="minicomp", dynamic=True)
    with no_eager_fallback():
        for n in (1, 8, 33, 128, 200, 512):
            x = torch.randn(1, n, 768, generator=torch.Generator().manual_seed(n))
            got, want = fast(x), layer(x)
            got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    assert compiles(caplog) == 1
    torch._dynamo.reset()


class SizesAcrossABreak(torch.nn.Module):
    """A graph break after reading a size: dynamo's first graph returns the size beside the tensor."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, x):
        lead = x.shape[:-1]
        h = self.proj(x)
        torch._dynamo.graph_break()
        return h.reshape(*lead, 2, 4).sum(-1)


def test_a_graph_that_returns_a_size_compiles(monkeypatch, caplog):
    from minicomp.frontends import pytorch_dynamo_graph as dg

    plans = []
    original = dg.symbolic_plan
    monkeypatch.setattr(dg, "symbolic_plan", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    caplog.set_level("INFO", logger="minicomp")
    torch._dynamo.reset()
    model = SizesAcrossABreak().eval()
    fast = torch.compile(model, backend="minicomp", dynamic=True)
    with no_eager_fallback():
        for b, t in ((2, 5), (2, 9), (3, 7), (4, 30)):
            x = torch.randn(b, t, 16)
            np.testing.assert_allclose(fast(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
    assert any(p.size_outputs for p in plans)
    assert compiles(caplog) == 2  # the graphs before and after the break, once each
    torch._dynamo.reset()


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_fused_encoder_layer_under_dynamic_true_keeps_its_width_static(batch_first, caplog):
    """nn.TransformerEncoderLayer in eval mode calls one fused ATen op, which ties nothing to the
    width: dynamic=True leaves it a symbol, the conversion needs it at the weights' size, and the
    backend converts again with that size fixed. The length stays symbolic: one compile."""
    caplog.set_level("INFO", logger="minicomp")
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=batch_first).eval()
    fast = torch.compile(layer, backend="minicomp", dynamic=True)
    with no_eager_fallback():
        for n in (1, 8, 33, 100):
            x = torch.randn(1, n, 64) if batch_first else torch.randn(n, 1, 64)
            np.testing.assert_allclose(fast(x).numpy(), layer(x).numpy(), rtol=1e-4, atol=1e-5)
    assert compiles(caplog) == 1
    torch._dynamo.reset()
