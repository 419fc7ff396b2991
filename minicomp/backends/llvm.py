"""The LLVM backend: JIT-compile loop-IR kernels for the host CPU with llvmlite.

The module text comes from :mod:`minicomp.backends.llvm_codegen`; here it is
parsed, verified, optimized at O3 with LLVM's new pass manager for the host
CPU and its features, and compiled by MCJIT. Parallel loops call libgomp,
which is loaded into the process once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from minicomp.errors import CompileError

_init_lock = threading.Lock()
_initialized = False
_gomp_loaded: bool | None = None


def _llvm():
    import llvmlite.binding as llvm

    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialized = True
    return llvm


def openmp_available() -> bool:
    """Load libgomp into the process (once); False if it is not installed."""
    global _gomp_loaded
    if _gomp_loaded is None:
        llvm = _llvm()
        name = ctypes.util.find_library("gomp")
        try:
            if name is None:
                raise OSError("libgomp not found")
            llvm.load_library_permanently(name)
            _gomp_loaded = True
        except (OSError, RuntimeError):
            _gomp_loaded = False
    return _gomp_loaded


def host_cpu() -> tuple[str, str]:
    """The host CPU's LLVM name and feature string."""
    llvm = _llvm()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


class JitModule:
    """One optimized, JIT-compiled LLVM module; keeps the engine alive."""

    def __init__(self, ir_text: str, opt_level: int = 3):
        llvm = _llvm()
        try:
            mod = llvm.parse_assembly(ir_text)
            mod.verify()
        except RuntimeError as exc:
            raise CompileError(f"generated LLVM IR is invalid: {exc}") from exc
        cpu, features = host_cpu()
        target = llvm.Target.from_default_triple()
        self.target_machine = target.create_target_machine(cpu=cpu, features=features, opt=opt_level,
                                                           jit=True)
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pto.loop_vectorization = opt_level >= 2
        pto.slp_vectorization = opt_level >= 2
        pb = llvm.create_pass_builder(self.target_machine, pto)
        pb.getModulePassManager().run(mod, pb)
        self.optimized_ir = str(mod)
        self.engine = llvm.create_mcjit_compiler(mod, self.target_machine)
        self.engine.finalize_object()
        self._module = mod

    def function(self, name: str, *argtypes):
        """A ctypes callable for the function ``name`` (returning void)."""
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"function {name} is missing from the compiled module")
        return ctypes.CFUNCTYPE(None, *argtypes)(addr)

    def global_address(self, name: str) -> int:
        return self.engine.get_global_value_address(name)

    def assembly(self) -> str:
        """The machine code as assembly text (for inspection)."""
        return self.target_machine.emit_assembly(self._module)
