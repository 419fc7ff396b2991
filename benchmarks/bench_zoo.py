"""torchvision's classification models exported to ONNX, compiled by minicomp beside ONNX Runtime.

What users bring: each model built by torchvision with seeded random weights (benchmarks/zoo.py),
exported by ``torch.onnx.export`` at opset 18 (the dynamo exporter where onnxscript is installed,
else the TorchScript one), imported by ``mc.from_onnx`` and compiled untuned. Each runtime is timed
alone in its own blocks on 2 threads (``harness.best_blocks``; an ONNX Runtime session exists only
during its blocks). Ratios are minicomp's time over ONNX Runtime's: below 1.0, minicomp is faster.

    python benchmarks/run.py zoo             # the ten models of the portable-speed issue
    python -m benchmarks.bench_zoo resnet18 vit_b_16   # chosen models
    python -m benchmarks.bench_zoo --all     # every classifier torchvision has (an hour or more)
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

import numpy as np

from benchmarks.harness import best_blocks, describe_machine, onnxruntime_module, print_table, torch_module

THREADS = 2
DEFAULT = ("shufflenet_v2_x1_0", "efficientnet_b0", "resnet18", "mobilenet_v3_small", "mnasnet0_5",
           "convnext_tiny", "googlenet", "vit_b_16", "densenet121", "regnet_y_400mf")


def export(model, args) -> tuple[bytes, str]:
    """The ONNX bytes of ``model`` at ``args`` (opset 18), and which exporter made them. Attention
    layers export as their plain ops: torch's fused fast path for inference (``nn.MultiheadAttention``
    in eval mode) is one ATen op that ONNX has no counterpart for."""
    torch = torch_module()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if weights >= 2 << 30:  # (protobuf's limit: ONNX keeps such weights in a file beside the model)
        raise ValueError(f"{weights / 2**30:.1f} GiB of weights, past what one ONNX protobuf holds; not timed")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        dynamo = True
    except ImportError:
        dynamo = False
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:  # (the exporters report their progress on stdout and stderr)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if dynamo:
                torch.onnx.export(model, args, dynamo=True, opset_version=18, verbose=False).save(buffer)
            else:
                torch.onnx.export(model, args, buffer, dynamo=False, opset_version=18)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue(), "dynamo" if dynamo else "torchscript"


def measure_model(name: str, ort, mc) -> dict:
    """Export, import, compile and time one torchvision model; its row's figures."""
    import onnx

    from benchmarks.zoo import torchvision_case

    model, args = torchvision_case(name)
    data, exporter = export(model, args)
    proto = onnx.load_from_string(data)
    feeds = {proto.graph.input[0].name: args[0].numpy()}
    t0 = time.perf_counter()
    compiled = mc.compile(mc.from_onnx(proto), num_threads=THREADS)
    compile_s = time.perf_counter() - t0

    def ort_side():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feeds)

    want = ort_side()()[0]
    got = compiled(**feeds)[0]
    diff = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    best = best_blocks({"minicomp": lambda: (lambda: compiled(**feeds)), "onnxruntime": ort_side})
    return {"name": name, "kernels": len(compiled.kernels), "minicomp": best["minicomp"],
            "onnxruntime": best["onnxruntime"], "compile": compile_s, "diff": diff, "exporter": exporter}


def parse_args(argv):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_zoo",
        description="torchvision classifiers exported to ONNX, timed beside ONNX Runtime (also: python "
                    "benchmarks/run.py zoo [--all]).")
    parser.add_argument("models", nargs="*", help=f"torchvision model names (default: {', '.join(DEFAULT)})")
    parser.add_argument("--all", action="store_true", help="every classifier torchvision lists (about 35 min)")
    return parser.parse_args(list(argv or []))


def main(argv=None) -> None:
    # (run.py passes a suite's own options; python -m passes the command line)
    args = parse_args(argv)
    torch, ort = torch_module(), onnxruntime_module()
    if torch is None or ort is None:
        print("zoo: skipped (needs torch, torchvision and onnxruntime: pip install -e '.[bench,zoo]')")
        return
    import minicomp as mc
    from benchmarks.zoo import import_torchvision, torchvision_names

    import_torchvision()
    names = torchvision_names() if args.all else args.models or DEFAULT
    torch.set_num_threads(THREADS)
    print(describe_machine())
    rows, ratios, exporter = [], [], ""
    for name in names:
        try:
            r = measure_model(name, ort, mc)
        except Exception as exc:  # one model's failure is a row, not the end of the table
            rows.append([name, "", "", "", "", "", f"failed: {type(exc).__name__}: {str(exc)[:80]}"])
            continue
        exporter = r["exporter"]
        ratio = r["minicomp"] / r["onnxruntime"]
        ratios.append(ratio)
        rows.append([name, r["kernels"], r["minicomp"] * 1e3, r["onnxruntime"] * 1e3, ratio, r["compile"],
                     f"{r['diff']:.1e}"])
        print(f"{name}: {ratio:.2f}", flush=True)
    if ratios:
        rows.append(["geomean", "", "", "", float(np.exp(np.mean(np.log(ratios)))), "", ""])
        rows.append(["worst", "", "", "", max(ratios), "", ""])
    print_table(f"torchvision through ONNX ({exporter} exporter, opset 18), random weights, batch 1, {THREADS} "
                f"threads (ms; ratio = minicomp / ONNX Runtime, below 1 is faster)",
                ["model", "kernels", "minicomp", "onnxruntime", "ratio", "compile s", "max rel diff"], rows)


if __name__ == "__main__":
    main(sys.argv[1:])
