"""The nine light/ ONNX models (seeded random weights) and a BERT-base layer
(the transformer block example at sequence 128, ``bert_layer``) compiled by
minicomp, beside ONNX Runtime, with 1 and 2 threads, plus the compile time
and the geometric mean of the speeds.

    python benchmarks/bench_onnx.py [model ...]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import describe_machine, measure, onnxruntime_module, print_table  # noqa: E402
from minicomp.frontends.onnx_testdata import LIGHT_MODELS, light_input, light_model, randomize_weights  # noqa: E402


def load(name: str):
    """(ONNX model, inputs) of a light model or of ``bert_layer``."""
    if name == "bert_layer":
        from benchmarks.transformer_onnx import BERT_BASE, transformer_onnx

        shape = (BERT_BASE["batch"], BERT_BASE["seq"], BERT_BASE["d_model"])
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        return transformer_onnx(**BERT_BASE), {"x": x}
    path = light_model(name)
    return randomize_weights(path, seed=0), light_input(path)


def main(argv=None) -> int:
    names = list(argv or []) or list(LIGHT_MODELS) + ["bert_layer"]
    print(describe_machine())
    ort = onnxruntime_module()
    rows = []
    for name in names:
        proto, feeds = load(name)
        t0 = time.perf_counter()
        graph = mc.from_onnx(proto)
        model = mc.compile(graph)
        compile_s = time.perf_counter() - t0
        (got,) = model(**feeds)
        for th in (1, 2):
            model.set_num_threads(th)
            t_mc = measure(lambda: model(**feeds), min_time=0.5, min_runs=3)
            t_ort, diff = float("nan"), float("nan")
            if ort is not None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = th
                opts.log_severity_level = 3
                sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                (want,) = sess.run(None, feeds)
                diff = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
                t_ort = measure(lambda: sess.run(None, feeds), min_time=0.5, min_runs=3)
            rows.append([name, th, len(model.kernels), t_mc * 1e3, t_ort * 1e3, t_ort / t_mc, compile_s,
                         f"{diff:.1e}"])
    for th in (1, 2):
        speeds = [r[5] for r in rows if r[1] == th and r[5] == r[5]]
        if speeds:
            rows.append(["geomean", th, "", "", "", float(np.exp(np.mean(np.log(speeds)))), "", ""])
    print_table("light ONNX models, random weights (ms; speed = ONNX Runtime time / minicomp time)",
                ["model", "threads", "kernels", "minicomp", "onnxruntime", "speed", "compile s", "max rel diff"],
                rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
