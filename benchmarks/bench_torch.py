"""PyTorch models at batch 1: the ResNet-18 and the GPT of the examples,
compiled by minicomp (mc.from_torch, and torch.compile(backend="minicomp")),
beside torch eager and torch.compile's default backend (inductor), on 1 and
2 threads; with the compile time of each. Each runtime is timed alone, in
blocks of calls.

    python benchmarks/run.py torch
    python benchmarks/run.py torch --zoo   # also real model code (benchmarks/zoo.py), on 2 threads

``--zoo`` times one model of each torchvision family and each transformers
family (4 layers of 256, 128 tokens with an attention mask) against eager
and inductor on 2 threads, with each one's cold compile time, and prints
the geomeans. It needs the [zoo] extra and takes about an hour.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import describe_machine, print_table, torch_module  # noqa: E402

BLOCK = 10  # calls per timed block


def _cases(torch):
    from torch_gpt import GPTConfig, gpt
    from torch_resnet import resnet18

    gen = torch.Generator().manual_seed(1)
    return [
        ("resnet18 1x3x224x224", resnet18(), (torch.randn(1, 3, 224, 224, generator=gen),)),
        ("gpt 2 blocks, 64 tokens", gpt(2), (torch.randint(0, GPTConfig().vocab_size, (1, 64), generator=gen),)),
    ]


def main(options=()) -> int:
    torch = torch_module()
    if torch is None:
        print("torch is not installed (pip install -e '.[torch]'): skipping the PyTorch benchmark")
        return 0
    from _torch_compare import time_block

    print(describe_machine())
    rows, compile_rows = [], []
    for name, model, inputs in _cases(torch):
        arrays = [x.numpy() for x in inputs]
        t0 = time.perf_counter()
        graph = mc.from_torch(model, inputs)
        compiled = mc.compile(graph, cache=False)
        t_minicomp = time.perf_counter() - t0
        with torch.no_grad():
            expected = model(*inputs).numpy()
            assert np.abs(compiled(*arrays)[0] - expected).max() < 1e-3, name
            torch._dynamo.reset()
            backend = torch.compile(model, backend="minicomp", options={"cache": False})
            t0 = time.perf_counter()
            backend(*inputs)
            t_backend = time.perf_counter() - t0
            import torch._inductor.config as inductor_config

            inductor_config.force_disable_caches = True  # a cold compile, as minicomp's (cache=False)
            inductor = torch.compile(model)
            t0 = time.perf_counter()
            inductor(*inputs)
            t_inductor = time.perf_counter() - t0
            compile_rows.append([name, t_minicomp, t_backend, t_inductor])
            for threads in (1, 2):
                torch.set_num_threads(threads)
                compiled.set_num_threads(threads)
                t_mc = time_block(lambda: compiled(*arrays), BLOCK)
                t_eager = time_block(lambda: model(*inputs), BLOCK)
                t_ind = time_block(lambda: inductor(*inputs), BLOCK)
                rows.append([name, threads, t_mc * 1e3, t_eager * 1e3, t_ind * 1e3, t_eager / t_mc, t_ind / t_mc])
    print_table(f"PyTorch models, batch 1 (ms per call, median of 5 blocks of {BLOCK}; ratio > 1: minicomp faster)",
                ["model", "threads", "minicomp", "torch eager", "inductor", "eager/minicomp", "inductor/minicomp"],
                rows)
    print_table("compile time (s; minicomp uncached: from_torch + compile; the backend's and inductor's: first call)",
                ["model", "minicomp", "backend 'minicomp'", "inductor"], compile_rows)
    if "--zoo" in options:
        zoo_table(torch)
    return 0


ZOO_THREADS = 2
ZOO_SEQUENCE = 128


def _zoo_cases():
    from benchmarks import zoo

    for family, name in zoo.TORCHVISION_FAMILIES.items():
        model, args = zoo.torchvision_case(name)
        yield f"{family} ({name})", model, args, {}
    for name, family in zoo.FAMILIES.items():
        attn = "sdpa" if family.sdpa else "eager"
        yield f"{name} ({attn})", *zoo.family_case(name, attn, ZOO_SEQUENCE, size="bench")


def zoo_table(torch) -> None:
    """Real model code on 2 threads: minicomp (from_torch, cold) beside eager and inductor (cold)."""
    import torch._inductor.config as inductor_config
    from _torch_compare import time_block

    from benchmarks import zoo

    inductor_config.force_disable_caches = True  # cold compiles on both sides
    torch.set_num_threads(ZOO_THREADS)
    rows, speed_eager, speed_inductor = [], [], []
    for label, model, args, kwargs in _zoo_cases():
        arrays = zoo.input_arrays(args, kwargs)
        with torch.no_grad():
            want = zoo.eager(model, args, kwargs)
            t0 = time.perf_counter()
            compiled = mc.compile(mc.from_torch(model, args, example_kwargs=kwargs or None), cache=False,
                                  num_threads=ZOO_THREADS)
            t_mc_compile = time.perf_counter() - t0
            error = zoo.relative_error(compiled(*arrays)[0], want)
            torch._dynamo.reset()
            inductor = torch.compile(model)
            t0 = time.perf_counter()
            inductor(*args, **kwargs)
            t_ind_compile = time.perf_counter() - t0
            repeat = max(1, min(BLOCK, int(0.2 / max(1e-4, time_block(lambda: model(*args, **kwargs), 1, 1)))))
            t_mc = time_block(lambda: compiled(*arrays), repeat)
            t_eager = time_block(lambda: model(*args, **kwargs), repeat)
            t_ind = time_block(lambda: inductor(*args, **kwargs), repeat)
        speed_eager.append(t_eager / t_mc)
        speed_inductor.append(t_ind / t_mc)
        rows.append([label, t_mc * 1e3, t_eager * 1e3, t_ind * 1e3, t_mc / t_eager, t_mc / t_ind,
                     t_mc_compile, t_ind_compile, f"{error:.0e}"])
        print(f"  {label}: {t_mc * 1e3:.2f} ms (eager {t_eager * 1e3:.2f}, inductor {t_ind * 1e3:.2f})", flush=True)
    geo_eager = float(np.exp(-np.mean(np.log(speed_eager))))
    geo_inductor = float(np.exp(-np.mean(np.log(speed_inductor))))
    rows.append(["geomean", "", "", "", geo_eager, geo_inductor, "", "", ""])
    print_table(f"real model code, batch 1, {ZOO_THREADS} threads (ms per call, median of 5 blocks; "
                f"ratios are minicomp / other: below 1, minicomp is faster; compile s, cold)",
                ["model", "minicomp", "eager", "inductor", "/eager", "/inductor", "mc compile",
                 "inductor compile", "error"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
