"""Whole modules written in plain PyTorch style, through mc.from_torch and
torch.compile(backend="minicomp"), against torch eager; and the errors
and fallbacks a user meets."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import minicomp as mc
from minicomp.errors import MinicompError, UnsupportedError
from tests.torch.conftest import require_torch

torch = require_torch()
nn = torch.nn
F = torch.nn.functional

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)

from torch_gpt import GPT, GPTConfig  # noqa: E402
from torch_resnet import ResNet  # noqa: E402


class MobileBlock(nn.Module):
    """MobileNetV2-style inverted residual: 1x1 expand, depthwise 3x3, 1x1 project."""

    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        hidden = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class SmallConvNet(nn.Module):
    """Grouped convolutions, a mobile block, pooling, dropout and a classifier, as people write them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.block = MobileBlock(32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.max_pool2d(F.gelu(self.grouped(x)), 2)
        x = self.block(x)
        x = torch.flatten(self.pool(x), 1)
        return F.log_softmax(self.head(self.drop(x)), dim=-1)


class ViTLike(nn.Module):
    """Patch embedding by a strided convolution, a transformer encoder layer, mean pooling."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 32) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=True,
                                                  activation="gelu")
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.encoder(x)).mean(dim=1)


def _randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _models():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    return {
        "resnet18": (_randomize_bn(ResNet(num_classes=10)), (torch.randn(1, 3, 64, 64, generator=gen),)),
        "small_convnet": (_randomize_bn(SmallConvNet()), (torch.randn(2, 3, 32, 32, generator=gen),)),
        "vit_like": (ViTLike().eval(), (torch.randn(2, 3, 16, 16, generator=gen),)),
        "gpt": (GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval(),
                (torch.randint(0, 100, (2, 12), generator=gen),)),
    }


MODELS = _models()


def _expected(model, inputs):
    with torch.no_grad():
        return model(*inputs).numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_module_through_from_torch(name):
    model, inputs = MODELS[name]
    graph = mc.from_torch(model, inputs)
    (got,) = mc.compile(graph)(*[x.numpy() for x in inputs])
    np.testing.assert_allclose(got, _expected(model, inputs), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_module_through_torch_compile(name):
    model, inputs = MODELS[name]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minicomp", options={"threads": 2})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="minicomp runs this graph eagerly")  # no silent fallback
        got = compiled(*inputs)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), _expected(model, inputs), rtol=1e-3, atol=1e-4)


def test_constants_are_named_by_module_path():
    model, inputs = MODELS["resnet18"]
    graph = mc.from_torch(model, inputs)
    names = {v.name for v in graph.constants}
    assert "layer1.0.conv1.weight" in names or any(n.startswith("layer1.0.") for n in names)
    assert any(n.name.startswith("layer2.1.") for n in graph.nodes)
    gpt, idx = MODELS["gpt"]
    gnames = {v.name for v in mc.from_torch(gpt, idx).constants}
    assert "wte.weight" in gnames and "h.1.attn.c_attn.bias" in gnames


@pytest.mark.parametrize("norm_first", [False, True])
def test_fused_fast_path_layers_under_torch_compile(norm_first):
    """Under no_grad, nn.TransformerEncoderLayer and nn.MultiheadAttention run torch's fused ops."""

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True,
                                                    norm_first=norm_first)
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            y = self.layer(x)
            return self.mha(y, y, y, need_weights=False)[0]

    model = Encoder().eval()
    x = torch.randn(2, 5, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minicomp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="minicomp runs this graph eagerly")
        got = compiled(x)
        np.testing.assert_allclose(got.numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_graph_inputs_are_named_after_forward_arguments():
    class TwoInputs(nn.Module):
        def forward(self, image, scale):
            return image * scale

    graph = mc.from_torch(TwoInputs(), (torch.ones(2, 3), torch.ones(3)))
    assert [v.name for v in graph.inputs] == ["image", "scale"]


def test_unsupported_ops_are_listed_together():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs() + torch.lgamma(x)[:3]

    with pytest.raises(UnsupportedError) as exc:
        mc.from_torch(Odd(), (torch.randn(4),))
    msg = str(exc.value)
    assert "2 unsupported" in msg and "fft" in msg and "lgamma" in msg and "float32[4]" in msg


def test_training_mode_with_dropout_is_refused():
    model = SmallConvNet().train()
    with pytest.raises(MinicompError, match=r"training mode.*Dropout.*eval\(\)"):
        mc.from_torch(model, (torch.randn(1, 3, 32, 32),))


def test_module_without_training_layers_imports_in_training_mode():
    class Plain(nn.Module):
        def forward(self, x):
            return F.relu(x) * 2

    (got,) = mc.compile(mc.from_torch(Plain(), (torch.ones(3),)))(np.array([-1, 0, 2], np.float32))
    np.testing.assert_array_equal(got, [0, 0, 4])


def test_dynamic_true_is_refused_with_the_way_out():
    with pytest.raises(MinicompError, match=r"dynamic_shapes=\{'x': \{0: torch.export.Dim\('batch'"):
        mc.from_torch(nn.ReLU(), (torch.ones(2),), dynamic=True)


def test_unsupported_dtype_names_the_tensor():
    with pytest.raises(UnsupportedError, match="complex64"):
        mc.from_torch(nn.ReLU(), (torch.ones(2, dtype=torch.complex64),))


def test_not_a_module():
    with pytest.raises(MinicompError, match="torch.nn.Module"):
        mc.from_torch(lambda x: x, (torch.ones(2),))


def test_buffer_mutation_is_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(1))

        def forward(self, x):
            self.count.add_(1)
            return x + self.count

    with pytest.raises(UnsupportedError, match="changes its own state"):
        mc.from_torch(Counter().eval(), (torch.ones(2),))


def test_backend_falls_back_to_eager_on_unsupported_ops():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.lgamma(x) + 1

    torch._dynamo.reset()
    compiled = torch.compile(Odd(), backend="minicomp")
    x = torch.randn(5)
    with pytest.warns(UserWarning, match="eagerly") as caught:
        got = compiled(x)
    # The warning says which node, which ATen op, on what shapes, and where in the user's code.
    message = str(caught[0].message)
    for part in ("node 'lgamma'", "aten.lgamma.default", "float32[5]", "test_torch_models.py", "in forward"):
        assert part in message, (part, message)
    torch.testing.assert_close(got, torch.lgamma(x) + 1)


def test_backend_compiles_once_per_shape_and_after_weight_changes():
    from minicomp.frontends import pytorch_dynamo

    seen = []
    original = pytorch_dynamo.MinicompGraph._compile

    def counting(self, args):
        seen.append(tuple(a.shape for a in args if isinstance(a, torch.Tensor)))
        return original(self, args)

    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minicomp", dynamic=False)
    pytorch_dynamo.MinicompGraph._compile = counting
    try:
        with torch.no_grad():
            for batch in (2, 2, 5, 5):
                x = torch.randn(batch, 4)
                torch.testing.assert_close(compiled(x), model(x))
            n_before = len(seen)
            model[0].weight.mul_(2)  # an in-place change of a compiled-in weight
            x = torch.randn(5, 4)
            torch.testing.assert_close(compiled(x), model(x))
    finally:
        pytorch_dynamo.MinicompGraph._compile = original
    assert n_before == 2  # one compile for batch 2, one for batch 5
    assert len(seen) == 3  # and one after the weight changed


def test_backend_runs_eagerly_when_inputs_need_grad():
    model = nn.Linear(3, 2)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minicomp")
    x = torch.randn(4, 3, requires_grad=True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        y = compiled(x)
    y.sum().backward()  # autograd still works: the graph ran in torch
    assert x.grad is not None and x.grad.shape == x.shape


def test_backend_rejects_unknown_options():
    torch._dynamo.reset()
    compiled = torch.compile(nn.ReLU(), backend="minicomp", options={"thread": 2})
    with pytest.raises(Exception, match="unknown minicomp option.*thread"):
        compiled(torch.ones(2))


def test_backend_passes_options_through():
    from minicomp.frontends.pytorch_dynamo import MinicompGraph, minicomp_backend

    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 2)))
    runner = minicomp_backend(gm, [torch.ones(4, 3)], options={"threads": 1, "target": "reference"})
    assert isinstance(runner, MinicompGraph)
    model = runner._model_for([torch.ones(4, 3)])[0]
    assert model.target.name == "reference"
    with torch.no_grad():
        torch.testing.assert_close(runner(torch.ones(4, 3)), gm(torch.ones(4, 3)))


def test_backend_registered_by_entry_point():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="torch_dynamo_backends")}
    assert "minicomp" in names
    assert "minicomp" in torch._dynamo.list_backends()


def test_outputs_share_memory_with_minicomp_results():
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minicomp")
    with torch.no_grad():
        a = compiled(torch.ones(2, 8))
        b = compiled(torch.zeros(2, 8))
    assert not torch.equal(a, b)  # each call returns fresh outputs, not a reused buffer


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [("torch_resnet.py", ["--size", "64"]), ("torch_gpt.py", ["--seq", "16"])])
def test_torch_examples_run(script, args, tmp_path):
    # A fresh process, as a user runs it: nothing earlier tests loaded can hide a failure.
    proc = subprocess.run([sys.executable, os.path.abspath(os.path.join(EXAMPLES, script)), "--repeat", "1",
                           "--no-inductor"] + args, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for entry in ("from_torch", "torch.compile backend='minicomp'"):
        diff = float(out.split(f"max |diff| vs torch eager ({entry}):", 1)[1].split(";")[0].split()[0])
        assert diff < 1e-3
    assert "x eager" in out and "kernels" in out


def test_exported_program_in(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.GELU()).eval()
    x = torch.randn(2, 4)
    program = torch.export.export(model, (x,))
    (got,) = mc.compile(mc.from_torch(program))(x.numpy())
    np.testing.assert_allclose(got, _expected(model, (x,)), rtol=1e-5, atol=1e-6)
    with pytest.raises(MinicompError, match="keeps the shapes"):
        mc.from_torch(program, (torch.randn(5, 4),))


def test_cli_runs_a_saved_pt2(tmp_path, capsys):
    from minicomp.cli import main

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(1, 3, 8, 8)
    model(x)  # materialize the lazy layer
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    assert main(["run", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "net" in out or "output" in out
    assert main(["compile", str(path), "--emit", "graph"]) == 0
    assert "conv2d" in capsys.readouterr().out


def test_graph_breaks_run_eagerly_between_compiled_graphs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            if h.sum() > 0:  # data-dependent control flow: dynamo breaks the graph here
                h = h * 2
            return self.b(h)

    model = Branchy().eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="minicomp")
    with torch.no_grad():
        for seed in range(4):
            x = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(compiled(x), model(x))


def test_bfloat16_model_through_both_entries():
    """A bfloat16 MLP with layer norm: weights, inputs and outputs in bfloat16,
    within a few bfloat16 units of eager (both round each stored result)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4)).eval().to(torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        want = model(x).float()
    (got,) = mc.compile(mc.from_torch(model, (x,)))(mc.frontends.pytorch.to_numpy(x))
    assert got.dtype.name == "bfloat16"
    torch.testing.assert_close(torch.from_numpy(got.astype(np.float32)), want, rtol=0.05, atol=0.05)
    torch._dynamo.reset()
    fast = torch.compile(model, backend="minicomp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no eager fallback
        out = fast(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.05)


def test_a_converter_error_names_the_node_and_its_input_shapes():
    # The message holds the node's name ("sin" in "sinusoidal") but does not name the node: it gets the
    # node's description and input shapes all the same.
    from minicomp.frontends.pytorch import torch_converters

    builtin = torch_converters()["aten.sin"]

    def refuse(ctx, a):
        raise UnsupportedError("sinusoidal inputs are not supported here")

    mc.register_torch_op("aten.sin", replace=True)(refuse)
    try:
        with pytest.raises(UnsupportedError, match=r"node 'sin' \(aten.sin.default\) \(inputs float32\[3, 4\]\): "
                                                   r"sinusoidal .*; at File .*test_torch_models.py.*in forward"):
            mc.from_torch(_Sin().eval(), (torch.randn(3, 4),))
    finally:
        mc.register_torch_op("aten.sin", replace=True)(builtin)


class _Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)
