"""Decoding a Llama-architecture language model at batch 1 (transformers' generate, static cache).

transformers' recipe for torch.compile (``cache_implementation="static"``, ``model.forward`` compiled)
with minicomp's backend, float32 and with int8 weights (``quantize="int8-weight"``), beside eager and
inductor (``torch.compile``'s default), on a model built
from a config with random weights: hidden 1024, 8 layers, 16 query and 4 key/value heads, MLP 2816,
vocabulary 32,000 (about 156M parameters), a 32-token prompt and 128 new tokens, greedy.

Each runtime decodes alone, in its own block: a warm-up (which compiles), then the best of a few
timed runs. Decoding speed is (new tokens - 1) / (time for them all - time for the first), so the
prompt is not counted. The bandwidth limit is the machine's 2-thread copy bandwidth over the bytes
of weights each token streams (every linear layer and the LM head; one row of the embedding): no
decoder at batch 1 can run faster, and its share of that limit is printed beside each runtime (for
int8 weights, of its own limit: a byte a weight). The int8 line says how far its logits and next
tokens are from float32's, both reading float32's tokens once.

    python benchmarks/run.py decode
    python -m benchmarks.bench_decode --small   # a 4-layer, 512-wide model, 32 new tokens: quicker
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass

from benchmarks.harness import describe_machine, print_table, torch_module

THREADS = 2


@dataclass(frozen=True)
class DecodeSetup:
    """The model's sizes and the generation's lengths."""

    hidden: int = 1024
    layers: int = 8
    heads: int = 16
    kv_heads: int = 4
    mlp: int = 2816
    vocab: int = 32000
    prompt: int = 32
    new_tokens: int = 128
    runs: int = 3


SMALL = DecodeSetup(hidden=512, layers=4, heads=8, kv_heads=2, mlp=1408, vocab=8000, prompt=16, new_tokens=32,
                    runs=2)


def llama(setup: DecodeSetup, seed: int = 0):
    """A LlamaForCausalLM of ``setup``'s sizes with seeded random weights, in eval mode."""
    from benchmarks.zoo import import_transformers

    tf = import_transformers()
    torch = torch_module()
    torch.manual_seed(seed)
    config = tf.LlamaConfig(hidden_size=setup.hidden, intermediate_size=setup.mlp, num_hidden_layers=setup.layers,
                            num_attention_heads=setup.heads, num_key_value_heads=setup.kv_heads,
                            vocab_size=setup.vocab, max_position_embeddings=2048)
    return tf.LlamaForCausalLM(config).eval()


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the embedding table, of which it
    reads one row (the LM head, untied, is counted whole)."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)
    return total + embedding.shape[1] * embedding.element_size()


def int8_weight_bytes_per_token(model) -> int:
    """The same with ``quantize="int8-weight"``: a byte a weight and a float32 scale a column for every
    linear layer of at least ``MIN_ELEMENTS`` weights (passes/quantize.py)."""
    from minicomp.passes.quantize import MIN_ELEMENTS

    torch = torch_module()
    saved = 0
    for layer in model.modules():
        w = getattr(layer, "weight", None)
        if isinstance(layer, torch.nn.Linear) and w.numel() >= MIN_ELEMENTS:
            saved += w.numel() * (w.element_size() - 1) - w.shape[0] * 4
    return weight_bytes_per_token(model) - saved


def copy_bandwidth(threads: int = THREADS) -> float:
    """Bytes per second that ``threads`` threads copy between two 256 MiB arrays (read + write)."""
    torch = torch_module()
    torch.set_num_threads(threads)
    src = torch.ones(64 << 20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(8):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def generate(model, prompt, new_tokens: int):
    torch = torch_module()
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def decode_speed(model, prompt, setup: DecodeSetup) -> tuple[float, object, float]:
    """(tokens per second after the first, the tokens, seconds of the first call: compiles and all)."""
    t0 = time.perf_counter()
    tokens = generate(model, prompt, setup.new_tokens)
    first_call = time.perf_counter() - t0
    best_all, best_one = float("inf"), float("inf")
    for _ in range(setup.runs):
        t0 = time.perf_counter()
        generate(model, prompt, 1)
        best_one = min(best_one, time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate(model, prompt, setup.new_tokens)
        best_all = min(best_all, time.perf_counter() - t0)
    return (setup.new_tokens - 1) / max(best_all - best_one, 1e-9), tokens, first_call


def int8_accuracy(base, tokens, prompt_length: int) -> tuple[float, float]:
    """(top-1 agreement, relative logits error) of minicomp's int8-weight forward against float32 eager,
    both reading the same sequence (float32's greedy tokens) once, without a cache: the share of the
    generated positions where both pick the same next token, and the largest logit difference over
    the largest float32 logit."""
    torch = torch_module()
    torch._dynamo.reset()
    quantized = copy.deepcopy(base)
    quantized.forward = torch.compile(quantized.forward, backend="minicomp", options={"quantize": "int8-weight"})
    with torch.no_grad():
        want = base(tokens, use_cache=False).logits[0, prompt_length - 1:-1]
        got = quantized(tokens, use_cache=False).logits[0, prompt_length - 1:-1]
    agreement = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    return agreement, ((got - want).abs().max() / want.abs().max()).item()


def runtimes(base):
    """Each runtime's model: the same weights, its own forward."""
    torch = torch_module()

    def compiled(backend, options=None):
        def make():
            torch._dynamo.reset()
            model = copy.deepcopy(base)
            model.generation_config.cache_implementation = "static"
            model.forward = torch.compile(model.forward, backend=backend, options=options)
            return model
        return make

    def eager():
        model = copy.deepcopy(base)
        model.generation_config.cache_implementation = "static"
        return model

    return {"eager": eager, "inductor": compiled("inductor"), "minicomp": compiled("minicomp"),
            "minicomp int8": compiled("minicomp", {"quantize": "int8-weight"})}


def main(argv=None) -> None:
    args = list(argv or [])  # (run.py passes a suite's own options; python -m passes the command line)
    torch = torch_module()
    if torch is None:
        print("decode: skipped (needs torch and transformers: pip install -e '.[bench,zoo]')")
        return
    setup = SMALL if "--small" in args else DecodeSetup()
    torch.set_num_threads(THREADS)
    print(describe_machine())
    base = llama(setup)
    per_token, int8_bytes = weight_bytes_per_token(base), int8_weight_bytes_per_token(base)
    bandwidth = copy_bandwidth()
    prompt = torch.randint(0, setup.vocab, (1, setup.prompt), generator=torch.Generator().manual_seed(1))
    rows, reference = [], None
    for name, make in runtimes(base).items():
        model = make()
        speed, tokens, first_call = decode_speed(model, prompt, setup)
        reference = tokens if reference is None else reference
        same = "yes" if tokens.tolist() == reference.tolist() else "NO"
        bytes_per_token = int8_bytes if "int8" in name else per_token
        rows.append([name, speed, speed * bytes_per_token, first_call, same])
        del model
    # This shared machine's bandwidth drifts over minutes: the best of a measurement before the runtimes
    # and one after them is the limit.
    bandwidth = max(bandwidth, copy_bandwidth())
    limit = bandwidth / per_token
    params = sum(p.numel() for p in base.parameters())
    print(f"Llama: {params / 1e6:.0f}M parameters, {per_token / 2**20:.0f} MiB of weights per token (float32); "
          f"{THREADS}-thread copy bandwidth {bandwidth / 1e9:.1f} GB/s (the better of before and after), so at "
          f"most {limit:.1f} tokens/s (int8 weights: {int8_bytes / 2**20:.0f} MiB, {bandwidth / int8_bytes:.1f} "
          f"tokens/s)")
    agreement, error = int8_accuracy(base, reference, setup.prompt)
    eager_speed = rows[0][1]
    table = [[n, f"{s:.1f}", f"{s / eager_speed:.2f}", f"{streamed / bandwidth:.0%}", f"{first:.1f}", same]
             for n, s, streamed, first, same in rows]
    print_table(f"decode: batch 1, {setup.prompt}-token prompt, {setup.new_tokens} new tokens, {THREADS} threads",
                ["runtime", "tokens/s", "x eager", "of the limit", "first call (s)", "eager's tokens"], table)
    print(f"int8 weights: {rows[3][1] / rows[2][1]:.2f}x minicomp's float32 tokens/s; over float32's "
          f"{setup.new_tokens} tokens, the same next token at {agreement:.1%} of the positions, logits within "
          f"{error:.2%} of the largest (weights as int8 change the arithmetic: its tokens are not eager's)")


if __name__ == "__main__":
    main(sys.argv[1:])
