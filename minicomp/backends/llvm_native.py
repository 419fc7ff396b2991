"""Machine code without LLVM in the process: a shared library built by a
child process and loaded with ctypes.

LLVM's libraries and its working memory take 40 MB and more of a process
that JIT-compiles in place (llvmlite maps all of LLVM), and most of it stays
resident after compiling. A large module is therefore compiled by
:mod:`minicomp.backends.llvm_worker` in a child process, which links the
machine code into a shared library; this process only loads that library.
The library goes into the compile cache, so a later process loads it without
starting LLVM at all; :func:`host_cpu` answers from the cache too.

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
import shutil
import subprocess
import sys
import tempfile
import zlib

from minicomp import cache as disk
from minicomp.errors import CompileError, MinicompError

WORKER_MIN_IR_BYTES = 512 * 1024
WORKER_MODES = ("auto", "always", "never")


def worker_mode() -> str:
    mode = os.environ.get("MINICOMP_LLVM_WORKER", "auto").lower()
    if mode not in WORKER_MODES:
        raise MinicompError(f"MINICOMP_LLVM_WORKER={mode!r}: choose one of {', '.join(WORKER_MODES)}")
    return mode


@functools.lru_cache(maxsize=1)
def linker() -> str | None:
    """The C compiler that links shared libraries, or None."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def use_worker(ir_bytes: int) -> bool:
    """Compile a module of ``ir_bytes`` of LLVM IR in a child process?"""
    mode = worker_mode()
    if mode == "never" or linker() is None:
        return False
    return mode == "always" or ir_bytes >= WORKER_MIN_IR_BYTES


def llvm_version() -> str:
    """llvmlite's version (which fixes LLVM's), read without loading LLVM."""
    from importlib.metadata import version

    return version("llvmlite")


def code_key(ir_text: str, cpu: str, features: str, opt_level: int) -> str:
    """The cache key of the machine code of one module."""
    return disk.key(ir_text, cpu, features, opt_level, llvm_version(), platform.machine(), sys.platform)


# -- the host CPU -----------------------------------------------------------------------

_ASK_LLVM = ("import llvmlite.binding as llvm; "
             "print(llvm.get_host_cpu_name()); print(llvm.get_host_cpu_features().flatten())")


def _ask_llvm_here() -> tuple[str, str]:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def _cpu_fingerprint() -> str | None:
    """What identifies this CPU to LLVM: the first processor's lines of /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return None
    keep = ("vendor_id", "cpu family", "model", "model name", "flags")
    return "\n".join(line for line in text.splitlines() if line.split(":")[0].strip() in keep) or None


@functools.lru_cache(maxsize=1)
def host_cpu() -> tuple[str, str]:
    """The host CPU's LLVM name and feature string: from the cache, else asked
    of LLVM in a child process (and stored), else of LLVM here."""
    fingerprint = _cpu_fingerprint()
    if "llvmlite.binding" in sys.modules or fingerprint is None or not disk.enabled():
        return _ask_llvm_here()
    name = "host-" + disk.key(fingerprint, llvm_version())
    data = disk.read("llvm", name)
    if data is None:
        try:
            proc = subprocess.run([sys.executable, "-c", _ASK_LLVM], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return _ask_llvm_here()
        lines = proc.stdout.split("\n")
        if proc.returncode != 0 or len(lines) < 2 or not lines[0]:
            return _ask_llvm_here()
        data = f"{lines[0]}\n{lines[1]}".encode()
        disk.write("llvm", name, data)
    cpu, features = data.decode().split("\n")
    return cpu, features


# -- the library ------------------------------------------------------------------------

class NativeModule:
    """A compiled module as a shared library loaded by ctypes: the interface of
    :class:`minicomp.backends.llvm.JitModule` (functions, globals, the optimized
    IR and the object code for ``save``/``export_library``), without LLVM.

    The optimized IR and the object code are read (from the cache or memory)
    only when asked for."""

    def __init__(self, library: bytes, cpu: str, features: str, cache_hit: bool, read_ir, read_object):
        self.cpu, self.features, self.cache_hit = cpu, features, cache_hit
        self._read_ir, self._read_object = read_ir, read_object
        self._ir: str | None = None
        with tempfile.NamedTemporaryFile(suffix=".so", prefix="minicomp-") as f:
            f.write(library)
            f.flush()
            try:
                self._lib = ctypes.CDLL(f.name)
            except OSError as exc:
                raise CompileError(f"the compiled library could not be loaded: {exc}") from None

    @property
    def optimized_ir(self) -> str:
        if self._ir is None:
            data = self._read_ir()
            self._ir = zlib.decompress(data).decode() if data is not None else "; the optimized IR is not kept"
        return self._ir

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
        return tm.emit_assembly(llvm.parse_assembly(self.optimized_ir))


def load_cached(name: str, cpu: str, features: str) -> NativeModule | None:
    """The library of cache entry ``name``, or None."""
    library = disk.read("llvm", name + ".so")
    if library is None:
        return None
    try:
        return NativeModule(library, cpu, features, True, lambda: disk.read("llvm", name + ".ll.z"),
                            lambda: disk.read("llvm", name + ".pic.o"))
    except CompileError:
        return None  # damaged or built for another system: compile again


def compile_in_worker(ir_text: str, cpu: str, features: str, opt_level: int, name: str) -> NativeModule | None:
    """Compile and link in a child process; store the results under cache entry
    ``name`` (when not empty). None when the child could not (no libgomp to
    link with, say): the caller compiles in this process instead."""
    # Run by path: the child imports llvmlite and the standard library, not minicomp.
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "llvm_worker.py")]
    with tempfile.TemporaryDirectory(prefix="minicomp-llvm-") as out:
        try:
            proc = subprocess.run(cmd + [out, "m", cpu, features, str(opt_level), linker()], input=ir_text,
                                  capture_output=True, text=True)
        except OSError:
            return None
        for line in proc.stderr.splitlines():
            if "loop not vectorized" not in line and proc.returncode == 0:
                print(line, file=sys.stderr)
        if proc.returncode == 2:
            raise CompileError(proc.stderr.strip() or "generated LLVM IR is invalid")
        if proc.returncode != 0:
            return None
        files = {}
        for suffix in (".so", ".pic.o", ".ll.z"):
            with open(os.path.join(out, "m" + suffix), "rb") as f:
                files[suffix] = f.read()
    if name:
        for suffix, data in files.items():
            disk.write("llvm", name + suffix, data)
    library = files.pop(".so")
    return NativeModule(library, cpu, features, False, lambda: files[".ll.z"], lambda: files[".pic.o"])

