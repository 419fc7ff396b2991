"""The nine light/ models of the onnx package: stored outputs, then seeded
random weights compared with ONNX Runtime (or the reference interpreter).

The stored outputs come from weights that are all 0.02, so they are nearly
uniform and prove little; the random-weight run is the real check. Tolerance:
relative 1e-4, with an absolute floor of 1e-5 times the output's largest
magnitude (float32 sums over thousands of products round differently in
different orders, and outputs near zero have no meaningful relative error).
"""

import numpy as np
import pytest

pytest.importorskip("onnx")

import minicomp as mc  # noqa: E402
from minicomp.frontends.onnx_testdata import (  # noqa: E402
    LIGHT_MODELS,
    LIGHT_RTOL,
    light_expected,
    light_input,
    light_model,
    randomize_weights,
)


def run_other(model, feeds):
    """ONNX Runtime when installed, else minicomp's reference interpreter."""
    try:
        import onnxruntime as ort
    except ImportError:
        return mc.run_reference(mc.from_onnx(model), **feeds)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model(name):
    path = light_model(name)
    feeds = light_input(path)
    model = mc.compile(mc.from_onnx(path), num_threads=2)
    (got,) = model(**feeds)
    np.testing.assert_allclose(got, light_expected(name), rtol=LIGHT_RTOL.get(name, 1e-3), atol=1e-7)

    randomized = randomize_weights(path, seed=0)
    (got,) = mc.compile(mc.from_onnx(randomized), num_threads=2)(**feeds)
    (want,) = run_other(randomized, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


NOT_EMULATED = ("bvlc_alexnet", "vgg19", "zfnet512")
# What ptxas reports as spilling today, exactly (a new spill fails, and so does this one once mended):
# ZFNet's first convolution (7x7, stride 2, K = 147) as a 16x32 GEMM tile spills 24 bytes at 48
# registers, which no other model's kernels do (docs/cuda.md).
KNOWN_SPILLS = {"zfnet512": ["k_fused_conv2d_relu_lrn_max_pool2d_0_0: 24 bytes spill stores, 24 bytes spill loads"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_on_cuda_emu(name):
    """The CUDA C of each model compiles with nvcc (where it is installed),
    without a warning, and, run on the CPU through cuda-emu, matches ONNX Runtime.
    The three plain stacks of convolutions, LRN, pools and large dense layers
    are not run: emulating them took 20-45 s each, and the others run the same
    kernels (Inception v1 has LRN; every model convolutions and pools)."""
    path = light_model(name)
    feeds = light_input(path)
    randomized = randomize_weights(path, seed=0)
    model = mc.compile(mc.from_onnx(randomized), target="cuda", device="emu")
    from tests.backends.test_cuda import NVCC, _ptx, resource_problems

    if NVCC is not None:  # the same source must also be CUDA that nvcc accepts for sm_90: no spills either
        compiled, printed = _ptx(model.stages["cuda"])
        assert compiled and "warning" not in printed, printed[-3000:]
        assert resource_problems(printed) == KNOWN_SPILLS.get(name, [])
    if name in NOT_EMULATED:
        return
    (got,) = model(**feeds)
    (want,) = run_other(randomized, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
