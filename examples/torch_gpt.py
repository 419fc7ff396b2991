"""A small GPT (token and position embeddings, pre-norm blocks with causal
self-attention through F.scaled_dot_product_attention and a GELU MLP, a
language-model head) written in plain PyTorch, with random weights, compiled
by minicomp both ways (mc.from_torch and torch.compile(backend="minicomp")),
checked against torch eager and timed beside eager and inductor.

    python examples/torch_gpt.py [--layers 2] [--seq 64] [--threads 2] [--repeat 20] [--no-inductor]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _torch_compare import add_arguments, compare  # noqa: E402


@dataclass
class GPTConfig:
    vocab_size: int = 2048
    block_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 256


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, idx):
        _, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt(layers: int = 2) -> GPT:
    """The GPT with seeded random weights."""
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=layers)).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--seq", type=int, default=64, help="tokens in the prompt (at most 128)")
    add_arguments(parser, repeat=20)
    args = parser.parse_args(argv)

    model = gpt(args.layers)
    cfg = GPTConfig()
    if not 1 <= args.seq <= cfg.block_size:
        parser.error(f"--seq must be 1 to {cfg.block_size}")
    idx = torch.randint(0, cfg.vocab_size, (1, args.seq), generator=torch.Generator().manual_seed(1))
    print(f"GPT: {args.layers} blocks, d_model {cfg.n_embd}, {cfg.n_head} heads, batch 1, {args.seq} tokens, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    compare(model, (idx,), threads=args.threads, repeat=args.repeat, inductor=not args.no_inductor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
