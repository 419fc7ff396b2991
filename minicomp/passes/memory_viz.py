"""A picture of a memory plan (matplotlib, an optional extra: ``pip install -e ".[plot]"``).

Buffers are rectangles: kernel steps across (from the step that writes a
buffer to the last that reads it), arena offset up. The live-bytes curve of
the execution order is drawn over them, with the lower bound and the arena.
"""

from __future__ import annotations

from minicomp.errors import MinicompError
from minicomp.wording import byte_unit, count


def draw_plan(plan, path: str) -> None:
    """Draw ``plan`` (a MemoryPlan) to ``path``; the format follows the suffix."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise MinicompError('drawing a memory plan needs matplotlib: pip install -e ".[plot]" '
                            "(or pip install matplotlib)") from None
    from minicomp.passes.memory import align

    steps = max((lt.end for lt in plan.lifetimes), default=0) + 1
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, steps * 0.25)), 5))
    from matplotlib.ticker import MaxNLocator

    cmap = plt.get_cmap("tab20")
    # One unit for the whole picture, the largest that keeps its biggest figure at least 1 (a tiny model's
    # plan reads "384 B", not "0.00 MiB").
    unit, scale = byte_unit(max(plan.arena_bytes, plan.lower_bound_bytes, plan.naive_bytes))
    for k, lt in enumerate(sorted(plan.lifetimes, key=lambda x: plan.offsets[x.key])):
        if not lt.nbytes:
            continue
        ax.add_patch(Rectangle((lt.start, plan.offsets[lt.key] / scale), lt.end - lt.start + 1,
                               align(lt.nbytes) / scale, facecolor=cmap(k % 20), edgecolor="black", linewidth=0.4,
                               alpha=0.85))
    live = plan.live_bytes()
    if live:
        ax.step(range(len(live) + 1), [v / scale for v in live + live[-1:]], where="post", color="black",
                linewidth=1.2, label="live bytes")
    ax.axhline(plan.lower_bound_bytes / scale, color="tab:red", linestyle="--", linewidth=1,
               label=f"lower bound {plan.lower_bound_bytes / scale:.4g} {unit}")
    ax.axhline(plan.arena_bytes / scale, color="tab:blue", linestyle=":", linewidth=1,
               label=f"arena {plan.arena_bytes / scale:.4g} {unit}")
    ax.set_xlim(0, steps)
    ax.set_ylim(0, max(plan.arena_bytes, plan.lower_bound_bytes, 1) / scale * 1.08)
    ax.set_xlabel(f"kernel step ({plan.order_strategy} order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole kernels
    ax.set_ylabel(f"arena offset ({unit})")
    ax.set_title(f"memory plan: {count(len(plan.lifetimes), 'buffer')}, naive {plan.naive_bytes / scale:.4g} {unit}")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        raise MinicompError(f"cannot write the memory plan picture {path}: {exc}") from None
    finally:
        plt.close(fig)
