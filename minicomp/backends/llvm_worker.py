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

import os
import sys
import zlib


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pto.loop_vectorization = opt >= 2
    pto.slp_vectorization = opt >= 2
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    _write(base + ".ll.z", zlib.compress(str(mod).encode(), 1))
    _write(base + ".pic.o", tm.emit_object(mod))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
