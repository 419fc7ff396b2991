"""Modules that update an input in place (a key/value cache): through mc.from_torch and
torch.compile(backend="minicomp"), the compiled model writes the caller's tensor, as eager does."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import RuntimeInputError
from tests.torch.conftest import require_torch, require_transformers

torch = require_torch()


class CacheStep(torch.nn.Module):
    """Keys of a step written into a static cache at their positions (``index_copy_`` or indexing,
    as transformers' StaticCache does), then scores against the whole cache."""

    def __init__(self, indexing: bool = False):
        super().__init__()
        self.indexing = indexing
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, cache, positions):
        keys = self.proj(x)  # (heads, steps, 8)
        if self.indexing:
            cache[:, positions] = keys
        else:
            cache.index_copy_(1, positions, keys)
        return torch.softmax(keys @ cache.transpose(1, 2), dim=-1)


def steps(n_steps: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 1, 8, generator=generator), torch.tensor([k])) for k in range(n_steps)]


def eager_run(module, cache):
    with torch.no_grad():
        return [module(x, cache, p) for x, p in steps()]


@pytest.mark.parametrize("indexing", [False, True])
def test_torch_compile_writes_the_cache_as_eager_does(indexing):
    torch.manual_seed(0)
    module = CacheStep(indexing).eval()
    want_cache = torch.zeros(2, 16, 8)
    want = eager_run(module, want_cache)
    torch._dynamo.reset()
    fast = torch.compile(module, backend="minicomp")
    cache = torch.zeros(2, 16, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (a graph that falls back to eager warns)
        got = [fast(x, cache, p) for x, p in steps()]
    torch.testing.assert_close(cache, want_cache, rtol=1e-5, atol=1e-6)  # (keys: products, summed otherwise)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_a_strided_cache_tensor_is_written_too():
    torch.manual_seed(0)
    module = CacheStep().eval()
    want_cache = torch.zeros(16, 2, 8).transpose(0, 1)
    want = eager_run(module, want_cache)
    torch._dynamo.reset()
    fast = torch.compile(module, backend="minicomp")
    cache = torch.zeros(16, 2, 8).transpose(0, 1)  # (not contiguous: minicomp runs on a copy)
    with torch.no_grad():
        got = [fast(x, cache, p) for x, p in steps()]
    torch.testing.assert_close(cache, want_cache, rtol=1e-5, atol=1e-6)  # (keys: products, summed otherwise)
    torch.testing.assert_close(got[-1], want[-1], rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_from_torch_gives_a_model_that_writes_its_cache_argument():
    torch.manual_seed(0)
    module = CacheStep().eval()
    x, p = steps(1)[0]
    graph = mc.from_torch(module, (x, torch.zeros(2, 16, 8), p))
    assert len(graph.writes) == 1 and graph.inputs[next(iter(graph.writes.values()))].type.shape == (2, 16, 8)
    model = mc.compile(graph)
    assert model.memory_plan.written_in_place, "the cache is written in the caller's memory"
    cache = np.zeros((2, 16, 8), np.float32)
    want_cache = torch.zeros(2, 16, 8)
    for x, p in steps():
        (got,) = model(x.numpy(), cache, p.numpy())
        with torch.no_grad():
            want = module(x, want_cache, p)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache, want_cache.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeInputError, match=r"op index_copy.*outside axis 1 of the data, \[-16, 16\): got 16"):
        model(x.numpy(), cache, np.array([16]))


def test_transformers_generate_with_a_static_cache_runs_every_step_through_minicomp(caplog):
    """transformers' documented recipe for torch.compile (a static cache, forward compiled): the decoding
    step's graph compiles once, the prompt's once for its first length and once more for every other
    length (dynamo makes it symbolic at the second), and the greedy tokens are eager's."""
    tf = require_transformers()
    caplog.set_level("INFO", logger="minicomp")
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    model = tf.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (1, n), generator=generator) for n in (8, 5, 13, 3)]
    with torch.no_grad():
        want = [model.generate(p, max_new_tokens=12, do_sample=False, cache_implementation="static") for p in prompts]
    torch._dynamo.reset()
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, backend="minicomp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="minicomp runs this graph eagerly")
        got = [model.generate(p, max_new_tokens=12, do_sample=False) for p in prompts]
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
    compiled = [r.getMessage() for r in caplog.records
                if r.name == "minicomp" and r.getMessage().startswith("compiled")]
    # The first prompt, the step (for all the steps), then one prompt of any length (a symbolic one).
    assert len(compiled) == 3, compiled
    assert "input_ids_: i64[1, s" in compiled[2], compiled[2]
    torch._dynamo.reset()


def test_a_counter_advanced_by_a_symbolic_length_compiles_once(caplog):
    """A size known only at the call, as an operand (transformers' cache counter += the prompt's length)."""

    class Count(torch.nn.Module):
        def forward(self, x, seen):
            seen += x.shape[1]
            return x * 2

    caplog.set_level("INFO", logger="minicomp")
    torch._dynamo.reset()
    fast = torch.compile(Count(), backend="minicomp", dynamic=True)
    seen = torch.zeros((), dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="minicomp runs this graph eagerly")
        for n in (3, 7, 2, 5):
            torch.testing.assert_close(fast(torch.ones(1, n), seen), torch.full((1, n), 2.0))
    assert int(seen) == 17
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled")]
    assert len(compiled) == 1 and "x_: f32[1, s" in compiled[0], compiled
    torch._dynamo.reset()


FAMILIES = {  # (config, model, sizes): small causal LMs of the families transformers' recipe names
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),  # (its graph also returns a number)
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_other_causal_lm_families_generate_through_minicomp(family):
    tf = require_transformers()
    config_name, model_name, extra = FAMILIES[family]
    if extra is None:
        config = getattr(tf, config_name)(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=256)
    else:
        config = getattr(tf, config_name)(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                          max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    model = getattr(tf, model_name)(config).eval()
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=10, do_sample=False, cache_implementation="static")
    torch._dynamo.reset()
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, backend="minicomp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="minicomp runs this graph eagerly")
        got = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert got.tolist() == want.tolist()
    torch._dynamo.reset()
