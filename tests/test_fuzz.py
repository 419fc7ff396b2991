"""A random-graph fuzzer: compiled code against the reference interpreter.

Every dtype minicomp computes in, inputs full of the values that break code
(NaN, inf, -0.0, subnormals, the integer extremes, zero divisors), sizes 1 to
257, and the targets that run here (llvm, c and cuda-emu). The test wants zero
mismatches; where numerics may legitimately differ the tolerance is derived,
not widened until it passes:

- elementwise arithmetic, comparisons, selects, casts and every integer op
  are exact: the same bits (NaN where NaN; a zero from float arithmetic may
  carry either sign, since the code generators ignore the sign of zero in
  ``+ - * /``, see ``backends/llvm_codegen.py``);
- a sum of n terms is reassociated (vector lanes, tiles), so it may differ
  from the reference's order by at most 2 (n - 1) eps sum |term| (each side's
  rounding error is at most (n - 1) eps sum |term|);
- ``exp``, ``tanh``, ``sigmoid`` and ``log`` are minicomp's own vector
  approximations: within 4 units in the last place of the dtype (float16
  values: one unit, after rounding).
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicomp as mc

pytestmark = pytest.mark.slow

TARGETS = ("llvm", "c", "cuda-emu")
FLOATS = ("float32", "float64", "float16", "bfloat16")
INTS = ("int8", "int32", "int64", "uint8", "uint32")
DTYPES = FLOATS + INTS
SIZES = (1, 2, 3, 7, 16, 17, 31, 64, 97, 255, 256, 257)
EXACT_FLOAT = ("add", "sub", "mul", "div", "maximum", "minimum", "neg", "abs", "relu", "floor", "where")
EXACT_INT = ("add", "sub", "mul", "maximum", "minimum", "neg", "abs", "floor_div", "mod", "where")
APPROX = ("exp", "tanh", "sigmoid", "log")


def np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def special_values(dtype: str, size, rng) -> np.ndarray:
    """Random values of ``dtype``, a third of them the awkward ones."""
    dt = np_dtype(dtype)
    if dtype in FLOATS:
        f = np.finfo(np.float32 if dtype == "bfloat16" else dt)
        tiny = f.smallest_subnormal if dtype != "bfloat16" else np.float32(9.2e-41)
        specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, 1.0, -1.0, 0.5,
                             float(f.max) if dtype != "bfloat16" else 3.0e38], np.float64)
        values = rng.standard_normal(size) * rng.choice([1.0, 100.0, 1e-3], size=size)
    else:
        info = np.iinfo(dt)
        specials = np.array([0, 1, -1 if info.min < 0 else 2, info.min, info.max, info.max - 1], np.float64)
        values = rng.integers(max(info.min, -1000), min(info.max, 1000), size=size).astype(np.float64)
    pick = rng.random(size) < 0.33
    values[pick] = rng.choice(specials, size=int(pick.sum()))
    with np.errstate(all="ignore"):
        return values.astype(dt) if dtype in FLOATS else values.astype(np.int64).astype(dt)


@st.composite
def fuzz_graphs(draw):
    """(graph, inputs, kind): a random graph over one dtype; ``kind`` says which tolerance applies:
    ``exact``, ``sum`` (one sum of n exact terms, last) or ``approx`` (one approximated function, last)."""
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, cols = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from(SIZES))
    g = mc.GraphBuilder("fuzz")
    a, b = g.input("a", (rows, cols), dtype), g.input("b", (rows, cols), dtype)
    inputs = [special_values(dtype, (rows, cols), rng), special_values(dtype, (rows, cols), rng)]
    pool = [a, b]
    ops = EXACT_FLOAT if dtype in FLOATS else EXACT_INT
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(ops))
        x, y = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
        if op in ("neg", "abs", "relu", "floor"):
            out = g.op(op, x)
        elif op == "where":
            out = g.where(x > y, x, y)
        else:
            out = g.op(op, x, y)
        pool.append(out)
    last = pool[-1]
    kind = draw(st.sampled_from(["exact", "exact", "sum", "approx"] if dtype in FLOATS else ["exact", "sum"]))
    if kind == "sum":
        last = g.sum(last, axes=[1], keepdims=True)
    elif kind == "approx":
        last = g.op(draw(st.sampled_from(APPROX)), last)
    extra = draw(st.sampled_from(pool))
    g.output(last, (extra > pool[0]) if dtype != "bool" else extra)
    return g.build(), inputs, kind


def _float64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def check(got: np.ndarray, want: np.ndarray, kind: str, terms: np.ndarray | None, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if not (want.dtype.kind == "f" or want.dtype == ml_dtypes.bfloat16):
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    g, w = _float64(got), _float64(want)
    assert np.array_equal(np.isnan(g), np.isnan(w)), f"{what}: NaN where the reference has none, or the reverse"
    finite = np.isfinite(w) & np.isfinite(g)
    assert np.array_equal(np.where(np.isinf(w), w, 0), np.where(np.isinf(g), g, 0)), f"{what}: infinities differ"
    if kind == "exact":
        np.testing.assert_array_equal(g[finite], w[finite], err_msg=what)
        return
    eps = float(np.finfo(np.float32).eps * 2**16) if want.dtype == ml_dtypes.bfloat16 else \
        float(np.finfo(want.dtype).eps)
    if kind == "sum":  # 2 (n - 1) eps sum |term|, the terms as the reference computed them
        n = terms.shape[-1]
        bound = 2 * max(n - 1, 1) * eps * np.nansum(np.abs(_float64(terms)), axis=-1, keepdims=True)
        bound = np.broadcast_to(bound, g.shape)
        # a 16-bit result is also rounded once to its dtype: half a unit of the result more
        bound = bound + (np.abs(w) * eps if want.dtype.itemsize == 2 else 0)
    else:  # approx: 4 units in the last place (16-bit results: one unit after rounding)
        ulps = 1 if want.dtype.itemsize == 2 else 4
        bound = ulps * eps * np.maximum(np.abs(w), np.finfo(np.float32).tiny)
    bad = finite & (np.abs(g - w) > bound)
    assert not bad.any(), f"{what}: {g[bad][:5]} != {w[bad][:5]} (bound {np.asarray(bound)[bad][:5]})"


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=120, deadline=None)
@given(case=fuzz_graphs())
def test_random_graphs_match_the_reference(target, case):
    graph, inputs, kind = case
    want = mc.run_reference(graph, *inputs)
    got = mc.compile(graph, target=target)(*inputs)
    terms = None
    if kind == "sum":  # the summed operand, as the reference computed it
        summed = graph.outputs[0].producer.inputs[0]
        sub = mc.Graph(name="terms")
        sub.inputs, sub.nodes, sub.constants = list(graph.inputs), list(graph.nodes), dict(graph.constants)
        sub.outputs = [summed]
        terms = mc.run_reference(sub, *inputs)[0]
    for k, (gv, wv) in enumerate(zip(got, want)):
        check(np.asarray(gv), np.asarray(wv), kind if k == 0 else "exact", terms, f"{target} output {k}\n{graph}")
