"""Memory: the plan's figures and the peak resident memory of a whole process.

Two tables for the onnx package's light models and a BERT-base layer (the
transformer block example at sequence 128, written as ONNX by
``transformer_onnx.py``):

- the memory plan: the naive sum of all buffers, the peak of fusion's order,
  the peak of the chosen order (the lower bound for it), the arena planned,
  arena / chosen peak, the buffers written in place and the time planning
  took;
- peak resident memory (``VmHWM``: what ``ru_maxrss`` reports for a process
  started from a shell; here the parent's own would be its floor, since
  Linux keeps it across the fork and exec) of one process that loads the
  model, compiles it and runs it once, one model per process: minicomp with
  an empty compile cache (LLVM runs in child processes, whose peaks are not
  counted), minicomp again with the cache filled by that run, and ONNX
  Runtime (2 threads) loading and running the same file.

    python benchmarks/run.py memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import print_table  # noqa: E402

MODELS = ("resnet50", "densenet121", "inception_v1", "inception_v2", "squeezenet", "shufflenet")

# One process: load, compile, run once; print the peaks as JSON.
PROCESS = """
import json, sys
import numpy as np
which, path = sys.argv[1], sys.argv[2]
# Inputs from the loaded model itself: reading the file a second time for
# their shapes would add to the peak being measured.
if which == "ort":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session.run(None, {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs()})
else:
    import minicomp as mc
    graph = mc.from_onnx(path)
    model = mc.compile(graph)
    model(*[np.zeros(v.shape, v.dtype.numpy) for v in graph.inputs])
# VmHWM: this process's own peak. ru_maxrss would start from the parent's at the fork.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"self": hwm / 1024, "llvm_here": "llvmlite" in sys.modules}))
"""


def peak(which: str, name: str, cache_dir: str) -> dict:
    env = dict(os.environ, MINICOMP_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, "-c", PROCESS, which, name], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} {name}: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_rows(cache_dir: str, models: dict) -> list[list]:
    os.environ["MINICOMP_CACHE_DIR"] = cache_dir  # the machine code the peak runs left there
    rows = []
    for name, path in models.items():
        plan = mc.compile(mc.from_onnx(path)).memory_plan
        mib = 1 / 2**20
        rows.append([name, f"{plan.naive_bytes * mib:.1f}", f"{plan.baseline_peak_bytes * mib:.1f}",
                     f"{plan.lower_bound_bytes * mib:.1f}", f"{plan.arena_bytes * mib:.1f}",
                     f"{plan.arena_bytes / max(plan.lower_bound_bytes, 1):.3f}", len(plan.aliases),
                     f"{plan.plan_seconds * 1e3:.1f}"])
    return rows


def main() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnxruntime = None
    from benchmarks.transformer_onnx import BERT_BASE, transformer_onnx
    from minicomp.frontends.onnx_testdata import light_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="minicomp-bench-cache-") as cache_dir:
        models = {name: light_model(name) for name in MODELS}
        models["BERT-base layer"] = os.path.join(cache_dir, "bert_layer.onnx")
        with open(models["BERT-base layer"], "wb") as f:
            f.write(transformer_onnx(**BERT_BASE).SerializeToString())
        for name, path in models.items():
            cold = peak("minicomp", path, cache_dir)
            warm = peak("minicomp", path, cache_dir)
            ort = peak("ort", path, cache_dir) if onnxruntime is not None else None
            row = [name, f"{cold['self']:.0f}", f"{warm['self']:.0f}"]
            if ort is not None:
                row += [f"{ort['self']:.0f}", f"{cold['self'] / ort['self']:.2f}", f"{warm['self'] / ort['self']:.2f}"]
            rows.append(row + ["yes" if cold["llvm_here"] or warm["llvm_here"] else "no"])
        plans = plan_rows(cache_dir, models)
    print_table("memory plans (MiB; arena / chosen = arena over the chosen order's peak, the lower bound)",
                ["model", "naive", "fusion order peak", "chosen order peak", "arena", "arena / chosen", "in place",
                 "plan ms"],
                plans)
    print_table("peak resident memory of one process that loads, compiles and runs the model (MB, VmHWM)",
                ["model", "minicomp, cache empty", "minicomp, cache filled", "ONNX Runtime",
                 "ratio empty", "ratio filled", "LLVM in process"], rows)


if __name__ == "__main__":
    main()
