"""cuda-emu: compile the generated CUDA C for the CPU and run it (tests).

The model's ``.cu`` source is included, unchanged, after ``cuda_emu.h``
(fibers per block, ``__syncthreads()`` as a real barrier, warp shuffles);
a launcher per ``__global__`` function is appended, and g++ builds a
shared library that ctypes loads. Libraries are cached on disk by the hash
of their text, so a source compiled once is not compiled again.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from minicomp.backends import host_cc
from minicomp.backends.cuda_codegen import Launch, storage_type
from minicomp.errors import MinicompError

HEADER = Path(__file__).with_name("cuda_emu.h")


def cache_dir() -> Path:
    """Where compiled emulator libraries are kept: the compile cache's
    ``cuda-emu`` folder (``minicomp/cache.py``), else a temporary folder."""
    return host_cc.cache_dir("cuda-emu")


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
    return host_cc.find_compiler("CXX", ("g++", "c++"), "cuda-emu needs a C++ compiler: install one "
                                                         "(e.g. apt install g++)")


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
    lib, _ = host_cc.build_library(driver_source(source, launches), compiler(), [*FLAGS, f"-I{header_dir()}"],
                                   "cuda-emu", ".cpp", "cuda-emu", key_extra=HEADER.read_text(),
                                   libraries=("-lpthread",))
    return lib


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

    def launch(self, ln: Launch, pointers: list[int], grid: tuple[int, int, int]) -> None:
        """Run one launch over the buffers at ``pointers`` (host addresses), on ``grid`` (the launch's
        grid at the call's sizes)."""
        if 0 in grid:  # no block to run (a symbolic count that is 0 at this call)
            return
        args = (ctypes.c_void_p * max(len(pointers), 1))(*pointers)
        if self.functions[ln.function](*grid, *ln.block, args):
            raise MinicompError(f"cuda-emu: launch {ln.function} failed: {self.lib.mc_emu_failure().decode()}")
