"""Text generation with a transformers causal language model whose forward minicomp compiles.

transformers' recipe for torch.compile: a static key/value cache and ``model.forward`` compiled
(here with backend="minicomp"). The prompt's graph and one decoding step's graph compile once
each; every new token then runs through minicomp, its cache written in place (docs/decode.md).

Nothing is downloaded: the model is a Llama built from a config with random weights, and the
tokenizer reads characters (one token per byte), so the text it writes is noise, made at the
speed a trained model of this size would have. A progress line shows tokens per second.

    python examples/generate.py [--prompt "Once upon a time"] [--new-tokens 64] [--layers 4]
                                [--hidden 512] [--threads 2] [--check]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import minicomp  # noqa: E402, F401  (registers the "minicomp" backend)
from benchmarks.zoo import import_transformers  # noqa: E402  (transformers, importable beside torchvision)

VOCAB = 256  # a token per byte


def encode(text: str) -> torch.Tensor:
    return torch.tensor([list(text.encode())], dtype=torch.long)


def decode(tokens) -> str:
    return bytes(int(t) for t in tokens).decode(errors="replace")


class Progress:
    """A transformers streamer: prints each new token's text as it comes and, at the end, the speed.
    The first two tokens wait for the compiles (the prompt's graph, then the step's), so the speed
    counts from the second token on."""

    def __init__(self):
        self.times: list[float] = []
        self.started = None

    def put(self, value):
        if self.started is None:  # the prompt, given back first
            self.started = time.perf_counter()
            return
        self.times.append(time.perf_counter())
        print(decode(value.reshape(-1).tolist()), end="", flush=True)

    def end(self):
        t = self.times
        line = f"\n[{len(t)} tokens; the first after {t[0] - self.started:.2f} s"
        if len(t) > 2:
            line += (f", the second after {t[1] - t[0]:.2f} s more (the first call of each graph compiles it); "
                     f"then {(len(t) - 2) / (t[-1] - t[1]):.1f} tokens/s")
        print(line + "]")


def build(layers: int, hidden: int):
    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                            num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 256, 1),
                            vocab_size=VOCAB, max_position_embeddings=1024)
    return tf.LlamaForCausalLM(config).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="Once upon a time", help="the text to continue")
    parser.add_argument("--new-tokens", type=int, default=64, help="how many tokens to generate (default 64)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size, a multiple of 64 (default 512)")
    parser.add_argument("--threads", type=int, default=2, help="threads for minicomp and torch (default 2)")
    parser.add_argument("--check", action="store_true", help="also generate eagerly and compare the tokens")
    args = parser.parse_args(argv)
    if args.hidden % 64 or args.hidden < 64 or args.new_tokens < 1 or args.layers < 1 or args.threads < 1:
        parser.error("--hidden must be a multiple of 64, and --new-tokens, --layers and --threads at least 1")
    torch.set_num_threads(args.threads)
    model = build(args.layers, args.hidden)
    prompt = encode(args.prompt)
    model.generation_config.cache_implementation = "static"
    eager_forward = model.forward
    model.forward = torch.compile(model.forward, backend="minicomp", options={"threads": args.threads})
    print(f"Llama, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters (random weights), "
          f"{args.threads} threads; prompt: {args.prompt!r}")
    print(args.prompt, end="", flush=True)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             do_sample=False, streamer=Progress())
        if args.check:
            model.forward = eager_forward
            want = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                  do_sample=False)
            same = out.tolist() == want.tolist()
            print(f"same tokens as eager: {'yes' if same else 'no'}")
            return 0 if same else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
