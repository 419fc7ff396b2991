"""minicomp's CUDA backend beside PyTorch on the same GPU (needs a GPU, pycuda, torch).

One table: SGEMM 4096 (GFLOP/s against cuBLAS through torch, TF32 off);
softmax and layer norm on (8192, 4096) (GB/s against the GPU's measured
device-to-device copy); attention (12 heads of 64, one pass) at S = 512
and 2048 and decoding over 4096 keys, against torch's SDPA; the transformer
block example and a BERT-base-like layer at batch 8; ResNet-50 (the onnx package's light model, random weights)
at batch 1 and 32. Inputs stay on the GPU (pycuda GPUArrays for minicomp,
CUDA tensors for torch); every time is the median wall time of calls that
end synchronized. Run by ``benchmarks/gpu_check.sh``; or

    python benchmarks/run.py gpu
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minicomp as mc  # noqa: E402
from benchmarks.harness import measure, print_table  # noqa: E402


def on_gpu(model, *arrays):
    """A call of ``model`` on device copies of ``arrays`` (outputs stay on the device)."""
    from pycuda import gpuarray

    dev = [gpuarray.to_gpu(np.ascontiguousarray(a)) for a in arrays]
    return lambda: model(*dev)


def torch_timed(torch, fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def copy_bandwidth(torch) -> float:
    """Bytes per second of a device-to-device copy (read plus written)."""
    x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = measure(torch_timed(torch, lambda: y.copy_(x)))
    return 2 * x.numel() / t


def sgemm_rows(torch, n=4096):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    g = mc.GraphBuilder("sgemm")
    g.output(g.input("a", (n, n)) @ g.input("b", (n, n)))
    model = mc.compile(g.build(), target="cuda")
    ours = measure(on_gpu(model, a, b))
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    theirs = measure(torch_timed(torch, lambda: ta @ tb))
    flops = 2 * n**3
    return [[f"SGEMM {n}", f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{theirs / ours:.2f}",
             f"{flops / ours / 1e9:.0f} GFLOP/s (cuBLAS {flops / theirs / 1e9:.0f})"]]


def row_rows(torch, copy_bw, rows=8192, cols=4096):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    gamma, beta = np.ones(cols, np.float32), np.zeros(cols, np.float32)
    tx = torch.from_numpy(x).cuda()
    tg, tb = torch.from_numpy(gamma).cuda(), torch.from_numpy(beta).cuda()
    out = []
    for name in ("softmax", "layer_norm"):
        g = mc.GraphBuilder(name)
        xi = g.input("x", (rows, cols))
        if name == "softmax":
            g.output(g.softmax(xi, axis=-1))
            fn = lambda: torch.softmax(tx, dim=-1)  # noqa: E731
        else:
            g.output(g.layer_norm(xi, g.constant(gamma), g.constant(beta), axis=-1))
            fn = lambda: torch.nn.functional.layer_norm(tx, (cols,), tg, tb)  # noqa: E731
        model = mc.compile(g.build(), target="cuda")
        ours = measure(on_gpu(model, x))
        theirs = measure(torch_timed(torch, fn))
        moved = 2 * x.nbytes
        out.append([f"{name} {rows}x{cols}", f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{theirs / ours:.2f}",
                    f"{moved / ours / 1e9:.0f} GB/s = {moved / ours / copy_bw:.0%} of copy"])
    return out


def torch_transformer(torch, batch, seq, d_model, heads, d_ff):
    """The transformer block example in torch, with the example's weights."""
    from transformer_block import make_params

    p = {k: torch.from_numpy(v).cuda() for k, v in make_params(d_model, d_ff).items()}
    F = torch.nn.functional
    dh = d_model // heads

    def split(t):
        return t.reshape(batch, seq, heads, dh).transpose(1, 2)

    def run(x):
        h = F.layer_norm(x, (d_model,), p["ln1_g"], p["ln1_b"])
        q, k, v = (split(h @ p[w] + p[b]) for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1) @ v
        x1 = x + (att.transpose(1, 2).reshape(batch, seq, d_model) @ p["wo"] + p["bo"])
        h2 = F.layer_norm(x1, (d_model,), p["ln2_g"], p["ln2_b"])
        return x1 + (F.gelu(h2 @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])

    return run


def transformer_rows(torch):
    from transformer_block import DIMS, build_transformer_block

    out = []
    for label, dims in (("transformer block, batch 8", {**DIMS, "batch": 8}),
                        ("BERT-like layer, batch 8", dict(batch=8, seq=128, d_model=768, heads=12, d_ff=3072))):
        graph = build_transformer_block(**dims)
        x = np.random.default_rng(0).standard_normal((dims["batch"], dims["seq"], dims["d_model"])).astype(
            np.float32)
        model = mc.compile(graph, target="cuda")
        ours = measure(on_gpu(model, x))
        run, tx = torch_transformer(torch, **dims), torch.from_numpy(x).cuda()
        with torch.no_grad():
            theirs = measure(torch_timed(torch, lambda: run(tx)))
        out.append([label, f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{theirs / ours:.2f}", "torch eager"])
    return out


def attention_rows(torch):
    """softmax(q k^T / 8) v, 12 heads of 64: minicomp's one pass (a reduction chain, one thread a
    query row; decoding split over the keys) beside torch's fused SDPA."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = []
    for label, rows, keys in (("attention, S = 512", 512, 512), ("attention, S = 2048", 2048, 2048),
                              ("decoding attention, 1 row x 4096 keys", 1, 4096)):
        g = mc.GraphBuilder("attention")
        q, k, v = g.input("q", (1, 12, rows, 64)), g.input("k", (1, 12, keys, 64)), g.input("v", (1, 12, keys, 64))
        g.output(g.softmax((q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.125)), axis=-1) @ v)
        model = mc.compile(g.build(), target="cuda")
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal(shape).astype(np.float32) for shape in
                  ((1, 12, rows, 64), (1, 12, keys, 64), (1, 12, keys, 64))]
        ours = measure(on_gpu(model, *arrays))
        tq, tk, tv = (torch.from_numpy(a).cuda() for a in arrays)
        with torch.no_grad():
            theirs = measure(torch_timed(torch, lambda: sdpa(tq, tk, tv)))
        out.append([label, f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{theirs / ours:.2f}", "torch SDPA"])
    return out


def with_free_batch(model):
    """The light model with its batch left free: its input's first dimension
    becomes ``N``, and a Reshape to a constant shape that starts with 1 keeps the
    input's batch instead (0 copies that dimension in ONNX's Reshape)."""
    from onnx import numpy_helper

    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "N"
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    return model


def resnet_rows(torch):
    from minicomp.frontends.onnx_testdata import light_model, randomize_weights

    out = []
    onnx_model = with_free_batch(randomize_weights(light_model("resnet50"), seed=0))
    try:
        import torchvision
        net = torchvision.models.resnet50(weights=None).cuda().eval()
    except Exception:  # no torchvision: minicomp's time alone
        net = None
    for batch in (1, 32):
        try:
            graph = mc.from_onnx(onnx_model, shapes={onnx_model.graph.input[0].name: (batch, 3, 224, 224)})
            model = mc.compile(graph, target="cuda")
        except mc.MinicompError as exc:
            out.append([f"ResNet-50, batch {batch}", "n/a", "", "", str(exc)[:60]])
            continue
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        ours = measure(on_gpu(model, x))
        theirs = float("nan")
        if net is not None:
            tx = torch.from_numpy(x).cuda()
            with torch.no_grad():
                theirs = measure(torch_timed(torch, lambda: net(tx)))
        out.append([f"ResNet-50, batch {batch}", f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{theirs / ours:.2f}",
                    "torchvision eager, TF32 off"])
    return out


def main() -> None:
    try:
        import torch
        from pycuda import autoinit  # noqa: F401
    except Exception as exc:
        print(f"bench_gpu: needs a GPU, pycuda and torch ({type(exc).__name__}: {exc}); skipped")
        return
    if not torch.cuda.is_available():
        print("bench_gpu: torch sees no GPU; skipped")
        return
    torch.backends.cudnn.allow_tf32 = False
    bw = copy_bandwidth(torch)
    rows = (sgemm_rows(torch) + row_rows(torch, bw) + attention_rows(torch) + transformer_rows(torch)
            + resnet_rows(torch))
    print(f"GPU: {torch.cuda.get_device_name()}; device-to-device copy {bw / 1e9:.0f} GB/s")
    print_table("minicomp (cuda) beside PyTorch on the same GPU; ms, median; ratio = torch / minicomp (>1: faster)",
                ["workload", "minicomp", "torch", "ratio", "note"], rows)


if __name__ == "__main__":
    main()
