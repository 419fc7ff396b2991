"""The CUDA backend: loop IR -> CUDA C, run by pycuda on a GPU or by cuda-emu on the CPU.

Compiling for ``cuda`` needs neither a GPU nor pycuda: the passes, the GPU
schedules and the CUDA C (``model.stages["cuda"]``) are produced anywhere.
The device is chosen when the model is first called:

- ``gpu`` (the default): pycuda compiles the source with nvcc for the GPU
  it finds, weights are uploaded once, one device arena holds every
  intermediate buffer, launches run in order on one stream;
- ``emu``: the same source compiled by g++ with ``cuda_emu.h`` and run on the
  CPU (``mc.compile(g, target="cuda", device="emu")`` or ``target="cuda-emu"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from minicomp.backends.cuda_codegen import Launch, render_module
from minicomp.backends.registry import Backend, register_backend
from minicomp.errors import MinicompError
from minicomp.ir.loops import DIM_SIZES, code_kernels
from minicomp.passes.memory import buffer_slots, kernel_slots
from minicomp.runtime import (
    CompiledModel,
    bind_host_io,
    bind_inputs,
    collect_outputs,
    contiguous,
    dim_sizes_array,
    fresh_outputs,
    host_buffers,
    write_back,
)
from minicomp.wording import count

DEVICES = ("gpu", "emu")
INSTALL_HINT = ('pip install -e ".[cuda]" on a machine with the CUDA toolkit (nvcc) and an NVIDIA driver, '
                'or run the same CUDA C on this CPU: target="cuda-emu" in Python, --target cuda-emu on the '
                'command line')


@dataclass
class CudaExecutable:
    """The CUDA source, its launches with their table slots, and the slot map."""

    source: str
    launches: list  # (Launch, [slot per launch parameter]) in execution order
    slots: dict
    n_slots: int


def build_cuda(program, stages: dict, opt_level: int) -> CudaExecutable:
    """Render the program's kernels as one CUDA C source; bind launch parameters to slots."""
    kernels = code_kernels(program)  # (with the sizes of symbolic dimensions where they use any)
    source, launches = render_module(kernels)
    stages.set("cuda", source)
    slots = buffer_slots(program.graph, program.memory_plan)
    by_kernel = {k.name: dict(zip(k.params, kernel_slots(k, slots))) for k in kernels}
    bound = [(ln, [by_kernel[ln.kernel][b] for b in ln.params]) for ln in launches]
    return CudaExecutable(source, bound, slots, len(slots))


def prepare_cuda(target, stages) -> dict:
    """Before the passes: a CUDA target has no CPU threads to plan for."""
    if target.device not in DEVICES:
        raise MinicompError(f"unknown CUDA device {target.device!r}; choose one of {', '.join(DEVICES)}")
    return {"schedule_threads": 1}


class CudaModel(CompiledModel):
    """A model compiled for CUDA; runs on the GPU (pycuda) or through cuda-emu."""

    def __init__(self, program, target, stages, executable: CudaExecutable):
        super().__init__(program.graph, target, stages, program.memory_plan, kernels=program.kernels)
        self.executable = executable
        self.launches = [ln for ln, _ in executable.launches]
        self.device_name = target.device
        self._device = None
        self.dim_names = [name for name, _, _ in program.graph.dims()]  # in the order of mc_dims

    # -- the device, made on first use --------------------------------------------
    @property
    def device(self):
        """The device object that runs launches (compiled on first use)."""
        if self._device is None:
            ex = self.executable
            if self.device_name == "emu":
                from minicomp.backends.cuda_emu import EmuDevice

                self._device = HostMemory(EmuDevice(ex.source, self.launches), self)
            else:
                from minicomp.backends.cuda_gpu import GPUDevice

                self._device = GPUDevice(ex.source, self)
        return self._device

    def warm_up(self, progress=None) -> None:
        """Build the device code now (g++ for cuda-emu, nvcc through pycuda on a GPU), not on the first call."""
        if self._device is None and progress is not None:
            how = "g++ builds the cuda-emu library" if self.device_name == "emu" else "nvcc compiles for the GPU"
            progress(f"{how} (once; kept in the compile cache)")
        self.device  # noqa: B018 -- made on first use

    def __call__(self, *args, **kwargs):
        """Run on numpy arrays (or, on a GPU, pycuda GPUArrays: then outputs stay on the device)."""
        sizes: dict = {}
        env = bind_inputs(self.signature, args, kwargs, device_arrays=self.device_name == "gpu", sizes=sizes)
        with self._lock:
            return write_back(self.signature, env, self.device.run(env, sizes))

    def profile(self, *args, repeat: int = 10, **kwargs) -> list[tuple[str, float]]:
        """Time each launch alone: ``[(function, seconds per launch)]`` (CUDA events on a GPU)."""
        sizes: dict = {}
        env = bind_inputs(self.signature, args, kwargs, device_arrays=self.device_name == "gpu", sizes=sizes)
        with self._lock:
            return self.device.profile(env, repeat, sizes)

    def _target_name(self) -> str:
        return f"cuda ({self.device_name})"

    def _code_summary(self) -> str:
        return count(len(self.launches), "launch", "launches")


class HostMemory:
    """Buffers in host memory for cuda-emu: constants, one arena, inputs and outputs."""

    def __init__(self, emu, model: CudaModel):
        self.emu, self.model = emu, model
        ex, plan, graph = model.executable, model.memory_plan, model.graph
        self.table = [0] * max(ex.n_slots, 1)
        self.keep, self.arena = host_buffers(self.table, ex.slots, graph.constants, plan)
        self.fresh = fresh_outputs(graph, ex.slots)
        self.sizes = dim_sizes_array(model.dim_names)
        if DIM_SIZES in ex.slots:
            self.table[ex.slots[DIM_SIZES]] = self.sizes.ctypes.data

    def _bind(self, env, sizes: dict) -> dict:
        env = {v: contiguous(a) for v, a in env.items()}
        self.sizes[:] = dim_sizes_array(self.model.dim_names, sizes)
        return env, bind_host_io(self.table, self.model.executable.slots, env, self.fresh, sizes)

    def run(self, env, sizes: dict) -> list[np.ndarray]:
        env, outs = self._bind(env, sizes)
        for ln, slots in self.model.executable.launches:
            self.emu.launch(ln, [self.table[s] for s in slots], ln.grid_at(sizes))
        return collect_outputs(self.model.graph, env, outs)

    def profile(self, env, repeat: int, sizes: dict):
        env, outs = self._bind(env, sizes)
        timings = []
        for ln, slots in self.model.executable.launches:
            ptrs, grid = [self.table[s] for s in slots], ln.grid_at(sizes)
            self.emu.launch(ln, ptrs, grid)
            t0 = time.perf_counter()
            for _ in range(repeat):
                self.emu.launch(ln, ptrs, grid)
            timings.append((ln.function, (time.perf_counter() - t0) / repeat))
        return timings


def make_cuda_model(program, target, stages: dict, executable: CudaExecutable) -> CudaModel:
    """The runtime model of a program compiled for CUDA."""
    return CudaModel(program, target, stages, executable)


def launch_summary(launches: list[Launch]) -> str:
    """One line per launch: function, grid and block (for ``--emit cuda`` readers)."""
    return "\n".join(f"{ln.function}<<<{ln.grid}, {ln.block}>>>" for ln in launches)


def make_cuda_target(name: str, num_threads: int | None, device: str | None):
    """``cuda`` runs on the GPU (or ``device``), ``cuda-emu`` on this CPU through cuda-emu."""
    from minicomp.target import Target

    return Target.cuda(device=device or ("emu" if name == "cuda-emu" else "gpu"))


register_backend(Backend("cuda", "CUDA C for NVIDIA GPUs (pycuda), or the CPU through cuda-emu",
                         ("simplify", "fuse", "lower", "schedule", "plan", "legalize"), build_cuda,
                         prepare=prepare_cuda, model=make_cuda_model, schedule="gpu", emits=("cuda",),
                         aliases=("cuda-emu",), make_target=make_cuda_target, symbolic=True))
