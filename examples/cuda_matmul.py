"""Compile a fused matmul + bias + ReLU for CUDA, print the generated CUDA C,
and run it: on the GPU when pycuda finds one, else on this CPU through
cuda-emu (the same source, compiled by g++ with minicomp's emulation header).

    python examples/cuda_matmul.py [--device gpu|emu]
"""

import argparse

import numpy as np

import minicomp as mc

M, K, N = 96, 80, 112


def build_dense() -> mc.Graph:
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder("dense")
    x = g.input("x", (M, K))
    w = g.constant((rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32))
    b = g.constant(rng.standard_normal(N).astype(np.float32))
    g.output(g.relu(x @ w + b))
    return g.build()


def gpu_available() -> bool:
    try:
        import pycuda.autoinit  # noqa: F401
    except Exception:  # no pycuda, no driver or no GPU
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["gpu", "emu"], default=None,
                    help="where to run (default: the GPU if pycuda finds one, else cuda-emu)")
    args = ap.parse_args()
    device = args.device or ("gpu" if gpu_available() else "emu")
    graph = build_dense()
    model = mc.compile(graph, target="cuda", device=device)  # compiling needs no GPU
    print(model.stages["cuda"])
    print("\n".join(f"// launch {ln.function}<<<{ln.grid}, {ln.block}>>>" for ln in model.launches))
    x = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    (got,) = model(x)
    (want,) = mc.run_reference(graph, x)
    print(f"ran on {model.target}; max |diff| vs reference: {np.abs(got - want).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
