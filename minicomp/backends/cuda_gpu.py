"""Running CUDA launches on an NVIDIA GPU through pycuda.

The source is compiled once by nvcc (pycuda's ``SourceModule``, for the
GPU's own architecture); weights are uploaded once; one device allocation
holds the memory plan's arena. A call copies numpy inputs in and outputs
out, or uses pycuda ``GPUArray`` inputs as they are (then the outputs are
``GPUArray`` too, and nothing crosses the bus). Launches run in order on one
stream; ``profile`` times each with CUDA events.
"""

from __future__ import annotations

from minicomp.backends.cuda_codegen import NVCC_FLAGS
from minicomp.errors import MinicompError
from minicomp.ir.dims import concrete
from minicomp.ir.loops import DIM_SIZES
from minicomp.passes.memory import ALIGNMENT
from minicomp.runtime import collect_outputs, contiguous, dim_sizes_array, fresh_outputs, place_arena


def import_pycuda():
    """pycuda's driver, compiler and gpuarray modules, with a context on GPU 0;
    a clear error when pycuda, the driver or a GPU is missing."""
    from minicomp.backends.cuda import INSTALL_HINT

    try:
        import pycuda.driver as driver
    except ImportError as exc:
        raise MinicompError(f"running a CUDA model needs pycuda, which is not installed ({exc}); "
                            f"{INSTALL_HINT}") from None
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context, released at exit)
        import pycuda.compiler as compiler
        import pycuda.gpuarray as gpuarray
    except Exception as exc:  # pycuda raises its own types when there is no driver or GPU
        raise MinicompError(f"pycuda found no usable NVIDIA GPU ({type(exc).__name__}: {exc}); "
                            f"{INSTALL_HINT}") from None
    return driver, compiler, gpuarray


def address(array) -> int:
    """The device address of a pycuda array; 0 for an empty one, which pycuda
    gives no allocation (the kernels never touch it)."""
    return 0 if array.gpudata is None else int(array.gpudata)


class GPUDevice:
    """A compiled module, the uploaded weights and the device arena of one model."""

    name = "gpu"

    def __init__(self, source: str, model):
        driver, compiler, gpuarray = import_pycuda()
        self.driver, self.gpuarray, self.model = driver, gpuarray, model
        try:
            self.module = compiler.SourceModule(source, no_extern_c=True, options=list(NVCC_FLAGS))
        except Exception as exc:
            raise MinicompError(f"nvcc rejected the generated CUDA C: {exc}") from None
        self.functions = {}
        for ln in model.launches:
            fn = self.module.get_function(ln.function)
            fn.prepare("P" * len(ln.params))
            self.functions[ln.function] = fn
        ex, graph, plan = model.executable, model.graph, model.memory_plan
        self.table = [0] * max(ex.n_slots, 1)
        self.keep = []
        for v, arr in graph.constants.items():
            d = gpuarray.to_gpu(contiguous(arr))
            self.keep.append(d)
            self.table[ex.slots[v]] = address(d)
        self.arena = driver.mem_alloc(max(plan.arena_bytes, 1) + ALIGNMENT)
        place_arena(self.table, ex.slots, plan, int(self.arena))
        self.fresh = fresh_outputs(graph, ex.slots)
        # The sizes of the symbolic dimensions, copied to the device at each call (the kernels read them).
        self.sizes = gpuarray.to_gpu(dim_sizes_array(model.dim_names))
        if DIM_SIZES in ex.slots:
            self.table[ex.slots[DIM_SIZES]] = address(self.sizes)
        self.stream = driver.Stream()
        from pycuda.tools import DeviceMemoryPool

        self.pool = DeviceMemoryPool()  # outputs per call without a cudaMalloc each time

    def _bind(self, env, sizes: dict):
        ga = self.gpuarray
        on_device = any(hasattr(a, "gpudata") for a in env.values())
        ex = self.model.executable
        dev = {}
        for v, a in env.items():
            d = a if hasattr(a, "gpudata") else ga.to_gpu(contiguous(a))
            dev[v] = d
            self.table[ex.slots[v]] = address(d)
        if sizes:
            self.sizes.set(dim_sizes_array(self.model.dim_names, sizes))
        outs = {}
        for v in self.fresh:
            outs[v] = ga.empty(concrete(v.shape, sizes), dtype=v.dtype.numpy, allocator=self.pool.allocate)
            self.table[ex.slots[v]] = address(outs[v])
        self.grids = {ln.function: ln.grid_at(sizes) for ln, _ in ex.launches}
        return dev, outs, on_device

    def _launch(self, ln, slots):
        grid = self.grids[ln.function]
        if 0 in grid:  # no block to run at this call's sizes
            return
        self.functions[ln.function].prepared_async_call(grid, ln.block, self.stream,
                                                        *[self.table[s] for s in slots])

    def run(self, env, sizes: dict):
        dev, outs, on_device = self._bind(env, sizes)
        for ln, slots in self.model.executable.launches:
            self._launch(ln, slots)
        self.stream.synchronize()
        return collect_outputs(self.model.graph, env, outs, fetch=None if on_device else (lambda d: d.get()),
                               inputs_as_given=on_device)

    def profile(self, env, repeat: int, sizes: dict):
        dev, outs, _ = self._bind(env, sizes)
        timings = []
        for ln, slots in self.model.executable.launches:
            self._launch(ln, slots)  # warm up
            start, stop = self.driver.Event(), self.driver.Event()
            start.record(self.stream)
            for _ in range(repeat):
                self._launch(ln, slots)
            stop.record(self.stream)
            stop.synchronize()
            timings.append((ln.function, stop.time_since(start) / 1e3 / repeat))
        return timings
