"""``minicomp.compile``: Graph -> CompiledModel.

The flow for the llvm target: verify the graph, run the pass pipeline
(simplify, fuse, lower, schedule, plan by default), emit LLVM IR for the
kernels, JIT-compile it, and bind everything into a CompiledModel. Every
stage's text is kept in ``model.stages``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from minicomp.errors import MinicompError, UnsupportedError
from minicomp.ir.graph import Graph
from minicomp.ir.text import print_graph

TARGETS = ("llvm", "reference")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cache_size(level: int) -> int | None:
    """Bytes of the host's data/unified cache at ``level``, from sysfs."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            with open(os.path.join(d, "level")) as f:
                lvl = int(f.read())
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            if lvl == level and kind in ("Data", "Unified"):
                with open(os.path.join(d, "size")) as f:
                    text = f.read().strip()
                mult = {"K": 1024, "M": 1 << 20}.get(text[-1], 1)
                return int(text.rstrip("KM")) * mult
    except OSError:
        return None
    return None


@dataclass
class Target:
    """The hardware a model is compiled for, as data."""

    name: str = "llvm"
    num_threads: int = field(default_factory=_cpu_count)
    cpu: str = ""
    features: str = ""
    vector_bits: int = 256
    l1_bytes: int | None = None
    l2_bytes: int | None = None
    l3_bytes: int | None = None

    @classmethod
    def host(cls, name: str = "llvm", num_threads: int | None = None) -> Target:
        """The machine this process runs on."""
        t = cls(name=name, num_threads=num_threads or _cpu_count(),
                l1_bytes=_cache_size(1), l2_bytes=_cache_size(2), l3_bytes=_cache_size(3))
        if name == "llvm":
            from minicomp.backends.llvm import host_cpu

            t.cpu, t.features = host_cpu()
            t.vector_bits = 512 if "+avx512f" in t.features else 256 if "+avx" in t.features else 128
        return t

    def __str__(self) -> str:
        return (f"{self.name} ({self.cpu or 'generic'}, {self.num_threads} threads, "
                f"{self.vector_bits}-bit vectors)")


def as_target(target, num_threads: int | None = None) -> Target:
    if isinstance(target, Target):
        if num_threads:
            target.num_threads = num_threads
        return target
    if target not in TARGETS:
        raise UnsupportedError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return Target.host(target, num_threads)


def compile(graph: Graph, target="llvm", *, num_threads: int | None = None, opt_level: int = 3,
            pipeline=None, fusion: dict | None = None, schedules: dict | None = None,
            print_before=(), print_after=(), dump_dir: str | None = None, verify: bool = True):
    """Compile ``graph`` for ``target`` ("llvm" or "reference"); returns a CompiledModel.

    - ``num_threads``: threads for parallel loops (default: the cores this
      process may use; change later with ``model.set_num_threads(n)``);
    - ``pipeline``: pass names as a list or "a,b,c" (default:
      ``default_pipeline(target)``); ``fusion``: FusionOptions fields;
      ``schedules``: ``{kernel_name: [steps]}`` to replace the default schedule;
    - instruments: ``print_before``/``print_after`` (pass names or "all"),
      ``dump_dir`` (numbered files per pass), ``verify`` (after every pass).

    ``model.stages`` keeps the text of every stage; ``model.pass_timings`` the
    time of every pass.
    """
    from minicomp.passes.manager import PassContext, PassManager, Program, default_pipeline
    from minicomp.runtime import CompiledModel, ReferenceModel

    if not isinstance(graph, Graph):
        raise MinicompError(f"compile() needs a Graph, got {type(graph).__name__}")
    graph.verify()
    tgt = as_target(target, num_threads)
    stages = {"input": print_graph(graph)}
    options = {"fusion": fusion, "schedules": schedules}
    pm = PassManager(pipeline if pipeline is not None else default_pipeline(tgt.name),
                     print_before=print_before, print_after=print_after, dump_dir=dump_dir, verify=verify,
                     options=options)
    if tgt.name == "reference":
        program = pm.run(Program(graph, tgt, options=options))
        stages["graph"] = print_graph(program.graph)
        model = ReferenceModel(program.graph, tgt, stages)
        model.pass_timings = pm.timings
        return model
    for v, arr in graph.constants.items():
        if arr is None:
            raise MinicompError(f"constant %{v.name} has no data (read from text that showed only its "
                                f"digest); print graphs with full_constants=True to run them")

    from minicomp.backends.llvm import JitModule, openmp_available
    from minicomp.backends.llvm_codegen import emit_module
    from minicomp.passes.fusion import print_fused_graph
    from minicomp.passes.pipeline_passes import lower_pass, plan_pass
    from minicomp.runtime import KernelCall

    if not openmp_available():
        tgt.num_threads = 1
        stages["note"] = "libgomp was not found: parallel loops run on one thread"
    # Schedules plan for at least 2 threads so that a model can later be told to use more.
    pm.options["schedule_threads"] = max(tgt.num_threads, 2) if openmp_available() else 1
    program = pm.run(Program(graph, tgt, options=options))
    # Code generation needs kernels and a plan even when the pipeline stops early.
    if program.kernels is None:
        program = lower_pass(program, PassContext(pm.options))
    if program.memory_plan is None:
        program = plan_pass(program, PassContext(pm.options))
    graph, groups, kernels, plan = program.graph, program.groups, program.kernels, program.memory_plan
    stages["graph"] = print_fused_graph(graph, groups)
    stages["fusion"] = program.options["fusion_result"].explain()
    stages["loops"] = "\n\n".join(str(k) for k in kernels) + "\n"
    stages["memory"] = str(plan)

    # Slots: graph inputs, constants, graph outputs, then planned buffers.
    slots: dict = {}
    for v in list(graph.inputs) + list(graph.constants) + list(graph.outputs):
        slots.setdefault(v, len(slots))
    for lt in plan.lifetimes:
        slots[lt.key] = len(slots)
    calls = []
    for k in kernels:
        ws = iter(k.workspace)
        call_slots = [slots[v] if v is not None else slots[next(ws)] for v in k.param_values]
        calls.append(KernelCall(k.name, f"k_{k.name}", call_slots))
    ir_text = emit_module(kernels, [c.slots for c in calls])
    stages["llvm"] = ir_text
    jit = JitModule(ir_text, opt_level)
    stages["llvm_opt"] = jit.optimized_ir
    model = CompiledModel(graph, tgt, stages, plan, jit, calls, slots, len(slots), graph.constants, kernels)
    model.pass_timings = pm.timings
    model.fusion = program.options["fusion_result"]
    return model
