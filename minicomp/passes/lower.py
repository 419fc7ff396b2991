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

Each reduction picks a loop order: with the reduction innermost (a scalar
accumulator) or with the last spatial axis innermost (accumulating into the
buffer, as for matmul's i-k-j order), whichever gives more unit-stride
accesses in the innermost loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import Stage, reduce_identity, stage_dag
from minicomp.ir.graph import Node, Value
from minicomp.ir.loops import Allocate, Buffer, For, Kernel, Store, seq
from minicomp.ir.ops import get_op


@dataclass(eq=False)
class Group:
    """Nodes that become one kernel; ``inputs``/``outputs`` cross its boundary."""

    nodes: list[Node]
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    name: str = ""
    reason: str = ""

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


def accumulator_dtype(dt):
    """Accumulate float16 in float32: rounding every partial sum to half loses too much."""
    return dtypes.float32 if dt == dtypes.float16 else dt


class _Lowerer:
    def __init__(self, group: Group, name: str):
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

        self.in_bufs = {v: buf(v) for v in group.inputs}
        self.out_bufs = {v: buf(v) for v in group.outputs}
        self.used_names = used

    def build_stages(self) -> dict[Value, object]:
        tensors: dict[Value, object] = dict(self.in_bufs)
        for node in self.group.nodes:
            opdef = get_op(node.op, node.name)
            outs = opdef.build_compute([tensors[v] for v in node.inputs], node.attrs)
            for v, st in zip(node.outputs, outs):
                tensors[v] = st
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
        materialized = [s for s in stages if s in out_stage or s.reduce is not None]
        mat_set = set(materialized)
        for s in stages:
            for v, n in s.reduce.axes if s.reduce else ():
                self.ranges[v] = n
            for v, n in zip(s.axes, s.shape):
                self.ranges[v] = n

        bodies = {s: self._inline(s.body, mat_set) for s in materialized}
        readers: dict[Stage, set] = {s: set() for s in materialized}
        for s, body in bodies.items():
            for t in ex.loaded_tensors(body):
                if t in readers:
                    readers[t].add(s)

        buffers: dict[Stage, Buffer] = {s: self.out_bufs[v] for s, v in out_stage.items()}
        workspace: list[Buffer] = []
        for s in materialized:
            if s in buffers:
                continue
            host = self._epilogue_host(s, readers[s], bodies, out_stage)
            if host is not None:
                buffers[s] = buffers[host]
                continue
            b = Buffer(self._fresh(f"{self.name}_ws"), s.shape, accumulator_dtype(s.dtype))
            workspace.append(b)
            buffers[s] = b

        nests = []
        for s in materialized:
            body = ex.transform_loads(bodies[s], lambda ld: ex.Load(buffers[ld.tensor], ld.indices)
                                      if ld.tensor in buffers else None)
            nests.append(self._nest(s, body, buffers[s]))
        body = seq(*nests)
        _rename_loop_vars(body)
        return Kernel(self.name, list(self.in_bufs.values()), list(self.out_bufs.values()), body,
                      workspace=workspace, group=[n.name for n in self.group.nodes])

    def _fresh(self, base: str) -> str:
        nm, k = base, 0
        while nm in self.used_names:
            k += 1
            nm = f"{base}{k}"
        self.used_names.add(nm)
        return nm

    def _inline(self, e: ex.Expr, materialized: set) -> ex.Expr:
        def replace(ld: ex.Load):
            t = ld.tensor
            if isinstance(t, Stage) and t not in materialized:
                return self._inline(ex.substitute(t.body, dict(zip(t.axes, ld.indices))), materialized)
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

    # -- loop nests --------------------------------------------------------------
    def _simplify(self, e):
        return ex.simplify(e, self.ranges)

    def _store(self, buf, idx, value):
        return Store(buf, tuple(self._simplify(i) for i in idx), self._simplify(value))

    def _nest(self, s: Stage, body: ex.Expr, buf: Buffer):
        axes, shape = list(s.axes), list(s.shape)
        if not isinstance(body, ex.Reduce):
            stmt = self._store(buf, axes, body if body.dtype == buf.dtype else ex.cast(buf.dtype, body))
            return _wrap_loops(stmt, axes, shape)
        red = body
        init = reduce_identity(red.op, buf.dtype)
        raxes = [v for v, _ in red.axes]
        rext = [n for _, n in red.axes]
        inner = self._innermost_spatial(axes, shape)
        if inner is not None and buf.dtype == accumulator_dtype(s.dtype) and self._prefer_spatial_inner(
                red, inner, raxes, shape[axes.index(inner)], rext):
            # Accumulate in the buffer with the spatial axis innermost: out[.., j] op= body.
            outer = [a for a in axes if a is not inner]
            outer_ext = [n for a, n in zip(axes, shape) if a is not inner]
            j_ext = shape[axes.index(inner)]
            init_var = ex.fresh_var("j")
            self.ranges[init_var] = j_ext
            init_idx = [init_var if a is inner else a for a in axes]
            init_loop = For(init_var, j_ext, self._store(buf, init_idx, init))
            update = self._store(buf, axes, _combine(red.op, ex.Load(buf, tuple(axes)), red.body))
            update_loop = _wrap_loops(For(inner, j_ext, update), raxes, rext, reduction=True)
            return _wrap_loops(seq(init_loop, update_loop), outer, outer_ext)
        acc_t = accumulator_dtype(buf.dtype)
        acc = Buffer(self._fresh("acc"), (), acc_t, scope="local")
        acc_ld = ex.Load(acc, ())
        stmt = Allocate(acc, seq(
            Store(acc, (), reduce_identity(red.op, acc_t)),
            _wrap_loops(self._store(acc, (), _combine(red.op, acc_ld, ex.cast(acc_t, red.body))), raxes, rext,
                        reduction=True),
            self._store(buf, axes, ex.cast(buf.dtype, acc_ld)),
        ))
        return _wrap_loops(stmt, axes, shape)

    @staticmethod
    def _innermost_spatial(axes, shape):
        for a, n in reversed(list(zip(axes, shape))):
            if n > 1:
                return a
        return None

    def _prefer_spatial_inner(self, red, inner, raxes, inner_ext, rext) -> bool:
        last_r = next((v for v, n in reversed(list(zip(raxes, rext))) if n > 1), None)
        if last_r is None:
            return True
        spatial_score = _unit_stride_loads(red.body, inner) + 1  # + the accumulator in the buffer
        reduce_score = _unit_stride_loads(red.body, last_r)
        if spatial_score != reduce_score:
            return spatial_score > reduce_score
        return inner_ext > rext[raxes.index(last_r)]


def _combine(op: str, acc: ex.Expr, value: ex.Expr) -> ex.Expr:
    return {"sum": lambda: acc + value, "max": lambda: ex.maximum(acc, value),
            "min": lambda: ex.minimum(acc, value)}[op]()


def _unit_stride_loads(e: ex.Expr, v: ex.Var) -> int:
    """How many loads step by one element when ``v`` steps by one."""
    count = 0
    for n in ex.walk(e):
        if isinstance(n, ex.Load) and n.indices:
            aff = ex._affine(n.indices[-1])
            if aff is not None and aff[0].get(v) == 1 and not any(
                    v in ex.free_vars(i) for i in n.indices[:-1]):
                count += 1
    return count


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


def lower_group(group: Group, name: str) -> Kernel:
    """Lower ``group`` to a kernel called ``name``."""
    return _Lowerer(group, name).lower()
