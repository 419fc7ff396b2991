"""ONNX RNN, GRU and LSTM, unrolled over the (static) sequence.

Each direction projects the whole input sequence with one matmul, then runs
the recurrence step by step as graph ops: one small matmul with the
recurrence weights and the gate arithmetic per step (fusion merges each
step's elementwise work). Gate orders are ONNX's: GRU ``z, r, h``; LSTM
``i, o, f, c``. ``sequence_lens`` shorter than the sequence stop a forward
direction's state and zero its outputs after each sequence's end.
"""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError, UnsupportedError
from minicomp.frontends.onnx import register_onnx_importer
from minicomp.frontends.onnx_sequence_ops import MAX_UNROLLED_STEPS

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}


def _cut(ctx, t, axis: int, start: int, stop: int):
    return ctx.op("slice", t, starts=[start], ends=[stop], axes=[axis])


class _Cell:
    """One direction's weights and the step of its op type."""

    def __init__(self, ctx, op: str, d: int, hidden: int, activations: list[str], clip):
        self.ctx, self.op, self.hidden, self.acts, self.clip = ctx, op, hidden, activations, clip
        g = GATES[op] * hidden
        w, r, b = ctx.input(1), ctx.input(2), ctx.input(3)
        self.w_t = ctx.op("transpose", ctx.op("squeeze", _cut(ctx, w, 0, d, d + 1), axes=[0]), perm=(1, 0))
        self.r_t = ctx.op("transpose", ctx.op("squeeze", _cut(ctx, r, 0, d, d + 1), axes=[0]), perm=(1, 0))
        if b is not None:
            bias = ctx.op("squeeze", _cut(ctx, b, 0, d, d + 1), axes=[0])
            self.wb, self.rb = _cut(ctx, bias, 0, 0, g), _cut(ctx, bias, 0, g, 2 * g)
        else:
            self.wb = self.rb = None
        p = ctx.input(7) if op == "LSTM" else None
        self.peep = ctx.op("squeeze", _cut(ctx, p, 0, d, d + 1), axes=[0]) if p is not None else None
        self.linear_before_reset = bool(ctx.attr("linear_before_reset", 0))

    def act(self, k: int, x):
        if self.clip is not None:
            x = self.ctx.op("clip", x, min=-self.clip, max=self.clip)
        return self.ctx.op(ACTIVATIONS[self.acts[k]], x)

    def gate(self, t, k: int):
        return _cut(self.ctx, t, 1, k * self.hidden, (k + 1) * self.hidden)

    def step(self, xp, h, c):
        """One step from the projected input ``xp`` (batch, gates * hidden); returns (h, c)."""
        ctx, op = self.ctx, self.op
        add = lambda a, b: ctx.op("add", a, b)  # noqa: E731
        mul = lambda a, b: ctx.op("mul", a, b)  # noqa: E731
        if op == "GRU":
            h_r = self.r_t
            rec_zr = ctx.op("matmul", h, _cut(ctx, h_r, 1, 0, 2 * self.hidden))
            if self.rb is not None:
                rec_zr = add(rec_zr, _cut(ctx, self.rb, 0, 0, 2 * self.hidden))
            z = self.act(0, add(self.gate(xp, 0), self.gate(rec_zr, 0)))
            r = self.act(0, add(self.gate(xp, 1), self.gate(rec_zr, 1)))
            r_h = _cut(ctx, h_r, 1, 2 * self.hidden, 3 * self.hidden)
            rb_h = _cut(ctx, self.rb, 0, 2 * self.hidden, 3 * self.hidden) if self.rb is not None else None
            if self.linear_before_reset:
                rec = ctx.op("matmul", h, r_h)
                rec = mul(r, add(rec, rb_h) if rb_h is not None else rec)
            else:
                rec = ctx.op("matmul", mul(r, h), r_h)
                rec = add(rec, rb_h) if rb_h is not None else rec
            candidate = self.act(1, add(self.gate(xp, 2), rec))
            one = ctx.const(np.array(1.0, h.dtype.numpy))
            return add(mul(ctx.op("sub", one, z), candidate), mul(z, h)), c
        rec = ctx.op("matmul", h, self.r_t)
        pre = add(xp, add(rec, self.rb) if self.rb is not None else rec)
        if op == "RNN":
            return self.act(0, pre), c
        gi, go, gf, gc = (self.gate(pre, k) for k in range(4))
        if self.peep is not None:
            pi, po, pf = (_cut(ctx, self.peep, 0, k * self.hidden, (k + 1) * self.hidden) for k in range(3))
            gi, gf = add(gi, mul(pi, c)), add(gf, mul(pf, c))
        i, f = self.act(0, gi), self.act(0, gf)
        c_new = add(mul(f, c), mul(i, self.act(1, gc)))
        if self.peep is not None:
            go = add(go, mul(po, c_new))
        return mul(self.act(0, go), self.act(2, c_new)), c_new


def _recurrent(op: str):
    def imp(ctx, node):
        x = ctx.input(0)
        if x.ndim != 3:
            raise ShapeError(f"{node.describe()}: X must be 3-D, got shape {list(x.shape)}")
        layout = int(ctx.attr("layout", 0))
        if layout:
            x = ctx.op("transpose", x, perm=(1, 0, 2))  # (batch, seq, input) -> (seq, batch, input)
        seq, batch, _ = x.shape
        if seq > MAX_UNROLLED_STEPS:
            raise UnsupportedError(f"{node.describe()}: {seq} steps; {op} is unrolled up to {MAX_UNROLLED_STEPS}")
        hidden = int(ctx.attr("hidden_size"))
        direction = ctx.attr("direction", "forward")
        directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
        if directions is None:
            raise ShapeError(f"{node.describe()}: unknown direction {direction!r}")
        names = ctx.attr("activations") or DEFAULT_ACTIVATIONS[op] * len(directions)
        per_dir = len(DEFAULT_ACTIVATIONS[op])
        if len(names) != per_dir * len(directions) or any(a not in ACTIVATIONS for a in names):
            raise UnsupportedError(f"{node.describe()}: activations {names}; {per_dir} per direction from "
                                   f"{sorted(ACTIVATIONS)} are supported")
        if op == "LSTM" and ctx.attr("input_forget", 0):
            raise UnsupportedError(f"{node.describe()}: input_forget=1 is not supported")
        clip = ctx.attr("clip")
        lengths = _sequence_lengths(ctx, seq, batch, directions)
        init_h, init_c = ctx.input(5), ctx.input(6) if op == "LSTM" else None
        if layout:
            init_h = ctx.op("transpose", init_h, perm=(1, 0, 2)) if init_h is not None else None
            init_c = ctx.op("transpose", init_c, perm=(1, 0, 2)) if init_c is not None else None
        zeros = ctx.const(np.zeros((batch, hidden), x.dtype.numpy))
        ys, hs, cs = [], [], []
        for d, backwards in enumerate(directions):
            cell = _Cell(ctx, op, d, hidden, names[d * per_dir:(d + 1) * per_dir], clip)
            projected = ctx.op("matmul", x, cell.w_t)  # every step's input projection at once
            if cell.wb is not None:
                projected = ctx.op("add", projected, cell.wb)
            h = _initial(ctx, init_h, d) if init_h is not None else zeros
            c = _initial(ctx, init_c, d) if init_c is not None else zeros
            outs = [None] * seq
            for t in (reversed(range(seq)) if backwards else range(seq)):
                xp = ctx.op("squeeze", _cut(ctx, projected, 0, t, t + 1), axes=[0])
                h_new, c_new = cell.step(xp, h, c)
                if lengths is not None:  # past a sequence's end: keep the state, output zeros
                    alive = ctx.const((t < lengths).reshape(batch, 1))
                    h_new = ctx.op("where", alive, h_new, h)
                    c_new = ctx.op("where", alive, c_new, c) if op == "LSTM" else c_new
                    outs[t] = ctx.op("where", alive, h_new, zeros)
                else:
                    outs[t] = h_new
                h, c = h_new, c_new
            ys.append(ctx.op("concat", *[ctx.op("unsqueeze", y, axes=[0]) for y in outs], axis=0))
            hs.append(ctx.op("unsqueeze", h, axes=[0]))
            cs.append(ctx.op("unsqueeze", c, axes=[0]))
        y = ctx.op("concat", *[ctx.op("unsqueeze", y, axes=[1]) for y in ys], axis=1)  # (seq, dirs, batch, hidden)
        y_h, y_c = ctx.op("concat", *hs, axis=0), ctx.op("concat", *cs, axis=0)
        if layout:
            y = ctx.op("transpose", y, perm=(2, 0, 1, 3))
            y_h, y_c = ctx.op("transpose", y_h, perm=(1, 0, 2)), ctx.op("transpose", y_c, perm=(1, 0, 2))
        return [y, y_h, y_c][: max(len(node.outputs), 1)]

    return imp


def _initial(ctx, t, d: int):
    return ctx.op("squeeze", _cut(ctx, t, 0, d, d + 1), axes=[0])


def _sequence_lengths(ctx, seq: int, batch: int, directions) -> np.ndarray | None:
    """The lengths as a constant, or None when every sequence is full."""
    if ctx.input(4) is None:
        return None
    lengths = np.asarray(ctx.required_constant(4, "sequence_lens")).reshape(-1).astype(np.int64)
    if lengths.shape != (batch,) or lengths.min() < 0 or lengths.max() > seq:
        raise ShapeError(f"{ctx.node.describe()}: sequence_lens {lengths.tolist()} do not fit {batch} sequences "
                         f"of {seq} steps")
    if (lengths == seq).all():
        return None
    if any(directions):
        raise UnsupportedError(f"{ctx.node.describe()}: a reverse direction with sequences shorter than {seq} "
                               f"steps is not supported")
    return lengths


for _op in GATES:
    register_onnx_importer(_op)(_recurrent(_op))
