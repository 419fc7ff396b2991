"""RNN, GRU and LSTM (unrolled) against the onnx package's ReferenceEvaluator:
directions, layouts, biases, initial states, peepholes, GRU's
linear_before_reset; activations, clipping and shorter sequences (which the
reference ignores) against a numpy formulation of RNN."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from tests.onnx.reference_check import check_against_reference  # noqa: E402

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


@given(st.data())
def test_recurrent_layers(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    op = d(st.sampled_from(sorted(GATES)))
    seq, batch, size, hidden = d(st.integers(1, 4)), d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 4))
    direction = d(st.sampled_from(["forward", "reverse", "bidirectional"]))
    dirs, g = 2 if direction == "bidirectional" else 1, GATES[op] * hidden
    layout = d(st.integers(0, 1))
    x = rng.standard_normal((batch, seq, size) if layout else (seq, batch, size)).astype(np.float32)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    feeds = {"x": x, "w": normal(dirs, g, size), "r": normal(dirs, g, hidden)}
    names = ["x", "w", "r"]
    attrs = {"hidden_size": hidden, "direction": direction, "layout": layout}
    optional = {"b": normal(dirs, 2 * g) if d(st.booleans()) else None}
    state_shape = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    optional["h0"] = normal(*state_shape) if d(st.booleans()) else None
    if op == "LSTM":
        optional["c0"] = normal(*state_shape) if d(st.booleans()) else None
        optional["p"] = normal(dirs, 3 * hidden) if d(st.booleans()) else None
    for name in ("b", "lens", "h0", "c0", "p"):
        if name in optional or name == "lens":
            value = optional.get(name)
            names.append(name if value is not None else "")
            if value is not None:
                feeds[name] = value
    while names[-1] == "":
        names.pop()
    if op == "GRU":
        attrs["linear_before_reset"] = int(d(st.booleans()))
    # The reference ignores activations, clip and sequence_lens: test_rnn_formula checks those.
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    check_against_reference(op, feeds, names, outputs, attrs, 22)


@given(st.data())
def test_rnn_formula_with_activations_clip_and_shorter_sequences(data):
    import minicomp as mc
    from tests.onnx.reference_check import single_node_model

    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    seq, batch, size, hidden = d(st.integers(1, 4)), d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 3))
    act = d(st.sampled_from(["Sigmoid", "Tanh", "Relu"]))
    clip = d(st.sampled_from([None, 0.3]))
    feeds = {"x": rng.standard_normal((seq, batch, size)).astype(np.float32),
             "w": rng.standard_normal((1, hidden, size)).astype(np.float32),
             "r": rng.standard_normal((1, hidden, hidden)).astype(np.float32),
             "b": rng.standard_normal((1, 2 * hidden)).astype(np.float32),
             "lens": rng.integers(0, seq + 1, size=batch).astype(np.int32)}
    attrs = {"hidden_size": hidden, "activations": [act]} | ({"clip": clip} if clip else {})
    model = single_node_model("RNN", feeds, list(feeds), ["y", "y_h"], attrs, 22)
    graph = mc.from_onnx(model, shapes={n: a.shape for n, a in feeds.items() if n != "lens"},
                         constants={"lens": feeds["lens"]})
    y, y_h = mc.compile(graph)(**{n: a for n, a in feeds.items() if n != "lens"})

    f = {"Sigmoid": lambda v: 1 / (1 + np.exp(-v)), "Tanh": np.tanh, "Relu": lambda v: np.maximum(v, 0)}[act]
    w, r, b = (feeds[n].astype(np.float64)[0] for n in ("w", "r", "b"))
    h = np.zeros((batch, hidden))
    want = np.zeros((seq, 1, batch, hidden))
    for t in range(seq):
        pre = feeds["x"][t] @ w.T + h @ r.T + b[:hidden] + b[hidden:]
        new = f(np.clip(pre, -clip, clip) if clip else pre)
        alive = (t < feeds["lens"]).reshape(batch, 1)
        h = np.where(alive, new, h)
        want[t, 0] = np.where(alive, new, 0)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_h[0], h, rtol=1e-4, atol=1e-5)
