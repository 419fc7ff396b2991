"""LLVM in a child process: optimize one module, emit position-independent
machine code and link it into a shared library.

The parent (:mod:`minicomp.backends.llvm_native`) runs

    python llvm_worker.py OUT_DIR NAME CPU FEATURES OPT_LEVEL CC

with the module's LLVM IR on stdin, and finds in ``OUT_DIR``: ``NAME.so`` (the
library), ``NAME.pic.o`` (its object code, which MCJIT can load too) and
``NAME.ll.z`` (the optimized IR, zlib-compressed). LLVM's memory, its
libraries' included, is the child's alone and goes back when it exits.

Exit status: 0 done; 2 the IR is invalid (stderr says why); 3 linking failed;
anything else an unexpected failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    out_dir, name, cpu, features, opt_level, cc = argv
    opt = int(opt_level)
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        mod = llvm.parse_assembly(sys.stdin.read())
        mod.verify()
    except RuntimeError as exc:
        print(f"generated LLVM IR is invalid: {exc}", file=sys.stderr)
        return 2
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic")
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pto.loop_vectorization = opt >= 2
    pto.slp_vectorization = opt >= 2
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    base = os.path.join(out_dir, name)
    _write(base + ".ll.z", zlib.compress(str(mod).encode(), 1))
    _write(base + ".pic.o", tm.emit_object(mod))
    tmp_so = f"{base}.so.tmp-{os.getpid()}"
    proc = subprocess.run([cc, "-shared", "-o", tmp_so, base + ".pic.o", "-lgomp", "-lm"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"linking the shared library failed: {proc.stderr[-2000:]}", file=sys.stderr)
        return 3
    os.replace(tmp_so, base + ".so")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
