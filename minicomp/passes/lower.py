"""Lowering: a group of graph nodes -> one loop-IR kernel.

Lowering reads only the ops' compute definitions. It builds one stage DAG for
the whole group (each node's compute receives the stages of its producers),
then:

- stages that reduce, and stages that the group must write out, are
  *materialized*: each gets a loop nest that stores into a buffer;
- every other stage is *inlined*: a load of it is replaced by its body with
  the indices substituted, so it never touches memory.

A reduction whose only reader is an elementwise output stage of the same shape
is computed straight into that output's buffer, and the output stage then
updates it in place (the "epilogue": bias, activation, residual...).

A reduction lowers to ``out[i] = init; for r: out[i] = out[i] + term``.
Lowering knows no target: loop order, register tiles, vector lanes, threads
and unrolling are schedule steps (``passes/schedules``). Stages that share
leading axes share one loop nest over them (softmax, layer norm: one row
loop), their intermediates in workspaces that the schedule can turn into
per-row stack buffers (``localize``); the shared axes stop before the axes a
reduction would vectorize or tile over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import Stage, compute, reduce_identity, stage_dag
from minicomp.ir.dims import upper
from minicomp.ir.graph import Node, Value
from minicomp.ir.loops import Allocate, Buffer, For, Kernel, Store, seq
from minicomp.ir.numerics import round16
from minicomp.ir.ops import get_op
from minicomp.passes.schedules.analysis import LOCAL_ROW_BYTES, group_axis, rows_axis, spatial_innermost


@dataclass(eq=False)
class Group:
    """Nodes that become one kernel; ``inputs``/``outputs`` cross its boundary."""

    nodes: list[Node]
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    name: str = ""
    reason: str = ""
    chain: bool = False  # ends in a chain of reductions lowered as one pass (passes/lower_chain.py)
    chain_tiles: tuple | None = None  # (rows, elements) a step there, when not the rule's
    writes_into: Value | None = None  # the graph input whose memory its index_copy updates (passes/lower_scatter.py)

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]


def sanitize(name: str) -> str:
    """A C/LLVM-friendly identifier made from a value name."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else f"v_{s}"


def kernel_name(group: Group, index: int) -> str:
    """``fused_matmul_add_relu_3`` for a group of several ops, ``relu_3`` for one."""
    ops = group.ops
    shown = "_".join(ops[:4]) + ("_etc" if len(ops) > 4 else "")
    return f"{'fused_' if len(ops) > 1 else ''}{shown}_{index}"


def _rounded_to_its_dtype(st):
    """An op's float16/bfloat16 result as numpy has it: rounded to 16 bits, also where it stays in a register
    inside the kernel (``round16``). A reduction accumulates in float32 (``accumulator_dtype``), so its
    readers get a rounding stage of their own; other stages round their body."""
    if not isinstance(st, Stage) or not st.dtype.is_narrow_float:
        return st
    if st.reduce is not None:
        return compute(st.shape, lambda *i: round16(st[i]), st.name)
    return Stage(st.name, st.shape, st.axes, round16(st.body))


def accumulator_dtype(dt):
    """Accumulate float16 and bfloat16 in float32: rounding every partial sum to 16 bits loses too much."""
    return dtypes.float32 if dt.is_narrow_float else dt


class _Lowerer:
    def __init__(self, group: Group, name: str, constants: dict | None = None):
        self.group = group
        self.name = name
        self.ranges: dict[ex.Var, int] = {}
        used: set[str] = set()

        def buf(v: Value) -> Buffer:
            base = sanitize(v.name)
            nm, k = base, 1
            while nm in used:
                nm, k = f"{base}_{k}", k + 1
            used.add(nm)
            return Buffer(nm, v.shape, v.dtype)

        # One-element constants become immediates in the code, not buffers.
        constants = constants or {}
        self.immediates = {v: constants[v] for v in group.inputs
                           if constants.get(v) is not None and constants[v].size == 1}
        self.in_bufs = {v: buf(v) for v in group.inputs if v not in self.immediates}
        self.out_bufs = {v: buf(v) for v in group.outputs}
        self.used_names = used

    def build_stages(self) -> dict[Value, object]:
        tensors: dict[Value, object] = dict(self.in_bufs)
        for v, arr in self.immediates.items():
            value = arr.reshape(-1)[0].item()
            tensors[v] = compute(v.shape, lambda *i, value=value, dt=v.dtype: ex.const(value, dt), sanitize(v.name))
        for node in self.group.nodes:
            opdef = get_op(node.op, node.name)
            outs = opdef.build_compute([tensors[v] for v in node.inputs], node.attrs)
            for v, st in zip(node.outputs, outs):
                tensors[v] = _rounded_to_its_dtype(st)
        return tensors

    def lower(self) -> Kernel:
        tensors = self.build_stages()
        out_stage = {}
        for v in self.group.outputs:
            t = tensors[v]
            if not isinstance(t, Stage) or t in out_stage:
                # An output that is an input or repeats another: copy it.
                axes = tuple(ex.fresh_var("c") for _ in v.shape)
                t = Stage(f"copy_{v.name}", v.shape, axes, t[axes] if axes else t[()])
            out_stage[t] = v
        stages = stage_dag(list(out_stage))
        for s in stages:
            for v, n in s.reduce.axes if s.reduce else ():
                self.ranges[v] = n
            for v, n in zip(s.axes, s.shape):
                self.ranges[v] = n
        # Reductions need a buffer; some stages ask for one (padded windows).
        materialized = [s for s in stages if s in out_stage or s.reduce is not None
                        or getattr(s, "materialize", False)]
        materialized, bodies, order, prefix = self._plan_stages(stages, materialized)
        readers: dict[Stage, set] = {s: set() for s in materialized}
        for s, body in bodies.items():
            for t in ex.loaded_tensors(body):
                if t in readers:
                    readers[t].add(s)
        shared = [ex.Var(f"s{d}") for d in range(prefix)]
        for v, n in zip(shared, materialized[0].shape[:prefix]):
            self.ranges[v] = n

        # Buffers: outputs; reductions hosted in the output they feed; else a
        # workspace (the schedule may give each shared row its own stack copy).
        buffers: dict[Stage, Buffer] = {s: self.out_bufs[v] for s, v in out_stage.items()}
        workspace: list[Buffer] = []
        hosted = set()  # output stages already holding one stage: a second would overwrite it
        for s in materialized:
            if s in buffers:
                continue
            host = self._epilogue_host(s, readers[s], bodies, out_stage)
            if host is not None and host not in hosted:
                hosted.add(host)
                buffers[s] = buffers[host]
                continue
            b = Buffer(self.fresh(f"{self.name}_ws"), s.shape, accumulator_dtype(s.dtype))
            workspace.append(b)
            buffers[s] = b

        def to_buffer(ld: ex.Load):
            t = ld.tensor
            return ex.Load(buffers[t], ld.indices) if t in buffers else None

        nests = []
        for s in materialized:
            sub = dict(zip(s.axes[:prefix], shared))
            body = ex.transform_loads(ex.substitute(bodies[s], sub), to_buffer)
            nests.append(self._nest(s, body, buffers[s], list(shared), prefix))
        body = seq(*nests)
        if prefix:
            body = _wrap_loops(body, shared, list(materialized[0].shape[:prefix]))
        _rename_loop_vars(body)
        kernel = Kernel(self.name, list(self.in_bufs.values()), list(self.out_bufs.values()), body,
                        workspace=workspace, group=[n.name for n in self.group.nodes])
        kernel.param_values = list(self.in_bufs) + list(self.out_bufs) + [None] * len(workspace)
        return kernel

    def _plan_stages(self, stages, materialized):
        """Bodies, loop orders and the shared prefix for the materialized
        stages, after also materializing expensive stages (exp, tanh...) that
        several materialized stages would otherwise each recompute, when they
        fit in a per-row buffer."""

        def analyse(mat):
            mat_set = set(mat)
            bodies = {s: self.inline(s.body, mat_set) for s in mat}
            order = {s: self._loop_order(s, bodies[s]) for s in mat}
            return bodies, order, self._shared_prefix(mat, bodies, order)

        bodies, order, prefix = analyse(materialized)
        if not prefix:
            return materialized, bodies, order, prefix
        for cand in stages:
            if cand in bodies or not _is_expensive(cand.body):
                continue
            if sum(1 for s in materialized if _reads_through(s.body, cand, set(bodies))) < 2:
                continue
            trial = [s for s in stages if s in bodies or s is cand]
            t_bodies, t_order, t_prefix = analyse(trial)
            row_bytes = _prod(cand.shape[t_prefix:]) * accumulator_dtype(cand.dtype).itemsize
            if t_prefix >= prefix and upper(row_bytes) <= LOCAL_ROW_BYTES:  # (at the largest sizes)
                materialized, bodies, order, prefix = trial, t_bodies, t_order, t_prefix
        return materialized, bodies, order, prefix

    def fresh(self, base: str) -> str:
        """A buffer name starting with ``base`` that this kernel does not use yet."""
        nm, k = base, 0
        while nm in self.used_names:
            k += 1
            nm = f"{base}{k}"
        self.used_names.add(nm)
        return nm

    def inline(self, e: ex.Expr, materialized: set) -> ex.Expr:
        """``e`` with the loads of every stage not in ``materialized`` replaced by that stage's body."""
        def replace(ld: ex.Load):
            t = ld.tensor
            if isinstance(t, Stage) and t not in materialized:
                return self.inline(ex.substitute(t.body, dict(zip(t.axes, ld.indices))), materialized)
            return None

        return ex.transform_loads(e, replace)

    def _epilogue_host(self, s: Stage, readers: set, bodies, out_stage):
        """The output stage that may hold ``s`` and update it in place, if any."""
        if len(readers) != 1:
            return None
        (host,) = readers
        if host not in out_stage or host.shape != s.shape or host.dtype != s.dtype or host.reduce is not None:
            return None
        if accumulator_dtype(s.dtype) != s.dtype:
            return None
        for n in ex.walk(bodies[host]):
            if isinstance(n, ex.Load) and n.tensor is s:
                if len(n.indices) != len(host.axes) or not all(a is b for a, b in zip(n.indices, host.axes)):
                    return None
        return host

    def _shared_prefix(self, materialized, bodies, order) -> int:
        """How many leading axes every materialized stage can share as one loop
        nest (compute_at): same extents, and every read of another stage in the
        group uses the reader's own index on those axes."""
        if len(materialized) < 2:
            return 0
        k = min(len(s.shape) for s in materialized)
        for s in materialized:
            if order[s] is not None:  # keep the axes a reduction vectorizes (and tiles) over out of the prefix
                k = min(k, list(s.axes).index(order[s]))
                tile_i = rows_axis(bodies[s].body, s.dtype, order[s], list(zip(s.axes, s.shape)), bodies[s].axes)
                if tile_i is not None:
                    k = min(k, list(s.axes).index(tile_i))
                grouped = group_axis(bodies[s].body, list(zip(s.axes, s.shape)))
                if grouped is not None:  # the schedule splits it by group to tile it
                    k = min(k, list(s.axes).index(grouped[0]))
        prefix = k
        for d in range(k):
            if len({s.shape[d] for s in materialized}) != 1 or any(
                    isinstance(n, ex.Load) and n.tensor in bodies and n.indices[d] is not s.axes[d]
                    for s in materialized for n in ex.walk(bodies[s])):
                prefix = d
                break
        # Shared loops that run once (a batch of 1) only hide the loops that matter.
        if _prod(materialized[0].shape[:prefix]) == 1:
            return 0
        return prefix

    # -- loop nests --------------------------------------------------------------
    def _simplify(self, e):
        return ex.simplify(e, self.ranges)

    def _store(self, buf, idx, value):
        return Store(buf, tuple(self._simplify(i) for i in idx), self._simplify(value))

    def _loop_order(self, s: Stage, body: ex.Expr):
        """For a reduction, the spatial axis a schedule would run innermost
        (accumulating into the buffer), or None for the reduction innermost."""
        if not isinstance(body, ex.Reduce) or accumulator_dtype(s.dtype) != s.dtype:
            return None
        return spatial_innermost(body.body, s.dtype, list(zip(s.axes, s.shape)), body.axes)

    def _nest(self, s: Stage, body: ex.Expr, buf: Buffer, lead, prefix: int):
        """The loops computing stage ``s`` over its axes after the shared prefix.

        A reduction initialises its element and accumulates into it:
        ``out[i] = init; for r: out[i] = out[i] + term`` (schedules move the
        accumulator into registers and reorder the loops). Float16 sums, and
        reductions to one element, accumulate in a scalar instead.
        """
        axes, shape = list(s.axes[prefix:]), list(s.shape[prefix:])
        # Axes of extent 1 get no loop: their index is 0.
        unit = {a: ex.const(0, "int64") for a, n in zip(axes, shape) if n == 1}
        body = ex.substitute(body, unit) if unit else body
        idx = lead + [unit.get(a, a) for a in axes]
        loop_axes = [a for a in axes if a not in unit]
        loop_ext = [n for a, n in zip(axes, shape) if a not in unit]
        if not isinstance(body, ex.Reduce):
            stmt = self._store(buf, idx, body if body.dtype == buf.dtype else ex.cast(buf.dtype, body))
            return _wrap_loops(stmt, loop_axes, loop_ext)
        red = body
        raxes = [v for v, n in red.axes if n != 1]
        rext = [n for _, n in red.axes if n != 1]
        rbody = ex.substitute(red.body, {v: ex.const(0, "int64") for v, n in red.axes if n == 1})
        acc_t = accumulator_dtype(buf.dtype)
        if acc_t == buf.dtype and loop_axes:
            # A float32 stage may sum float16 terms (a float16 matmul staged inside a kernel).
            term = rbody if rbody.dtype == acc_t else ex.cast(acc_t, rbody)
            update = self._store(buf, idx, combine(red.op, ex.Load(buf, tuple(idx)), term))
            stmt = seq(self._store(buf, idx, reduce_identity(red.op, buf.dtype)),
                       _wrap_loops(update, raxes, rext, reduction=True))
            return _wrap_loops(stmt, loop_axes, loop_ext)
        acc = Buffer(self.fresh("acc"), (), acc_t, scope="local")
        acc_ld = ex.Load(acc, ())
        stmt = Allocate(acc, seq(
            Store(acc, (), reduce_identity(red.op, acc_t)),
            _wrap_loops(self._store(acc, (), combine(red.op, acc_ld, ex.cast(acc_t, rbody))), raxes, rext,
                        reduction=True),
            self._store(buf, idx, ex.cast(buf.dtype, acc_ld)),
        ))
        return _wrap_loops(stmt, loop_axes, loop_ext)


def _is_expensive(e: ex.Expr) -> bool:
    """Does ``e`` call a transcendental function (worth computing only once)?"""
    return any((isinstance(n, ex.Call) and n.fn in ("exp", "log", "tanh", "erf"))
               or (isinstance(n, ex.BinOp) and n.op == "pow") for n in ex.walk(e))


def _reads_through(body: ex.Expr, stage: Stage, materialized: set) -> bool:
    """Would inlining put ``stage``'s body into ``body``? (It reads ``stage``
    directly or through stages that are inlined.)"""
    seen = set()
    stack = list(ex.loaded_tensors(body))
    while stack:
        t = stack.pop()
        if t is stage:
            return True
        if isinstance(t, Stage) and t not in materialized and t not in seen:
            seen.add(t)
            stack.extend(ex.loaded_tensors(t.body))
    return False


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def combine(op: str, acc: ex.Expr, value: ex.Expr) -> ex.Expr:
    """``acc`` combined with ``value`` by the reduction ``op``."""
    return {"sum": lambda: acc + value, "prod": lambda: acc * value, "max": lambda: ex.maximum(acc, value),
            "min": lambda: ex.minimum(acc, value)}[op]()


def _wrap_loops(stmt, axes, extents, reduction=False):
    for v, n in reversed(list(zip(axes, extents))):
        stmt = For(v, n, stmt, is_reduction=reduction)
    return stmt


def _rename_loop_vars(body) -> None:
    """Name loop variables i0, i1... (spatial) and r0, r1... (reduction) in
    order of appearance, so that dumps read well and schedules can name them."""
    from minicomp.ir.loops import loops

    counts = {"i": 0, "r": 0}
    for loop in loops(body):
        prefix = "r" if loop.is_reduction else "i"
        loop.var.name = f"{prefix}{counts[prefix]}"
        counts[prefix] += 1


def lower_group(group: Group, name: str, constants: dict | None = None, target=None) -> Kernel:
    """Lower ``group`` to a kernel called ``name``.

    ``constants`` (the graph's) lets one-element constants become immediates.
    ``kernel.param_values`` gives the graph Value behind each parameter
    (None for workspaces). A group that fusion marked as a reduction chain is
    lowered as one pass (:mod:`minicomp.passes.lower_chain`), its tiles sized
    for ``target``.
    """
    if group.writes_into is not None:
        from minicomp.passes.lower_scatter import lower_index_copy_in_place

        return lower_index_copy_in_place(group, name, constants)
    lowerer = _Lowerer(group, name, constants)
    if group.chain:
        from minicomp.passes.lower_chain import find_chain, lower_chain

        return lower_chain(lowerer, find_chain(lowerer), target, group.chain_tiles)
    return lowerer.lower()


def chain_alternatives(group: Group, name: str, constants: dict | None, target) -> list[tuple[str, Kernel]]:
    """A reduction chain's group lowered with each of the tiles the tuner measures (the rule's
    first), as (what the tiles are, the kernel)."""
    from minicomp.passes.lower_chain import find_chain, lower_chain, tile_candidates

    lowerer = _Lowerer(group, name, constants)
    out = []
    for tiles in tile_candidates(lowerer, find_chain(lowerer), target):
        rows, step, per_job = tiles
        label = f"chain tiles: {rows} rows x {step} elements, {per_job} tile{'s' if per_job > 1 else ''} a job"
        fresh = _Lowerer(group, name, constants)  # (a chain's stages are its lowerer's)
        out.append((label, lower_chain(fresh, find_chain(fresh), target, tiles)))
    return out
