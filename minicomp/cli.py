"""The ``minicomp`` command.

    minicomp run MODEL.{mcir,onnx} [--input NAME=FILE.npy ...] [--shape NAME=1,3,224,224]
                                   [--target llvm|cuda|cuda-emu|reference|CPU]
                                   [--threads N] [--repeat N] [--save DIR]
    minicomp bench MODEL.onnx [--threads 1 2] [--repeat N]
    minicomp compile MODEL.{mcir,onnx} [--target llvm|cuda|CPU]
                                [--emit graph|fusion|loops|memory|llvm|llvm-opt|asm|cuda]
                                [--print-after PASS] [--dump-dir DIR] [--explain-fusion]
                                [--time-passes] [--graph-png FILE] [--pipeline P1,P2,...]
    minicomp plan MODEL.{mcir,onnx} [--png plan.png] [--order auto|fusion|greedy|exact] [--pipeline P,...]
                                [--offsets best|size|breadth|search] [--budget BYTES]
    minicomp cache [--clear]
    minicomp ops
    minicomp passes

MODEL.mcir is a graph in the IR text format (docs/ir.md); MODEL.onnx an ONNX
model. ``run`` uses random inputs for any input not given. Errors are reported
in one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import minicomp as mc
from minicomp.errors import MinicompError

EMITS = ("graph", "fusion", "loops", "memory", "llvm", "llvm-opt", "asm", "cuda")
LLVM_ONLY = ("llvm", "llvm-opt", "asm")
TARGETS = ["llvm", "cuda", "cuda-emu", "reference"]


def parse_shapes(specs) -> dict[str, tuple[int, ...]]:
    """``NAME=1,3,224,224`` pairs for --shape."""
    shapes = {}
    for spec in specs or []:
        name, sep, dims = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise MinicompError(f"--shape expects NAME=D1,D2,..., got '{spec}'") from None
    return shapes


def load_model(path: str, shapes: dict | None = None) -> mc.Graph:
    """Read a model file: ``.mcir`` text or ``.onnx``."""
    if not os.path.exists(path):
        raise MinicompError(f"no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".mcir", ".txt"):
        if shapes:
            raise MinicompError("--shape applies to .onnx models only")
        with open(path, encoding="utf-8") as f:
            return mc.parse_graph(f.read())
    if ext == ".onnx":
        return mc.from_onnx(path, shapes=shapes)
    raise MinicompError(f"{path}: unknown model format '{ext}'; expected .mcir or .onnx")


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
    graph = load_model(args.model, parse_shapes(args.shape))
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
    graph = load_model(args.model, parse_shapes(args.shape))
    cuda = args.target.startswith("cuda")
    if args.emit in LLVM_ONLY and cuda or args.emit == "cuda" and not cuda:
        raise MinicompError(f"--emit {args.emit} needs --target {'llvm' if cuda else 'cuda'}")
    model = mc.compile(graph, target=args.target, num_threads=args.threads, pipeline=args.pipeline,
                       print_after=args.print_after or (), print_before=args.print_before or (),
                       dump_dir=args.dump_dir)
    if args.explain_fusion:
        sys.stdout.write(model.stages["fusion"])
    if args.time_passes:
        from minicomp.passes.manager import format_timings

        sys.stdout.write(format_timings(model.pass_timings) + "\n")
    if args.graph_png:
        from minicomp.viz import render_graph

        render_graph(model.graph, args.graph_png, model.fusion.groups)
        print(f"wrote {args.graph_png}")
    if args.emit or not (args.explain_fusion or args.time_passes or args.graph_png or args.print_after
                         or args.print_before or args.dump_dir):
        key = (args.emit or "loops").replace("-", "_")
        text = model._jit.assembly() if key == "asm" else model.stages[key]
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_plan(args) -> int:
    graph = load_model(args.model, parse_shapes(args.shape))
    model = mc.compile(graph, target="llvm", pipeline=args.pipeline,
                       memory={"order": args.order, "offsets": args.offsets}, memory_budget=args.budget)
    sys.stdout.write(str(model.memory_plan) + "\n" if args.verbose else model.memory_plan.summary() + "\n")
    if args.png:
        model.memory_plan.draw(args.png)
        print(f"wrote {args.png}")
    return 0


def cmd_cache(args) -> int:
    from minicomp import cache

    entries, size = cache.usage()
    print(f"compile cache: {cache.root()} ({entries} files, {size / 2**20:.1f} MiB)"
          f"{'' if cache.enabled() else '; off (MINICOMP_CACHE=0)'}")
    if args.clear:
        cache.clear()
        print("cleared")
    return 0


def _median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def cmd_bench(args) -> int:
    if not args.model.lower().endswith(".onnx"):
        raise MinicompError("bench compares with ONNX Runtime, so it needs an .onnx model")
    graph = load_model(args.model, parse_shapes(args.shape))
    inputs = parse_inputs(graph, [], args.seed)
    t0 = time.perf_counter()
    model = mc.compile(graph)
    compile_s = time.perf_counter() - t0
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("onnxruntime is not installed: showing minicomp alone (pip install onnxruntime)")
    print(f"{graph.name}: {len(graph.nodes)} nodes, {len(model.kernels)} kernels, compiled in {compile_s:.2f} s")
    print(f"{'threads':>7}  {'minicomp ms':>12}  {'onnxruntime ms':>14}  {'ratio':>6}")
    for threads in args.threads:
        model.set_num_threads(threads)
        t_mc = _median_time(lambda: model(**inputs), args.repeat)
        t_ort = float("nan")
        if ort is not None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
            feeds = {k: v for k, v in inputs.items()}
            t_ort = _median_time(lambda: sess.run(None, feeds), args.repeat)
        print(f"{threads:>7}  {t_mc * 1e3:>12.3f}  {t_ort * 1e3:>14.3f}  {t_mc / t_ort:>6.2f}")
    return 0


def cmd_ops(args) -> int:
    from minicomp.ir.ops import all_ops

    for name, op in sorted(all_ops().items()):
        attrs = ", ".join(f"{k}={v!r}" for k, v in op.attrs.items())
        print(f"{name}({attrs})" + (f"  -- {op.doc}" if op.doc else ""))
    return 0


def cmd_passes(args) -> int:
    from minicomp.backends.registry import backend_names, default_pipeline
    from minicomp.passes.manager import all_passes

    for name, info in sorted(all_passes().items()):
        print(f"{name:<18} {info.kind:<8} {info.doc}")
    for target, pipe in ((t, default_pipeline(t)) for t in backend_names()):
        print(f"default pipeline for {target}: {','.join(pipe)}")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (repeats, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from minicomp.target import CPUS

    p = argparse.ArgumentParser(prog="minicomp", description="minicomp: a small deep-learning compiler.",
                                epilog="Examples:\n  minicomp run model.onnx\n"
                                       "  minicomp run model.mcir --input x=x.npy\n"
                                       "  minicomp compile model.onnx --explain-fusion\n"
                                       "  minicomp bench model.onnx --threads 1 2",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="compile a model and run it, printing output shapes, checksums and time")
    r.add_argument("model", help="model file (.mcir or .onnx)")
    r.add_argument("--shape", action="append", metavar="NAME=D1,D2,...",
                   help="fix a dynamic input shape of an ONNX model (repeatable)")
    r.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy",
                   help="an input array (repeatable); inputs not given are random")
    r.add_argument("--target", default="llvm", choices=TARGETS + list(CPUS),
                   help="where to run: llvm (this CPU), cuda (an NVIDIA GPU, needs pycuda), cuda-emu (the CUDA C "
                        "on this CPU, slow: for testing), reference (numpy), or a named CPU for llvm (default llvm)")
    r.add_argument("--threads", type=positive_int, default=None, help="threads for parallel loops (default: all cores)")
    r.add_argument("--repeat", type=positive_int, default=1, help="timed runs to average (default 1)")
    r.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    r.add_argument("--save", metavar="DIR", help="save each output as DIR/NAME.npy")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile a model and print one stage")
    c.add_argument("model", help="model file (.mcir or .onnx)")
    c.add_argument("--shape", action="append", metavar="NAME=D1,D2,...",
                   help="fix a dynamic input shape of an ONNX model (repeatable)")
    c.add_argument("--target", default="llvm", choices=TARGETS + list(CPUS),
                   help="what to compile for: llvm (this CPU), a named CPU, or cuda (needs no GPU to compile) "
                        "(default llvm)")
    c.add_argument("--emit", default=None, choices=EMITS,
                   help="stage to print (default: loops, unless another output is asked for); llvm, llvm-opt "
                        "and asm are for CPU targets, cuda for --target cuda")
    c.add_argument("--threads", type=positive_int, default=None, help="threads the schedule plans for")
    c.add_argument("--pipeline", default=None, help="passes to run, e.g. 'simplify,fuse,lower,schedule,plan'")
    c.add_argument("--print-after", action="append", metavar="PASS",
                   help="print the IR after this pass (repeatable; 'all' for every pass)")
    c.add_argument("--print-before", action="append", metavar="PASS", help="print the IR before this pass")
    c.add_argument("--dump-dir", metavar="DIR", help="write the IR after every pass to numbered files in DIR")
    c.add_argument("--explain-fusion", action="store_true", help="list the kernels and why each boundary is there")
    c.add_argument("--time-passes", action="store_true", help="print the time each pass took")
    c.add_argument("--graph-png", metavar="FILE", help="draw the graph with fused groups (.png/.svg/.dot; "
                                                       "needs Graphviz for pictures)")
    c.set_defaults(func=cmd_compile)

    pl = sub.add_parser("plan", help="plan a model's memory: execution order, arena offsets, figures, a picture")
    pl.add_argument("model", help="model file (.mcir or .onnx)")
    pl.add_argument("--shape", action="append", metavar="NAME=D1,D2,...",
                    help="fix a dynamic input shape of an ONNX model (repeatable)")
    pl.add_argument("--order", default="auto", choices=["auto", "fusion", "greedy", "exact"],
                    help="how to choose the kernel order (default auto: the least peak found)")
    pl.add_argument("--offsets", default="best", choices=["best", "size", "breadth", "search"],
                    help="how to place buffers in the arena (default best: the smallest arena)")
    pl.add_argument("--budget", type=int, default=None, metavar="BYTES", help="fail unless the arena fits")
    pl.add_argument("--pipeline", default=None, help="passes to run (default: the llvm pipeline, which fuses)")
    pl.add_argument("--png", metavar="FILE", help="draw the plan (.png/.svg/.pdf; needs matplotlib)")
    pl.add_argument("--verbose", "-v", action="store_true", help="also list every buffer and its offset")
    pl.set_defaults(func=cmd_plan)

    ca = sub.add_parser("cache", help="where the compile cache is and how big; --clear empties it")
    ca.add_argument("--clear", action="store_true", help="remove every cached entry")
    ca.set_defaults(func=cmd_cache)

    b = sub.add_parser("bench", help="latency of minicomp beside ONNX Runtime on an .onnx model")
    b.add_argument("model", help="model file (.onnx)")
    b.add_argument("--shape", action="append", metavar="NAME=D1,D2,...", help="fix a dynamic input shape")
    b.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    b.add_argument("--repeat", type=positive_int, default=10, help="timed runs per measurement (median; default 10)")
    b.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    b.set_defaults(func=cmd_bench)

    o = sub.add_parser("ops", help="list the registered ops and their attributes")
    o.set_defaults(func=cmd_ops)
    ps = sub.add_parser("passes", help="list the registered passes and the default pipelines")
    ps.set_defaults(func=cmd_passes)
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
