"""CompiledModel: the callable result of :func:`minicomp.compile`.

A compiled model owns its native code, one arena for every intermediate
buffer (allocated once), the bound weights, and one table of buffer pointers.
A call checks each input at the boundary (shape, dtype, contiguity), writes
the input and output pointers into the table, and runs every kernel with one
native call.

Threads: a model is safe to call from several Python threads; calls are
serialized by a lock because they share the arena. Use one model per thread
to run calls at the same time. After ``os.fork()`` models in the child run
their parallel loops on one thread (libgomp's workers stay in the parent).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref

import numpy as np

from minicomp.backends.llvm import KernelCall  # noqa: F401  (re-exported for callers)
from minicomp.backends.reference import bind_inputs, run_reference
from minicomp.errors import MinicompError, RuntimeInputError
from minicomp.ir.graph import Graph, Value
from minicomp.passes.memory import ALIGNMENT, MemoryPlan, arena_base
from minicomp.wording import count

# libgomp's worker threads do not survive fork(): a child that starts a
# parallel region waits for them forever. Models in a forked child (those the
# parent made, and those made later) run their parallel loops on one thread.
# Nor does another thread's hold on a model's lock: a fork taken while a
# thread was inside model(...) copied the lock locked, and the child's first
# call waited forever. The child gets fresh locks (no thread of its own holds
# one: fork copies only the forking thread).
_LIVE_MODELS: weakref.WeakSet = weakref.WeakSet()
_IN_FORKED_CHILD = False


def _after_fork_in_child() -> None:
    global _IN_FORKED_CHILD
    _IN_FORKED_CHILD = True
    for model in list(_LIVE_MODELS):
        model._lock = threading.Lock()
        model.set_num_threads(model.num_threads)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` in C order (0-d arrays stay 0-d, unlike ``np.ascontiguousarray``)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def bind_host_io(table, slots: dict, graph: Graph, env: dict) -> dict:
    """Point ``table`` at the input arrays of ``env`` and at new arrays for the
    outputs the kernels write; returns those output arrays by value."""
    for v, a in env.items():
        table[slots[v]] = a.ctypes.data
    outs = {}
    for v in dict.fromkeys(graph.outputs):
        if v in slots and v not in env and v not in graph.constants:
            outs[v] = allocate(v.shape, f"output '{v.name}' ({v.type})", v.dtype.numpy)
            table[slots[v]] = outs[v].ctypes.data
    return outs


def host_buffers(table, slots: dict, constants: dict, plan: MemoryPlan):
    """Point ``table``'s slots at the constants and at the planned buffers in
    one new, aligned arena; returns what must stay alive (the arrays, the arena)."""
    keep = []
    for v, arr in constants.items():
        arr = contiguous(arr)
        keep.append(arr)
        table[slots[v]] = arr.ctypes.data
    arena = allocate(plan.arena_bytes + ALIGNMENT, "the arena of intermediate buffers")
    base = arena_base(arena.ctypes.data)
    for key, off in plan.offsets.items():
        table[slots[key]] = base + off
    return keep, arena


def allocate(shape, what: str, dtype=np.uint8) -> np.ndarray:
    """``np.empty``, with a MinicompError that names the buffer when memory runs out."""
    try:
        return np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError) as exc:
        n = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        raise MinicompError(f"cannot allocate {what}: {n:,} bytes ({type(exc).__name__})") from None


class CompiledModel:
    """Run a compiled graph: ``model(x)``, ``model(x=...)``; see module docs."""

    def __init__(self, graph: Graph, target, stages: dict[str, str], memory_plan: MemoryPlan | None = None,
                 jit=None, calls: list[KernelCall] | None = None, slots: dict | None = None,
                 n_slots: int = 0, constants: dict | None = None, kernels=None):
        self.graph = graph
        self.target = target
        self.stages = stages
        self.memory_plan = memory_plan
        self.kernels = kernels or []
        self.tunings = []  # what the tuner found, per kernel (compile(tune=True))
        self._jit = jit
        self._calls = calls or []
        self._slots = slots or {}
        self._lock = threading.Lock()
        self._output_values = list(dict.fromkeys(graph.outputs))
        self.num_threads = getattr(target, "num_threads", 1) or 1
        _LIVE_MODELS.add(self)
        if jit is None:
            return
        self._table = (ctypes.c_void_p * max(n_slots, 1))()
        self._keep_alive, self._arena = host_buffers(self._table, self._slots, constants or {}, memory_plan)
        self._main = jit.function("mc_main", ctypes.c_void_p)
        self._threads_addr = jit.global_address("mc_num_threads")
        self.set_num_threads(target.num_threads)

    def save(self, path: str) -> None:
        """Write the compiled model to ``path`` (``.mcm``); ``mc.load(path)``
        runs it again without compiling (see ``minicomp/saved.py``). The file
        holds machine code: whoever loads it runs that code, so share it only
        with people who trust you, and load only files you trust."""
        from minicomp.saved import save_model

        save_model(self, path)

    def export_library(self, path: str) -> str:
        """Link a shared library (``model.so``) that C programs can call, with
        its header beside it (``libmlp.so`` -> ``mlp.h``); returns the header's path.
        Like any library, it runs its machine code when loaded: trust it as you would any other."""
        from minicomp.saved import export_library

        return export_library(self, path)

    def export_c(self, folder: str, name: str | None = None):
        """Write ``model.c``, ``model.h`` and ``model.bin`` into ``folder`` (a model compiled for target
        ``c``): C99 that builds with any C compiler and runs without minicomp, LLVM or Python
        (``minicomp/backends/c_export.py``); returns the folder's Path. ``name`` prefixes the C API."""
        from minicomp.backends.c_export import export_c

        return export_c(self, folder, name)

    @property
    def cache_hit(self) -> bool:
        """Did the native code come from the compile cache on disk?"""
        return bool(getattr(self._jit, "cache_hit", False))

    # -- threads ------------------------------------------------------------------
    def warm_up(self, progress=None) -> None:
        """Do now the work a first call would do (nothing for code compiled by LLVM: it is ready)."""

    def set_num_threads(self, n: int) -> None:
        """Use ``n`` threads for parallel loops from the next call on."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MinicompError(f"number of threads must be a whole number >= 1, got {n!r}")
        self.num_threads = n
        if self._jit is not None:
            # In a forked child only one thread can run (see _after_fork_in_child).
            ctypes.c_int32.from_address(self._threads_addr).value = 1 if _IN_FORKED_CHILD else n

    # -- calling -----------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    def _check_inputs(self, args, kwargs) -> dict[Value, np.ndarray]:
        env = bind_inputs(self.graph, args, kwargs)
        for v, a in env.items():
            if not a.flags.c_contiguous or not a.flags.aligned:
                raise RuntimeInputError(
                    f"input '{v.name}' ({v.type}) must be a C-contiguous, aligned array; "
                    f"pass np.ascontiguousarray(x)")
        return env

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        """Run on numpy arrays (by position or input name); returns the outputs."""
        env = self._check_inputs(args, kwargs)
        with self._lock:
            outs = self._prepare(env)
            self._main(ctypes.addressof(self._table))
        return self._collect(env, outs)

    def _prepare(self, env) -> dict[Value, np.ndarray]:
        return bind_host_io(self._table, self._slots, self.graph, env)

    def _collect(self, env, outs) -> list[np.ndarray]:
        result, seen = [], set()
        for v in self.graph.outputs:
            if v in outs and v not in seen:
                result.append(outs[v])
            elif v in outs:
                result.append(outs[v].copy())
            elif v in env:
                result.append(np.array(env[v]))
            else:
                result.append(np.array(self.graph.constants[v]))
            seen.add(v)
        return result

    # -- inspection --------------------------------------------------------------
    def profile(self, *args, repeat: int = 10, **kwargs) -> list[tuple[str, float]]:
        """Time each kernel alone on these inputs: ``[(kernel, seconds per call)]``.

        Kernels run in order, each ``repeat`` times, so every one sees the
        buffers its predecessors wrote.
        """
        env = self._check_inputs(args, kwargs)
        timings = []
        with self._lock:
            outs = self._prepare(env)
            for call in self._calls:
                fn = self._jit.function(call.function, *([ctypes.c_void_p] * len(call.slots)))
                ptrs = [self._table[s] for s in call.slots]
                fn(*ptrs)
                t0 = time.perf_counter()
                for _ in range(repeat):
                    fn(*ptrs)
                timings.append((call.name, (time.perf_counter() - t0) / repeat))
        del outs
        return timings

    def __repr__(self) -> str:
        ins = ", ".join(f"{v.name}: {v.type}" for v in self.graph.inputs)
        kernels = count(len(self._calls), "kernel")
        return f"<CompiledModel {self.graph.name}({ins}) target={self.target.name}, {kernels}>"


class ReferenceModel(CompiledModel):
    """The same interface over the numpy reference interpreter (target "reference")."""

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        return run_reference(self.graph, *args, **kwargs)

    def set_num_threads(self, n: int) -> None:
        self.num_threads = n

    def profile(self, *args, repeat: int = 10, **kwargs):
        t0 = time.perf_counter()
        for _ in range(repeat):
            self(*args, **kwargs)
        return [("reference", (time.perf_counter() - t0) / repeat)]


def make_model(program, target, stages: dict, executable) -> CompiledModel:
    """The runtime model for a compiled program: the interpreter's when the
    backend built no native code, else one that runs the executable."""
    if executable is None:
        return ReferenceModel(program.graph, target, stages)
    model = CompiledModel(program.graph, target, stages, program.memory_plan, executable.jit, executable.calls,
                          executable.slots, executable.n_slots, program.graph.constants, program.kernels)
    model.fusion = program.options.get("fusion_result")
    return model
