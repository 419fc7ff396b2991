"""Schedules as data, applied to loop-IR kernels.

A schedule is a list of small steps naming loops by their variable:
``Fuse(outer, inner)``, ``Parallel(loop)``, ``Vectorize(loop)``,
``Unroll(loop)``. The default heuristic for a CPU target, a tuner and a user
who writes a schedule by hand all produce the same kind of list, and the
kernel keeps the steps it was given so that dumps show them.
"""

from __future__ import annotations

from dataclasses import dataclass

from minicomp.errors import MinicompError
from minicomp.ir import expr as ex
from minicomp.ir.loops import Allocate, For, If, Kernel, Seq, Stmt, Store, stmt_children, walk_stmts


@dataclass(frozen=True)
class Fuse:
    """Merge ``outer`` and its directly nested ``inner`` loop into one loop."""

    outer: str
    inner: str

    def __str__(self):
        return f"fuse({self.outer}, {self.inner})"


@dataclass(frozen=True)
class Parallel:
    """Run the iterations of a top-level loop on all threads."""

    loop: str

    def __str__(self):
        return f"parallel({self.loop})"


@dataclass(frozen=True)
class Vectorize:
    """Ask the code generator to vectorize an innermost loop."""

    loop: str

    def __str__(self):
        return f"vectorize({self.loop})"


@dataclass(frozen=True)
class Unroll:
    """Unroll a loop fully."""

    loop: str

    def __str__(self):
        return f"unroll({self.loop})"


# -- rewriting helpers ----------------------------------------------------------

def map_exprs(s: Stmt, fn) -> Stmt:
    """A copy of ``s`` with every expression passed through ``fn``."""
    if isinstance(s, Store):
        return Store(s.buffer, tuple(fn(i) for i in s.indices), fn(s.value))
    if isinstance(s, For):
        return For(s.var, s.extent, map_exprs(s.body, fn), s.kind, s.start, s.is_reduction)
    if isinstance(s, Seq):
        return Seq([map_exprs(c, fn) for c in s.stmts])
    if isinstance(s, Allocate):
        return Allocate(s.buffer, map_exprs(s.body, fn))
    if isinstance(s, If):
        return If(fn(s.cond), map_exprs(s.then, fn), map_exprs(s.otherwise, fn) if s.otherwise else None)
    return s


def replace_loop(s: Stmt, name: str, fn) -> tuple[Stmt, bool]:
    """Replace the loop whose variable is ``name`` by ``fn(loop)``."""
    if isinstance(s, For) and s.var.name == name:
        return fn(s), True
    if isinstance(s, For):
        body, hit = replace_loop(s.body, name, fn)
        return For(s.var, s.extent, body, s.kind, s.start, s.is_reduction), hit
    if isinstance(s, Seq):
        out, hit = [], False
        for c in s.stmts:
            c2, h = replace_loop(c, name, fn) if not hit else (c, False)
            out.append(c2)
            hit = hit or h
        return Seq(out), hit
    if isinstance(s, Allocate):
        body, hit = replace_loop(s.body, name, fn)
        return Allocate(s.buffer, body), hit
    if isinstance(s, If):
        then, hit = replace_loop(s.then, name, fn)
        other, hit2 = (replace_loop(s.otherwise, name, fn) if s.otherwise and not hit else (s.otherwise, False))
        return If(s.cond, then, other), hit or hit2
    return s, False


def _ranges(s: Stmt) -> dict:
    out = {}
    if isinstance(s, For):
        out[s.var] = s.extent
    for c in stmt_children(s):
        out.update(_ranges(c))
    return out


def apply_step(kernel: Kernel, step) -> Kernel:
    """Apply one schedule step; MinicompError if its loops do not exist or fit."""
    body = kernel.body

    def set_kind(kind):
        def fn(loop: For):
            if kind == "parallel" and loop.is_reduction:
                raise MinicompError(f"kernel {kernel.name}: cannot parallelize reduction loop {loop.var.name}")
            return For(loop.var, loop.extent, loop.body, kind, loop.start, loop.is_reduction)
        return fn

    if isinstance(step, (Parallel, Vectorize, Unroll)):
        kind = {Parallel: "parallel", Vectorize: "vectorized", Unroll: "unrolled"}[type(step)]
        if isinstance(step, Parallel) and not _is_top_level(body, step.loop):
            raise MinicompError(f"kernel {kernel.name}: parallel loop {step.loop} must be at the top level")
        new, hit = replace_loop(body, step.loop, set_kind(kind))
    elif isinstance(step, Fuse):
        def fuse(outer: For):
            inner = outer.body
            if not isinstance(inner, For) or inner.var.name != step.inner:
                raise MinicompError(f"kernel {kernel.name}: {step.inner} is not directly inside {step.outer}")
            if outer.start or inner.start:
                raise MinicompError(f"kernel {kernel.name}: can only fuse loops that start at 0")
            fused = ex.Var(f"{outer.var.name}_{inner.var.name}")
            mapping = {outer.var: fused // inner.extent, inner.var: fused % inner.extent}
            ranges = {**_ranges(inner.body), fused: outer.extent * inner.extent}
            new_body = map_exprs(inner.body, lambda e: ex.simplify(ex.substitute(e, mapping), ranges))
            return For(fused, outer.extent * inner.extent, new_body, "serial", 0,
                       outer.is_reduction or inner.is_reduction)
        new, hit = replace_loop(body, step.outer, fuse)
    else:
        raise MinicompError(f"unknown schedule step {step!r}")
    if not hit:
        raise MinicompError(f"kernel {kernel.name}: no loop named {getattr(step, 'loop', step)} for {step}")
    return Kernel(kernel.name, kernel.inputs, kernel.outputs, new, kernel.workspace, kernel.group,
                  kernel.schedule + [step], kernel.param_values)


def apply_schedule(kernel: Kernel, steps) -> Kernel:
    """Apply a list of steps in order."""
    for step in steps:
        kernel = apply_step(kernel, step)
    return kernel


def _is_top_level(body: Stmt, name: str) -> bool:
    tops = body.stmts if isinstance(body, Seq) else [body]
    return any(isinstance(t, For) and t.var.name == name for t in tops)


def _top_nests(body: Stmt) -> list[Stmt]:
    return list(body.stmts) if isinstance(body, Seq) else [body]


def _iterations(s: Stmt) -> int:
    """Rough count of innermost iterations under ``s``."""
    if isinstance(s, For):
        return s.extent * max(1, _iterations(s.body))
    kids = stmt_children(s)
    return sum(_iterations(c) for c in kids) if kids else 1


# Parallel regions cost a few microseconds to start; below this many inner
# iterations a loop nest runs faster on one thread.
MIN_PARALLEL_WORK = 1 << 15


def default_schedule(kernel: Kernel, num_threads: int) -> list:
    """The CPU heuristic: per top-level loop nest, fuse outer spatial loops until
    there is enough parallelism, run the outermost loop in parallel when the
    nest has enough work, and vectorize every innermost loop."""
    steps: list = []
    for nest in _top_nests(kernel.body):
        if not isinstance(nest, For):
            continue
        name, extent, inner = nest.var.name, nest.extent, nest.body
        fused = {name}
        while (num_threads > 1 and extent < 4 * num_threads and isinstance(inner, For)
               and not inner.is_reduction and not nest.is_reduction):
            steps.append(Fuse(name, inner.var.name))
            fused.add(inner.var.name)
            name = f"{name}_{inner.var.name}"
            extent *= inner.extent
            inner = inner.body
        parallel = num_threads > 1 and extent > 1 and not nest.is_reduction and _iterations(nest) >= MIN_PARALLEL_WORK
        if parallel:
            steps.append(Parallel(name))
        innermost = [lp for lp in _innermost_loops(nest) if lp.var.name not in fused and lp.kind == "serial"]
        if not innermost and not parallel and extent >= 4:
            steps.append(Vectorize(name))  # the fused loop itself is innermost
        for loop in innermost:
            if loop.extent >= 4:
                steps.append(Vectorize(loop.var.name))
    return steps


def _innermost_loops(s: Stmt) -> list[For]:
    out = []
    if isinstance(s, For) and not any(isinstance(c, For) for c in walk_stmts(s.body)):
        return [s]
    for c in stmt_children(s):
        out.extend(_innermost_loops(c))
    return out

