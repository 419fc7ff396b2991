"""ResNet-50 from the onnx package's test data: import, compile, run, top-5.

The light ResNet-50 that ships with onnx has every weight set to 0.02 (made by
ConstantOfShape), which makes every class equally likely. By default this
script replaces those weights with seeded random values (scaled by fan-in) so
that the top-5 means something; ``--stored-weights`` keeps the originals.
When onnxruntime is installed the same model runs there too, for comparison.

    python examples/resnet50_onnx.py [--threads N] [--repeat N] [--stored-weights]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import minicomp as mc
from minicomp.frontends.onnx_testdata import light_input, light_model, randomize_weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--stored-weights", action="store_true", help="keep the model's constant 0.02 weights")
    args = parser.parse_args(argv)

    path = light_model("resnet50")
    model_proto = randomize_weights(path, seed=0) if not args.stored_weights else None
    feeds = light_input(path)
    t0 = time.perf_counter()
    graph = mc.from_onnx(model_proto if model_proto is not None else path)
    t1 = time.perf_counter()
    model = mc.compile(graph, num_threads=args.threads)
    t2 = time.perf_counter()
    print(f"ResNet-50: {len(graph.nodes)} nodes -> {len(model.kernels)} kernels; "
          f"import {t1 - t0:.2f} s, compile {t2 - t1:.2f} s")
    (probs,) = model(**feeds)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        (probs,) = model(**feeds)
        times.append(time.perf_counter() - t)
    top5 = np.argsort(probs[0])[::-1][:5]
    print("top-5 classes:", ", ".join(f"{c} ({probs[0, c]:.4f})" for c in top5))
    print(f"minicomp ({model.num_threads} threads): {min(times) * 1e3:.1f} ms per image (best of {args.repeat})")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: no comparison")
        return 0
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = model.num_threads
    proto = model_proto if model_proto is not None else mc.frontends.onnx.load_model(path)
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, feeds)
    t = time.perf_counter()
    sess.run(None, feeds)
    t_ort = time.perf_counter() - t
    print(f"onnxruntime ({model.num_threads} threads): {t_ort * 1e3:.1f} ms; top-5 "
          f"{'agree' if list(np.argsort(ref[0])[::-1][:5]) == list(top5) else 'DIFFER'}; "
          f"max |diff| {np.abs(ref - probs).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
