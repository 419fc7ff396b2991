"""``minicomp.compile``: Graph -> CompiledModel.

The flow for the llvm target: verify the graph, group nodes into kernels,
lower each group to loop IR, schedule it for the target, plan the arena, emit
LLVM IR, JIT-compile it, and bind everything into a CompiledModel. Every
stage's text is kept in ``model.stages``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from minicomp.errors import MinicompError, UnsupportedError
from minicomp.ir.graph import Graph, Value
from minicomp.ir.text import print_graph
from minicomp.passes.lower import Group, kernel_name, lower_group
from minicomp.passes.memory import Lifetime, plan_arena
from minicomp.passes.schedule import apply_schedule, default_schedule

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


def single_node_groups(graph: Graph) -> list[Group]:
    """One group per node (what compiling without fusion uses)."""
    out_set = set(graph.outputs)
    users = graph.consumers()
    groups = []
    for node in graph.nodes:
        groups.append(Group([node], list(dict.fromkeys(node.inputs)),
                            [v for v in node.outputs if v in out_set or users.get(v) or True]))
    return groups


def compile(graph: Graph, target="llvm", *, num_threads: int | None = None, opt_level: int = 3):
    """Compile ``graph`` for ``target`` ("llvm" or "reference"); returns a CompiledModel.

    ``num_threads`` defaults to the cores this process may use; it can be
    changed later with ``model.set_num_threads(n)``.
    """
    from minicomp.runtime import CompiledModel, ReferenceModel

    if not isinstance(graph, Graph):
        raise MinicompError(f"compile() needs a Graph, got {type(graph).__name__}")
    graph.verify()
    tgt = as_target(target, num_threads)
    stages = {"graph": print_graph(graph)}
    if tgt.name == "reference":
        return ReferenceModel(graph, tgt, stages)
    for v, arr in graph.constants.items():
        if arr is None:
            raise MinicompError(f"constant %{v.name} has no data (read from text that showed only its "
                                f"digest); print graphs with full_constants=True to run them")

    from minicomp.backends.llvm import JitModule, openmp_available
    from minicomp.backends.llvm_codegen import emit_module
    from minicomp.runtime import KernelCall

    threads_for_schedule = tgt.num_threads if openmp_available() else 1
    groups = single_node_groups(graph)
    kernels = []
    for i, g in enumerate(groups):
        k = lower_group(g, kernel_name(g, i))
        kernels.append(apply_schedule(k, default_schedule(k, max(threads_for_schedule, 2))))
    if not openmp_available():
        stages["note"] = "libgomp was not found: parallel loops run on one thread"
    stages["loops"] = "\n\n".join(str(k) for k in kernels) + "\n"

    # Slots: graph inputs, constants, graph outputs, then planned buffers.
    slots: dict = {}
    for v in list(graph.inputs) + list(graph.constants) + list(graph.outputs):
        slots.setdefault(v, len(slots))
    lifetimes: list[Lifetime] = []
    first_write: dict[Value, int] = {}
    last_read: dict[Value, int] = {}
    for step, g in enumerate(groups):
        for v in g.outputs:
            first_write.setdefault(v, step)
            last_read.setdefault(v, step)
        for v in g.inputs:
            last_read[v] = step
    for v, start in first_write.items():
        if v not in slots:
            lifetimes.append(Lifetime(v, v.name, v.type.nbytes, start, last_read[v]))
    for step, k in enumerate(kernels):
        for b in k.workspace:
            lifetimes.append(Lifetime(b, f"{k.name}/{b.name}", b.nbytes, step, step))
    plan = plan_arena(lifetimes)
    for lt in lifetimes:
        slots[lt.key] = len(slots)
    stages["memory"] = str(plan)

    calls = []
    for g, k in zip(groups, kernels):
        call_slots = [slots[v] for v in g.inputs] + [slots[v] for v in g.outputs] + [slots[b] for b in k.workspace]
        calls.append(KernelCall(k.name, f"k_{k.name}", call_slots))
    ir_text = emit_module(kernels, [c.slots for c in calls])
    stages["llvm"] = ir_text
    jit = JitModule(ir_text, opt_level)
    stages["llvm_opt"] = jit.optimized_ir
    if not openmp_available():
        tgt.num_threads = 1
    return CompiledModel(graph, tgt, stages, plan, jit, calls, slots, len(slots), graph.constants, kernels)
