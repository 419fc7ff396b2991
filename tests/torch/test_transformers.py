"""Hugging Face transformers models, built from small configs with random
weights (nothing is downloaded), through both PyTorch entries: from_torch and
torch.compile(backend="minicomp"), against torch eager.

Encoders take their attention mask as a real input (transformers indexes it
with two broadcast arange tensors: aten.index with several index tensors);
causal LMs slice their hidden states with a whole-dimension view
(aten.alias). Both stopped every such model before.
"""

import warnings

import numpy as np
import pytest

import minicomp as mc
from tests.torch.conftest import require_torch

torch = require_torch()
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

SMALL = dict(vocab_size=100, num_hidden_layers=2)


def encoders(attn):
    return {
        "bert": transformers.BertModel(transformers.BertConfig(
            hidden_size=64, num_attention_heads=4, intermediate_size=128, attn_implementation=attn, **SMALL)),
        "distilbert": transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, attn_implementation=attn)),
    }


def decoders(attn):
    return {
        "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=100, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
            attn_implementation=attn)),
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            attn_implementation=attn, **SMALL)),
    }


def through_torch_compile(model, *args, **kwargs):
    """The model's output through torch.compile(backend="minicomp"); an eager fallback (it warns) fails."""
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with torch.no_grad():
            return torch.compile(model, backend="minicomp")(*args, **kwargs)


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("seq", [1, 7])
def test_encoders_with_an_attention_mask(attn, seq):
    torch.manual_seed(seq)
    ids = torch.randint(0, 100, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    mask[0, seq // 2 + 1:] = 0  # padding at the end
    for name, model in encoders(attn).items():
        model.eval()
        with torch.no_grad():
            want = model(ids, attention_mask=mask).last_hidden_state.numpy()
        graph = mc.from_torch(model, (ids,), example_kwargs={"attention_mask": mask})
        got = mc.compile(graph)(ids.numpy(), mask.numpy())[0]
        assert relative_error(got, want) <= 1e-5, name
        compiled = through_torch_compile(model, ids, attention_mask=mask).last_hidden_state
        assert relative_error(compiled.numpy(), want) <= 1e-5, name


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_causal_lms(attn):
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, 7))
    for name, model in decoders(attn).items():
        model.eval()
        with torch.no_grad():
            want = model(ids, use_cache=False).logits.numpy()
        graph = mc.from_torch(model, (ids,), example_kwargs={"use_cache": False})
        assert relative_error(mc.compile(graph)(ids.numpy())[0], want) <= 1e-5, name
        compiled = through_torch_compile(model, ids, use_cache=False).logits
        assert relative_error(compiled.numpy(), want) <= 1e-5, name
