"""hypothesis profiles (a deterministic, quick one in CI, a larger one locally) and shared fixtures."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minicomp as mc

settings.register_profile(
    "ci", max_examples=20, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture()
def model_file(tmp_path):
    """A small model (matmul + softmax) in the IR text format, for the command-line tests."""
    g = mc.GraphBuilder("tiny")
    x = g.input("x", (4, 20))
    w = g.constant(np.arange(60, dtype=np.float32).reshape(20, 3) / 60, name="w")
    g.output(g.softmax(x @ w, axis=-1))
    path = tmp_path / "tiny.mcir"
    path.write_text(mc.print_graph(g.build(), full_constants=True))
    return path
