"""The ``minicomp`` command.

    minicomp run MODEL.mcir [--input NAME=FILE.npy ...] [--threads N] [--save DIR]
    minicomp compile MODEL.mcir [--emit graph|loops|memory|llvm|llvm-opt|asm]
    minicomp ops

MODEL.mcir is a graph in the IR text format (docs/ir.md). ``run`` uses random
inputs for any input not given. Errors are reported in one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import minicomp as mc
from minicomp.errors import MinicompError

EMITS = ("graph", "loops", "memory", "llvm", "llvm-opt", "asm")


def load_model(path: str) -> mc.Graph:
    """Read a model file (``.mcir`` text)."""
    if not os.path.exists(path):
        raise MinicompError(f"no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".mcir", ".txt"):
        with open(path, encoding="utf-8") as f:
            return mc.parse_graph(f.read())
    raise MinicompError(f"{path}: unknown model format '{ext}'; expected .mcir")


def random_input(v, rng) -> np.ndarray:
    """A random array for graph input ``v`` (standard normal, small ints, or bools)."""
    dt = v.dtype
    if dt.is_float:
        return rng.standard_normal(v.shape).astype(dt.numpy)
    if dt.is_bool:
        return rng.integers(0, 2, v.shape).astype(bool)
    return rng.integers(0, 10, v.shape).astype(dt.numpy)


def parse_inputs(graph: mc.Graph, specs: list[str], seed: int) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` pairs, plus random arrays for the inputs not named."""
    given: dict[str, np.ndarray] = {}
    names = {v.name for v in graph.inputs}
    for spec in specs:
        if "=" not in spec:
            raise MinicompError(f"--input expects NAME=FILE.npy, got '{spec}'")
        name, path = spec.split("=", 1)
        if name not in names:
            raise MinicompError(f"--input {name}: the model has no input '{name}'; inputs: {', '.join(names)}")
        try:
            given[name] = np.load(path)
        except (OSError, ValueError) as exc:
            raise MinicompError(f"--input {name}: cannot read {path}: {exc}") from None
    rng = np.random.default_rng(seed)
    for v in graph.inputs:
        if v.name not in given:
            given[v.name] = random_input(v, rng)
    return given


def cmd_run(args) -> int:
    graph = load_model(args.model)
    inputs = parse_inputs(graph, args.input or [], args.seed)
    t0 = time.perf_counter()
    model = mc.compile(graph, target=args.target, num_threads=args.threads)
    compile_s = time.perf_counter() - t0
    model(**inputs)  # warm up
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        outs = model(**inputs)
    run_s = (time.perf_counter() - t0) / args.repeat
    print(f"{graph.name}: compiled for {model.target} in {compile_s:.3f} s; "
          f"one run {run_s * 1e3:.3f} ms (mean of {args.repeat})")
    for v, out in zip(graph.outputs, outs):
        checksum = float(np.sum(out.astype(np.float64)))
        print(f"  {v.name}: {out.dtype}{list(out.shape)} sum={checksum:.6g}")
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            np.save(os.path.join(args.save, f"{v.name.replace('/', '_')}.npy"), out)
    return 0


def cmd_compile(args) -> int:
    graph = load_model(args.model)
    model = mc.compile(graph, target="llvm", num_threads=args.threads)
    key = args.emit.replace("-", "_")
    text = model._jit.assembly() if key == "asm" else model.stages[key]
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_ops(args) -> int:
    from minicomp.ir.ops import all_ops

    for name, op in sorted(all_ops().items()):
        attrs = ", ".join(f"{k}={v!r}" for k, v in op.attrs.items())
        print(f"{name}({attrs})" + (f"  -- {op.doc}" if op.doc else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minicomp", description="minicomp: a small deep-learning compiler.",
                                epilog="Examples:\n  minicomp run model.mcir --input x=x.npy\n"
                                       "  minicomp compile model.mcir --emit loops",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="compile a model and run it, printing output shapes, checksums and time")
    r.add_argument("model", help="model file (.mcir)")
    r.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy",
                   help="an input array (repeatable); inputs not given are random")
    r.add_argument("--target", default="llvm", choices=["llvm", "reference"], help="where to run (default llvm)")
    r.add_argument("--threads", type=int, default=None, help="threads for parallel loops (default: all cores)")
    r.add_argument("--repeat", type=int, default=1, help="timed runs to average (default 1)")
    r.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    r.add_argument("--save", metavar="DIR", help="save each output as DIR/NAME.npy")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile a model and print one stage")
    c.add_argument("model", help="model file (.mcir)")
    c.add_argument("--emit", default="loops", choices=EMITS, help="stage to print (default loops)")
    c.add_argument("--threads", type=int, default=None, help="threads the schedule plans for")
    c.set_defaults(func=cmd_compile)

    o = sub.add_parser("ops", help="list the registered ops and their attributes")
    o.set_defaults(func=cmd_ops)
    return p


def main(argv=None) -> int:
    """Entry point of the ``minicomp`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MinicompError as exc:
        print(f"minicomp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
