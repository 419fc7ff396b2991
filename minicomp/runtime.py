"""The model every backend shares: the callable result of :func:`minicomp.compile`.

:class:`CompiledModel` is what every target's model has: the compiled graph,
its target, stage texts and memory plan; the checks at the boundary (shape,
dtype, contiguity); one lock, since calls share the arena; threads; and the
outputs of a call collected in the graph's order. Each backend subclasses it
(``backends/llvm.py: LLVMModel``, ``backends/c.py: CModel``,
``backends/cuda.py: CudaModel``, ``backends/reference.py: ReferenceModel``).

:class:`TableModel` runs native code that takes one table of buffer
pointers (``mc_main(void **table)``, as the llvm and c targets build it): a
call checks each input, writes the input and output pointers into the table
and runs every kernel with one native call. The helpers below bind a table
(constants, one aligned arena, inputs, fresh outputs) for any device.

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
from dataclasses import dataclass

import numpy as np

from minicomp.errors import MinicompError, RuntimeInputError
from minicomp.ir.dims import Size, SizeReader, concrete
from minicomp.ir.graph import Graph, Value
from minicomp.ir.loops import DIM_SIZES
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


# -- the boundary -------------------------------------------------------------------

def bind_inputs(graph: Graph, args, kwargs, device_arrays: bool = False,
                sizes: dict | None = None) -> dict[Value, np.ndarray]:
    """Match positional/keyword arrays to graph inputs, checking shape and dtype.

    ``device_arrays``: also accept arrays in GPU memory (pycuda ``GPUArray``) as they are.
    ``sizes``: filled with the size of each symbolic dimension at this call (checked here)."""
    inputs = graph.inputs
    if len(args) > len(inputs):
        raise RuntimeInputError(f"graph '{graph.name}' takes {count(len(inputs), 'input')}, got {len(args)}")
    env: dict[Value, np.ndarray] = dict(zip(inputs, args))
    if kwargs:
        by_name = {v.name: v for v in inputs}
        for k, a in kwargs.items():
            if k not in by_name:
                raise RuntimeInputError(f"graph '{graph.name}' has no input named '{k}'; "
                                        f"inputs: {', '.join(by_name)}")
            if by_name[k] in env:
                raise RuntimeInputError(f"input '{k}' given twice")
            env[by_name[k]] = a
    if len(env) < len(inputs):
        v = next(v for v in inputs if v not in env)
        raise RuntimeInputError(f"input '{v.name}' ({v.type}) is missing")
    written = {inputs[i] for i in graph.writes.values()} if graph.writes else ()
    for v in inputs:
        a = env[v]
        if v in written and not (isinstance(a, np.ndarray) and a.flags.writeable) \
                and not (device_arrays and hasattr(a, "gpudata")):
            raise RuntimeInputError(f"input '{v.name}' ({v.type}) is written by the model (it holds state, such as a "
                                    f"cache): pass a writable numpy array, got {type(a).__name__}")
        if not isinstance(a, np.ndarray) and not (device_arrays and hasattr(a, "gpudata")):
            try:
                env[v] = a = np.asarray(a)
            except (ValueError, TypeError) as exc:  # ragged lists, objects numpy cannot hold
                raise RuntimeInputError(f"input '{v.name}' ({v.type}) is not an array: {exc}") from None
        if a.dtype != v.dtype.numpy or not _shape_fits(v.shape, a.shape):
            raise RuntimeInputError(
                f"input '{v.name}' expects {v.type} ({v.dtype.numpy}{list(v.shape)}), "
                f"got {a.dtype}{list(a.shape)}"
            )
    reader = _size_reader(graph)
    if reader is not None:  # each dimension in its range, the same wherever it appears
        found = reader.read([env[v] for v in inputs])
        if sizes is not None:
            sizes.update(found)
    return env


def address(a: np.ndarray) -> int:
    """The address of ``a``'s first element (a third of ``a.ctypes.data``'s time, for a writable array:
    a call binds every input and output)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):  # read-only, empty, or not one contiguous block
        return a.ctypes.data


def _shape_fits(shape, got) -> bool:
    """Same rank, and every static size equal (symbolic ones are checked by :func:`call_sizes`)."""
    if len(shape) != len(got):
        return False
    for d, n in zip(shape, got):
        if not isinstance(d, Size) and d != n:
            return False
    return True


def call_sizes(graph: Graph, env) -> dict[str, int]:
    """The size of each symbolic dimension at this call, read from the inputs in ``env`` and checked
    (none for a static graph)."""
    reader = _size_reader(graph)
    return reader.read([env[v] for v in graph.inputs]) if reader is not None else {}


_SIZE_READERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _size_reader(graph: Graph) -> SizeReader | None:
    """How a call's sizes are read from the graph's inputs (None for a static graph), planned once per
    graph and inputs."""
    key = tuple(graph.inputs)
    found = _SIZE_READERS.get(graph)
    if found is None or found[0] != key:
        reader = SizeReader(graph.inputs) if any(v.type.is_symbolic for v in graph.inputs) else None
        found = _SIZE_READERS[graph] = (key, reader)
    return found[1]


def dim_sizes_array(names: list[str], sizes: dict | None = None) -> np.ndarray:
    """The sizes of the symbolic dimensions ``names`` at a call, in the order the kernels' ``mc_dims``
    input holds them (zeros before any call; one element at least, for a table slot to point at)."""
    return np.array([sizes[n] for n in names] if sizes else [0] * len(names) or [0], np.int64)


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` in C order (0-d arrays stay 0-d, unlike ``np.ascontiguousarray``)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def allocate(shape, what, dtype=np.uint8) -> np.ndarray:
    """``np.empty``, with a MinicompError that names the buffer when memory runs out (``what``: its
    name, or a function that gives it, so a call that allocates does not format it every time)."""
    try:
        return np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError) as exc:
        n = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        what = what() if callable(what) else what
        raise MinicompError(f"cannot allocate {what}: {n:,} bytes ({type(exc).__name__})") from None


# -- a table of buffer pointers, on any device ------------------------------------------

@dataclass
class KernelCall:
    """One kernel in the sequence and the table slots of its parameters."""

    name: str
    function: str
    slots: list[int]


def fresh_outputs(graph: Graph, slots: dict) -> list[Value]:
    """The outputs a call must give the kernels new memory for: each once, and not the inputs or
    constants that are also outputs (those are copied by :func:`collect_outputs`). The same for every
    call (a call binds every input), so a model finds them once."""
    inputs = set(graph.inputs)
    input_slots = {slots[v] for v in inputs if v in slots}  # (an output written in an input's memory has its slot)
    return [v for v in dict.fromkeys(graph.outputs)
            if v in slots and v not in inputs and v not in graph.constants and slots[v] not in input_slots]


def place_arena(table, slots: dict, plan: MemoryPlan, address: int) -> None:
    """Point ``table``'s planned slots into an arena allocated at ``address`` (with ``ALIGNMENT`` spare
    bytes): offsets count from its first aligned byte."""
    base = arena_base(address)
    for key, off in plan.offsets.items():
        table[slots[key]] = base + off


def bind_host_io(table, slots: dict, env: dict, fresh: list[Value], sizes: dict | None = None) -> dict:
    """Point ``table`` at the input arrays of ``env`` and at new arrays for the
    ``fresh`` outputs (:func:`fresh_outputs`, shaped by the ``sizes`` of the
    call's symbolic dimensions); returns those output arrays by value."""
    for v, a in env.items():
        table[slots[v]] = address(a)
    outs = {}
    for v in fresh:
        shape = concrete(v.shape, sizes) if sizes else v.shape
        outs[v] = a = allocate(shape, lambda v=v: f"output '{v.name}' ({v.type})", v.dtype.numpy)
        table[slots[v]] = address(a)
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
    place_arena(table, slots, plan, arena.ctypes.data)
    return keep, arena


def collect_outputs(graph: Graph, env: dict, outs: dict, fetch=None, inputs_as_given: bool = False) -> list:
    """The call's results in the graph's order: the arrays the kernels wrote (``fetch`` brings one to
    the host), a copy for an output listed again, a copy of an input or constant that is an output
    (``inputs_as_given``: the input itself, for arrays left on a device)."""
    result, seen = [], set()
    for v in graph.outputs:
        if v in outs:
            arr = fetch(outs[v]) if fetch is not None else outs[v]
            result.append(arr.copy() if v in seen else arr)
        elif v in env:
            result.append(env[v] if inputs_as_given else np.array(env[v]))
        else:
            result.append(np.array(graph.constants[v]))
        seen.add(v)
    return result


def write_back(graph: Graph, env: dict, results: list) -> list:
    """Finish a call whose ``results`` hold every graph output in order: copy each written output into
    its input's array (unless the kernels already wrote it there), raise a failed check (``Graph.checks``),
    and return the outputs a call returns."""
    if not graph.writes and not graph.checks:
        return results
    for o, i in graph.writes.items():
        dst, src = env[graph.inputs[i]], results[o]
        if hasattr(dst, "gpudata"):  # a pycuda GPUArray the caller keeps on the device
            dst.set(src.get() if hasattr(src, "gpudata") else np.ascontiguousarray(src))
        elif not (isinstance(src, np.ndarray) and src.ctypes.data == dst.ctypes.data):
            np.copyto(dst, src)
    for k, (low, high, message) in graph.checks.items():
        values = np.asarray(results[k].get() if hasattr(results[k], "gpudata") else results[k])
        bad = values[(values < low) | (values >= high)]
        if bad.size:  # (positions outside were not written: the kernels skip them)
            raise RuntimeInputError(f"{message}: got {bad.reshape(-1)[0]}")
    return [r for k, r in enumerate(results) if k not in graph.writes and k not in graph.checks]


def refuse_exporting_writes(graph, what: str) -> None:
    """A library's C API returns outputs into the caller's buffers; one that updates its inputs (a
    cache) would need the caller to pass the input as its own output, and a check of values at run
    time an error code: neither is offered yet."""
    if graph.writes or graph.checks:
        names = ", ".join(f"'{v.name}'" for v, _ in graph.written_inputs()) or "none"
        raise MinicompError(f"{what}: graph '{graph.name}' writes input(s) {names} (state such as a cache) or "
                            f"checks positions at run time ({len(graph.checks)}), which an exported C API does not "
                            f"support yet; run it from Python, or model.save()")


@dataclass(frozen=True)
class TableLayout:
    """How a table model's buffers are laid out: what ``model.save``, ``export_library`` and
    ``export_c`` read. ``slots``: graph Value or plan key -> table index."""

    slots: dict
    n_slots: int
    calls: tuple[KernelCall, ...]
    memory_plan: MemoryPlan

    def weights(self, constants: dict) -> tuple[bytes, list[tuple[int, int]]]:
        """The constants the kernels read as one block, each at an ``ALIGNMENT`` boundary, and the
        (slot, offset) of each in it."""
        blob, placed = bytearray(), []
        for v, arr in constants.items():
            if v not in self.slots:
                continue
            blob += bytes(-len(blob) % ALIGNMENT)
            placed.append((self.slots[v], len(blob)))
            blob += np.ascontiguousarray(arr).tobytes()
        return bytes(blob), placed


# -- the models ---------------------------------------------------------------------------

class _MadeOnRead:
    """An attribute of a model that a model from the whole-model cache makes when it is first read, by
    running the passes again (:meth:`CompiledModel.make_details_on_read`): its graph, kernels, fusion
    decisions, tunings and full memory plan are the compiler's working state, which the cache does not
    keep."""

    def __set_name__(self, owner, name):
        self.key = "_" + name

    def __get__(self, model, owner=None):
        if model is None:
            return self
        if self.key not in model.__dict__ and model.__dict__.get("_make_details") is not None:
            make, model._make_details = model._make_details, None
            make(model)
        try:
            return model.__dict__[self.key]
        except KeyError:
            raise AttributeError(self.key[1:]) from None

    def __set__(self, model, value):
        model.__dict__[self.key] = value


class CompiledModel:
    """A compiled graph: ``model(x)``, ``model(x=...)``; what every target's model has (module docs).

    ``signature`` is the graph a call binds: its inputs, outputs, constants, writes and checks; ``graph``
    is the compiled graph (the same, except in a model from the whole-model cache or a file, whose
    ``signature`` holds no nodes)."""

    graph = _MadeOnRead()
    kernels = _MadeOnRead()
    fusion = _MadeOnRead()
    tunings = _MadeOnRead()
    memory_plan = _MadeOnRead()

    def __init__(self, graph: Graph, target, stages, memory_plan: MemoryPlan | None = None, kernels=None):
        self.graph = self.signature = graph
        self._make_details = None
        self.from_the_model_cache = False  # the whole model came from the compile cache: no pass ran
        self.target = target
        self.stages = stages
        self.memory_plan = memory_plan
        self.kernels = kernels or []
        self.tunings = []  # what the tuner found, per kernel (compile(tune=True))
        self.fusion = None  # the fusion decisions (compile sets them)
        self._lock = threading.Lock()
        self.num_threads = getattr(target, "num_threads", 1) or 1
        _LIVE_MODELS.add(self)

    def make_details_on_read(self, make) -> None:
        """Forget the graph, kernels, fusion, tunings and memory plan, and have ``make(self)`` set them again
        when one of them is first read (a model from the whole-model cache: ``compiler.py``)."""
        for name in ("graph", "kernels", "fusion", "tunings", "memory_plan"):
            self.__dict__.pop("_" + name, None)
        self._make_details = make

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.signature.inputs]

    @property
    def cache_hit(self) -> bool:
        """Did the native code come from the compile cache on disk?"""
        return False

    def warm_up(self, progress=None) -> None:
        """Do now the work a first call would do (nothing, for code that is ready when compiled)."""

    def set_num_threads(self, n: int) -> None:
        """Use ``n`` threads for parallel loops from the next call on."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MinicompError(f"number of threads must be a whole number >= 1, got {n!r}")
        self.num_threads = n

    def save(self, path: str) -> None:
        """Write the compiled model to a ``.mcm`` file (llvm targets; see LLVMModel.save)."""
        raise MinicompError(f"only models compiled for the llvm target can be saved, not {self._target_name()}")

    def export_library(self, path: str) -> str:
        """Link a shared library with its header (llvm targets; see LLVMModel.export_library)."""
        raise MinicompError(f"only models compiled for the llvm target can be exported as a library, not "
                            f"{self._target_name()}; target c has export_c")

    def export_c(self, folder: str, name: str | None = None):
        """Write portable C for the model (target c; see CModel.export_c)."""
        raise MinicompError(f"export_c writes the C of a model compiled for target 'c', not "
                            f"{self._target_name()!r}: compile it with mc.compile(graph, target='c')")

    def _target_name(self) -> str:
        return getattr(self.target, "name", str(self.target))

    def _code_summary(self) -> str:
        return count(len(self.kernels), "kernel")

    def __repr__(self) -> str:
        ins = ", ".join(f"{v.name}: {v.type}" for v in self.signature.inputs)
        return f"<CompiledModel {self.signature.name}({ins}) target={self._target_name()}, {self._code_summary()}>"


class TableModel(CompiledModel):
    """Native code run through one table of buffer pointers (``mc_main``), with one arena allocated
    once and the weights bound; ``native`` looks up its functions (module docs)."""

    def __init__(self, graph: Graph, target, stages, memory_plan: MemoryPlan, native, layout: TableLayout,
                 constants: dict | None = None, kernels=None):
        super().__init__(graph, target, stages, memory_plan, kernels)
        self.native = native
        self.layout = layout
        self._table = (ctypes.c_void_p * max(layout.n_slots, 1))()
        self._keep_alive, self._arena = host_buffers(self._table, layout.slots, constants or {}, memory_plan)
        self._fresh = fresh_outputs(graph, layout.slots)
        # Outputs the kernels write in the memory of the input they update (a cache): the caller's array.
        self._written_in_place = list(memory_plan.written_in_place.items())
        # Every output written by the kernels once, in order: the call returns the arrays as they are.
        self._outputs_as_written = self._fresh == list(graph.outputs) and not graph.writes and not graph.checks
        # The sizes of the symbolic dimensions at each call, in the slot the kernels read them from.
        self._dim_names = [name for name, _, _ in graph.dims()]
        self._dim_sizes = dim_sizes_array(self._dim_names)
        if DIM_SIZES in layout.slots:
            self._table[layout.slots[DIM_SIZES]] = self._dim_sizes.ctypes.data
        self._main = native.function("mc_main", ctypes.c_void_p)
        self._threads_addr = native.global_address("mc_num_threads")
        self.set_num_threads(target.num_threads)

    @property
    def cache_hit(self) -> bool:
        return bool(getattr(self.native, "cache_hit", False))

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        # In a forked child only one thread can run (see _after_fork_in_child).
        ctypes.c_int32.from_address(self._threads_addr).value = 1 if _IN_FORKED_CHILD else n

    def _check_inputs(self, args, kwargs, sizes: dict | None = None) -> dict[Value, np.ndarray]:
        env = bind_inputs(self.signature, args, kwargs, sizes=sizes)
        for v, a in env.items():
            if not a.flags.c_contiguous or not a.flags.aligned:
                raise RuntimeInputError(
                    f"input '{v.name}' ({v.type}) must be a C-contiguous, aligned array; "
                    f"pass np.ascontiguousarray(x)")
        return env

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        """Run on numpy arrays (by position or input name); returns the outputs."""
        sizes: dict = {}
        env = self._check_inputs(args, kwargs, sizes)
        with self._lock:
            outs = self._bind(env, sizes)
            self._main(ctypes.addressof(self._table))
        if self._outputs_as_written:
            return list(outs.values())
        return write_back(self.signature, env, collect_outputs(self.signature, env, outs))

    def _bind(self, env: dict, sizes: dict) -> dict:
        """Bind a call's inputs, its new outputs and the ``sizes`` of its symbolic dimensions (under the lock)."""
        for k, name in enumerate(self._dim_names):
            self._dim_sizes[k] = sizes[name]
        outs = bind_host_io(self._table, self.layout.slots, env, self._fresh, sizes)
        for v, written in self._written_in_place:
            outs[v] = env[written]
        return outs

    def profile(self, *args, repeat: int = 10, **kwargs) -> list[tuple[str, float]]:
        """Time each kernel alone on these inputs: ``[(kernel, seconds per call)]``.

        Kernels run in order, each ``repeat`` times, so every one sees the
        buffers its predecessors wrote.
        """
        sizes: dict = {}
        env = self._check_inputs(args, kwargs, sizes)
        timings = []
        with self._lock:
            outs = self._bind(env, sizes)
            for call in self.layout.calls:
                fn = self.native.function(call.function, *([ctypes.c_void_p] * len(call.slots)))
                ptrs = [self._table[s] for s in call.slots]
                fn(*ptrs)
                t0 = time.perf_counter()
                for _ in range(repeat):
                    fn(*ptrs)
                timings.append((call.name, (time.perf_counter() - t0) / repeat))
        del outs
        return timings

    def _code_summary(self) -> str:
        return count(len(self.layout.calls), "kernel")
