"""``minicomp.compile``: Graph -> CompiledModel.

The flow: verify the graph, find the target's backend in the registry, run
its pass pipeline (for llvm: simplify, patches, nchwc, fuse, lower,
schedule, plan, legalize) on frozen CompileOptions, let the backend build an executable (for
llvm: LLVM IR, JIT-compiled) and make its model, a CompiledModel. Every
stage's text is kept in ``model.stages``.
"""

from __future__ import annotations

import dataclasses
import logging

from minicomp.errors import CompileError, MinicompError, UnsupportedError
from minicomp.ir.graph import Graph
from minicomp.ir.text import print_graph
from minicomp.stages import Stages
from minicomp.target import Target
from minicomp.wording import count

# One INFO record per compile (README, "Seeing every compile"): a user sees every compile, and so every
# recompile (torch.compile's per-shape ones among them).
log = logging.getLogger("minicomp")


def as_target(target, num_threads: int | None = None, device: str | None = None) -> Target:
    """A Target from a Target or a name ``compile(target=...)`` accepts: a backend's name ("llvm",
    "c", "cuda", "reference") or one of its aliases ("cuda-emu", a CPU name such as "haswell")."""
    from minicomp.backends.registry import backend_for_name

    if isinstance(target, Target):
        # A copy: compiling never changes the caller's Target (the backend may still adjust its own).
        changes = {k: v for k, v in (("num_threads", num_threads), ("device", device)) if v}
        return dataclasses.replace(target, **changes)
    backend = backend_for_name(target) if isinstance(target, str) else None
    if backend is None:
        raise UnsupportedError(f"unknown target {target!r}; choose one of {', '.join(target_names())}, "
                               f"or pass a Target")
    if backend.make_target is not None:
        return backend.make_target(target, num_threads, device)
    if device:
        raise MinicompError(f"device={device!r} is for CUDA targets, not {target!r}")
    return Target.host(target, num_threads)


def target_names() -> list[str]:
    """Every name ``compile(target=...)`` accepts: backends, then their aliases (cuda-emu, named CPUs)."""
    from minicomp.backends.registry import target_names as names

    return names()


def compile(graph: Graph, target="llvm", *, num_threads: int | None = None, opt_level: int = 3,
            pipeline=None, fusion: dict | None = None, schedules: dict | None = None, device: str | None = None,
            memory: dict | None = None, memory_budget: int | None = None, cache: bool = True,
            tune: bool | dict = False, quantize: str | None = None, progress=None,
            print_before=(), print_after=(), dump_dir: str | None = None, verify: bool = True):
    """Compile ``graph`` for ``target``; returns a CompiledModel.

    ``target``: a backend name ("llvm", "cuda", "reference"), a CPU name for
    the llvm backend ("haswell", "skylake-avx512", "znver4"...), "cuda-emu",
    or a :class:`Target`. ``device`` (CUDA only): "gpu" runs on an NVIDIA GPU
    through pycuda, "emu" runs the same CUDA C on the CPU (cuda-emu).

    - ``num_threads``: threads for parallel loops (default: the cores this
      process may use; change later with ``model.set_num_threads(n)``);
    - ``pipeline``: pass names as a list or "a,b,c" (default:
      ``default_pipeline(target)``); ``fusion``: FusionOptions fields;
      ``schedules``: ``{kernel: steps}`` to replace the default schedule, keyed
      by kernel name (``fused_matmul_add_0``) or by the name without its index
      (every such kernel); steps are a list or text (see docs/scheduling.md);
    - ``cache``: reuse compiled code kept on disk (``minicomp/cache.py``;
      ``model.cache_hit`` says whether it was);
    - ``tune``: measure a few schedules of each kernel on this machine and
      keep the fastest (``backends/llvm_tuning.py``; llvm targets only); tunings
      are kept in the compile cache, so a kernel is measured once. A dict
      sets ``max_candidates`` (default 20) per kernel. ``model.tunings``
      lists what was found;
    - ``quantize="int8-weight"``: store the weights of matrix products as int8
      with a float32 scale per output column, widened as they are read
      (``passes/quantize.py``): a quarter of the bytes, where streaming the
      weights takes the time (decoding a language model); results are no
      longer the float32 ones (docs/decode.md gives the error);
    - instruments: ``print_before``/``print_after`` (pass names or "all"),
      ``dump_dir`` (numbered files per pass), ``verify`` (after every pass).

    ``progress``: a function called with a short message before each pass
    and before code generation (the CLI shows them on a terminal).

    ``model.stages`` keeps the text of every stage; ``model.pass_timings`` the
    time of every pass and of code generation (``build: ...`` entries).
    """
    import time

    started = time.perf_counter()
    if isinstance(opt_level, bool) or opt_level not in (0, 1, 2, 3):
        raise MinicompError(f"opt_level must be 0, 1, 2 or 3 (LLVM's optimization levels), got {opt_level!r}")
    options = dict(num_threads=num_threads, pipeline=pipeline, fusion=fusion, schedules=schedules, device=device,
                   memory=memory, memory_budget=memory_budget, cache=cache, tune=tune, quantize=quantize,
                   progress=progress)
    instruments = dict(print_before=print_before, print_after=print_after, dump_dir=dump_dir, verify=verify)
    job = _prepare(graph, target, **options)
    key = _whole_model_key(job, opt_level) if not (print_before or print_after or dump_dir) else None
    if key is not None:
        model = job.backend.find_model(key)
        if model is not None:
            return _from_the_cache(model, job, graph, target, options, opt_level, started)
    program, stages, pm = _run_pipeline(job, **instruments)
    backend, tgt = job.backend, job.target
    if progress is not None:
        progress(f"code generation ({backend.name}, {count(len(program.kernels or []), 'kernel')})")
    t0 = time.perf_counter()
    executable = backend.build(program, stages, opt_level)
    model = backend.model(program, tgt, stages, executable)
    model.fusion, model.tunings = program.fusion_result, program.tunings
    build_timings = list(getattr(executable, "timings", []))
    rest = time.perf_counter() - t0 - sum(t for _, t in build_timings)
    model.pass_timings = pm.timings + build_timings + [(f"build: {backend.name} (other)", rest)]
    if key is not None:
        t_keep = time.perf_counter()
        backend.keep_model(key, model)
        model.pass_timings.append(("keep the whole model in the cache", time.perf_counter() - t_keep))
    ins = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
    code = (f"{count(len(program.kernels), 'kernel')}, compile cache {'hit' if model.cache_hit else 'miss'}"
            if backend.runs_kernels else "no native code")
    log.info("compiled %s(%s) for %s in %.3f s (%s)", graph.name, ins, tgt.name, time.perf_counter() - started,
             code)
    return model


def _whole_model_key(job, opt_level: int) -> str | None:
    """The key of the whole compiled model in the cache (``backends/llvm_model_cache.py``): the input graph
    as text (its weights by digest), the target, every option that shapes the code, and the compiler's own
    source; None where the model is not kept whole (no such cache for the backend, or the cache is off)."""
    from minicomp import cache as disk
    from minicomp.ir.ops import user_ops
    from minicomp.passes.manager import user_passes

    if job.backend.find_model is None or not job.options.get("cache") or not disk.enabled():
        return None
    if {n.op for n in job.graph.nodes} & user_ops() or set(job.passes) & user_passes():
        return None  # their code is not minicomp's: the key cannot say that it changed
    settings = {k: v for k, v in job.options.items() if k not in ("tuner", "cache")}
    if settings.get("tune"):
        settings["tune"] = {k: v for k, v in settings["tune"].items() if k != "progress"}
    return disk.key("whole model", job.stages["input"], repr(job.target), _stable_repr(settings),
                    repr(job.passes), opt_level, disk.compiler_digest())


def _stable_repr(x) -> str:
    """``repr(x)`` with dicts and sets in sorted order: the same text in every process (a set's order
    follows string hashing, which changes from process to process)."""
    if isinstance(x, dict):
        items = sorted(x.items(), key=lambda kv: repr(kv[0]))
        return "{" + ", ".join(f"{k!r}: {_stable_repr(v)}" for k, v in items) + "}"
    if isinstance(x, (set, frozenset)):
        return "{" + ", ".join(sorted(_stable_repr(v) for v in x)) + "}"
    if isinstance(x, (list, tuple)):
        return type(x).__name__ + "(" + ", ".join(_stable_repr(v) for v in x) + ")"
    return repr(x)


def _from_the_cache(model, job, graph, target, options, opt_level, started):
    """A model the whole-model cache gave: its stages, graph, kernels, fusion and tunings are made by running
    the passes again when first read (the graph is kept for that)."""
    import time

    made = {}

    def compiled_again() -> dict:
        if not made:
            again = dict(options, cache=True)
            program, stages, pm = _run_pipeline(_prepare(graph, target, **again))
            job.backend.build(program, stages, opt_level)
            made.update(program=program, stages=stages)
        return made

    def details(m) -> None:
        program = compiled_again()["program"]
        m.graph, m.kernels, m.memory_plan = program.graph, program.kernels, program.memory_plan
        m.fusion, m.tunings = program.fusion_result, program.tunings

    model.target, model.from_the_model_cache = job.target, True
    model.stages = job.stages
    model.stages.more_on_read(lambda: compiled_again()["stages"])
    model.make_details_on_read(details)
    model.pass_timings = [("verify and print the input", job.seconds),
                          ("load the whole model from the cache", time.perf_counter() - started - job.seconds)]
    ins = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
    log.info("compiled %s(%s) for %s in %.3f s (the whole model from the compile cache)", graph.name, ins,
             job.target.name, time.perf_counter() - started)
    return model


def compile_stages(graph: Graph, target="llvm", **options) -> tuple[dict, list]:
    """Run the passes only, without code generation: the stage texts
    (``input``, ``graph``, ``fusion``, ``loops``, ``memory``) and the pass
    timings. Takes :func:`compile`'s options."""
    options.pop("opt_level", None)
    _, stages, _, _, pm = _run_passes(graph, target, **options)
    return stages, pm.timings


def _tune_option(tune, target, backend, progress) -> dict | None:
    """The schedule pass's ``tune`` option: None, or the tuner's settings."""
    if tune is False or tune is None:
        return None
    if tune is not True and not isinstance(tune, dict):
        raise MinicompError(f"tune must be True, False or a dict of settings, got {tune!r}")
    settings = {} if tune is True else dict(tune)
    unknown = set(settings) - {"max_candidates"}
    if unknown:
        raise MinicompError(f"unknown tune setting(s) {', '.join(sorted(unknown))}; known: max_candidates")
    n = settings.get("max_candidates")
    if "max_candidates" in settings and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise MinicompError(f"tune max_candidates must be a whole number >= 1, got {n!r}")
    if backend.tune is None:
        raise MinicompError(f"tuning measures kernels on this CPU; target {target} cannot be tuned: it has "
                            f"no tuner (compile it without tune=True, or for target llvm)")
    settings["progress"] = progress
    return settings


# What code generation needs from the passes: kernels, a memory plan, legal loop IR.
FINISHING_PASSES = ("lower", "plan", "legalize")


def _pipeline(pipeline, backend) -> list[str]:
    """The passes to run: ``pipeline`` (default: the backend's) and, for a backend that runs kernels, the
    finishing passes it lacks, so that a pipeline of one's own may stop early (``--print-after`` and
    ``--time-passes`` see them like the others). ``legalize`` runs last: code generators read its output."""
    from minicomp.passes.manager import parse_pipeline

    names = parse_pipeline(pipeline if pipeline is not None else backend.pipeline)
    if not backend.runs_kernels:
        return names
    if "legalize" in names[:-1]:
        raise MinicompError("pass 'legalize' must be the last of a pipeline: code generators read its output "
                            "(compile() adds it when it is missing)")
    lowered = any(p in names for p in ("lower", "schedule", "plan"))  # schedule and plan lower when they must
    return names + [p for p in FINISHING_PASSES if p not in names and (p != "lower" or not lowered)]


def _with_quantize(names: list[str], quantize) -> list[str]:
    """``names`` with ``quantize_weights`` after ``simplify`` (whose constant folding would undo it), or
    first where there is none, when weights are to be quantized."""
    from minicomp.passes.quantize import SCHEMES

    if quantize is None:
        return names
    if quantize not in SCHEMES:
        raise MinicompError(f"quantize must be one of {', '.join(SCHEMES)} (or None), got {quantize!r}")
    if "quantize_weights" in names:
        return names
    at = names.index("simplify") + 1 if "simplify" in names else 0
    return names[:at] + ["quantize_weights"] + names[at:]


@dataclasses.dataclass
class _Job:
    """A compile, checked and ready for its passes."""

    graph: Graph
    target: Target
    backend: object
    stages: Stages
    options: dict  # CompileOptions fields
    passes: list[str]
    progress: object
    seconds: float  # checking the graph and printing it


def _prepare(graph, target, *, num_threads=None, pipeline=None, fusion=None, schedules=None, device=None,
             memory=None, memory_budget=None, cache=True, tune=False, quantize=None, progress=None) -> _Job:
    """Check the inputs, find the target and its backend, and print the input graph."""
    import time

    from minicomp.backends.registry import backend_names, get_backend

    t_start = time.perf_counter()
    if not isinstance(graph, Graph):
        raise MinicompError(f"compile() needs a Graph, got {type(graph).__name__}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise MinicompError(f"num_threads must be a whole number >= 1, got {num_threads!r}")
    if not graph.outputs:
        raise MinicompError(f"graph '{graph.name}' has no outputs: nothing to compute")
    graph.verify()
    tgt = as_target(target, num_threads, device)
    backend = get_backend(tgt.name)
    if graph.dims() and not backend.symbolic:
        dims = ", ".join(f"{name} ({lo}..{hi})" for name, lo, hi in graph.dims())
        able = ", ".join(name for name in backend_names() if get_backend(name).symbolic)
        raise CompileError(f"target {tgt.name} does not compile symbolic sizes yet ({dims}); compile for one of "
                           f"{able}, or give the inputs static shapes")
    stages = Stages(input=print_graph(graph))
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                      or memory_budget < 0):
        raise MinicompError(f"memory_budget must be a number of bytes >= 0, got {memory_budget!r}")
    if backend.runs_kernels:
        for v, arr in graph.constants.items():
            if arr is None:
                raise MinicompError(f"constant %{v.name} has no data (read from text that showed only its "
                                    f"digest); print graphs with full_constants=True to run them")
    options = {"fusion": fusion, "schedules": schedules, "memory": memory, "memory_budget": memory_budget,
               "cache": bool(cache), "tune": _tune_option(tune, tgt, backend, progress), "tuner": backend.tune,
               "schedule_kind": backend.schedule, "native_numerics": frozenset(backend.numerics)}
    if backend.prepare is not None:
        options.update(backend.prepare(tgt, stages) or {})
    passes = _with_quantize(_pipeline(pipeline, backend), quantize)
    return _Job(graph, tgt, backend, stages, options, passes, progress, time.perf_counter() - t_start)


def _run_passes(graph, target, *, print_before=(), print_after=(), dump_dir=None, verify=True, **options):
    """Check the inputs and run the target's pipeline; returns (program,
    stages, backend, target, pass manager) ready for code generation."""
    job = _prepare(graph, target, **options)
    program, stages, pm = _run_pipeline(job, print_before=print_before, print_after=print_after,
                                        dump_dir=dump_dir, verify=verify)
    return program, stages, job.backend, job.target, pm


def _run_pipeline(job: _Job, print_before=(), print_after=(), dump_dir=None, verify=True):
    """Run the job's passes; returns (program, stages, pass manager)."""
    import time

    from minicomp.passes.fusion import print_fused_graph
    from minicomp.passes.manager import CompileOptions, PassManager, Program

    t_start = time.perf_counter()
    graph, stages, backend = job.graph, job.stages, job.backend
    pm = PassManager(job.passes, print_before=print_before, print_after=print_after, dump_dir=dump_dir,
                     verify=verify, options=CompileOptions(**job.options), progress=job.progress)
    t_passes = time.perf_counter()
    program = pm.run(Program(graph, job.target))
    t_after = time.perf_counter()
    if backend.runs_kernels:
        done, groups = program.graph, program.groups
        if done is graph:  # the caller's own graph (no pass replaced it): printed as it was compiled
            stages.set("graph", print_fused_graph(done, groups))
        else:  # the compiler's copy, which the model keeps and nothing changes: printed when read
            stages.defer("graph", lambda: print_fused_graph(done, groups))  # (ResNet-50: 0.11 s a compile)
        stages.set("fusion", program.fusion_result.explain())
        stages.set("loops", "\n\n".join(str(k) for k in program.kernels) + "\n")
        stages.set("memory", str(program.memory_plan))
    else:
        stages.set("graph", print_graph(program.graph))
    pm.timings.insert(0, ("verify and print the input", job.seconds + t_passes - t_start))
    pm.timings.append(("print the stages", time.perf_counter() - t_after))
    return program, stages, pm
