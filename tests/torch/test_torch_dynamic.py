"""from_torch with torch.export's dynamic_shapes: one compile for every size in the ranges (docs/dynamic.md)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import MinicompError, RuntimeInputError
from tests.torch.conftest import require_torch

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


def test_dynamic_true_needs_a_maximum_or_compiles_per_shape(sizes_not_specialized, caplog):
    caplog.set_level("INFO", logger="minicomp")
    model = LastToken().eval()
    bounded = torch.compile(model, backend="minicomp", dynamic=True, options={"max_size": 64})
    for b, t in ((2, 5), (1, 9), (3, 40)):
        x = torch.randn(b, t, 16)
        with torch.no_grad():
            np.testing.assert_allclose(bounded(x).numpy(), eager(model, x), rtol=1e-5, atol=1e-6)
    assert compiles(caplog) == 1
    torch._dynamo.reset()
    unbounded = torch.compile(model, backend="minicomp", dynamic=True)
    with pytest.warns(UserWarning, match="once per input shape: its dynamic sizes have no maximum"):
        with torch.no_grad():
            for t in (5, 9):
                unbounded(torch.randn(2, t, 16))
    assert compiles(caplog) == 3
