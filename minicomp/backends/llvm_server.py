"""LLVM's optimization in one long-lived helper process per minicomp process.

llvmlite keeps about 200 kB for every module its pass builder optimizes
(measured: 48 kB even for an empty module at O3, none at O0), and nothing
frees it but the end of the process: a program that compiles model after
model grew by 40 MB in 200 compiles. So the optimization and MCJIT's code
generation run in a helper (``llvm_worker.py --serve``, started on the first
compile), which hands back the object code; this process loads it as it
loads a compile-cache entry. The helper is replaced when it has grown past
:data:`MAX_HELPER_BYTES`, so the memory goes back to the system.

``MINICOMP_LLVM_WORKER=never`` compiles in this process instead.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading

from minicomp.backends.llvm_worker import _read_frame, _write_frames
from minicomp.errors import CompileError

# The helper is replaced once its resident memory passes this.
MAX_HELPER_BYTES = 768 << 20


class _Helper:
    """The helper process and the lock that keeps one request at a time on its pipes."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def compile(self, ir_text: str, cpu: str, features: str, opt_level: int) -> tuple[bytes, str] | None:
        """(object code, optimized IR), or None when no helper could do it (the caller compiles here).
        CompileError when LLVM finds the IR invalid."""
        header = json.dumps({"cpu": cpu, "features": features, "opt": opt_level}).encode()
        with self.lock:
            for _ in range(2):  # a helper that died (or was killed) is started once more
                proc = self._running()
                if proc is None:
                    return None
                try:
                    _write_frames(proc.stdin, header, ir_text.encode())
                    reply = json.loads(_read_frame(proc.stdout))
                    if not reply["ok"]:
                        raise CompileError(f"generated LLVM IR is invalid: {reply['error']}")
                    obj, optimized = _read_frame(proc.stdout), _read_frame(proc.stdout).decode()
                except (OSError, EOFError, ValueError, KeyError):
                    self._stop()
                    continue
                if _resident_bytes(proc.pid) > MAX_HELPER_BYTES:
                    self._stop()  # its memory goes back; the next compile starts a fresh one
                return obj, optimized
        return None

    def _running(self) -> subprocess.Popen | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llvm_worker.py")
        try:
            # Its stderr is ours: LLVM's messages (past the vectorizer's remarks) reach the user.
            self.proc = subprocess.Popen([sys.executable, worker, "--serve"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, close_fds=True)
        except OSError:
            self.proc = None
        return self.proc

    def _stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_helper = _Helper()


def _forget_after_fork() -> None:
    # The child must not talk on its parent's pipes: it starts a helper of its own when it compiles.
    global _helper
    _helper = _Helper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(lambda: _helper._stop())


def compile_in_helper(ir_text: str, cpu: str, features: str, opt_level: int) -> tuple[bytes, str] | None:
    """(object code as MCJIT makes it, optimized IR) from the helper process, or None when there is none
    to ask (compile in this process then); CompileError for IR that LLVM refuses."""
    return _helper.compile(ir_text, cpu, features, opt_level)
