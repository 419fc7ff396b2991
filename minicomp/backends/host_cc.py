"""Build C and C++ sources into shared libraries with the host compiler, cached on disk.

The C target (``c.py``) and cuda-emu (``cuda_emu.py``) both hand generated
source to the system compiler and load the library with ctypes. A library is
kept in the compile cache (``minicomp/cache.py``), named by a hash of the
source, the compiler and its flags, so a source compiled once is not compiled
again, in this process or another.
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

from minicomp.errors import CompileError, MinicompError


def which_compiler(variable: str, names: tuple[str, ...]) -> str | None:
    """The compiler named by the environment ``variable`` (``CC``, ``CXX``), else the first of ``names``
    on the PATH, else None."""
    return os.environ.get(variable) or next((shutil.which(n) for n in names if shutil.which(n)), None)


def find_compiler(variable: str, names: tuple[str, ...], install: str) -> str:
    """:func:`which_compiler`, or a MinicompError that says how to install one."""
    found = which_compiler(variable, names)
    if not found:
        raise MinicompError(f"no {' or '.join(names)} was found: {install}, or set {variable}")
    return found


def cache_dir(kind: str) -> Path:
    """Where built libraries of ``kind`` are kept: the compile cache's folder, else a private temporary one."""
    from minicomp import cache

    path = cache.folder(kind) if cache.enabled() else None
    return path if path is not None else _private_folder()


@functools.lru_cache(maxsize=1)
def _private_folder() -> Path:
    """A folder of this process alone (made by mkdtemp: mode 0700), removed at exit. Not a fixed name
    under /tmp, where another user could have made it first and planted a library in it."""
    folder = tempfile.TemporaryDirectory(prefix="minicomp-cc-")
    _private_folder.keep = folder  # removed when the process ends
    return Path(folder.name)


def build_library(source: str, compiler: str, flags: list[str], kind: str, suffix: str, what: str,
                  key_extra: str = "", libraries: tuple[str, ...] = ()) -> tuple[ctypes.CDLL, bool]:
    """Compile ``source`` (a ``suffix`` file) into a shared library, or reuse the one built before;
    returns the loaded library and whether it came from the cache. ``what`` names the source in the
    error shown when the compiler refuses it; ``key_extra``: more text the library depends on (a header)."""
    digest = hashlib.sha256("\0".join([source, compiler, *flags, *libraries, key_extra]).encode()).hexdigest()
    lib = cache_dir(kind) / f"{digest[:24]}.so"
    if lib.exists():
        try:
            return ctypes.CDLL(str(lib)), True
        except OSError:  # a damaged library (a full disk, a truncated copy): build it again
            lib.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"model{suffix}"
        src.write_text(source)
        out = Path(tmp) / f"model-{os.getpid()}.so"
        proc = subprocess.run([compiler, *flags, "-shared", str(src), "-o", str(out), *libraries],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"{what}: the host compiler ({compiler}) rejected the generated source:\n"
                               f"{proc.stderr[-4000:]}")
        os.replace(out, lib)  # atomic: another process may build the same library
    return ctypes.CDLL(str(lib)), False
