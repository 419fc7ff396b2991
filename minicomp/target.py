"""Targets as data: the hardware a model is compiled for.

A :class:`Target` names its backend (``llvm``, ``cuda``, ``reference``) and describes
the machine: cores, vector width and register count, cache sizes and, for
GPUs, a :class:`GPUInfo`. Schedules read these numbers (register tiles from
the vector width and registers, cache blocks from the cache sizes); nothing
else is assumed about the hardware.

``Target.host()`` reads the machine this process runs on;
``Target.cpu("haswell")`` describes a named CPU (code for it runs on any
host that has its instruction set); targets can also be built by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from minicomp.errors import UnsupportedError
from minicomp.wording import count


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cache_size(level: int) -> int | None:
    """Bytes of the host's data/unified cache at ``level``, from sysfs."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            with open(os.path.join(d, "level")) as f:
                lvl = int(f.read())
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            if lvl == level and kind in ("Data", "Unified"):
                with open(os.path.join(d, "size")) as f:
                    text = f.read().strip()
                mult = {"K": 1024, "M": 1 << 20}.get(text[-1], 1)
                return int(text.rstrip("KM")) * mult
    except OSError:
        return None
    return None


@dataclass
class GPUInfo:
    """What a GPU schedule needs to know; the defaults describe an sm_90 (H100) GPU."""

    arch: str = "sm_90"
    warp_size: int = 32
    max_threads_per_block: int = 1024
    shared_bytes_per_block: int = 48 * 1024  # without opting in to more
    registers_per_block: int = 65536
    max_registers_per_thread: int = 255
    multiprocessors: int = 132
    max_threads_per_sm: int = 2048
    shared_bytes_per_sm: int = 228 * 1024
    fp32_flops_per_s: float = 67e12  # FMA units, without tensor cores
    dram_bytes_per_s: float = 3.35e12
    l2_bytes: int = 50 << 20
    l2_bytes_per_s: float = 10e12


# Named CPUs: (LLVM cpu name, vector bits, vector registers, L1, L2, the
# features the host must have to run the code).
CPUS = {
    "x86-64": ("x86-64", 128, 16, 32 << 10, 256 << 10, ()),
    "haswell": ("haswell", 256, 16, 32 << 10, 256 << 10, ("avx2", "fma")),
    "skylake-avx512": ("skylake-avx512", 512, 32, 32 << 10, 1 << 20, ("avx512f",)),
    "znver4": ("znver4", 512, 32, 32 << 10, 1 << 20, ("avx512f",)),
    "znver5": ("znver5", 512, 32, 48 << 10, 1 << 20, ("avx512f",)),
}


# LLVM feature -> the dot-product unit it names (Target.dot_units).
DOT_UNITS = (("+avx512vnni", "AVX-512 VNNI (int8)"), ("+avxvnni", "AVX-VNNI (int8)"), ("+amx-int8", "AMX (int8)"),
             ("+avx512bf16", "AVX-512 BF16"), ("+amx-bf16", "AMX (bf16)"))


@dataclass
class Target:
    """The hardware a model is compiled for, as data (see the module docs)."""

    name: str = "llvm"
    num_threads: int = field(default_factory=_cpu_count)
    llvm_cpu: str = ""  # the CPU name LLVM generates code for
    features: str = ""
    vector_bits: int = 256
    vector_registers: int = 16
    l1_bytes: int | None = None
    l2_bytes: int | None = None
    l3_bytes: int | None = None
    requires: tuple = ()  # CPU features the host needs to run code for this target
    gpu: GPUInfo | None = None
    device: str = ""  # for GPU targets: "gpu" (pycuda) or "emu" (cuda-emu on the CPU)

    @classmethod
    def host(cls, name: str = "llvm", num_threads: int | None = None) -> Target:
        """The machine this process runs on."""
        t = cls(name=name, num_threads=num_threads or _cpu_count(),
                l1_bytes=_cache_size(1), l2_bytes=_cache_size(2), l3_bytes=_cache_size(3))
        if name == "llvm":
            from minicomp.host_cpu import host_cpu

            t.llvm_cpu, t.features = host_cpu()
            t.vector_bits = 512 if "+avx512f" in t.features else 256 if "+avx" in t.features else 128
            t.vector_registers = 32 if "+avx512f" in t.features else 16
        return t

    @classmethod
    def cpu(cls, cpu: str, num_threads: int | None = None) -> Target:
        """A named CPU (``haswell``, ``skylake-avx512``, ``znver4``, ``znver5``,
        ``x86-64``) or ``host``, for the llvm backend."""
        if cpu == "host":
            return cls.host("llvm", num_threads)
        if cpu not in CPUS:
            raise UnsupportedError(f"unknown CPU {cpu!r}; choose host or one of {', '.join(CPUS)}")
        llvm_name, bits, regs, l1, l2, needs = CPUS[cpu]
        return cls(name="llvm", num_threads=num_threads or _cpu_count(), llvm_cpu=llvm_name, features="",
                   vector_bits=bits, vector_registers=regs, l1_bytes=l1, l2_bytes=l2,
                   l3_bytes=_cache_size(3), requires=needs)

    @classmethod
    def cuda(cls, arch: str = "sm_90", device: str = "gpu") -> Target:
        """An NVIDIA GPU (the description a CUDA schedule reads). ``device``:
        run on the GPU through pycuda ("gpu") or on the CPU through cuda-emu ("emu")."""
        return cls(name="cuda", num_threads=1, llvm_cpu="", vector_bits=128, vector_registers=255,
                   gpu=GPUInfo(arch=arch), device=device)

    @property
    def dot_units(self) -> list[str]:
        """The low-precision dot-product instructions this CPU has (from its LLVM features): int8
        (VNNI, AMX) and bfloat16 ones. Reported (``minicomp targets``), not yet used: bfloat16 values
        are computed in float32 and rounded at every store (docs/adding-a-backend.md), and nothing
        is quantized to int8."""
        return [name for feature, name in DOT_UNITS if feature in self.features.split(",")]

    def vector_lanes(self, dtype) -> int:
        """Elements of ``dtype`` in one vector register."""
        return max(1, self.vector_bits // 8 // dtype.itemsize)

    def __str__(self) -> str:
        if self.gpu is not None:
            where = "on the CPU through cuda-emu" if self.device == "emu" else "through pycuda"
            return f"{self.name} ({self.gpu.arch}, {where})"
        chip = self.llvm_cpu or (self.gpu.arch if self.gpu else "generic")
        return f"{self.name} ({chip}, {count(self.num_threads, 'thread')}, {self.vector_bits}-bit vectors)"
