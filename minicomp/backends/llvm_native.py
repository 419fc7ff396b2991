"""Machine code without LLVM in the process: a shared library built by a
child process and loaded with ctypes.

LLVM's libraries and its working memory take 40 MB and more of a process
that JIT-compiles in place (llvmlite maps all of LLVM), and most of it stays
resident after compiling. A large module is therefore split into parts,
one per core, compiled at once by :mod:`minicomp.backends.llvm_worker` in
child processes, and their machine code linked into a shared library; this
process only loads that library.
The library goes into the compile cache, so a later process loads it without
starting LLVM at all; ``minicomp/host_cpu.py`` answers from the cache too.

``MINICOMP_LLVM_WORKER`` chooses: ``auto`` (the default: modules of
:data:`WORKER_MIN_IR_BYTES` of IR or more, where a child's start-up is small
beside LLVM's time), ``always`` or ``never``. Without a C compiler to link
with (``CC``, cc or gcc) every module is compiled in process.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import subprocess
import sys
import tempfile
import zlib

from minicomp import cache as disk
from minicomp.errors import CompileError, MinicompError
from minicomp.host_cpu import host_cpu, llvm_version  # noqa: F401  (host_cpu: re-exported for the backend)

WORKER_MIN_IR_BYTES = 128 * 1024
WORKER_MODES = ("auto", "always", "never")


def worker_mode() -> str:
    mode = os.environ.get("MINICOMP_LLVM_WORKER", "auto").lower()
    if mode not in WORKER_MODES:
        raise MinicompError(f"MINICOMP_LLVM_WORKER={mode!r}: choose one of {', '.join(WORKER_MODES)}")
    return mode


@functools.lru_cache(maxsize=1)
def linker() -> str | None:
    """The C compiler that links shared libraries, or None."""
    from minicomp.backends.host_cc import which_compiler

    return which_compiler("CC", ("cc", "gcc"))


def use_worker(ir_bytes: int) -> bool:
    """Compile a module of ``ir_bytes`` of LLVM IR in a child process?"""
    mode = worker_mode()
    if mode == "never" or linker() is None:
        return False
    return mode == "always" or ir_bytes >= WORKER_MIN_IR_BYTES


def code_key(ir_text: str, cpu: str, features: str, opt_level: int) -> str:
    """The cache key of the machine code of one module."""
    return disk.key(ir_text, cpu, features, opt_level, llvm_version(), platform.machine(), sys.platform)


# -- the library ------------------------------------------------------------------------

class NativeModule:
    """A compiled module as a shared library loaded by ctypes: the interface of
    :class:`minicomp.backends.llvm.JitModule` (functions, globals, the optimized
    IR and the object code for ``save``/``export_library``), without LLVM.

    The optimized IR and the object code are read (from the cache or memory)
    only when asked for. ``cache_entry``: the name of its entry in the compile
    cache (``.so``, ``.pic.o``, ``.ll.z``), or None when it is not there."""

    def __init__(self, library: bytes, cpu: str, features: str, cache_hit: bool, read_ir, read_object,
                 cache_entry: str | None = None):
        self.cpu, self.features, self.cache_hit = cpu, features, cache_hit
        self.cache_entry = cache_entry
        self._read_ir, self._read_object = read_ir, read_object
        self._ir: str | None = None
        with tempfile.NamedTemporaryFile(suffix=".so", prefix="minicomp-") as f:
            f.write(library)
            f.flush()
            try:
                self._lib = ctypes.CDLL(f.name)
            except OSError as exc:
                raise CompileError(f"the compiled library could not be loaded: {exc}") from None

    def optimized_parts(self) -> list[str]:
        """The optimized IR of each part the module was compiled in."""
        data = self._read_ir()
        return [zlib.decompress(b).decode() for b in _unpack(data)] if data is not None else []

    @property
    def optimized_ir(self) -> str:
        """The optimized IR, the parts one after another (read when asked for)."""
        parts = self.optimized_parts()
        if len(parts) == 1:
            return parts[0]
        return "\n".join(f"{PART_MARK.format(k)}\n{text}" for k, text in enumerate(parts)) or \
            "; the optimized IR is no longer in the cache"

    @property
    def object_code(self) -> bytes | None:
        return self._read_object()

    def shared_object_code(self) -> bytes:
        """The position-independent object code (what the library was linked from)."""
        obj = self._read_object()
        if obj is None:
            raise CompileError("the object code of this model is no longer in the cache; compile it again")
        return obj

    def function(self, name: str, *argtypes):
        """A ctypes callable for the function ``name`` (returning void)."""
        try:
            address = ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value
        except AttributeError:
            raise CompileError(f"function {name} is missing from the compiled module") from None
        return ctypes.CFUNCTYPE(None, *argtypes)(address)

    def global_address(self, name: str) -> int:
        return ctypes.addressof(ctypes.c_int32.in_dll(self._lib, name))

    def assembly(self) -> str:
        """The machine code as assembly text (LLVM is loaded here to make it)."""
        from minicomp.backends.llvm import _llvm

        llvm = _llvm()
        tm = llvm.Target.from_default_triple().create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, reloc="pic")
        return "\n".join(tm.emit_assembly(llvm.parse_assembly(text)) for text in self.optimized_parts())


def load_cached(name: str, cpu: str, features: str) -> NativeModule | None:
    """The library of cache entry ``name``, or None."""
    library = disk.read("llvm", name + ".so")
    if library is None:
        return None
    try:
        return NativeModule(library, cpu, features, True, lambda: disk.read("llvm", name + ".ll.z"),
                            lambda: disk.read("llvm", name + ".pic.o"), name)
    except CompileError:
        return None  # damaged or built for another system: compile again


def worker_count(ir_bytes: int) -> int:
    """Children to compile a module of ``ir_bytes`` with: one per core, each
    with a part of at least half the worker threshold."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8, ir_bytes // (WORKER_MIN_IR_BYTES // 2)))


def split_module(ir_text: str, parts: int) -> list[str]:
    """The module from ``llvm_codegen`` as ``parts`` modules that link into the
    same program: each kernel (with its outlined parallel loops) goes to the
    part with the least text so far; ``mc_main`` and the thread-count global
    stay in the first part, which declares the kernels it calls in the others;
    every part gets the declarations, the math helpers (internal, so each
    part has its own) and the loop metadata."""
    # Walked by offsets, not split into lines: a large module's lines as
    # Python strings took twice its text again (ShuffleNet: 6 MB for 3 MB).
    head, kernels, helpers, main, metadata = [], [], [], "", []
    pending: list[str] = []
    pos, n = 0, len(ir_text)
    while pos < n:
        eol = ir_text.find("\n", pos)
        eol = n if eol < 0 else eol
        line = ir_text[pos:eol]
        if line.startswith("define "):
            end = ir_text.find("\n}\n", eol - 1) if line.endswith("{") else -1
            if end < 0:
                return [ir_text]  # not the code generator's text: the worker will say what is wrong
            function = ir_text[pos:end + 3]
            if "@mc_main(" in line:
                main = function
            elif "@k_" not in line:
                helpers.append(function)
            elif line.startswith("define internal"):
                pending.append(function)  # an outlined loop: it goes with the kernel defined next
            else:
                kernels.append((line, pending + [function]))
                pending = []
            pos = end + 3
            continue
        (metadata if line.startswith("!") else head).append(line)
        pos = eol + 1
    if parts <= 1 or len(kernels) < 2:
        return [ir_text]
    groups: list[list] = [[] for _ in range(min(parts, len(kernels)))]
    sizes = [0] * len(groups)
    for define, functions in kernels:
        k = sizes.index(min(sizes))
        groups[k].append((define, functions))
        sizes[k] += sum(map(len, functions))
    shared = "\n".join(helpers + metadata) + "\n"
    texts = []
    for k, group in enumerate(groups):
        body = "\n".join(f for _, functions in group for f in functions)
        if k == 0:
            elsewhere = [d.replace("define ", "declare ", 1).rstrip(" {") for g in groups[1:] for d, _ in g]
            texts.append("\n".join(head + elsewhere) + "\n" + body + main + shared)
        else:
            # The slot signature (@mc_slot_*) is defined once, in the first part; no code reads it.
            own_head = [ln.replace(" = global i32 1,", " = external global i32,") for ln in head
                        if not ln.startswith("@mc_slot_")]
            texts.append("\n".join(own_head) + "\n" + body + shared)
    return texts


PART_MARK = "; ---- module part {} ----"


def _pack(blobs: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(8, "little") + b for b in blobs)


def _unpack(data: bytes) -> list[bytes]:
    blobs, at = [], 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 8], "little")
        blobs.append(data[at + 8:at + 8 + n])
        at += 8 + n
    return blobs


def compile_in_worker(ir_text: str, cpu: str, features: str, opt_level: int, name: str) -> NativeModule | None:
    """Compile in child processes, one per part of the module (:func:`split_module`,
    run at once on the cores), and link their objects into one shared library;
    store the results under cache entry ``name`` (when not empty). None when that
    fails for want of a linker or libgomp: the caller compiles in this process."""
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llvm_worker.py")
    parts = split_module(ir_text, worker_count(len(ir_text)))
    with tempfile.TemporaryDirectory(prefix="minicomp-llvm-") as out:
        for k, text in enumerate(parts):
            with open(os.path.join(out, f"p{k}.ll"), "w") as f:
                f.write(text)
        n = len(parts)
        del parts
        logs = [open(os.path.join(out, f"p{k}.log"), "w+") for k in range(n)]  # a pipe could fill and stall
        try:
            children = [subprocess.Popen([sys.executable, worker, out, f"p{k}", cpu, features, str(opt_level)],
                                         stdout=subprocess.DEVNULL, stderr=logs[k]) for k in range(n)]
            codes = [child.wait() for child in children]
        except OSError:
            return None
        finally:
            results = []
            for log in logs:
                log.seek(0)
                results.append(log.read())
                log.close()
        results = list(zip(codes, results))
        for code, err in results:
            if code == 2:
                raise CompileError(err.strip() or "generated LLVM IR is invalid")
            if code == 0:
                for line in err.splitlines():
                    if "loop not vectorized" not in line:
                        print(line, file=sys.stderr)
        if any(code != 0 for code, _ in results):
            return None
        objects = [os.path.join(out, f"p{k}.pic.o") for k in range(n)]
        combined = os.path.join(out, "m.pic.o")
        library = os.path.join(out, "m.so")
        # One relocatable object of all parts (for save and export), then the library.
        steps = [[linker(), "-r", "-nostdlib", "-o", combined] + objects] if len(objects) > 1 else []
        steps.append([linker(), "-shared", "-o", library, combined if len(objects) > 1 else objects[0],
                      "-lgomp", "-lm"])
        for cmd in steps:
            try:
                if subprocess.run(cmd, capture_output=True).returncode != 0:
                    return None
            except OSError:
                return None
        files = {}
        for suffix, path in ((".so", library), (".pic.o", combined if len(objects) > 1 else objects[0])):
            with open(path, "rb") as f:
                files[suffix] = f.read()
        optimized = []
        for k in range(n):
            with open(os.path.join(out, f"p{k}.ll.z"), "rb") as f:
                optimized.append(f.read())
        files[".ll.z"] = _pack(optimized)
    stored = bool(name) and all([disk.write("llvm", name + suffix, data) for suffix, data in files.items()])
    library_bytes = files.pop(".so")
    if stored:  # read the object code and the optimized IR back from the cache when asked, as a cache hit does
        files.clear()
        return NativeModule(library_bytes, cpu, features, False, lambda: disk.read("llvm", name + ".ll.z"),
                             lambda: disk.read("llvm", name + ".pic.o"), name)
    return NativeModule(library_bytes, cpu, features, False, lambda: files[".ll.z"], lambda: files[".pic.o"])
