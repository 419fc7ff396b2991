"""The ONNX backend test data shipped inside the onnx package runs through
import, compile (llvm) and execution, compared with the stored outputs."""

import numpy as np
import pytest

pytest.importorskip("onnx")

import minicomp as mc  # noqa: E402
from minicomp.frontends.onnx_testdata import backend_cases, read_tensors  # noqa: E402
from tests.onnx.exclusions import BIND_AS_CONSTANTS, EXCLUDED  # noqa: E402

SUITES = ("pytorch-converted", "pytorch-operator", "simple")
CASES = [c for s in SUITES for c in backend_cases(s)]


def run_case(case):
    import onnx

    model = onnx.load(case.model_path)
    inits = {t.name for t in model.graph.initializer}
    input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
    for ins, outs in case.data_sets:
        arrays = read_tensors(ins)
        feeds = dict(zip(input_names, arrays))
        bound = {k: feeds.pop(k) for k in BIND_AS_CONSTANTS.get(case.id, ())}
        graph = mc.from_onnx(model, constants=bound)
        compiled = mc.compile(graph, num_threads=2)
        got = compiled(**feeds)
        for k, (a, b) in enumerate(zip(got, read_tensors(outs))):
            assert a.shape == b.shape, f"output {k}: shape {a.shape} != {b.shape}"
            if b.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=f"output {k}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"output {k}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_onnx_backend_case(case):
    if case.id in EXCLUDED:
        # Excluded cases must fail cleanly, with a MinicompError naming what is missing.
        with pytest.raises(mc.MinicompError, match="unsupported"):
            mc.from_onnx(case.model_path)
        pytest.skip(EXCLUDED[case.id])
    run_case(case)


def test_pass_share_of_pytorch_suites():
    torch_cases = [c for c in CASES if c.suite.startswith("pytorch")]
    excluded = [c for c in torch_cases if c.id in EXCLUDED]
    assert len(torch_cases) > 100
    assert 1 - len(excluded) / len(torch_cases) >= 0.95


def test_every_exclusion_names_a_real_case():
    ids = {c.id for c in CASES}
    assert set(EXCLUDED) <= ids and set(BIND_AS_CONSTANTS) <= ids
