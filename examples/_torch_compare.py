"""Not an example itself: the helper that torch_resnet.py and torch_gpt.py share.

Compile a module through both PyTorch entries, check them against torch
eager, and time them beside eager and inductor.

Each runtime is timed alone, in blocks of calls (never alternating single
calls of two threaded runtimes, whose spinning worker threads would slow
each other on a small machine).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import minicomp as mc


def add_arguments(parser, repeat: int) -> None:
    """The options both PyTorch examples take: threads, calls per timed block, inductor or not."""
    import os

    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every runtime")
    parser.add_argument("--repeat", type=int, default=repeat, help="calls per timed block")
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile's default backend")


def time_block(fn, repeat: int, blocks: int = 5) -> float:
    """Median seconds per call over ``blocks`` blocks of ``repeat`` calls, after two warm-up calls."""
    fn()
    fn()
    per_call = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        per_call.append((time.perf_counter() - t0) / repeat)
    return statistics.median(per_call)


def _max_diff(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want.detach().numpy().astype(np.float64)).max())


def compare(model: torch.nn.Module, inputs: tuple, *, threads: int, repeat: int, inductor: bool) -> dict:
    """Compile ``model`` with minicomp (from_torch, and torch.compile's backend), check both against
    eager, print the fusion summary and a timing table; returns the figures."""
    torch.set_num_threads(threads)
    model = model.eval()
    with torch.no_grad():
        expected = model(*inputs)

    t0 = time.perf_counter()
    graph = mc.from_torch(model, inputs)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = mc.compile(graph, num_threads=threads)
    t_compile = time.perf_counter() - t0
    arrays = [x.numpy() for x in inputs]
    (out,) = compiled(*arrays)
    print(compiled.stages["fusion"].split("boundaries:")[0].rstrip())
    print(f"\nfrom_torch: import {t_import:.2f} s, compile {t_compile:.2f} s"
          f"{' (from the compile cache)' if getattr(compiled, 'cache_hit', False) else ''}")
    print(f"max |diff| vs torch eager (from_torch): {_max_diff(out, expected):.2e}")

    backend = torch.compile(model, backend="minicomp", options={"threads": threads})
    t0 = time.perf_counter()
    with torch.no_grad():
        via_backend = backend(*inputs)
    t_backend = time.perf_counter() - t0
    print(f"max |diff| vs torch eager (torch.compile backend='minicomp'): {_max_diff(via_backend, expected):.2e}; "
          f"first call {t_backend:.2f} s")

    figures = {"import_s": t_import, "compile_s": t_compile, "backend_first_call_s": t_backend}
    rows = [("minicomp (from_torch)", lambda: compiled(*arrays))]
    with torch.no_grad():
        rows.append(("minicomp (torch.compile backend)", lambda: backend(*inputs)))
        rows.append(("torch eager", lambda: model(*inputs)))
        if inductor:
            opt = torch.compile(model)
            t0 = time.perf_counter()
            opt(*inputs)
            figures["inductor_compile_s"] = time.perf_counter() - t0
            print(f"inductor: first call (compile) {figures['inductor_compile_s']:.2f} s")
            rows.append(("torch.compile (inductor)", lambda: opt(*inputs)))
        times = {name: time_block(fn, repeat) for name, fn in rows}
    base = times["torch eager"]
    print(f"\n{threads} thread(s), blocks of {repeat} calls:")
    for name, t in times.items():
        print(f"  {name:34s} {t * 1e3:9.3f} ms   {base / t:5.2f}x eager")
    figures.update({f"{name} ms": t * 1e3 for name, t in times.items()})
    return figures


if __name__ == "__main__":
    raise SystemExit("_torch_compare.py is the helper the PyTorch examples share; "
                     "run examples/torch_resnet.py or examples/torch_gpt.py")
