"""The tuner: measure a few schedules of each kernel and keep the fastest.

The CPU schedule (``passes/schedules/cpu.py``) decides by rules: which axis
runs as the vector lanes, how many rows and vectors a register tile has,
whether channel blocks go outermost, whether a nest runs on all threads. The
rules are right on most kernels and a little off on some; the tuner asks the
machine instead:

1. **Candidates.** The decisions the rules make are varied
   (:class:`~minicomp.passes.schedules.cpu_choices.Choices`) in two rounds: first
   the structure (the lanes, the channel blocks, one thread or all), then
   the register tile's shape around the fastest structure. Choices that
   give the same loop IR are one candidate; the rules' own schedule is
   always measured.
2. **Pre-filter.** At most ``max_candidates`` (20) are measured per kernel;
   when a round has more than are left, they are ranked by a rough
   analytic cost (:func:`estimate_cost`: vector instructions and the loads
   they wait for, per thread) and the cheapest are kept.
3. **Measure.** Each candidate is compiled alone (one small LLVM module) and
   timed on this machine in blocks of calls, on the model's constants and
   random inputs. The fastest replaces the rules' schedule only when it is
   still at least 3% faster when the two are timed again, so noise never
   picks a schedule. A kernel timed while other programs took more than
   10% of the CPUs is timed again, and then keeps the rules' schedule
   uncached (:class:`OtherLoad`).
4. **Cache.** The choice is stored in the compile cache (folder ``tune``),
   keyed by the kernel's loop IR with its buffers renamed by position (so
   the same convolution in two places of a network is tuned once), the
   target, the threads and the schedule's source: tuning is paid once.

``mc.compile(graph, tune=True)`` tunes while it compiles (kernels tuned
before come from the cache); ``minicomp tune MODEL`` does the same with a
progress bar and prints what it found. Without ``tune`` nothing is measured
and the rules decide, so compiles stay fast.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minicomp import cache
from minicomp.cpu_load import BUSY_SHARE, OtherLoad
from minicomp.ir import expr as ex
from minicomp.ir.loops import For, Kernel, Store, format_stmt, stmt_children, walk_stmts
from minicomp.passes.schedules.cpu import DEFAULT_CHOICES, Choices, cpu_schedule, iterations
from minicomp.passes.schedules.step import ScheduleError
from minicomp.wording import count

MAX_CANDIDATES = 20
# A candidate must beat the rules' schedule by this much, timed again, to replace it.
MIN_GAIN = 0.03
# Each timed block of calls lasts at least this long.
BLOCK_SECONDS = 0.004
BLOCKS = 3
# Register tile shapes tried: rows x vectors per row (those that leave four
# registers for operands).
TILE_ROWS = (4, 6, 8)
TILE_VECTORS = (1, 2)
# Kernels with fewer innermost iterations than this also try one thread.
SERIAL_WORK = 1 << 21


@dataclass
class Tuned:
    """What tuning one kernel found."""

    kernel: str
    choices: Choices
    candidates: int  # distinct schedules found
    measured: int  # of them, compiled and timed (0: from the cache)
    rules_s: float  # the rules' schedule, seconds per call
    best_s: float  # the chosen schedule, seconds per call
    from_cache: bool = False
    busy: bool = False  # other programs used the CPUs meanwhile: the rules kept, nothing cached

    @property
    def speedup(self) -> float:
        return self.rules_s / self.best_s if self.best_s > 0 else 1.0

    @property
    def changed(self) -> bool:
        """Whether a candidate replaced the rules' schedule (it beat them when timed again)."""
        return self.best_s < self.rules_s


# -- candidates --------------------------------------------------------------------

class Candidates:
    """The distinct schedules of one kernel reached so far, by their loop IR."""

    def __init__(self, kernel: Kernel, target, threads: int, constants=frozenset()):
        self.kernel, self.target, self.threads, self.constants = kernel, target, threads, constants
        self.found: dict[str, tuple[Choices, Kernel]] = {}
        self.rules = self.schedule(DEFAULT_CHOICES)

    def schedule(self, choices: Choices) -> Kernel | None:
        """The kernel scheduled with ``choices`` (None where they do not apply),
        recorded unless an earlier candidate has the same loop IR."""
        try:
            k = cpu_schedule(self.kernel, self.target, self.threads, self.constants, choices)
        except ScheduleError:
            return None
        self.found.setdefault(_loop_text(k), (choices, k))
        return k

    def new(self, choices_list) -> list[tuple[Choices, Kernel]]:
        """Schedule each of ``choices_list``; the schedules not seen before."""
        out = []
        for choices in choices_list:
            before = len(self.found)
            if self.schedule(choices) is not None and len(self.found) > before:
                out.append(next(reversed(self.found.values())))
        return out

    def structures(self) -> list[tuple[Choices, Kernel]]:
        """The first round: which axis is the lanes, where channel blocks go,
        one thread or all, each with the rules' register tiles."""
        out = []
        for lanes in (None, "channels", "spatial"):
            out += self.new([Choices(lanes=lanes)] + [Choices(lanes=lanes, channel_blocks_outer=b)
                                                      for b in (True, False)])
        rules = self.rules
        if rules is not None and _has_parallel(rules) and iterations(rules.body) < SERIAL_WORK:
            out += self.new([Choices(lanes=lanes, serial=True) for lanes in (None, "channels", "spatial")])
        return out

    def tiles(self, around: Choices) -> list[tuple[Choices, Kernel]]:
        """The second round: register tiles of every shape that fits the
        registers, with the best structure's other choices."""
        regs = self.target.vector_registers - 4
        return self.new([replace(around, rows=r, vectors=v) for r in TILE_ROWS for v in TILE_VECTORS if r * v <= regs])


def candidates(kernel: Kernel, target, threads: int, constants=frozenset()) -> list[tuple[Choices, Kernel]]:
    """Every distinct schedule the tuner may try, the rules' own first
    (both rounds, the second around the rules' structure)."""
    c = Candidates(kernel, target, threads, constants)
    c.structures()
    c.tiles(DEFAULT_CHOICES)
    return list(c.found.values())


def _loop_text(k: Kernel) -> str:
    """What makes two schedules the same: the loop nest and the parameters' shapes."""
    shapes = ";".join(f"{b.name}{list(b.shape)}" for b in k.params)
    return shapes + "\n" + "\n".join(format_stmt(k.body, 0))


def _has_parallel(k: Kernel) -> bool:
    return any(isinstance(s, For) and s.kind == "parallel" for s in walk_stmts(k.body))


# -- the analytic pre-filter -------------------------------------------------------

def estimate_cost(kernel: Kernel, target, threads: int) -> float:
    """A rough count of the instructions each thread runs: every store once
    per iteration of the loops around it, a vector loop counting one
    instruction per register of lanes, a parallel loop shared among the
    threads; each store costs one operation plus its loads, where a load that
    does not move with an unrolled loop around it (a register tile's shared
    operand) is loaded once for all of that loop's iterations. It ignores
    caches: it ranks candidates, it does not predict times."""
    lanes_per_vector = target.vector_lanes(kernel.outputs[0].dtype) if kernel.outputs else 1

    def visit(s, mult: float, unrolled: list) -> float:
        if isinstance(s, For):
            n = s.extent
            if s.kind in ("simd", "vectorized"):
                n = -(-n // lanes_per_vector)
            elif s.kind == "parallel":
                n = n / min(threads, n)
            inner = unrolled + [s] if s.kind == "unrolled" else unrolled
            return visit(s.body, mult * n, inner)
        if isinstance(s, Store):
            loads = 0.0
            for ld in _loads(s.value):
                used = {id(v) for i in ld.indices for v in ex.free_vars(i)}
                shared = 1
                for lp in unrolled:
                    if id(lp.var) not in used:
                        shared *= lp.extent
                loads += 1.0 / shared
            return mult * (1.0 + loads)
        return sum(visit(c, mult, unrolled) for c in stmt_children(s))

    return visit(kernel.body, 1.0, [])


def _loads(e):
    return [n for n in ex.walk(e) if isinstance(n, ex.Load)]


# -- measuring ---------------------------------------------------------------------

def kernel_arrays(kernel: Kernel, constants: dict, seed: int = 0) -> list[np.ndarray]:
    """Arrays for the kernel's parameters: the graph's constants (re-laid as
    the kernel's ``pack`` steps ask), random floats for the other inputs,
    zeros for integer inputs (always valid indices), outputs and workspaces."""
    from minicomp.passes.pipeline_passes import pack_array

    rng = np.random.default_rng(seed)
    packs = dict(kernel.packs)
    inputs = {id(b) for b in kernel.inputs}
    out = []
    for pos, (b, v) in enumerate(zip(kernel.params, kernel.param_values)):
        dt = b.dtype.numpy
        if v is not None and constants.get(v) is not None:
            a = constants[v]
            if pos in packs:
                a = pack_array(a, packs[pos].axis, packs[pos].factor)
            out.append(np.ascontiguousarray(a, dtype=dt))
        elif id(b) in inputs and np.issubdtype(dt, np.floating):
            out.append(rng.standard_normal(b.shape).astype(dt))
        else:
            out.append(np.zeros(b.shape, dtype=dt))
    return out


class KernelTimer:
    """One scheduled kernel compiled alone, ready to time on ``arrays``."""

    def __init__(self, kernel: Kernel, arrays: list[np.ndarray], target, threads: int):
        from minicomp.backends.llvm import JitModule
        from minicomp.backends.llvm_codegen import emit_module
        from minicomp.passes.legalize import legalize_kernel

        # Legalized as compile() would: an integer division by the zeros kernel_arrays gives must not trap.
        ir = emit_module([legalize_kernel(kernel)], [list(range(len(arrays)))])
        self._jit = JitModule(ir, 3, target.llvm_cpu, target.features, cache=False)
        ctypes.c_int32.from_address(self._jit.global_address("mc_num_threads")).value = threads
        self._fn = self._jit.function(f"k_{kernel.name}", *([ctypes.c_void_p] * len(arrays)))
        self._arrays = arrays  # kept alive while the pointers are used
        ptrs = [a.ctypes.data for a in arrays]
        self._call = lambda: self._fn(*ptrs)
        self.calls = calls_per_block(self._call)

    def seconds(self, blocks: int = BLOCKS) -> float:
        """Seconds per call: the fastest of ``blocks`` blocks of calls."""
        return best_block(self._call, self.calls, blocks)


def calls_per_block(fn, seconds: float = BLOCK_SECONDS) -> int:
    """How many calls of ``fn`` last about ``seconds``: timed on its second
    call (the first touches pages and starts threads)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))


def best_block(fn, calls: int, blocks: int = BLOCKS) -> float:
    """Seconds per call of ``fn``: the fastest of ``blocks`` blocks of ``calls`` calls."""
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


# -- tuning one kernel -------------------------------------------------------------

def tune_kernel(kernel: Kernel, target, threads: int, run_threads: int, constants: dict,
                max_candidates: int = MAX_CANDIDATES, timer=KernelTimer) -> Tuned:
    """Measure candidates of ``kernel`` in two rounds and return the fastest
    (the rules' schedule unless another beats it by :data:`MIN_GAIN`).

    Round one times the structures (:meth:`Candidates.structures`), round
    two the register tile shapes of the best structure; at most
    ``max_candidates`` in all, the cheapest by :func:`estimate_cost` when a
    round has more than are left. ``constants``: the graph's constant arrays
    by Value. ``timer``: how a candidate is compiled and timed (tests pass
    their own)."""
    cands = Candidates(kernel, target, threads, kernel.constant_names(constants))
    timed: list = []  # (choices, timer, seconds)

    def measure(round_: list[tuple[Choices, Kernel]]) -> None:
        left = max_candidates - len(timed)
        if len(round_) > left:
            round_ = sorted(round_, key=lambda c: estimate_cost(c[1], target, run_threads))[:left]
        for choices, k in round_:
            t = timer(k, kernel_arrays(k, constants), target, run_threads)
            timed.append((choices, t, t.seconds()))

    measure([(DEFAULT_CHOICES, cands.rules)])
    measure(cands.structures())
    measure(cands.tiles(min(timed, key=lambda x: x[2])[0]))
    chosen, rules_s, best_s = _confirm(timed)
    return Tuned(kernel.name, chosen, len(cands.found), len(timed), rules_s, best_s)


def _confirm(timed: list) -> tuple:
    """(what is chosen, the rules' seconds, the chosen seconds) from ``timed``: (choice, timer,
    seconds) entries, the rules' first. The fastest other replaces the rules' only when it is at
    least :data:`MIN_GAIN` faster, and then still when the two are timed again, in turn: a candidate
    that won by a noisy block (a slow spell of the machine) does not count, and these are the
    figures reported."""
    chosen, _, rules_s = timed[0]
    best_s = rules_s
    best = min(timed[1:], key=lambda x: x[2], default=None)
    if best is not None and best[2] < rules_s * (1 - MIN_GAIN):
        rules_again, again = float("inf"), float("inf")
        for _ in range(2):
            rules_again = min(rules_again, timed[0][1].seconds())
            again = min(again, best[1].seconds())
        rules_s = best_s = rules_again
        if again < rules_s * (1 - MIN_GAIN):
            chosen, best_s = best[0], again
    return chosen, rules_s, best_s


# -- the cache ---------------------------------------------------------------------

def tuning_key(kernel: Kernel, constant_names, target, threads: int, run_threads: int) -> str:
    """The cache key of a kernel's tuning: its loop IR with every buffer
    renamed by its position (identical layers share it), which parameters
    are constants, the target, the threads and the schedule's source."""
    names = {b.name: f"b{i}" for i, b in enumerate(kernel.params)}
    text = "\n".join(format_stmt(kernel.body, 0))
    text = re.sub(r"[A-Za-z_][\w.]*", lambda m: "\x00" + names[m.group(0)] if m.group(0) in names else m.group(0),
                  text)
    params = ";".join(f"{names[b.name]}{list(b.shape)}{b.dtype.short}{'c' if b.name in constant_names else ''}"
                      for b in kernel.params)
    machine = (target.llvm_cpu, target.features, target.vector_bits, target.vector_registers, target.l1_bytes,
               target.l2_bytes, threads, run_threads)
    return cache.key("tune", params, text, machine, _schedule_digest())


@functools.lru_cache(maxsize=1)
def _schedule_digest() -> str:
    """A hash of :func:`schedule_sources`: a tuning made by other rules, steps
    or code generation is never reused."""
    h = hashlib.sha256()
    for path in schedule_sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def schedule_sources() -> list[Path]:
    """The source files that decide what a tuning's choices produce and how
    fast it runs: the tuner, every schedule module (the CPU rules and the
    primitives and buffer steps they apply) and the LLVM emitters."""
    package = Path(__file__).parents[1]
    backends = package / "backends"
    return [Path(__file__), *sorted((package / "passes" / "schedules").glob("*.py")),
            *(backends / f"llvm_{name}.py" for name in ("codegen", "simd", "math"))]


def _read(key: str) -> Tuned | None:
    data = cache.read("tune", key + ".json")
    if data is None:
        return None
    try:
        d = json.loads(data)
        return Tuned(d["kernel"], Choices(**d["choices"]), d["candidates"], 0, d["rules_s"], d["best_s"],
                     from_cache=True)
    except (ValueError, KeyError, TypeError):
        return None  # a damaged or older entry: tune again


def _write(key: str, tuned: Tuned) -> None:
    d = {"kernel": tuned.kernel, "choices": tuned.choices.as_dict(), "candidates": tuned.candidates,
         "rules_s": tuned.rules_s, "best_s": tuned.best_s}
    cache.write("tune", key + ".json", json.dumps(d).encode())


# -- tuning a program --------------------------------------------------------------

def tune_kernels(kernels: list[Kernel], target, threads: int, constants: dict, *,
                 max_candidates: int = MAX_CANDIDATES, use_cache: bool = True, progress=None,
                 timer=KernelTimer, other_load=None) -> list[Tuned]:
    """Tune every kernel (unscheduled), one :class:`Tuned` each, in order.
    Kernels with the same key are tuned once; tunings are read from and
    written to the compile cache unless ``use_cache`` is False.

    A kernel tuned while other programs took more than :data:`BUSY_SHARE`
    of the CPUs (``other_load``) is tuned again once; if they still did, it
    keeps the rules' schedule, marked ``busy``, and nothing is cached, so a
    later compile measures it again."""
    if max_candidates < 1:
        from minicomp.errors import MinicompError

        raise MinicompError(f"max_candidates must be at least 1, got {max_candidates}")
    use_cache = use_cache and cache.enabled()
    other_load = other_load or OtherLoad  # looked up now, so that tests can give the module an idle reader
    run_threads = target.num_threads
    done: dict[str, Tuned] = {}
    out = []
    for n, k in enumerate(kernels):
        key = tuning_key(k, k.constant_names(constants), target, threads, run_threads)
        if progress is not None:
            progress(f"tuning {_bar(n, len(kernels))} {n}/{len(kernels)} kernels: {k.name}")
        tuned = done.get(key) or (_read(key) if use_cache else None)
        if tuned is None:
            tuned = _tune_on_a_quiet_machine(k, target, threads, run_threads, constants, max_candidates, timer,
                                             other_load)
            if use_cache and not tuned.busy:
                _write(key, tuned)
        elif tuned.kernel != k.name:
            tuned = replace(tuned, kernel=k.name, measured=0, from_cache=True)
        done[key] = tuned
        out.append(tuned)
    return out


def _tune_on_a_quiet_machine(kernel, target, threads, run_threads, constants, max_candidates, timer,
                             other_load) -> Tuned:
    """:func:`tune_kernel`, tried twice while other programs load the CPUs;
    then the rules' schedule, marked busy."""
    for _ in range(2):
        load = other_load()
        tuned = tune_kernel(kernel, target, threads, run_threads, constants, max_candidates, timer)
        if load.share() <= BUSY_SHARE:
            return tuned
    return replace(tuned, choices=DEFAULT_CHOICES, best_s=tuned.rules_s, busy=True)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_tunings(tunings: list[Tuned]) -> str:
    """A table of what tuning found, one row per kernel, and the total."""
    rows = [f"  {'kernel':<44} {'cand.':>5} {'timed':>5} {'rules ms':>9} {'tuned ms':>9} {'speedup':>7}  choices"]
    for t in tunings:
        timed = "cache" if t.from_cache else "busy" if t.busy else str(t.measured)
        rows.append(f"  {t.kernel[:44]:<44} {t.candidates:>5} {timed:>5} {t.rules_s * 1e3:9.3f} "
                    f"{t.best_s * 1e3:9.3f} {t.speedup:6.2f}x  {t.choices}")
    rules = sum(t.rules_s for t in tunings)
    best = sum(t.best_s for t in tunings)
    changed = sum(1 for t in tunings if t.changed)
    rows.append(f"  {count(len(tunings), 'kernel')}, {changed} tuned away from the rules; kernels alone: "
                f"{rules * 1e3:.3f} ms by the rules, {best * 1e3:.3f} ms tuned ({rules / best if best else 1:.2f}x)")
    busy = sum(1 for t in tunings if t.busy)
    if busy:
        rows.append(f"  {count(busy, 'kernel')} were timed while other programs used the CPUs: they keep the rules' "
                    f"schedule and are measured again next time (tune on an idle machine)")
    return "\n".join(rows)


def tune_for_backend(kernels: list[Kernel], target, threads: int, constants: dict, settings: dict,
                     use_cache: bool, chains: dict | None = None) -> list[Tuned]:
    """The llvm backend's tuner (``Backend.tune``), as the schedule pass calls it: ``settings`` are
    ``compile(tune=...)``'s (``max_candidates``) and the progress callback; ``chains`` the tiles of
    each reduction chain kernel, lowered (name -> [(description, kernel)], the rule's first)."""
    tuned = tune_kernels(kernels, target, threads, constants,
                         max_candidates=settings.get("max_candidates", MAX_CANDIDATES), use_cache=use_cache,
                         progress=settings.get("progress"))
    use_cache = use_cache and cache.enabled()
    for name, alternatives in (chains or {}).items():
        if settings.get("progress") is not None:
            settings["progress"](f"tuning the tiles of {name}")
        tuned.append(tune_alternatives(name, alternatives[:settings.get("max_candidates", MAX_CANDIDATES)],
                                       target, threads, constants, use_cache))
    return tuned


def tune_alternatives(name: str, alternatives: list, target, threads: int, constants: dict, use_cache: bool,
                      timer=KernelTimer) -> Tuned:
    """The fastest of kernels made already scheduled in other ways (a reduction chain's tiles:
    ``alternatives`` is [(description, kernel)], the rules' first), which replaces the rules' only
    when it still wins by :data:`MIN_GAIN` timed again; its ``choices`` is the description. Kept in
    the compile cache by the rules' kernel."""
    labels = [label for label, _ in alternatives]
    first = alternatives[0][1]
    key = tuning_key(first, first.constant_names(constants), target, threads, target.num_threads) + "-tiles"
    if use_cache:
        data = cache.read("tune", key + ".json")
        try:
            d = json.loads(data) if data is not None else None
        except ValueError:
            d = None
        if d is not None and d.get("choice") in labels:
            return Tuned(name, d["choice"], len(labels), 0, d["rules_s"], d["best_s"], from_cache=True)
    timed = []
    for label, k in alternatives:
        t = timer(k, kernel_arrays(k, constants), target, target.num_threads)
        timed.append((label, t, t.seconds()))
    chosen, rules_s, best_s = _confirm(timed)
    tuned = Tuned(name, chosen, len(labels), len(timed), rules_s, best_s)
    if use_cache:
        cache.write("tune", key + ".json", json.dumps({"choice": chosen, "rules_s": rules_s,
                                                       "best_s": best_s}).encode())
    return tuned
