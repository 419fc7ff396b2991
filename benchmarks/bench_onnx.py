"""The nine light/ ONNX models (seeded random weights), MobileNetV2
(``mobilenet_v2``, built by ``mobilenet_onnx.py``), a BERT-base layer
(the transformer block example at sequence 128, ``bert_layer``) and, where
torch is installed, ShuffleNet v2 and EfficientNet-B0 (``torch_onnx_models.py``) compiled by
minicomp, beside ONNX Runtime, with 1 and 2 threads, plus the compile time
and the geometric mean of the speeds. Every model is compiled first; then
three rounds each time every model once, and each side's time is its best
block median (see ``harness.best_blocks``). An ONNX Runtime session exists
only during its own blocks, since its idle threads slow whatever else runs.

With ``--tune`` each model is also compiled with ``tune=True`` (the tuner's
schedules, measured on this machine the first time and then read from the
compile cache) and timed as a third side, ``tuned``.

    python benchmarks/bench_onnx.py [--tune] [model ...]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    best_blocks,
    describe_machine,
    onnxruntime_module,
    print_table,
    torch_module,
)
from benchmarks.torch_onnx_models import TORCH_MODELS, torch_model_onnx  # noqa: E402
from minicomp.frontends.onnx_testdata import LIGHT_MODELS, light_input, light_model, randomize_weights  # noqa: E402


def load(name: str):
    """(ONNX model, inputs) of a light model, ``mobilenet_v2`` or ``bert_layer``."""
    if name == "mobilenet_v2":
        from benchmarks.mobilenet_onnx import mobilenet_v2_onnx

        x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
        return mobilenet_v2_onnx(), {"input": x}
    if name in TORCH_MODELS:
        return torch_model_onnx(name)
    if name == "bert_layer":
        from benchmarks.transformer_onnx import BERT_BASE, transformer_onnx

        shape = (BERT_BASE["batch"], BERT_BASE["seq"], BERT_BASE["d_model"])
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        return transformer_onnx(**BERT_BASE), {"x": x}
    path = light_model(name)
    return randomize_weights(path, seed=0), light_input(path)


def ort_session(ort, proto, threads: int, feeds=None):
    """An ONNX Runtime session of ``proto`` on ``threads`` threads; with
    ``feeds``, a function that runs it on them (the session lives as long as
    that function)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess if feeds is None else (lambda: sess.run(None, feeds))


ROUNDS = 3


def main(argv=None) -> int:
    argv = list(argv or [])
    tune = "--tune" in argv
    names = [a for a in argv if a != "--tune"] or list(LIGHT_MODELS) + ["mobilenet_v2", "bert_layer"] + [
        m for m in TORCH_MODELS if torch_module() is not None]
    print(describe_machine())
    ort = onnxruntime_module()
    loaded = []
    for name in names:
        proto, feeds = load(name)
        graph = mc.from_onnx(proto)
        t0 = time.perf_counter()
        model = mc.compile(graph)
        compile_s = time.perf_counter() - t0
        models = {"minicomp": model}
        if tune:
            t0 = time.perf_counter()
            models["tuned"] = mc.compile(graph, tune=True)
            print(f"{name}: tuned in {time.perf_counter() - t0:.1f} s", flush=True)
        diff = float("nan")
        if ort is not None:
            want = ort_session(ort, proto, 2).run(None, feeds)[0]
            diff = max(float(np.abs(m(**feeds)[0] - want).max() / max(np.abs(want).max(), 1e-30))
                       for m in models.values())
        loaded.append((name, proto, feeds, models, compile_s, diff))
    # Every round times every model once: a model's blocks are minutes apart,
    # so a slow spell of the machine (seconds long) cannot spoil all of them.
    best: dict = {}
    for _ in range(ROUNDS):
        for name, proto, feeds, models, _, _ in loaded:
            for th in (1, 2):
                makers = {}
                for side, m in models.items():
                    m.set_num_threads(th)
                    makers[side] = lambda m=m: lambda: m(**feeds)
                if ort is not None:
                    makers["onnxruntime"] = lambda: ort_session(ort, proto, th, feeds)
                for side, t in best_blocks(makers, rounds=1).items():
                    best[name, th, side] = min(best.get((name, th, side), t), t)
    rows = []
    for name, _, _, models, compile_s, diff in loaded:
        for th in (1, 2):
            t_mc, t_ort = best[name, th, "minicomp"], best.get((name, th, "onnxruntime"), float("nan"))
            row = [name, th, len(models["minicomp"].kernels), t_mc * 1e3, t_ort * 1e3, t_ort / t_mc]
            if tune:
                t_tuned = best[name, th, "tuned"]
                row += [t_tuned * 1e3, t_ort / t_tuned]
            rows.append(row + [compile_s, f"{diff:.1e}"])
    speed_columns = (5, 7) if tune else (5,)
    for th in (1, 2):
        geo = []
        for col in speed_columns:
            speeds = [r[col] for r in rows if r[1] == th and r[col] == r[col]]
            geo.append(float(np.exp(np.mean(np.log(speeds)))) if speeds else "")
        row = ["geomean", th, "", "", "", geo[0]] + (["", geo[1]] if tune else [])
        rows.append(row + ["", ""])
    headers = ["model", "threads", "kernels", "minicomp", "onnxruntime", "speed"]
    headers += ["tuned", "speed tuned"] if tune else []
    print_table("light ONNX models, random weights (ms; speed = ONNX Runtime time / minicomp time)",
                headers + ["compile s", "max rel diff"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
