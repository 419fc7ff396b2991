"""Every op compiled alone for the llvm target matches the reference
interpreter, over hypothesis-drawn shapes, attributes and dtypes."""

import pytest
from hypothesis import given, settings

import minicomp as mc
from minicomp.ir.ops import all_ops
from tests.strategies import OP_CASES, single_op_graph
from tests.tolerances import assert_close

ALL = sorted(all_ops())


@pytest.mark.parametrize("op", ALL)
def test_op_compiled_matches_reference(op):
    @settings(max_examples=max(5, settings().max_examples // 2))
    @given(OP_CASES[op])
    def check(case):
        inputs, attrs = case
        graph = single_op_graph(op, inputs, attrs)
        model = mc.compile(graph, target="llvm", num_threads=2)
        for got, want in zip(model(*inputs), mc.run_reference(graph, *inputs), strict=True):
            assert_close(got, want, scale=10, what=f"{op} {attrs}\n{model.stages['loops']}")

    check()
