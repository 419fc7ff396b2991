"""The ``minicomp`` command.

    minicomp run MODEL.{mcir,onnx,pt2} [--input NAME=FILE.npy ...] [--shape NAME=1,3,224,224]
                                   [--dim NAME=MIN:MAX] [--size NAME=N]
                                   [--target llvm|c|cuda|cuda-emu|reference|CPU]
                                   [--threads N] [--repeat N] [--save DIR] [--check]
    minicomp bench MODEL.onnx [--threads 1 2] [--repeat N]
    minicomp profile MODEL.{mcir,onnx,pt2} [--repeat N] [--top N]
    minicomp tune MODEL.{mcir,onnx,pt2} [--threads N] [--max-candidates N] [-o MODEL.mcm]
    minicomp compile MODEL.{mcir,onnx,pt2} [--target llvm|c|cuda|CPU] [-o MODEL.mcm] [--shared-lib MODEL.so]
                                [--emit graph|fusion|loops|memory|llvm|llvm-opt|asm|c|cuda] [--export-c DIR]
                                [--print-after PASS] [--dump-dir DIR] [--explain-fusion]
                                [--time-passes] [--graph-png FILE] [--pipeline P1,P2,...]
    minicomp plan MODEL.{mcir,onnx,pt2} [--png plan.png] [--order auto|fusion|greedy|exact] [--pipeline P,...]
                                [--offsets best|size|breadth|search] [--budget BYTES] [--no-in-place]
    minicomp cache [--clear]
    minicomp ops
    minicomp passes
    minicomp targets

MODEL.mcir is a graph in the IR text format (docs/ir.md); MODEL.onnx an ONNX
model; MODEL.pt2 a PyTorch program saved by torch.export.save (needs torch).
``minicomp --plugin my_ops.py COMMAND ...`` loads user ops, importers and
passes first. ``run``, ``compile``, ``profile`` and ``bench`` take ``--tune``
(measure schedules, or reuse the tunings ``minicomp tune`` kept in the cache).
``run`` uses random inputs for any input not given (a symbolic dimension at
its largest size, or ``--size``). ``--dim batch=1:128`` keeps an ONNX
``dim_param`` symbolic (one compile for every size in the range). Errors are reported
in one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import minicomp as mc
from minicomp.cpu_load import OtherLoad, busy_warning
from minicomp.errors import MinicompError
from minicomp.ir.dims import concrete
from minicomp.wording import count

PASS_STAGES = ("graph", "fusion", "loops", "memory")  # ready before code generation
TUNE_HELP = ("use the tuner's schedules (CPU targets): kernels tuned before come from the compile cache, the "
             "others are measured now (see 'minicomp tune')")


def target_names() -> list[str]:
    """Every --target the registered backends accept."""
    from minicomp.backends.registry import target_names as names

    return names()


def emit_names() -> list[str]:
    """Every --emit stage: the passes' stages, then each backend's own."""
    from minicomp.backends.registry import backend_names, get_backend

    return list(PASS_STAGES) + [e for b in backend_names() for e in get_backend(b).emits]


def backend_name(target: str) -> str | None:
    """The backend a --target name belongs to."""
    from minicomp.backends.registry import backend_for_name

    backend = backend_for_name(target)
    return backend.name if backend is not None else None


def is_cpu_target(name: str) -> bool:
    """Does ``name`` compile with the llvm backend (whose machine code can be saved and tuned)?"""

    return backend_name(name) == "llvm"


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


def parse_dims(specs) -> dict[str, tuple[int, int]]:
    """``NAME=MIN:MAX`` pairs for --dim."""
    dims = {}
    for spec in specs or []:
        name, sep, rng = spec.partition("=")
        lo, colon, hi = rng.partition(":")
        try:
            if not sep or not colon or not name:
                raise ValueError
            dims[name] = (int(lo), int(hi))
        except ValueError:
            raise MinicompError(f"--dim expects NAME=MIN:MAX (batch=1:128), got '{spec}'") from None
    return dims


def parse_sizes(specs) -> dict[str, int]:
    """``NAME=N`` pairs for --size."""
    sizes = {}
    for spec in specs or []:
        name, sep, n = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            sizes[name] = int(n)
        except ValueError:
            raise MinicompError(f"--size expects NAME=N (batch=7), got '{spec}'") from None
    return sizes


def terminal_progress():
    """A progress callback that overwrites one stderr line, or None when stderr
    is not a terminal (logs and pipes get no progress lines)."""
    if not sys.stderr.isatty():
        return None
    start = time.perf_counter()

    def show(message: str):
        if time.perf_counter() - start > 0.5:  # quick compiles print nothing
            sys.stderr.write(f"\r\033[Kminicomp: {message} ...")
            sys.stderr.flush()

    show.done = lambda: sys.stderr.write("\r\033[K") and sys.stderr.flush()
    return show


def compile_with_progress(graph, warm_up: bool = False, **kwargs):
    """mc.compile with progress on a terminal. ``warm_up`` (commands that run the model) makes it ready to
    run here, so that cuda-emu's library build counts in the compile time instead of hiding in a call."""
    progress = terminal_progress()
    try:
        model = mc.compile(graph, progress=progress, **kwargs)
        if warm_up:
            model.warm_up(progress)
        return model
    finally:
        if progress is not None:
            progress.done()


def load_plugins(plugins) -> None:
    """Run each --plugin (a .py file or an importable module): it may register
    ops, ONNX importers, passes and backends before the command runs."""
    import importlib
    import runpy

    for plugin in plugins or []:
        try:
            if plugin.endswith(".py"):
                if not os.path.exists(plugin):
                    raise MinicompError(f"--plugin {plugin}: no such file")
                runpy.run_path(plugin, run_name=os.path.splitext(os.path.basename(plugin))[0])
            else:
                importlib.import_module(plugin)
        except MinicompError:
            raise
        except Exception as exc:
            raise MinicompError(f"--plugin {plugin} failed: {type(exc).__name__}: {exc}") from None


def is_saved(path: str) -> bool:
    return os.path.splitext(path)[1].lower() == ".mcm"


def load_args_model(args) -> mc.Graph:
    """The model a command's arguments name, with its --shape and --dim."""
    return load_model(args.model, parse_shapes(args.shape), parse_dims(args.dim))


def load_model(path: str, shapes: dict | None = None, dims: dict | None = None) -> mc.Graph:
    """Read a model file: ``.mcir`` text, ``.onnx``, or a ``.pt2`` saved by ``torch.export.save``.
    ``shapes`` fix an ONNX model's dynamic inputs; ``dims`` keep the ``dim_param`` of each name symbolic, with
    a range (name -> (min, max))."""
    if not os.path.exists(path):
        raise MinicompError(f"no such file: {path}")
    if is_saved(path):
        raise MinicompError(f"{path} is a compiled model: only 'minicomp run' takes one")
    ext = os.path.splitext(path)[1].lower()
    if ext != ".onnx" and (shapes or dims):
        flag = "--shape" if shapes else "--dim"
        where = {".pt2": " (a .pt2 program keeps the shapes it was exported with)",
                 ".mcir": " (a .mcir file declares its dims: 'dim batch = [1, 256]')"}.get(ext, "")
        raise MinicompError(f"{flag} applies to .onnx models only{where}")
    if ext in (".mcir", ".txt"):
        with open(path, encoding="utf-8") as f:
            return mc.parse_graph(f.read())
    if ext == ".onnx":
        try:
            return mc.from_onnx(path, shapes=shapes, dims=dims or None)
        except MinicompError as exc:
            if "dynamic dimensions" not in str(exc):
                raise
            name = str(exc).split("'")[1] if "'" in str(exc) else "NAME"
            raise MinicompError(f"{str(exc).split(';')[0]}; fix them with --shape {name}=D1,D2,..., or keep a "
                                f"dim_param symbolic with --dim NAME=MIN:MAX") from None
    if ext == ".pt2":
        try:
            import torch
        except ImportError:
            raise MinicompError(f"{path} is a torch.export program; reading it needs torch: "
                                f"pip install 'minicomp[torch]'") from None
        try:
            program = torch.export.load(path)
        except Exception as exc:
            raise MinicompError(f"cannot read {path} as a torch.export program: {type(exc).__name__}: {exc}") \
                from None
        return mc.from_torch(program, name=os.path.splitext(os.path.basename(path))[0])
    raise MinicompError(f"{path}: unknown model format '{ext}'; expected .mcir, .onnx or .pt2")


def random_input(v, rng, sizes: dict | None = None) -> np.ndarray:
    """A random array for graph input ``v`` (standard normal, small ints, or bools); a symbolic
    dimension takes its size in ``sizes``."""
    dt, shape = v.dtype, concrete(v.shape, sizes or {})
    if dt.is_float:
        return rng.standard_normal(shape).astype(dt.numpy)
    if dt.is_bool:
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dt.numpy)


def call_sizes_of(graph: mc.Graph, specs) -> dict[str, int]:
    """The size of each symbolic dimension in random inputs: --size NAME=N, else its largest."""
    sizes = {name: hi for name, _, hi in graph.dims()}
    for name, n in parse_sizes(specs).items():
        if name not in sizes:
            known = ", ".join(sizes) or "none"
            raise MinicompError(f"--size {name}: the model has no symbolic dimension '{name}' (its dimensions: "
                                f"{known})")
        sizes[name] = n
    return sizes


def parse_inputs(graph: mc.Graph, specs: list[str], seed: int, cast: bool = False,
                 sizes: dict | None = None) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` pairs, plus random arrays for the inputs not named (symbolic dimensions at
    ``sizes``, else their largest); ``cast`` converts each given array to its input's dtype (--cast)."""
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
        want = next(v for v in graph.inputs if v.name == name).dtype
        if cast:
            given[name] = given[name].astype(want.numpy)
        elif given[name].dtype != want.numpy:
            raise MinicompError(f"--input {name}: {path} holds {given[name].dtype}, but input '{name}' is "
                                f"{want.numpy}; add --cast to convert it")
    rng = np.random.default_rng(seed)
    sizes = sizes if sizes is not None else call_sizes_of(graph, [])
    for v in graph.inputs:
        if v.name not in given:
            given[v.name] = random_input(v, rng, sizes)
    return given


def cmd_run(args) -> int:
    t0 = time.perf_counter()
    if is_saved(args.model):  # compiled already: load it
        model = mc.load(args.model)
        if args.threads:
            model.set_num_threads(args.threads)
        graph = model.graph
        if args.check:
            raise MinicompError("--check needs the model's graph: run the .mcir or .onnx file")
    else:
        graph = load_args_model(args)
        t0 = time.perf_counter()
        model = compile_with_progress(graph, warm_up=True, target=args.target, num_threads=args.threads,
                                      tune=args.tune)
    inputs = parse_inputs(graph, args.input or [], args.seed, args.cast, call_sizes_of(graph, args.size))
    compile_s = time.perf_counter() - t0
    model(**inputs)  # warm up
    load = OtherLoad()
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        outs = model(**inputs)
    run_s = (time.perf_counter() - t0) / args.repeat
    warn_if_busy(load, model.num_threads)
    how = "loaded" if is_saved(args.model) else "compiled"
    print(f"{graph.name}: {how} for {model.target} in {compile_s:.3f} s; "
          f"one run {run_s * 1e3:.3f} ms (mean of {args.repeat})")
    for v, out in zip(graph.outputs, outs):
        checksum = float(np.sum(out.astype(np.float64)))
        print(f"  {v.name}: {out.dtype}{list(out.shape)} sum={checksum:.6g}")
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            np.save(os.path.join(args.save, f"{v.name.replace('/', '_')}.npy"), out)
    if args.check:
        expected = onnx_test_outputs(args.model, graph)
        if expected is not None:
            return check_test_data(model, expected)
        return check_outputs(graph, inputs, outs)
    return 0


def onnx_test_outputs(path: str, graph):
    """For a model.onnx beside ONNX test data (``test_data_set_*/input_N.pb``,
    ``output_N.pb``): each set's (inputs by name, expected outputs); else None."""
    import glob

    sets = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "test_data_set_*")))
    if not path.lower().endswith(".onnx") or not sets:
        return None
    from minicomp.frontends.onnx_testdata import read_tensors

    def numbered(folder, kind):
        return sorted(glob.glob(os.path.join(folder, f"{kind}_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))

    out = []
    for folder in sets:
        ins = read_tensors(numbered(folder, "input"))
        out.append(({v.name: a for v, a in zip(graph.inputs, ins)}, read_tensors(numbered(folder, "output")),
                    os.path.basename(folder)))
    return out


def check_test_data(model, sets) -> int:
    """Run every ONNX test data set and compare with its stored outputs (rtol 1e-3, atol 1e-5)."""
    failed = 0
    for inputs, expected, name in sets:
        got = model(**inputs)
        for v, g, e in zip(model.graph.outputs, got, expected):
            ok = g.shape == e.shape and np.allclose(g, e, rtol=1e-3, atol=1e-5, equal_nan=True)
            err = float(np.max(np.abs(g.astype(np.float64) - e), initial=0.0)) if g.shape == e.shape else float("inf")
            print(f"  {name} {v.name}: max |diff| {err:.3g} -> {'ok' if ok else 'MISMATCH'}")
            failed |= not ok
    print("check against the stored ONNX test outputs: " + ("FAILED" if failed else "passed"))
    return int(failed)


def check_outputs(graph, inputs: dict, outs) -> int:
    """Compare outputs with the reference interpreter; 0 if they match, 1 if not."""
    want = mc.run_reference(graph, **inputs)
    worst = 0
    for v, got, ref in zip(graph.outputs, outs, want):
        ref = np.asarray(ref)
        if got.dtype.kind == "f":
            err = float(np.max(np.abs(got.astype(np.float64) - ref), initial=0.0))
            scale = float(np.max(np.abs(ref), initial=0.0)) or 1.0
            ok = np.allclose(got, ref, rtol=1e-3, atol=1e-4 * scale, equal_nan=True)
        else:
            err = float(np.sum(got != ref))
            ok = err == 0
        print(f"  check {v.name}: max |diff| {err:.3g} -> {'ok' if ok else 'MISMATCH'}")
        worst = max(worst, 0 if ok else 1)
    print("check against the reference interpreter: " + ("passed" if not worst else "FAILED"))
    return worst


def cmd_compile(args) -> int:
    args.started = time.perf_counter()
    graph = load_args_model(args)
    args.loaded = time.perf_counter() - args.started
    if args.emit and args.emit not in PASS_STAGES:
        from minicomp.backends.registry import backend_for_name, backend_names, get_backend

        if args.emit not in backend_for_name(args.target).emits:
            owner = next(b for b in backend_names() if args.emit in get_backend(b).emits)
            raise MinicompError(f"--emit {args.emit} needs --target {owner}")
    if args.export_c and backend_name(args.target) != "c":
        raise MinicompError("--export-c writes the C of target c: add --target c")
    options = dict(target=args.target, num_threads=args.threads, pipeline=args.pipeline, tune=args.tune,
                   print_after=args.print_after or (), print_before=args.print_before or (), dump_dir=args.dump_dir)
    if (args.output or args.shared_lib) and not is_cpu_target(args.target):
        raise MinicompError("-o and --shared-lib save code for a CPU: use --target llvm or a CPU name")
    if args.emit in PASS_STAGES and not (args.graph_png or args.output or args.shared_lib or args.export_c):
        # The stage is ready before code generation: stop there.
        stages, timings = mc.compiler.compile_stages(graph, **options)
        model = None
    else:
        model = compile_with_progress(graph, **options)
        stages, timings = model.stages, model.pass_timings
    if args.explain_fusion:
        sys.stdout.write(stages["fusion"])
    if args.time_passes:
        from minicomp.passes.manager import format_timings

        total = time.perf_counter() - args.started
        sys.stdout.write(format_timings([("load model", args.loaded)] + timings) +
                         f"\n{'wall time of the command':<36} {total * 1e3:9.3f} ms\n")
        if model is not None and model.from_the_model_cache:
            print("the whole model came from the compile cache, so no pass ran: `minicomp cache --clear` (or "
                  "MINICOMP_CACHE=0) to time them")
    if args.graph_png:
        from minicomp.viz import render_graph

        render_graph(model.graph, args.graph_png, model.fusion.groups)
        print(f"wrote {args.graph_png}")
    if args.output:
        model.save(args.output)
        print(f"wrote {args.output}")
    if args.shared_lib:
        header = model.export_library(args.shared_lib)
        print(f"wrote {args.shared_lib} and {header}")
    if args.export_c:
        folder = model.export_c(args.export_c)
        print(f"wrote {folder / 'model.c'}, {folder / 'model.h'} and {folder / 'model.bin'}")
    if args.emit or not (args.explain_fusion or args.time_passes or args.graph_png or args.print_after
                         or args.print_before or args.dump_dir or args.output or args.shared_lib
                         or args.export_c):
        key = (args.emit or "loops").replace("-", "_")
        text = model.assembly() if key == "asm" else stages[key]
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_plan(args) -> int:
    graph = load_args_model(args)
    model = mc.compile(graph, target="llvm", pipeline=args.pipeline,
                       memory={"order": args.order, "offsets": args.offsets, "in_place": not args.no_in_place},
                       memory_budget=args.budget)
    sys.stdout.write(str(model.memory_plan) + "\n" if args.verbose else model.memory_plan.summary() + "\n")
    if args.png:
        model.memory_plan.draw(args.png)
        print(f"wrote {args.png}")
    return 0


def cmd_profile(args) -> int:
    graph = load_args_model(args)
    inputs = parse_inputs(graph, args.input or [], args.seed, args.cast, call_sizes_of(graph, args.size))
    model = compile_with_progress(graph, warm_up=True, target=args.target, num_threads=args.threads,
                                  tune=args.tune)
    load = OtherLoad()
    rows = model.profile(repeat=args.repeat, **inputs)
    warn_if_busy(load, model.num_threads)
    total = sum(t for _, t in rows) or 1.0
    print(f"{graph.name} on {model.target}: {count(len(rows), 'kernel')}, {total * 1e3:.3f} ms in all "
          f"(each kernel alone, mean of {args.repeat})")
    print(f"  {'kernel':<56} {'ms':>9} {'share':>6}")
    for name, t in sorted(rows, key=lambda r: -r[1])[:args.top]:
        print(f"  {name:<56} {t * 1e3:9.3f} {t / total:6.1%}")
    return 0


def cmd_tune(args) -> int:
    from minicomp.backends.llvm_tuning import format_tunings
    from minicomp.passes.schedules.cpu import DEFAULT_CHOICES

    if not is_cpu_target(args.target):
        raise MinicompError(f"tune measures code on this CPU: use --target llvm or a CPU name, not {args.target}")
    graph = load_args_model(args)
    t0 = time.perf_counter()
    tuned = compile_with_progress(graph, target=args.target, num_threads=args.threads,
                                  tune={"max_candidates": args.max_candidates})
    tune_s = time.perf_counter() - t0
    tunings = tuned.tunings
    measured = sum(t.measured for t in tunings)
    cached = sum(1 for t in tunings if t.from_cache)
    print(f"{graph.name}: tuned {count(len(tunings), 'kernel')} for {tuned.target} in {tune_s:.1f} s; "
          f"{count(measured, 'schedule')} measured, {count(cached, 'kernel')} from the compile cache or an identical "
          f"kernel")
    print(format_tunings(tunings))
    if all(t.choices == DEFAULT_CHOICES for t in tunings):
        # Nothing changed: timing the same code twice would only print noise as a speed-up or a loss.
        print("every kernel kept the rules' schedule: the tuned model is the model the rules give")
    else:
        time_tuned_against_rules(graph, tuned, args)
    print("the tunings are kept in the compile cache: mc.compile(..., tune=True) or --tune reuses them")
    if args.output:
        tuned.save(args.output)
        print(f"wrote {args.output}")
    return 0


def time_tuned_against_rules(graph, tuned, args) -> None:
    """Print the whole model's time by the rules and tuned, each timed in blocks."""
    from minicomp.backends.llvm_tuning import best_block, calls_per_block

    rules = mc.compile(graph, target=args.target, num_threads=args.threads)
    inputs = parse_inputs(graph, [], args.seed)
    # Blocks of each in turn, three rounds; the best block of each counts.
    run_rules, run_tuned = (lambda: rules(**inputs)), (lambda: tuned(**inputs))
    n_rules, n_tuned = calls_per_block(run_rules, 0.1), calls_per_block(run_tuned, 0.1)
    t_rules = t_tuned = float("inf")
    for _ in range(3):
        t_rules = min(t_rules, best_block(run_rules, n_rules, 1))
        t_tuned = min(t_tuned, best_block(run_tuned, n_tuned, 1))
    print(f"whole model on {count(tuned.num_threads, 'thread')}: {t_rules * 1e3:.3f} ms by the rules, "
          f"{t_tuned * 1e3:.3f} ms tuned ({t_rules / t_tuned:.2f}x)")


def cmd_cache(args) -> int:
    from minicomp import cache

    entries, size = cache.usage()
    models = list((cache.root() / "models").glob("*.model")) if cache.root().exists() else []
    model_bytes = sum(p.stat().st_size for p in models)
    print(f"compile cache: {cache.root()} ({count(entries, 'file')}, {size / 2**20:.1f} MiB; "
          f"{count(len(models), 'whole model')}, {model_bytes / 2**20:.1f} MiB)"
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
    model = compile_with_progress(graph, tune=args.tune)
    compile_s = time.perf_counter() - t0
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("onnxruntime is not installed: showing minicomp alone (pip install onnxruntime)")
    print(f"{graph.name}: {count(len(graph.nodes), 'node')}, {count(len(model.kernels), 'kernel')}, "
          f"compiled in {compile_s:.2f} s")
    print(f"{'threads':>7}  {'minicomp ms':>12}  {'onnxruntime ms':>14}  {'ratio':>6}")
    load = OtherLoad()
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
    warn_if_busy(load, max(args.threads))
    return 0


def warn_if_busy(load: OtherLoad, threads: int) -> None:
    """Say on stderr when other programs shared the CPUs while a command timed (cpu_load.busy_warning)."""
    message = busy_warning(load.share(), threads)
    if message:
        print(f"minicomp: {message}", file=sys.stderr)


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


def cmd_targets(args) -> int:
    from minicomp.backends.registry import backend_names, get_backend, numerics_table

    for name in backend_names():
        b = get_backend(name)
        print(f"{name:<10} {b.description}")
        if b.aliases:
            print(f"{'':<10} also: {', '.join(b.aliases)}")
        if b.emits:
            print(f"{'':<10} --emit {', '.join(b.emits)}")
    from minicomp.target import Target

    host = Target.host()
    print(f"\nthis machine: {host}; L2 {host.l2_bytes or 0:,} bytes; dot-product units: "
          f"{', '.join(host.dot_units) or 'none'} (reported, not yet used)")
    print("\nnumeric rules (passes/legalize.py): spelled by the target, else written out by legalization")
    for rule, spellings in numerics_table().items():
        print(f"  {rule}:")
        for name, how in spellings.items():
            print(f"    {name:<10} {how}")
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


def _arg(*flags, **kwargs) -> tuple:
    """One argument of a command: argparse's flags and keywords."""
    return flags, kwargs


def _shared_args() -> dict[str, tuple]:
    """Arguments several commands take, by a short name."""
    return {
        "model": _arg("model", help="model file (.mcir, .onnx or .pt2)"),
        "shape": _arg("--shape", action="append", metavar="NAME=D1,D2,...",
                      help="fix a dynamic input shape of an ONNX model (repeatable)"),
        "dim": _arg("--dim", action="append", metavar="NAME=MIN:MAX",
                    help="keep an ONNX dim_param symbolic, with this range: one compile for every size in it "
                         "(repeatable; docs/dynamic.md)"),
        "size": _arg("--size", action="append", metavar="NAME=N",
                     help="the size of a symbolic dimension in the random inputs (default: its largest)"),
        "input": _arg("--input", "-i", action="append", metavar="NAME=FILE.npy", help="an input array (repeatable)"),
        "cast": _arg("--cast", action="store_true", help="convert each --input array to its input's dtype"),
        "threads": _arg("--threads", type=positive_int, default=None, help="threads for parallel loops"),
        "seed": _arg("--seed", type=int, default=0, help="seed for random inputs"),
        "tune": _arg("--tune", action="store_true", help=TUNE_HELP),
    }


def _commands() -> list[tuple]:
    """The command table: (name, handler, help, description or None, arguments). An argument is the name
    of one in :func:`_shared_args`, or an :func:`_arg` of the command's own."""
    cpu_targets = [t for t in target_names() if is_cpu_target(t)]
    return [
        ("run", cmd_run, "compile a model and run it, printing output shapes, checksums and time", None, [
            _arg("model", help="model file (.mcir, .onnx or .pt2, or .mcm saved by 'compile -o')"), "shape",
            _arg("--input", "-i", action="append", metavar="NAME=FILE.npy",
                 help="an input array (repeatable); inputs not given are random"), "size",
            _arg("--cast", action="store_true",
                 help="convert each --input array to its input's dtype (e.g. a float64 .npy for a float32 input)"),
            _arg("--target", default="llvm", choices=target_names(),
                 help="where to run: llvm (this CPU), c (C99 built by the system C compiler), cuda (an NVIDIA "
                      "GPU, needs pycuda), cuda-emu (the CUDA C on this CPU, slow: for testing), reference "
                      "(numpy), or a named CPU for llvm (default llvm)"),
            _arg("--threads", type=positive_int, default=None, help="threads for parallel loops (default: all cores)"),
            _arg("--repeat", type=positive_int, default=1, help="timed runs to average (default 1)"), "seed",
            _arg("--save", metavar="DIR", help="save each output as DIR/NAME.npy"), "tune",
            _arg("--check", action="store_true",
                 help="compare the outputs with the reference interpreter, or, for a model.onnx beside ONNX "
                      "test data (test_data_set_*), with the stored outputs (exit 1 on a mismatch)"),
        ]),
        ("compile", cmd_compile, "compile a model and print one stage", None, [
            "model", "shape",
            _arg("--target", default="llvm", choices=target_names(),
                 help="what to compile for: llvm (this CPU), a named CPU, c (portable C99), or cuda (needs no "
                      "GPU to compile) (default llvm)"),
            _arg("--emit", default=None, choices=emit_names(),
                 help="stage to print (default: loops, unless another output is asked for); llvm, llvm-opt "
                      "and asm are for CPU targets, c for --target c, cuda for --target cuda"),
            _arg("--export-c", metavar="DIR",
                 help="with --target c: write DIR/model.c, model.h and model.bin, C99 that builds with any C "
                      "compiler and runs without minicomp (see docs/adding-a-backend.md)"),
            _arg("--threads", type=positive_int, default=None, help="threads the schedule plans for"), "tune",
            _arg("-o", "--output", metavar="FILE.mcm",
                 help="save the compiled model; 'minicomp run FILE.mcm' and mc.load(FILE) run it without compiling"),
            _arg("--shared-lib", metavar="FILE.so",
                 help="link a shared library with its header beside it (libNAME.so -> NAME.h: "
                      "int mc_run(inputs, outputs)) for C programs"),
            _arg("--pipeline", default=None, help="passes to run, e.g. 'simplify,fuse,lower,schedule,plan'"),
            _arg("--print-after", action="append", metavar="PASS",
                 help="print the IR after this pass (repeatable; 'all' for every pass)"),
            _arg("--print-before", action="append", metavar="PASS", help="print the IR before this pass"),
            _arg("--dump-dir", metavar="DIR", help="write the IR after every pass to numbered files in DIR"),
            _arg("--explain-fusion", action="store_true", help="list the kernels and why each boundary is there"),
            _arg("--time-passes", action="store_true", help="print the time each pass took"),
            _arg("--graph-png", metavar="FILE",
                 help="draw the graph with fused groups (.png/.svg/.dot; needs Graphviz for pictures)"),
        ]),
        ("plan", cmd_plan, "plan a model's memory: execution order, arena offsets, figures, a picture", None, [
            "model", "shape",
            _arg("--order", default="auto", choices=["auto", "fusion", "greedy", "exact"],
                 help="how to choose the kernel order (default auto: the least peak found)"),
            _arg("--offsets", default="best", choices=["best", "size", "breadth", "search"],
                 help="how to place buffers in the arena (default best: the smallest arena)"),
            _arg("--budget", type=int, default=None, metavar="BYTES", help="fail unless the arena fits"),
            _arg("--no-in-place", action="store_true",
                 help="no elementwise kernel writes over an input that dies there (by default they may)"),
            _arg("--pipeline", default=None, help="passes to run (default: the llvm pipeline, which fuses)"),
            _arg("--png", metavar="FILE", help="draw the plan (.png/.svg/.pdf; needs matplotlib)"),
            _arg("--verbose", "-v", action="store_true", help="also list every buffer and its offset"),
        ]),
        ("profile", cmd_profile, "compile a model and time each kernel alone on random inputs", None, [
            "model", "shape", "input", "cast", "size",
            _arg("--target", default="llvm", choices=target_names(), help="where to run (default llvm)"), "threads",
            _arg("--repeat", type=positive_int, default=10, help="runs of each kernel to average (default 10)"),
            _arg("--top", type=positive_int, default=30, help="show the slowest N kernels (default 30)"),
            "seed", "tune",
        ]),
        ("tune", cmd_tune, "measure a few schedules of every kernel on this CPU and keep the fastest",
         "Tune a model's kernels on this CPU: for each kernel, up to --max-candidates schedules are compiled and "
         "timed and the fastest is kept in the compile cache; prints each kernel's figures and the whole model's "
         "time by the rules and tuned. Later compiles with --tune (or mc.compile(..., tune=True)) reuse the "
         "tunings without measuring.", [
            "model", "shape",
            _arg("--target", default="llvm", choices=cpu_targets, help="the CPU to tune for (default llvm: this one)"),
            _arg("--threads", type=positive_int, default=None,
                 help="threads the model will run with (tunings are kept per thread count; default: all cores)"),
            _arg("--max-candidates", type=positive_int, default=20,
                 help="schedules measured per kernel, at most (default 20)"),
            _arg("-o", "--output", metavar="FILE.mcm", help="also save the tuned model"),
            _arg("--seed", type=int, default=0, help="seed for the random inputs of the whole-model timing"),
        ]),
        ("cache", cmd_cache, "where the compile cache is and how big; --clear empties it", None, [
            _arg("--clear", action="store_true", help="remove every cached entry"),
        ]),
        ("bench", cmd_bench, "latency of minicomp beside ONNX Runtime on an .onnx model", None, [
            _arg("model", help="model file (.onnx)"),
            _arg("--shape", action="append", metavar="NAME=D1,D2,...", help="fix a dynamic input shape"),
            _arg("--threads", type=positive_int, nargs="+", default=[1, 2], help="thread counts (default 1 2)"),
            _arg("--repeat", type=positive_int, default=10, help="timed runs per measurement (median; default 10)"),
            _arg("--seed", type=int, default=0, help="seed for the random inputs"), "tune",
        ]),
        ("ops", cmd_ops, "list the registered ops and their attributes", None, []),
        ("passes", cmd_passes, "list the registered passes and the default pipelines", None, []),
        ("targets", cmd_targets, "list the backends, their target names and --emit stages, this machine's CPU "
                                 "(its dot-product units too), and which numeric rules each backend spells itself",
         None, []),
    ]


def build_parser() -> argparse.ArgumentParser:
    """The ``minicomp`` argument parser, built from the command table (:func:`_commands`)."""
    p = argparse.ArgumentParser(prog="minicomp", description="minicomp: a small deep-learning compiler.",
                                epilog="Examples:\n  minicomp run model.onnx\n"
                                       "  minicomp run model.mcir --input x=x.npy\n"
                                       "  minicomp compile model.onnx --explain-fusion\n"
                                       "  minicomp bench model.onnx --threads 1 2\n"
                                       "  minicomp tune model.onnx",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plugin", action="append", metavar="FILE.py|MODULE",
                   help="load a Python file or module first (it may register ops, importers, passes); repeatable")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _shared_args()
    for name, handler, help_text, description, args in _commands():
        command = sub.add_parser(name, help=help_text, description=description)
        for arg in args:
            flags, kwargs = shared[arg] if isinstance(arg, str) else arg
            command.add_argument(*flags, **kwargs)
            if arg == "shape":  # where a dynamic shape may be fixed, it may be kept symbolic
                command.add_argument(*shared["dim"][0], **shared["dim"][1])
        # --plugin may also come after the command (minicomp compile m.mcir --plugin p.py); main() merges both.
        command.add_argument("--plugin", action="append", dest="plugin_after", metavar="FILE.py|MODULE",
                             help="load a Python file or module first (as 'minicomp --plugin ... COMMAND')")
        command.set_defaults(func=handler)
    return p


def main(argv=None) -> int:
    """Entry point of the ``minicomp`` console command."""
    args = build_parser().parse_args(argv)
    try:
        load_plugins((args.plugin or []) + (args.plugin_after or []))
        return args.func(args)
    except MinicompError as exc:
        print(f"minicomp: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (minicomp ops | head): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so that Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # killed by SIGPIPE, as the shell reports it


if __name__ == "__main__":
    raise SystemExit(main())
