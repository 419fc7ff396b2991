"""How much of the CPUs other programs used while minicomp measured something.

Timings taken while other programs (or the hypervisor's steal) share the
cores are not the code's: minicomp's parallel loops run on every core and
wait for the slowest thread, so a thread that was descheduled holds up the
whole loop. The tuner refuses such timings; the timing commands warn.
"""

from __future__ import annotations

# Other programs above this share of the CPUs make a timing untrustworthy: on
# 2 cores, a second program's threads slowed parallel kernels a hundredfold
# and made one thread look best everywhere.
BUSY_SHARE = 0.10


def busy_warning(share: float, threads: int) -> str | None:
    """The warning the timing commands print when other programs took ``share`` of the CPUs while they
    timed (None when the machine was quiet enough)."""
    if share <= BUSY_SHARE:
        return None
    why = (f"a parallel loop on {threads} threads waits for its slowest thread, and a thread that loses its "
           f"core holds up the whole loop") if threads > 1 else "the model shared its core"
    return (f"warning: other programs used {share:.0%} of the CPUs while this was timed; {why}, so these times "
            f"may be many times the machine's own. Time again on an idle machine"
            f"{', or with --threads 1' if threads > 1 else ''}.")


class OtherLoad:
    """The share of the CPUs that other programs, and the hypervisor's steal
    time, used from this object's creation until :meth:`share` is asked
    (Linux's ``/proc``; elsewhere always 0)."""

    def __init__(self):
        self._start = _cpu_ticks()

    def share(self) -> float:
        end = _cpu_ticks()
        if self._start is None or end is None:
            return 0.0
        total = end[1] - self._start[1]
        others = (end[0] - self._start[0]) - (end[2] - self._start[2])
        # Under 0.2 s of ticks (100 per second per CPU) the share is too coarse to judge.
        return max(0.0, others / total) if total >= 20 else 0.0


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(busy ticks of all CPUs, all ticks, this process's ticks), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = v + [0] * (8 - len(v))
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, int(own[11]) + int(own[12])
