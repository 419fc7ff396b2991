"""The kernel-level passes of a pipeline: lower, schedule, plan.

- ``lower``: each group (one per node if 'fuse' did not run) -> a loop kernel;
- ``schedule``: the target's default schedule, or the user's steps from
  ``ctx.options['schedules'][kernel_name]``;
- ``plan``: lifetimes of every intermediate buffer and the arena plan.
"""

from __future__ import annotations

from minicomp.passes.fusion import single_node_groups
from minicomp.passes.lower import lower_group
from minicomp.passes.manager import register_pass
from minicomp.passes.memory import Lifetime, plan_arena
from minicomp.passes.schedule import apply_schedule, default_schedule


@register_pass("lower", kind="program")
def lower_pass(program, ctx):
    """Lower each group to one loop-IR kernel."""
    if program.groups is None:
        result = single_node_groups(program.graph)
        program.groups = result.groups
        program.options["fusion_result"] = result
    program.kernels = [lower_group(g, g.name, program.graph.constants) for g in program.groups]
    return program


@register_pass("schedule", kind="program")
def schedule_pass(program, ctx):
    """Apply the default CPU schedule (or user schedules) to every kernel."""
    if program.kernels is None:
        program = lower_pass(program, ctx)
    threads = ctx.options.get("schedule_threads", getattr(program.target, "num_threads", 1))
    user = ctx.options.get("schedules") or {}
    program.kernels = [apply_schedule(k, user[k.name] if k.name in user else default_schedule(k, threads))
                       for k in program.kernels]
    return program


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
    lifetimes = [Lifetime(v, v.name, v.type.nbytes, s, last_read[v])
                 for v, s in first_write.items() if v not in external]
    for step, k in enumerate(program.kernels):
        for b in k.workspace:
            lifetimes.append(Lifetime(b, f"{k.name}/{b.name}", b.nbytes, step, step))
    return lifetimes


@register_pass("plan", kind="program")
def plan_pass(program, ctx):
    """Plan one arena for every intermediate buffer."""
    if program.kernels is None:
        program = lower_pass(program, ctx)
    program.memory_plan = plan_arena(buffer_lifetimes(program))
    return program
