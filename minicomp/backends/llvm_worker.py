"""LLVM in a child process: optimize one module and emit its machine code as
position-independent code.

The parent (:mod:`minicomp.backends.llvm_native`) runs, once per part of a
model's module and all at once,

    python llvm_worker.py FOLDER NAME CPU FEATURES OPT_LEVEL

and finds ``FOLDER/NAME.pic.o`` (the object code) and ``FOLDER/NAME.ll.z``
(the optimized IR, zlib-compressed) made from ``FOLDER/NAME.ll``. LLVM's
memory, its libraries' included, is the child's alone and goes back when it
exits. Run by path, the child imports llvmlite and the standard library only.

Exit status: 0 done; 2 the IR is invalid (stderr says why); anything else an
unexpected failure.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def optimize(llvm, mod, tm, opt: int) -> None:
    """Run LLVM's default pipeline for ``opt`` (vectorizers from O2) on ``mod``, in place: the one pipeline
    every way of compiling uses (in the parent, a part's child, the helper)."""
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pto.loop_vectorization = opt >= 2
    pto.slp_vectorization = opt >= 2
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def main(argv: list[str]) -> int:
    folder, name, cpu, features, opt_level = argv
    opt = int(opt_level)
    base = os.path.join(folder, name)
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    with open(base + ".ll") as f:
        text = f.read()
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as exc:
        print(f"generated LLVM IR is invalid: {exc}", file=sys.stderr)
        return 2
    del text
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic")
    optimize(llvm, mod, tm, opt)
    _write(base + ".ll.z", zlib.compress(str(mod).encode(), 1))
    _write(base + ".pic.o", tm.emit_object(mod))
    return 0


# -- the long-lived helper ---------------------------------------------------------------
#
#     python llvm_worker.py --serve
#
# reads requests from stdin and answers on stdout, one after another, until
# stdin closes. A request is a frame with a JSON header (cpu, features,
# opt_level) and a frame with the module's IR; the answer is a frame with a
# JSON header (ok, error) and, when ok, a frame with the machine code MCJIT
# made (the object file the parent loads, as it loads a cache entry) and one
# with the optimized IR. A frame is its length (8 bytes, little-endian) and
# its bytes. llvmlite leaks about 200 kB per optimization run (in its pass
# builder): here, in a process the parent replaces when it grows, instead of
# in the user's.


def _read_frame(stream) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    n = int.from_bytes(head, "little")
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _write_frames(stream, *frames: bytes) -> None:
    for frame in frames:
        stream.write(len(frame).to_bytes(8, "little"))
        stream.write(frame)
    stream.flush()


def compile_for_mcjit(llvm, text: str, cpu: str, features: str, opt: int) -> tuple[bytes, str]:
    """(the object code MCJIT makes, the optimized IR) of one module; RuntimeError if the IR is invalid."""
    mod = llvm.parse_assembly(text)
    mod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=opt, jit=True)
    optimize(llvm, mod, tm, opt)
    optimized = str(mod)
    objects = []
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.set_object_cache(notify_func=lambda module, data: objects.append(bytes(data)))
    engine.finalize_object()
    if len(objects) != 1:
        raise RuntimeError(f"MCJIT made {len(objects)} object files, not one")
    return objects[0], optimized


def serve() -> int:
    """Answer compile requests on stdin/stdout until stdin closes."""
    import ctypes.util
    import json

    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    gomp = ctypes.util.find_library("gomp")
    if gomp:  # MCJIT resolves the parallel loops' calls while it finalizes
        llvm.load_library_permanently(gomp)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            header = json.loads(_read_frame(stdin))
            text = _read_frame(stdin).decode()
        except EOFError:
            return 0
        try:
            with without_vectorizer_remarks():
                obj, optimized = compile_for_mcjit(llvm, text, header["cpu"], header["features"], header["opt"])
        except RuntimeError as exc:
            _write_frames(stdout, json.dumps({"ok": False, "error": str(exc)}).encode())
            continue
        _write_frames(stdout, json.dumps({"ok": True}).encode(), obj, optimized.encode())


@contextlib.contextmanager
def without_vectorizer_remarks():
    """LLVM prints 'loop not vectorized' to the process's stderr when a loop we
    hinted cannot be vectorized: a remark, not an error. Catch what LLVM
    writes to file descriptor 2 meanwhile and pass on every other line."""
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                if "loop not vectorized" not in line:
                    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
