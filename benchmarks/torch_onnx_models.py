"""ShuffleNet v2 x1.0 and EfficientNet-B0 written out in torch (torchvision's architectures; torchvision
itself is not a dependency), with seeded random weights and batch norms, exported to ONNX (opset 17) the
way a user's model arrives. They carry the patterns the light models lack: ShuffleNet v2's channel split,
concat and shuffle into 1x1 convolutions, EfficientNet's squeeze-and-excitation blocks with SiLU and 5x5
depthwise convolutions (docs/measurements.md has what each exposed)."""

from __future__ import annotations

import io


def _modules():
    import torch
    import torch.nn as nn

    def conv_bn(i, o, k, s=1, groups=1, act=None):
        layers = [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
        return nn.Sequential(*layers, *([act()] if act else []))

    class ShuffleUnit(nn.Module):
        def __init__(self, inp, oup, stride):
            super().__init__()
            self.stride, branch = stride, oup // 2
            self.branch1 = nn.Sequential(conv_bn(inp, inp, 3, stride, inp), conv_bn(inp, branch, 1, act=nn.ReLU)) \
                if stride > 1 else nn.Sequential()
            self.branch2 = nn.Sequential(conv_bn(inp if stride > 1 else branch, branch, 1, act=nn.ReLU),
                                         conv_bn(branch, branch, 3, stride, branch),
                                         conv_bn(branch, branch, 1, act=nn.ReLU))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            b, c, h, w = out.shape
            return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

    class ShuffleNetV2(nn.Module):
        def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024)):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, channels[0], 3, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))
            stages, inp = [], channels[0]
            for n, oup in zip(repeats, channels[1:4]):
                stages += [ShuffleUnit(inp, oup, 2)] + [ShuffleUnit(oup, oup, 1) for _ in range(n - 1)]
                inp = oup
            self.stages = nn.Sequential(*stages)
            self.head = conv_bn(inp, channels[4], 1, act=nn.ReLU)
            self.fc = nn.Linear(channels[4], 1000)

        def forward(self, x):
            return self.fc(self.head(self.stages(self.stem(x))).mean([2, 3]))

    class SqueezeExcite(nn.Module):
        def __init__(self, c, squeeze):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

        def forward(self, x):
            s = nn.functional.silu(self.fc1(x.mean((2, 3), keepdim=True)))
            return x * torch.sigmoid(self.fc2(s))

    class MBConv(nn.Module):
        def __init__(self, i, o, k, s, expand):
            super().__init__()
            mid = i * expand
            layers = [conv_bn(i, mid, 1, act=nn.SiLU)] if expand != 1 else []
            layers += [conv_bn(mid, mid, k, s, mid, act=nn.SiLU), SqueezeExcite(mid, max(1, i // 4)),
                       conv_bn(mid, o, 1)]
            self.block, self.residual = nn.Sequential(*layers), s == 1 and i == o

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    class EfficientNetB0(nn.Module):
        # (expansion, kernel, stride, in, out, repeats), from the paper's table 1
        STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                  (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]

        def __init__(self):
            super().__init__()
            layers = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
            for e, k, s, i, o, n in self.STAGES:
                layers += [MBConv(i if r == 0 else o, o, k, s if r == 0 else 1, e) for r in range(n)]
            self.features = nn.Sequential(*layers, conv_bn(320, 1280, 1, act=nn.SiLU))
            self.fc = nn.Linear(1280, 1000)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    return {"shufflenet_v2": ShuffleNetV2, "efficientnet_b0": EfficientNetB0}


TORCH_MODELS = ("shufflenet_v2", "efficientnet_b0")


def torch_model_onnx(name: str, seed: int = 0):
    """(onnx ModelProto with input ``x`` (1, 3, 224, 224), that input): ``name`` built with seeded random
    weights and batch-norm statistics, exported by torch.onnx.export (needs torch: the bench extra)."""
    import numpy as np
    import onnx
    import torch

    torch.manual_seed(seed)
    model = _modules()[name]().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics a trained network could have
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation: it needs no onnxscript
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    return onnx.load_from_string(buffer.getvalue()), {"x": np.ascontiguousarray(x.numpy())}
