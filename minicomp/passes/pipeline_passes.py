"""The kernel-level passes of a pipeline: lower, schedule, plan.

- ``lower``: each group (one per node if 'fuse' did not run) -> a loop kernel;
- ``schedule``: the target's default schedule (``schedules/cpu.py`` or
  ``schedules/gpu.py``), or the
  user's steps from ``ctx.options['schedules'][kernel name or key]``;
- ``plan``: the kernel order of least peak memory (``memory_order.py``),
  lifetimes of every intermediate buffer and the arena plan.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from minicomp.passes.fusion import single_node_groups
from minicomp.passes.lower import chain_alternatives, lower_group
from minicomp.passes.lower_scatter import writes_in_place
from minicomp.passes.manager import register_pass
from minicomp.passes.memory import Lifetime, in_place_pairs, lower_bound, plan_arena, share_in_place
from minicomp.passes.schedules import apply_schedule
from minicomp.passes.schedules.cpu import DEFAULT_CHOICES, cpu_schedule
from minicomp.passes.schedules.gpu import gpu_schedule


@register_pass("lower", kind="program")
def lower_pass(program, ctx):
    """Lower each group to one loop-IR kernel."""
    if program.groups is None:
        result = single_node_groups(program.graph)
        program.groups = result.groups
        program.fusion_result = result
    if program.target is None or getattr(program.target, "gpu", None) is None:
        # A host target writes state in the caller's memory; a GPU's model copies it back.
        in_place = writes_in_place(program.graph)
        for g in program.groups:
            if len(g.nodes) == 1 and g.nodes[0] in in_place:
                g.writes_into = in_place[g.nodes[0]]
    program.kernels = [lower_group(g, g.name, program.graph.constants, program.target) for g in program.groups]
    return program


@register_pass("schedule", kind="program")
def schedule_pass(program, ctx):
    """Apply the target's default schedule (or the user's steps) to every kernel."""
    if program.kernels is None:
        program = lower_pass(program, ctx)
    threads = ctx.options.get("schedule_threads", getattr(program.target, "num_threads", 1))
    user = resolve_user_schedules(program.kernels, ctx.options.get("schedules") or {})
    target = program.target
    if target is None:
        from minicomp.target import Target

        target = Target.host()
    constants = program.graph.constants
    chains = {k.name: chain_alternatives(g, k.name, constants, target)
              for g, k in zip(program.groups, program.kernels)
              if k.prescheduled and g.chain and g.chain_tiles is None and k.name not in user} \
        if ctx.options.get("tune") and ctx.options.get("tuner") else {}
    tuned = _tune(program, ctx, target, threads,
                  [k for k in program.kernels if k.name not in user and not k.prescheduled], chains)
    # A chain kernel the tuner measured in its tiles: the fastest of them (the rule's unless beaten).
    program.kernels = [dict(chains[k.name]).get(tuned.get(k.name), k) if k.name in chains else k
                       for k in program.kernels]

    # The backend says which schedules fit its code (Backend.schedule); a program run without one
    # (a PassManager of its own) follows the target.
    kind = ctx.options.get("schedule_kind") or ("gpu" if target.gpu is not None else "cpu")

    def default(k):
        if k.prescheduled:  # made with its loops scheduled (a reduction chain)
            return k
        if kind == "gpu":
            return gpu_schedule(k, target)
        return cpu_schedule(k, target, threads, k.constant_names(constants), tuned.get(k.name, DEFAULT_CHOICES))

    program.kernels = [apply_schedule(k, user[k.name]) if k.name in user else default(k) for k in program.kernels]
    for k in program.kernels:
        materialize_packs(program.graph, k)
    return program


def _tune(program, ctx, target, threads: int, kernels, chains=None) -> dict:
    """With the ``tune`` option (``compile(tune=True)``): the choices of the
    backend's tuner (``Backend.tune``, given as the ``tuner`` option) by kernel
    name, also kept in ``program.tunings``; else nothing. ``chains``: for each
    reduction chain kernel, its tiles lowered (what they are, the kernel): the
    tuner's choice for it is one of those descriptions."""
    tune, tuner = ctx.options.get("tune"), ctx.options.get("tuner")
    if not tune or tuner is None:
        return {}
    tunings = tuner(kernels, target, threads, program.graph.constants, dict(tune), ctx.options.get("cache", True),
                    chains or {})
    program.tunings = tunings
    return {t.kernel: t.choices for t in tunings}


def materialize_packs(graph, kernel) -> None:
    """Re-lay the constants a kernel's ``pack`` steps asked for, once, as new
    constants of ``graph`` (the kernel's parameters then point at them)."""
    import numpy as np

    from minicomp.ir.graph import TensorType, Value
    from minicomp.passes.schedules import ScheduleError

    for pos, step in kernel.packs:
        v = kernel.param_values[pos]
        arr = graph.constants.get(v)
        if arr is None:
            raise ScheduleError(f"kernel {kernel.name}: {step}: {step.buffer} is not a constant with data: "
                                f"only constants are packed")
        packed = pack_array(arr, step.axis, step.factor)
        names = {x.name for x in graph.values()}
        name, k = f"{v.name}_p{step.factor}", 1
        while name in names:
            name, k = f"{v.name}_p{step.factor}_{k}", k + 1
        new = Value(name, TensorType(packed.shape, v.dtype))
        graph.constants[new] = np.ascontiguousarray(packed)
        kernel.param_values[pos] = new


def pack_array(arr, axis: int, factor: int):
    """``arr`` with blocks of ``factor`` along ``axis`` moved innermost and the
    block index outermost: (K, N) -> (ceil(N / f), K, f) for axis 1, zero-padded."""
    import numpy as np

    n = arr.shape[axis]
    blocks = -(-n // factor)
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, blocks * factor - n)
    padded = np.pad(arr, pad) if blocks * factor != n else arr  # np.pad copies even when it adds nothing
    a = padded.reshape(arr.shape[:axis] + (blocks, factor) + arr.shape[axis + 1:])
    return np.moveaxis(np.moveaxis(a, axis, 0), axis + 1, -1)


def kernel_key(name: str) -> str:
    """A kernel's name without its position index: ``fused_matmul_add_3`` -> ``fused_matmul_add``."""
    base, _, index = name.rpartition("_")
    return base if base and index.isdigit() else name


def resolve_user_schedules(kernels, schedules: dict) -> dict:
    """User schedules by kernel name. A key is a kernel's full name, or its
    name without the position index (then it applies to every kernel of that
    kind); a key that names no kernel is an error."""
    from minicomp.errors import MinicompError

    out = {}
    for key, steps in schedules.items():
        hits = [k.name for k in kernels if k.name == key] or [k.name for k in kernels if kernel_key(k.name) == key]
        if not hits:
            known = ", ".join(k.name for k in kernels)
            raise MinicompError(f"a schedule is given for kernel {key!r}, which does not exist; kernels: {known}")
        for name in hits:
            out.setdefault(name, steps)
    return out


def buffer_lifetimes(program) -> list[Lifetime]:
    """Every intermediate value and workspace, with its first write and last read step."""
    graph = program.graph
    external = set(graph.inputs) | set(graph.constants) | set(graph.outputs)
    first_write, last_read = {}, {}
    for step, g in enumerate(program.groups):
        for v in g.outputs:
            first_write.setdefault(v, step)
            last_read.setdefault(v, step)
        for v in g.inputs:
            last_read[v] = step
    lifetimes = [Lifetime(v, v.name, v.type.max_bytes, s, last_read[v])
                 for v, s in first_write.items() if v not in external]
    for step, k in enumerate(program.kernels):
        for b in k.workspace:
            lifetimes.append(Lifetime(b, f"{k.name}/{b.name}", b.max_bytes, step, step))
    return lifetimes


def _in_place_plan(program, order: list[int], in_place: bool = True):
    """(lifetimes to place, aliases, in-place pairs) of the kernels run in
    ``order`` (none written in place without ``in_place``)."""
    ordered = copy.copy(program)
    ordered.groups = [program.groups[i] for i in order]
    ordered.kernels = [program.kernels[i] for i in order]
    lifetimes = buffer_lifetimes(ordered)
    pairs = in_place_pairs(ordered.kernels, lifetimes) if in_place else []
    merged, aliases = share_in_place(lifetimes, pairs)
    return merged, aliases, pairs


@register_pass("plan", kind="program")
def plan_pass(program, ctx):
    """Choose the kernel order of least peak memory, then plan one arena for
    every intermediate buffer (``ctx.options['memory']``: ``order``, ``offsets``,
    ``in_place`` (default True: elementwise kernels may write over an input
    that dies there); ``ctx.options['memory_budget']``: bytes the arena must
    fit in)."""
    import time

    from minicomp.errors import MinicompError
    from minicomp.passes.memory_order import choose_order, order_problem

    t0 = time.perf_counter()
    if program.kernels is None:
        program = lower_pass(program, ctx)
    opts = dict(ctx.options.get("memory") or {})
    unknown = set(opts) - {"order", "offsets", "in_place"}
    if unknown:
        raise MinicompError(f"unknown memory option(s) {', '.join(sorted(unknown))}; known: order, offsets, "
                            f"in_place")
    in_place = opts.get("in_place", True)
    if not isinstance(in_place, bool):
        raise MinicompError(f"memory option in_place must be True or False, got {in_place!r}")
    budget = ctx.options.get("memory_budget")
    choice = choose_order(order_problem(program), opts.get("order", "auto"), budget)
    # Writing in place shrinks peaks, and which kernels may depends on the
    # order (an input must die where it is read): both the baseline and the
    # chosen order are judged with it, and the chosen one is kept only when
    # it is no worse (the order search itself does not model it).
    fusion_order = list(range(len(program.kernels)))
    judged = {tuple(order): _in_place_plan(program, order, in_place)
              for order in (fusion_order, choice.order)}
    baseline = judged[tuple(fusion_order)]
    chosen = judged[tuple(choice.order)]
    order = choice.order if lower_bound(chosen[0]) <= lower_bound(baseline[0]) else fusion_order
    lifetimes, aliases, pairs = judged[tuple(order)]
    program.groups = [program.groups[i] for i in order]
    program.kernels = [program.kernels[i] for i in order]
    plan = plan_arena(lifetimes, opts.get("offsets", "best"))
    plan.aliases = aliases
    plan.written_in_place = {g.outputs[0]: g.writes_into for g in program.groups if g.writes_into is not None}
    for key, placed in aliases.items():
        plan.offsets[key] = plan.offsets[placed]
    for step, out, inp in pairs:  # the pair's parameters lose noalias / __restrict__
        k = program.kernels[step]
        names = {v: b.name for b, v in zip(k.params, k.param_values)}
        program.kernels[step] = replace(k, in_place=k.in_place + [(names[out], names[inp])])
    plan.baseline_peak_bytes = lower_bound(baseline[0])
    plan.order = [k.name for k in program.kernels]
    # (the exact search proves its order optimal without writing in place)
    plan.order_strategy = choice.strategy if order is choice.order else "fusion"
    plan.order_is_optimal = choice.exact and order is choice.order and not pairs
    plan.plan_seconds = time.perf_counter() - t0
    if budget is not None and plan.arena_bytes > budget:
        best = min(choice.peaks.values())
        raise MinicompError(f"no plan fits the memory budget of {budget:,} bytes: the least peak found is "
                            f"{best:,} bytes ({min(choice.peaks, key=choice.peaks.get)} order), the arena "
                            f"planned {plan.arena_bytes:,} bytes (naive {plan.naive_bytes:,})")
    program.memory_plan = plan
    return program
