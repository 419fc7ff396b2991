"""The pass manager: named passes, pipelines, and instruments.

A pass takes a :class:`Program` and returns one. Most passes only rewrite the
graph; register those with ``@register_pass("name")`` on a function
``Graph -> Graph`` that returns a new graph (start from ``graph.clone()``).
Passes that need the whole program (groups, kernels, the target) register
with ``kind="program"`` and take ``(program, context)``.

Pipelines are lists of names, or strings like ``"simplify,fuse,lower,schedule,plan"``.
Each backend names its default pipeline (``backends/registry.py``).

Instruments: ``print_before``/``print_after`` (pass names, or "all"),
``dump_dir`` (numbered files such as ``04-fuse.mcir``), timing of every pass
(``PassManager.timings``) and ``verify`` (check the graph after every pass).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from minicomp.errors import MinicompError
from minicomp.ir.graph import Graph
from minicomp.registries import LazyRegistry


@dataclass(frozen=True)
class CompileOptions:
    """What ``compile()`` was asked for, as the passes read it: inputs only, never written (what the
    passes find goes on the :class:`Program`). ``get(name, default)`` reads a field as a dict would."""

    fusion: Mapping | None = None  # FusionOptions fields
    schedules: Mapping | None = None  # {kernel name or key: steps}
    memory: Mapping | None = None  # the plan's order, offsets, in_place
    memory_budget: int | None = None
    cache: bool = True
    tune: Mapping | None = None  # the tuner's settings (max_candidates, progress), or None
    tuner: Callable | None = None  # the backend's tuner (Backend.tune)
    schedule_threads: int | None = None  # threads the CPU schedule plans for (default: the target's)
    schedule_kind: str | None = None  # "cpu" or "gpu": the backend's schedules (default: from the target)
    native_numerics: frozenset | None = None  # the numeric rules the backend spells (None: all of them)

    def get(self, name: str, default=None):
        value = getattr(self, name)
        return default if value is None else value


@dataclass
class Program:
    """Everything the passes produce: the graph, then groups, kernels, a plan.

    ``groups`` are in execution order (the order fusion left them, or the
    one a pass chose); ``kernels[i]`` is the kernel of ``groups[i]``, and
    :meth:`kernel_for` finds a group's kernel by identity.
    :meth:`dependencies` gives the edges between groups. ``options`` are
    compile()'s (read only); ``fusion_result`` (fusion's decisions and their
    reasons) and ``tunings`` (what the tuner measured) are results.
    """

    graph: Graph
    target: object = None
    groups: list | None = None
    kernels: list | None = None
    memory_plan: object = None
    options: CompileOptions = field(default_factory=CompileOptions)
    fusion_result: object = None
    tunings: list = field(default_factory=list)

    def kernel_for(self, group):
        """The kernel lowered from ``group`` (the same object, not an equal one)."""
        for g, k in zip(self.groups or [], self.kernels or []):
            if g is group:
                return k
        raise MinicompError(f"group {getattr(group, 'name', group)!r} has no kernel in this program")

    def dependencies(self):
        """A networkx DiGraph over group indices: an edge for each value one
        group writes and a later one reads (labelled with the values)."""
        import networkx as nx

        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(self.groups or [])))
        producer = {}
        for i, g in enumerate(self.groups or []):
            for v in g.inputs:
                if v in producer:
                    j = producer[v]
                    if dag.has_edge(j, i):
                        dag.edges[j, i]["values"].append(v)
                    else:
                        dag.add_edge(j, i, values=[v])
            for v in g.outputs:
                producer[v] = i
        return dag

    def text(self, stage: str | None = None) -> str:
        """The program at its current stage, as text (for dumps); ``stage="loops"``: its kernels even
        when it has a memory plan (what a pass that rewrites kernels late, such as legalize, shows)."""
        if stage == "loops" and self.kernels is not None:
            return "\n\n".join(str(k) for k in self.kernels) + "\n"
        if self.memory_plan is not None:
            return str(self.memory_plan) + "\n"
        if self.kernels is not None:
            return "\n\n".join(str(k) for k in self.kernels) + "\n"
        if self.groups is not None:
            from minicomp.passes.fusion import print_fused_graph

            return print_fused_graph(self.graph, self.groups)
        from minicomp.ir.text import print_graph

        return print_graph(self.graph)

    def stage_extension(self, stage: str | None = None) -> str:
        if stage == "loops" and self.kernels is not None:
            return "loops"
        if self.memory_plan is not None:
            return "memory.txt"
        if self.kernels is not None:
            return "loops"
        return "mcir"


@dataclass
class PassInfo:
    """A registered pass."""

    name: str
    run: Callable
    kind: str  # "graph" or "program"
    doc: str = ""
    shows: str | None = None  # the stage its result is printed as: "loops" for a pass over kernels after plan


def _load_builtin_passes():
    from minicomp.passes import fusion, legalize, nchwc, patches, pipeline_passes, quantize, simplify  # noqa: F401


_PASSES = LazyRegistry("a pass named", _load_builtin_passes)


def user_passes() -> set[str]:
    """The passes whose code is not minicomp's (a user's, registered by them)."""
    return _PASSES.foreign_keys(lambda info: (info.run,))


def register_pass(name: str, kind: str = "graph", replace: bool = False, shows: str | None = None):
    """Decorator: register ``fn`` as pass ``name``.

    ``kind="graph"``: ``fn(graph) -> graph``. ``kind="program"``:
    ``fn(program, context) -> program``. ``shows="loops"``: print and dump
    the pass's result as kernels even once the program has a memory plan.
    """
    if kind not in ("graph", "program"):
        raise MinicompError(f"pass kind must be 'graph' or 'program', got {kind!r}")

    def wrap(fn):
        info = PassInfo(name, fn, kind, (fn.__doc__ or "").strip().split("\n")[0], shows)
        _PASSES.register(name, info, replace=replace, label=f"'{name}'")
        return fn

    return wrap


def get_pass(name: str) -> PassInfo:
    try:
        return _PASSES[name]
    except KeyError:
        raise MinicompError(f"unknown pass '{name}'; registered passes: {', '.join(sorted(_PASSES))}") from None


def all_passes() -> dict[str, PassInfo]:
    return _PASSES.as_dict()


def parse_pipeline(pipeline) -> list[str]:
    """A pipeline as a list of pass names (from a list or a comma-separated string)."""
    if isinstance(pipeline, str):
        names = [p.strip() for p in pipeline.split(",") if p.strip()]
    else:
        names = list(pipeline)
    for n in names:
        get_pass(n)
    return names


@dataclass
class PassContext:
    """What a program pass may read: compile()'s options."""

    options: CompileOptions = field(default_factory=CompileOptions)


def as_options(options) -> CompileOptions:
    """``options`` as CompileOptions (a dict of its fields is accepted: ``PassManager(options={...})``)."""
    if options is None:
        return CompileOptions()
    if isinstance(options, CompileOptions):
        return options
    unknown = set(options) - set(CompileOptions.__dataclass_fields__)
    if unknown:
        raise MinicompError(f"unknown compile option(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(CompileOptions.__dataclass_fields__)}")
    return CompileOptions(**options)


class PassManager:
    """Runs a pipeline with instruments; see the module docstring."""

    def __init__(self, pipeline, *, print_before=(), print_after=(), dump_dir: str | None = None,
                 verify: bool = True, stream=None, options=None, progress=None):
        self.pipeline = parse_pipeline(pipeline)
        self.print_before = set(print_before) if not isinstance(print_before, str) else {print_before}
        self.print_after = set(print_after) if not isinstance(print_after, str) else {print_after}
        for n in (self.print_before | self.print_after) - {"all"}:
            get_pass(n)
        self.dump_dir = dump_dir
        self.verify = verify
        self.stream = stream or sys.stdout
        self.options = as_options(options)
        self.progress = progress
        self.timings: list[tuple[str, float]] = []

    def _wants(self, which: set, name: str) -> bool:
        return "all" in which or name in which

    def _dump(self, index: int, name: str, program: Program, stage: str | None = None):
        if self.dump_dir is None:
            return
        os.makedirs(self.dump_dir, exist_ok=True)
        path = os.path.join(self.dump_dir, f"{index:02d}-{name}.{program.stage_extension(stage)}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program.text(stage))

    def run(self, program: Program) -> Program:
        """Run every pass in order; returns the final program."""
        program.options = self.options
        ctx = PassContext(self.options)
        self._dump(0, "input", program)
        for i, name in enumerate(self.pipeline, start=1):
            info = get_pass(name)
            if self.progress is not None:
                self.progress(f"pass {i}/{len(self.pipeline)}: {name}")
            before = None
            if self._wants(self.print_before, name) or self._wants(self.print_after, name):
                before = program.text(info.shows)
            if self._wants(self.print_before, name):
                print(f"// ----- before {name} -----\n{before}", file=self.stream)
            t0 = time.perf_counter()
            if info.kind == "graph":
                if program.groups is not None:
                    raise MinicompError(f"graph pass '{name}' cannot run after fusion; "
                                        f"place it before 'fuse' in the pipeline")
                new_graph = info.run(program.graph)
                if not isinstance(new_graph, Graph):
                    raise MinicompError(f"pass '{name}' returned {type(new_graph).__name__}, not a Graph")
                program = Program(new_graph, program.target, options=program.options)
            else:
                program = info.run(program, ctx)
            self.timings.append((name, time.perf_counter() - t0))
            if self.verify:
                try:
                    program.graph.verify()
                    if info.kind == "program" and program.kernels is not None:
                        from minicomp.ir.loop_verify import verify_kernel

                        for k in program.kernels:
                            verify_kernel(k, program.target)
                except MinicompError as exc:
                    raise type(exc)(f"after pass '{name}': {exc}") from exc
            if self._wants(self.print_after, name):
                after = program.text(info.shows)
                # A pass that matched nothing says so: a rewrite looking at the wrong objects is silent otherwise.
                note = " (changed nothing)" if after == before else ""
                print(f"// ----- after {name}{note} -----\n{after}", file=self.stream)
            self._dump(i, name, program, info.shows)
        return program

    def timing_report(self) -> str:
        """One line per pass: name and milliseconds."""
        return format_timings(self.timings)


def format_timings(timings) -> str:
    """One line per pass with its milliseconds, then the total."""
    total = sum(t for _, t in timings)
    lines = [f"{name:<36} {t * 1e3:9.3f} ms" for name, t in timings]
    return "\n".join(lines + [f"{'total':<36} {total * 1e3:9.3f} ms"])
