"""Schedules as data: steps apply to named loops, errors are clear, user
schedules replace the default and keep results right."""

import numpy as np
import pytest

import minicomp as mc
from minicomp.passes.manager import PassManager, Program
from minicomp.passes.schedule import Fuse, Parallel, Unroll, Vectorize, apply_schedule


def kernel():
    g = mc.GraphBuilder()
    x = g.input("x", (4, 6, 8))
    g.output(g.exp(x))
    return PassManager("lower").run(Program(g.build())).kernels[0], g.build()


def test_steps_rewrite_loops_and_are_recorded():
    k, _ = kernel()
    k2 = apply_schedule(k, [Fuse("i0", "i1"), Parallel("i0_i1"), Vectorize("i2")])
    text = str(k2)
    assert "parallel for (i0_i1 = 0; i0_i1 < 24; i0_i1++)" in text
    assert "vectorized for (i2" in text
    assert "// schedule: fuse(i0, i1); parallel(i0_i1); vectorize(i2)" in text
    assert "x[(i0_i1 // 6), (i0_i1 % 6), i2]" in text


@pytest.mark.parametrize("steps, message", [
    ([Vectorize("nope")], "no loop named nope"),
    ([Fuse("i0", "i2")], "i2 is not directly inside i0"),
    ([Parallel("i1")], "must be at the top level"),
])
def test_bad_steps_raise(steps, message):
    k, _ = kernel()
    with pytest.raises(mc.MinicompError, match=message):
        apply_schedule(k, steps)


def test_user_schedule_through_compile():
    _, graph = kernel()
    model = mc.compile(graph, schedules={"exp_0": [Unroll("i1"), Vectorize("i2")]})
    assert "unrolled for (i1" in model.stages["loops"]
    xs = np.random.default_rng(0).standard_normal((4, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(model(xs)[0], np.exp(xs), rtol=1e-6)
