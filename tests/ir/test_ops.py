"""Every op: reference vs an independent numpy formulation, compute definition
vs reference, and inferred types vs what the reference returns."""

import numpy as np
import pytest
from hypothesis import given

from minicomp.ir.compute import Placeholder
from minicomp.ir.dtypes import as_dtype
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import all_ops
from tests.compute_eval import evaluate_compute
from tests.numpy_formulations import FORMULATIONS
from tests.strategies import OP_CASES
from tests.tolerances import assert_close

ALL = sorted(all_ops())


def test_every_op_has_a_case_and_a_formulation():
    assert sorted(OP_CASES) == ALL
    assert sorted(FORMULATIONS) == ALL


def _normalized(op, inputs, attrs):
    opdef = all_ops()[op]
    types = [TensorType(a.shape, as_dtype(a.dtype)) for a in inputs]
    frozen = opdef.make_attrs(types, attrs, f"test_{op}")
    return opdef, types, frozen


def wrap_to(values, dtype: np.dtype) -> np.ndarray:
    """Exact integer (or integral float) results reduced modulo the width of
    ``dtype``, two's complement, as integer arithmetic in that type wraps."""
    arr = np.asarray(values)
    if dtype.kind not in "iu":
        return arr.astype(dtype)
    bits, flat = dtype.itemsize * 8, []
    for v in arr.reshape(-1).tolist():
        v = int(v) & ((1 << bits) - 1)
        flat.append(v - (1 << bits) if dtype.kind == "i" and v >= 1 << (bits - 1) else v)
    return np.array(flat, dtype=dtype).reshape(arr.shape)


def as_list(result):
    """An op's outputs as a list (ops with several outputs return a tuple)."""
    return list(result) if isinstance(result, (list, tuple)) else [result]


@pytest.mark.parametrize("op", ALL)
def test_reference_matches_independent_formulation(op):
    @given(OP_CASES[op])
    def check(case):
        inputs, attrs = case
        opdef, types, frozen = _normalized(op, inputs, attrs)
        outs = as_list(opdef.reference(*inputs, **dict(frozen)))
        expected_types = opdef.infer_types(types, frozen)
        assert len(outs) == len(expected_types)
        for out, expected_type, expected in zip(outs, expected_types, as_list(FORMULATIONS[op](*inputs, **attrs))):
            assert out.shape == expected_type.shape and out.dtype == expected_type.dtype.numpy
            assert_close(out, wrap_to(expected, out.dtype) if out.dtype.kind != "f" else expected,
                         scale=10, what=f"{op} {attrs}")

    check()


@pytest.mark.parametrize("op", ALL)
def test_compute_definition_matches_reference(op):
    @given(OP_CASES[op])
    def check(case):
        inputs, attrs = case
        opdef, types, frozen = _normalized(op, inputs, attrs)
        holders = [Placeholder(f"x{k}", t.shape, t.dtype) for k, t in enumerate(types)]
        stages = opdef.build_compute(holders, frozen)
        got = evaluate_compute(stages, {id(h): a for h, a in zip(holders, inputs)})
        for g, want in zip(got, as_list(opdef.reference(*inputs, **dict(frozen))), strict=True):
            assert_close(g, want, scale=10, what=f"{op} {dict(frozen)}")

    check()
