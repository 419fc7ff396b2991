"""cuda-emu: compile the generated CUDA C for the CPU and run it (tests).

The model's ``.cu`` source is included, unchanged, after ``cuda_emu.h``
(fibers per block, ``__syncthreads()`` as a real barrier, warp shuffles);
a launcher per ``__global__`` function is appended, and g++ builds a
shared library that ctypes loads. Libraries are cached on disk by the hash
of their text, so a source compiled once is not compiled again.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from minicomp.backends.cuda_codegen import Launch, storage_type
from minicomp.errors import CompileError, MinicompError

HEADER = Path(__file__).with_name("cuda_emu.h")


def cache_dir() -> Path:
    """Where compiled emulator libraries are kept: the compile cache's
    ``cuda-emu`` folder (``minicomp/cache.py``), else a temporary folder."""
    from minicomp import cache

    path = cache.folder("cuda-emu") if cache.enabled() else None
    return path if path is not None else _private_folder()


@functools.lru_cache(maxsize=1)
def _private_folder() -> Path:
    """A folder of this process alone (made by mkdtemp: mode 0700), removed at exit. Not a fixed name
    under /tmp, where another user could have made it first and planted a library in it."""
    folder = tempfile.TemporaryDirectory(prefix="minicomp-cuda-emu-")
    _private_folder.keep = folder  # removed when the process ends
    return Path(folder.name)


def driver_source(source: str, launches: list[Launch]) -> str:
    """The C++ file g++ compiles: the header, the CUDA source, one launcher per function."""
    parts = ['#include "cuda_emu.h"', "", source, ""]
    seen = set()
    for ln in launches:
        if ln.function in seen:
            continue
        seen.add(ln.function)
        args = ", ".join(f"({storage_type(b.dtype)}*)args[{i}]" for i, b in enumerate(ln.params))
        parts.append(
            f'extern "C" int mc_launch_{ln.function}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz, void** args) {{\n"
            f"  return mc_emu::launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, {'true' if ln.syncs else 'false'}, "
            f"[&] {{ {ln.function}({args}); }});\n}}")
    return "\n".join(parts) + "\n"


def compiler() -> str:
    """The host C++ compiler (``CXX``, else g++ or c++)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise MinicompError("cuda-emu needs a C++ compiler (g++): install it (e.g. apt install g++) or set CXX")
    return cxx


# No _FORTIFY_SOURCE: its longjmp check refuses jumps between fiber stacks.
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-w", "-U_FORTIFY_SOURCE"]


def header_dir() -> Path:
    """A folder holding ``cuda_emu.h`` and, when the compiler can make one, its
    precompiled form (it halves the time to compile a small model)."""
    text = HEADER.read_text()
    digest = hashlib.sha256((text + compiler() + " ".join(FLAGS)).encode()).hexdigest()[:16]
    folder = cache_dir() / f"header-{digest}"
    if not (folder / "cuda_emu.h").exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            (Path(tmp) / "cuda_emu.h").write_text(text)
            subprocess.run([compiler(), *FLAGS, "-x", "c++-header", str(Path(tmp) / "cuda_emu.h"), "-o",
                            str(Path(tmp) / "cuda_emu.h.gch")], capture_output=True)  # optional: speed only
            try:
                os.replace(tmp, folder)
            except OSError:  # another process made it first
                pass
    return folder


def build_library(source: str, launches: list[Launch]) -> ctypes.CDLL:
    """Compile (or reuse) the emulator library for this source."""
    text = driver_source(source, launches)
    digest = hashlib.sha256((text + HEADER.read_text()).encode()).hexdigest()[:24]
    lib = cache_dir() / f"{digest}.so"
    if lib.exists():
        try:
            return ctypes.CDLL(str(lib))
        except OSError:  # a damaged library (a full disk, a truncated copy): build it again
            lib.unlink(missing_ok=True)
    include = header_dir()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.cpp"
        src.write_text(text)
        out = Path(tmp) / f"model-{os.getpid()}.so"
        cmd = [compiler(), *FLAGS, "-shared", f"-I{include}", str(src), "-o", str(out), "-lpthread"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"cuda-emu: the host compiler rejected the generated CUDA C:\n"
                               f"{proc.stderr[-4000:]}")
        os.replace(out, lib)  # atomic: another process may build the same library
    return ctypes.CDLL(str(lib))


class EmuDevice:
    """Runs launches of one compiled source on host memory."""

    name = "emu"

    def __init__(self, source: str, launches: list[Launch]):
        self.lib = build_library(source, launches)
        self.lib.mc_emu_failure.restype = ctypes.c_char_p
        self.functions = {}
        for ln in launches:
            fn = getattr(self.lib, f"mc_launch_{ln.function}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p]
            self.functions[ln.function] = fn

    def launch(self, ln: Launch, pointers: list[int]) -> None:
        """Run one launch over the buffers at ``pointers`` (host addresses)."""
        args = (ctypes.c_void_p * max(len(pointers), 1))(*pointers)
        if self.functions[ln.function](*ln.grid, *ln.block, args):
            raise MinicompError(f"cuda-emu: launch {ln.function} failed: {self.lib.mc_emu_failure().decode()}")
