"""The CPU this process runs on, as LLVM names it: its name and feature string.

Machine description, not code generation: ``Target.host()`` reads it to
describe the host (vector width, registers), and the llvm backend to choose
instructions. The answer is kept in the compile cache under a fingerprint of
``/proc/cpuinfo``, so a later process knows its CPU without loading LLVM
(which takes 40 MB and a few hundred milliseconds); the first one asks LLVM
in a child process.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys

from minicomp import cache as disk


def llvm_version() -> str:
    """llvmlite's version (which fixes LLVM's), read without loading LLVM."""
    from importlib.metadata import version

    return version("llvmlite")


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
    cached = _host_entry(disk.read("llvm", name))
    if cached is not None:
        return cached
    # Absent or damaged: ask LLVM again, in a child, and store the answer.
    try:
        proc = subprocess.run([sys.executable, "-c", _ASK_LLVM], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return _ask_llvm_here()
    lines = proc.stdout.split("\n")
    data = f"{lines[0]}\n{lines[1]}".encode() if proc.returncode == 0 and len(lines) >= 2 else None
    answer = _host_entry(data)
    if answer is None:
        return _ask_llvm_here()
    disk.write("llvm", name, data)
    return answer


def _host_entry(data: bytes | None) -> tuple[str, str] | None:
    """(cpu, features) from a host-CPU cache entry, or None when it is absent or not that: a CPU name
    and a comma-separated list of +feature/-feature words."""
    if data is None:
        return None
    try:
        cpu, features = data.decode("ascii").split("\n")
    except (UnicodeDecodeError, ValueError):
        return None
    words = features.split(",") if features else []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cpu) or not all(re.fullmatch(r"[+-][A-Za-z0-9_.-]+", w) for w in words):
        return None
    return cpu, features
