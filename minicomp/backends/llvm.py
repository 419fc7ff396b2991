"""The LLVM backend: compile loop-IR kernels for the host CPU with llvmlite.

The module text comes from :mod:`minicomp.backends.llvm_codegen`; here it is
parsed, verified, optimized at O3 with LLVM's new pass manager for the host
CPU and its features, and compiled by MCJIT in this process, or, for large
modules, by a child process into a shared library
(:mod:`minicomp.backends.llvm_native`), which keeps LLVM's memory out of this
one. Parallel loops call libgomp, which is loaded into the process once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass

from minicomp.backends import llvm_native as native
from minicomp.backends.llvm_worker import optimize, without_vectorizer_remarks
from minicomp.backends.registry import Backend, register_backend
from minicomp.errors import CompileError
from minicomp.runtime import KernelCall, TableLayout, TableModel
from minicomp.target import CPUS

_init_lock = threading.Lock()
_initialized = False
_gomp_loaded: bool | None = None


def _llvm():
    import llvmlite.binding as llvm

    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialized = True
    return llvm


@functools.lru_cache(maxsize=1)
def _gomp_library() -> str | None:
    return ctypes.util.find_library("gomp")


# libgomp's threads spin this many times waiting for the next parallel loop before they sleep (its
# default is 300,000 when no wait policy is set). On cores shared with other programs a spinning thread
# burns the time slice the others need, and a parallel loop waits for its slowest thread; idle, the
# shorter spin costs nothing, while sleeping at once (OMP_WAIT_POLICY=PASSIVE) would (docs/threads.md).
# A user's own setting wins.
GOMP_SPINCOUNT = "10000"


def openmp_available() -> bool:
    """Load libgomp into the process (once); False if it is not installed."""
    global _gomp_loaded
    if _gomp_loaded is None:
        try:
            if _gomp_library() is None:
                raise OSError("libgomp not found")
            import os

            if "OMP_WAIT_POLICY" not in os.environ:  # read once, when libgomp loads
                os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
            ctypes.CDLL(_gomp_library(), mode=ctypes.RTLD_GLOBAL)
            _gomp_loaded = True
        except OSError:
            _gomp_loaded = False
    return _gomp_loaded


@functools.lru_cache(maxsize=1)
def _gomp_for_mcjit() -> None:
    """Let MCJIT's linker find libgomp's functions."""
    if openmp_available():
        _llvm().load_library_permanently(_gomp_library())


host_cpu = native.host_cpu


class JitModule:
    """One optimized, JIT-compiled LLVM module; keeps the engine alive.

    With ``cache`` (the default), the machine code is kept on disk keyed by the
    IR text, the CPU, its features, the optimization level and the LLVM
    version (``minicomp/cache.py``): the same module compiled again, in this
    process or another, skips LLVM's optimization and code generation.
    ``cache_hit`` says whether it did; ``cache_entry`` names its entry there
    (``.o``, ``.ll.z``), None when it has none.
    """

    def __init__(self, ir_text: str, opt_level: int = 3, cpu: str = "", features: str = "",
                 cache: bool = True):

        from minicomp import cache as disk

        llvm = _llvm()
        _gomp_for_mcjit()
        if not cpu:
            cpu, features = host_cpu()
        self.cpu, self.features = cpu, features
        target = llvm.Target.from_default_triple()
        self.target_machine = target.create_target_machine(cpu=cpu, features=features, opt=opt_level,
                                                           jit=True)
        self.cache_hit = False
        self.cache_entry = None
        self._module = None
        cache = cache and disk.enabled()
        name = native.code_key(ir_text, cpu, features, opt_level) if cache else ""
        if cache:
            # Every part of the entry is checked before any machine code is loaded: an engine left
            # half-made by an entry found damaged late crashed the compile that followed.
            entry = read_cached_object(name)
            if entry is not None and self._load_object(entry[0]):
                self.object_code, self.optimized_ir = entry
                self.cache_hit = True
                self.cache_entry = name
                return
            # a damaged entry: compile again (and overwrite it)
        if self._compile_in_helper(ir_text, opt_level):
            if cache and self._store(name):
                self.cache_entry = name
            return
        try:
            mod = llvm.parse_assembly(ir_text)
            mod.verify()
        except RuntimeError as exc:
            raise CompileError(f"generated LLVM IR is invalid: {exc}") from exc
        objects = []  # MCJIT hands over the object code it makes (for the cache and model.save)
        with without_vectorizer_remarks():
            optimize(llvm, mod, self.target_machine, opt_level)
            self.optimized_ir = str(mod)
            self.engine = llvm.create_mcjit_compiler(mod, self.target_machine)
            self.engine.set_object_cache(notify_func=lambda module, data: objects.append(bytes(data)))
            self.engine.finalize_object()
        self._module = mod
        self.object_code = objects[0] if len(objects) == 1 else None
        if cache and len(objects) == 1 and self._store(name):
            self.cache_entry = name

    def _store(self, name: str) -> bool:
        """Keep the machine code and the optimized IR in the compile cache as entry ``name``."""
        from minicomp import cache as disk

        return all([disk.write("llvm", name + ".o", self.object_code),
                    disk.write("llvm", name + ".ll.z", disk.compress_text(self.optimized_ir))])

    @classmethod
    def from_object(cls, obj: bytes, optimized_ir: str, cpu: str, features: str, opt_level: int = 3) -> JitModule:
        """Machine code saved earlier (``model.save``), ready to run; CompileError if LLVM refuses it."""
        self = cls.__new__(cls)
        llvm = _llvm()
        _gomp_for_mcjit()
        self.target_machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=cpu, features=features, opt=opt_level, jit=True)
        self._module, self.cache_hit, self.optimized_ir, self.object_code = None, False, optimized_ir, obj
        self.cpu, self.features, self.cache_entry = cpu, features, None
        if not self._load_object(obj):
            raise CompileError("the saved machine code could not be loaded")
        return self

    def shared_object_code(self) -> bytes:
        """The optimized module compiled again as position-independent code (for a shared library)."""
        llvm = _llvm()
        tm = llvm.Target.from_default_triple().create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, reloc="pic")
        return tm.emit_object(llvm.parse_assembly(self.optimized_ir))

    def _compile_in_helper(self, ir_text: str, opt_level: int) -> bool:
        """Optimize and make the machine code in the helper process (``llvm_server.py``: LLVM's leaks stay
        there) and load it here; False when there is no helper (or MINICOMP_LLVM_WORKER=never)."""
        from minicomp.backends.llvm_server import compile_in_helper

        if native.worker_mode() == "never":
            return False
        made = compile_in_helper(ir_text, self.cpu, self.features, opt_level)
        if made is None or not self._load_object(made[0]):
            return False
        self.object_code, self.optimized_ir = made
        return True

    def _load_object(self, obj: bytes) -> bool:
        """Run cached machine code: an empty module's engine plus the object file. False (and no engine
        kept) when LLVM refuses the bytes as an object file of this machine."""
        llvm = _llvm()
        if not _looks_like_an_object_file(obj):
            return False
        try:
            engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.target_machine)
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            engine.finalize_object()
        except RuntimeError:
            return False
        if not engine.get_function_address("mc_main"):
            return False
        self.engine = engine
        return True

    def function(self, name: str, *argtypes):
        """A ctypes callable for the function ``name`` (returning void)."""
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"function {name} is missing from the compiled module")
        return ctypes.CFUNCTYPE(None, *argtypes)(addr)

    def global_address(self, name: str) -> int:
        return self.engine.get_global_value_address(name)

    def assembly(self) -> str:
        """The machine code as assembly text (for inspection)."""
        if self._module is None:  # loaded from the cache: assemble the optimized IR again
            self._module = _llvm().parse_assembly(self.optimized_ir)
        return self.target_machine.emit_assembly(self._module)


def compile_module(ir_text: str, opt_level: int, cpu: str, features: str, cache: bool = True):
    """The module's machine code, ready to call: a library from the cache or
    from a child process (:mod:`minicomp.backends.llvm_native`), else a
    :class:`JitModule` compiled in this process."""
    from minicomp import cache as disk

    name = native.code_key(ir_text, cpu, features, opt_level) if cache and disk.enabled() else ""
    if name:
        library = native.load_cached(name, cpu, features)
        if library is not None:
            return library
    if native.use_worker(len(ir_text)):
        library = native.compile_in_worker(ir_text, cpu, features, opt_level, name)
        if library is not None:
            return library
    return JitModule(ir_text, opt_level, cpu, features, cache=cache)


# -- the backend -------------------------------------------------------------------

@dataclass
class LLVMExecutable:
    """The machine code of a model and how its pointer table is laid out."""

    jit: JitModule | native.NativeModule
    layout: TableLayout
    timings: list  # (build step, seconds), for model.pass_timings


class LLVMModel(TableModel):
    """A model compiled by LLVM: the shared table model, plus what LLVM's machine code allows, saving it
    (``.mcm``), linking it into a shared library and showing its assembly."""

    def save(self, path: str) -> None:
        """Write the compiled model to ``path`` (``.mcm``); ``mc.load(path)``
        runs it again without compiling (see ``backends/llvm_saved.py``). The file
        holds machine code: whoever loads it runs that code, so share it only
        with people who trust you, and load only files you trust."""
        from minicomp.backends.llvm_saved import save_model

        save_model(self, path)

    def export_library(self, path: str) -> str:
        """Link a shared library (``model.so``) that C programs can call, with
        its header beside it (``libmlp.so`` -> ``mlp.h``); returns the header's path.
        Like any library, it runs its machine code when loaded: trust it as you would any other."""
        from minicomp.backends.llvm_saved import export_library

        return export_library(self, path)

    def assembly(self) -> str:
        """The machine code as assembly text (``--emit asm``)."""
        return self.native.assembly()


def make_llvm_model(program, target, stages, executable: LLVMExecutable) -> LLVMModel:
    """The runtime model of a program compiled by LLVM."""
    return LLVMModel(program.graph, target, stages, program.memory_plan, executable.jit, executable.layout,
                     program.graph.constants, program.kernels)


def check_runs_here(target) -> None:
    """Refuse a CPU target whose instruction set this host lacks (its code would crash)."""
    _, host_features = host_cpu()
    missing = [f for f in target.requires if f"+{f}" not in host_features.split(",")]
    if missing:
        raise CompileError(f"code for CPU {target.llvm_cpu} needs {', '.join(missing)}, which this machine "
                           f"lacks; compile for Target.host() or an older CPU")


@functools.lru_cache(maxsize=1)
def _emitter_digest() -> str:
    """A hash of the code generator's own source, and of the loop IR module that decides which kernels
    share a function and what inputs a kernel takes (``kernel_functions``, ``with_dim_sizes``): cached
    IR made by another version is never used."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).parent
    h = hashlib.sha256()
    sources = [here / name for name in ("llvm_codegen.py", "llvm_simd.py", "llvm_math.py")]
    for path in sources + [here.parent / "ir" / "loops.py"]:
        h.update(path.read_bytes())
    return h.hexdigest()


def _decompressed_text(data: bytes | None) -> str | None:
    """The text a cache entry compressed, or None when it is absent or not compressed text."""
    import zlib

    if data is None:
        return None
    try:
        return zlib.decompress(data).decode()
    except (zlib.error, UnicodeDecodeError):
        return None


def read_cached_object(name: str) -> tuple[bytes, str] | None:
    """The object code and optimized IR of a module compiled in this process, kept in the compile cache
    as entry ``name`` (``.o``, ``.ll.z``); None when either is missing or damaged."""
    from minicomp import cache as disk

    obj, optimized = disk.read("llvm", name + ".o"), _decompressed_text(disk.read("llvm", name + ".ll.z"))
    return (obj, optimized) if obj is not None and optimized is not None else None


def _looks_like_an_object_file(data: bytes) -> bool:
    """An ELF relocatable object for this machine's word size and byte order (what MCJIT hands out):
    the header is checked before LLVM parses the bytes, which it does not do safely for any input."""
    import sys

    if len(data) < 64 or data[:4] != b"\x7fELF":
        return False
    word_size, byte_order = data[4], data[5]
    return word_size == 2 and byte_order == (1 if sys.byteorder == "little" else 2) and \
        int.from_bytes(data[16:18], sys.byteorder) == 1  # ET_REL


def _module_text(program, stages: dict, slots: list, emit) -> str:
    """The LLVM IR of the program: from the cache when the same kernels (their
    loop IR and table slots) were emitted before by this code generator, else
    ``emit()``."""

    from minicomp import cache as disk

    if not (program.options.get("cache", True) and disk.enabled() and "loops" in stages):
        return emit()
    name = disk.key(stages["loops"], slots, _emitter_digest()) + ".ir.z"
    text = _decompressed_text(disk.read("llvm", name))
    if text is not None and "define void @mc_main(" in text:  # junk that passed the checksum is emitted again
        return text
    text = emit()
    disk.write("llvm", name, disk.compress_text(text))
    return text


def make_llvm_target(name: str, num_threads: int | None, device: str | None):
    """This CPU (``llvm``), or a named one (``haswell``...) whose code runs on any host with its instructions."""
    from minicomp.target import Target

    if device:
        raise CompileError(f"device={device!r} is for CUDA targets, not {name!r}")
    return Target.host("llvm", num_threads) if name == "llvm" else Target.cpu(name, num_threads)


def _tune(kernels, target, threads, constants, settings, use_cache, chains=None):
    """The tuner (``llvm_tuning.py``): measured on this CPU, so loaded only when asked for."""
    from minicomp.backends.llvm_tuning import tune_for_backend

    return tune_for_backend(kernels, target, threads, constants, settings, use_cache, chains)


def _find_model(key: str):
    """A model from the whole-model cache (``llvm_model_cache.py``), or None."""
    from minicomp.backends.llvm_model_cache import find

    return find(key)


def _keep_model(key: str, model) -> None:
    from minicomp.backends.llvm_model_cache import keep

    keep(key, model)


def prepare_llvm(target, stages) -> dict:
    """Before the passes: the host check, and the threads the schedule plans for."""
    check_runs_here(target)
    if not openmp_available():
        target.num_threads = 1
        stages.set("note", "libgomp was not found: parallel loops run on one thread")
    # Schedules plan for at least 2 threads so that a model can later be told to use more.
    return {"schedule_threads": max(target.num_threads, 2) if openmp_available() else 1}


def build_llvm(program, stages: dict, opt_level: int) -> LLVMExecutable:
    """Kernels and plan -> one LLVM module -> JIT-compiled code and its pointer table."""
    import time

    from minicomp.backends.llvm_codegen import emit_module
    from minicomp.ir.loops import code_kernels, kernel_functions
    from minicomp.passes.memory import buffer_slots, kernel_slots

    t0 = time.perf_counter()
    slots = buffer_slots(program.graph, program.memory_plan)
    kernels = code_kernels(program)
    functions = kernel_functions(kernels)  # identical kernels share one function
    calls = [KernelCall(k.name, fn, kernel_slots(k, slots)) for k, fn in zip(kernels, functions)]
    ir_text = _module_text(program, stages, [c.slots for c in calls],
                           lambda: emit_module(kernels, [c.slots for c in calls], functions))
    target = program.target
    t1 = time.perf_counter()
    jit = compile_module(ir_text, opt_level, target.llvm_cpu, target.features, program.options.get("cache", True))
    timings = [("build: emit LLVM IR", t1 - t0),
               ("build: LLVM " + ("(from the cache)" if jit.cache_hit else "optimize + machine code"),
                time.perf_counter() - t1)]
    # Kept compressed or read when asked for: a large model's IR is tens of MB.
    stages.compress("llvm", ir_text)
    stages.defer("llvm_opt", lambda: jit.optimized_ir)
    return LLVMExecutable(jit, TableLayout(slots, len(slots), tuple(calls), program.memory_plan), timings)


register_backend(Backend("llvm", "LLVM IR, JIT-compiled for a CPU by llvmlite",
                         ("simplify", "patches", "nchwc", "fuse", "lower", "schedule", "plan", "legalize"), build_llvm,
                         prepare=prepare_llvm,
                         numerics={"nan_extremum": "llvm.maximum/llvm.minimum in reductions, fcmp and select "
                                                   "elsewhere (llvm_codegen.float_extremum)",
                                   "saturating_cast": "llvm.fptosi.sat / llvm.fptoui.sat"},
                         emits=("llvm", "llvm-opt", "asm"), aliases=tuple(CPUS), make_target=make_llvm_target,
                         model=make_llvm_model, tune=_tune, symbolic=True, find_model=_find_model,
                         keep_model=_keep_model))
