"""A group whose output ends a chain of reductions over one axis, lowered as one pass over that axis.

Attention, ``softmax(q k^T * scale + mask) v``, is a chain over the key axis
``j``: ``m = max_j s``, ``l = sum_j exp(s - m)`` and ``o = sum_j exp(s - m) /
l * v``, where each score ``s`` is itself a reduction over the head axis.
Lowered stage by stage it keeps every score of a row block in memory (S x S
per head). :func:`find_chain` reads the chain out of the group's stages and
:mod:`minicomp.ir.reduction_chains` derives its one-pass form (or refuses it,
with the reason); :func:`lower_chain` then writes the loops:

    parallel over blocks of R rows (and the outer axes):
        running results per row (m, l), the last link's accumulators (o)
        for each block of B elements j (then one masked block for the rest):
            each element stage (the scores) for R x B: a register tile
            max links: new = max(old, max of the block's terms)
            the last link's term split as a(row, j) * b(j, column): a once per (row, j)
            sum links: sum = sum * rescale(old, new) + sum of the block's terms
        after the pass: each result's finishing factor (o / l)

Taking a block of elements at a time is the derived update applied to the
block: max and sum are associative, so a block's terms combine first and then
meet the running results the way one element does.

Fully masked rows keep the running max at -inf: terms and rescales then read
it as 0 (and an accumulator at -inf is rescaled by 0), so nothing computes
``exp(-inf - -inf)``; such a row ends as 0 / 0, as the definition does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from minicomp.errors import MinicompError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import Stage, reduce_identity, stage_dag
from minicomp.ir.dims import lower, upper
from minicomp.ir.loops import (
    Allocate,
    Barrier,
    Buffer,
    For,
    If,
    Kernel,
    Store,
    map_exprs,
    map_stmts,
    seq,
    top_statements,
)
from minicomp.ir.reduction_chains import ChainRefusedError, Link, OnePass, derive, merge, why_not_split
from minicomp.passes.lower import combine

F32 = dtypes.float32


@dataclass
class Chain:
    """A group's chain: the links (stages, in order; the last is the group's output), the reduced
    axis as the output's reduce variable, the element stages read per element, and the plan."""

    out: Stage
    axis: ex.Var
    extent: object
    rows: list  # the output's axes that every link has, in order (the last is blocked)
    cols: list  # the output's other axes (the last link's own: the value columns)
    links: list  # (stage, Link) in chain order
    element_loads: dict  # element stage -> its load (indices over rows and the axis)
    plan: OnePass
    names: dict  # link stage -> its result's name in the plan

    def describe(self) -> str:
        return self.plan.describe()


def _refuse(msg: str):
    raise ChainRefusedError(msg)


def find_chain(lowerer) -> Chain:
    """The chain that ends in the group's output, with its derived plan; ChainRefusedError (the
    reason) when the group is not one or its terms do not factor."""
    group = lowerer.group
    if len(group.outputs) != 1:
        _refuse(f"the group would write {len(group.outputs)} values ({', '.join(v.name for v in group.outputs)}), "
                f"a chain one")
    tensors = lowerer.build_stages()
    out = tensors[group.outputs[0]]
    if not isinstance(out, Stage) or out.reduce is None or out.reduce.op != "sum" or len(out.reduce.axes) != 1:
        _refuse("the group's output is not a sum over one axis")
    axis, extent = out.reduce.axes[0]
    reductions = {s for s in stage_dag([out]) if s.reduce is not None}

    def inline(e):
        return lowerer.inline(e, reductions)

    links: dict[Stage, ex.Expr] = {}  # link stage -> its body aligned to the output's axes and the axis
    link_index: dict[Stage, str] = {}
    elements: dict[Stage, ex.Load] = {}
    order: list[Stage] = []

    def visit(body: ex.Expr):
        for ld in [n for n in ex.walk(body) if isinstance(n, ex.Load) and n.tensor in reductions]:
            t = ld.tensor
            if any(axis in ex.free_vars(i) for i in ld.indices):
                key = tuple(ex.format_expr(i) for i in ld.indices)
                if t in elements and tuple(ex.format_expr(i) for i in elements[t].indices) != key:
                    _refuse(f"{t.name} is read at two places of the axis")
                if t in links or t is out:
                    _refuse(f"{t.name} is both a link and read per element")
                elements[t] = ld
                continue
            key = ", ".join(ex.format_expr(i) for i in ld.indices)
            if t in link_index:
                if link_index[t] != key:
                    _refuse(f"{t.name} is read at two rows")
                continue
            if len(t.reduce.axes) != 1 or t.reduce.op not in ("max", "sum"):
                _refuse(f"{t.name} is a {t.reduce.op} over {len(t.reduce.axes)} axes: not a link of the chain")
            link_index[t] = key
            (own_axis, own_extent), = t.reduce.axes
            if ex.format_expr(ex.as_expr(own_extent)) != ex.format_expr(ex.as_expr(extent)):
                _refuse(f"{t.name} reduces an axis of another length")
            aligned = ex.simplify(ex.substitute(inline(t.reduce.body),
                                                {**dict(zip(t.axes, ld.indices)), own_axis: axis}), ranges)
            visit(aligned)
            links[t] = aligned
            order.append(t)

    # Index arithmetic simplified with the axes' extents: a reshape between the softmax and the product
    # reads the row's max through a flat index that names the reduced axis until simplified.
    ranges = {axis: extent, **dict(zip(out.axes, out.shape))}
    out_body = ex.simplify(inline(out.reduce.body), ranges)
    visit(out_body)
    if not links:
        _refuse("no reduction over the same axis comes before the output's")
    for t in elements:
        if any(isinstance(n, ex.Load) and n.tensor in links for n in ex.walk(inline(t.body))):
            _refuse(f"the element stage {t.name} reads a result of the chain")

    for t in [*order, out, *elements]:
        if t.dtype != F32:
            _refuse(f"{t.name} is {t.dtype.name}: only float32 chains are derived")
    names: dict[Stage, str] = {}
    for t in [*order, out]:  # the results' names in the plan, one per link
        names[t] = t.name if t.name not in names.values() else f"{t.name}_{len(names)}"

    # Index arithmetic simplified with the axes' extents (a reshape's // and % of an axis that stays
    # inside one block go away): the value columns must load as vectors.
    for st in elements:
        ranges.update(dict(st.reduce.axes))

    def as_link_term(e):
        e = ex.transform_loads(e, lambda ld: ex.Var(names[ld.tensor], F32) if ld.tensor in links else None)
        return ex.simplify(e, ranges)

    chain = [Link(names[t], t.reduce.op, as_link_term(links[t])) for t in order]
    chain.append(Link(names[out], "sum", as_link_term(out_body)))
    plan = derive(chain, lambda e: axis in ex.free_vars(e))
    row_vars = set()
    for t in order:
        row_vars |= _index_vars(t, out_body, links)
    rows = [a for a in out.axes if a in row_vars]
    cols = [a for a in out.axes if a not in row_vars]
    if not rows:
        _refuse("the chain has no row axis")
    return Chain(out, axis, extent, rows, cols, [(t, lk) for t, lk in zip([*order, out], chain)], elements, plan,
                 names)


def _index_vars(link: Stage, body: ex.Expr, links: dict) -> set:
    """The output's axes in the indices at which ``link`` is read."""
    found = set()
    for e in [body, *links.values()]:
        for n in ex.walk(e):
            if isinstance(n, ex.Load) and n.tensor is link:
                for i in n.indices:
                    found.update(ex.free_vars(i))
    return found


MAX_ACCUMULATOR_COLUMNS = 2048


def why_not_one_pass(chain: Chain) -> str | None:
    """None when the one pass pays, else why the chain is better lowered stage by stage:

    - with no running max to rescale by, nothing needs the terms kept: the chain is a normalization
      before a product (RMSNorm, then a projection), which the product's own register tiles and
      packed weights do better;
    - a block's accumulators (8 rows x the output's columns) stay on the thread's stack: past
      :data:`MAX_ACCUMULATOR_COLUMNS` columns (64 KiB) they would not (an LM head's vocabulary)."""
    if not any("online-rescale" in lp.rules for lp in chain.plan.links):
        return "no running max is rescaled: the product's own schedule computes it better stage by stage"
    columns = _prod_upper(chain.out.shape[chain.out.axes.index(a)] for a in chain.cols)
    if columns > MAX_ACCUMULATOR_COLUMNS:
        return f"its output has {columns} columns a row: more than {MAX_ACCUMULATOR_COLUMNS} to accumulate in one pass"
    return None


# -- the loops ------------------------------------------------------------------------------

NEG_INF = ex.Const(-math.inf, F32)
# The offset of an element in its step, where a body reads a copy made for the step (_pack).
OFFSET = ex.Var("_step_offset", dtypes.int64)
# A chain over at most this many rows (decoding) computes each element's value as a dot product
# along the reduced axis, reading K as it is: a copy of K's step would cost more than the rows use.
DOT_FORM_ROWS = 4


def _size(n) -> ex.Expr:
    return ex.Const(n, dtypes.int64) if isinstance(n, int) else ex.size_expr(n)


def _int(n: int) -> ex.Const:
    return ex.Const(n, dtypes.int64)


def _factors(e: ex.Expr) -> list:
    if isinstance(e, ex.BinOp) and e.op == "mul":
        return _factors(e.a) + _factors(e.b)
    return [e]


def _product(fs: list) -> ex.Expr:
    out = fs[0]
    for f in fs[1:]:
        out = ex.BinOp("mul", out, f)
    return out


class _ChainLowering:
    def __init__(self, lowerer, chain: Chain, rows_per_block: int, lanes: int, step: int, tiles_per_job: int = 1,
                 parts: int = 1, gpu: bool = False):
        self.lw, self.c = lowerer, chain
        self.R, self.W, self.B, self.T, self.P = rows_per_block, lanes, step, tiles_per_job, parts
        self.gpu = gpu  # a GPU: one step size and single elements, K copied only by a block of threads
        # A GPU block of T threads, a row each, sharing each step's copy of the keys in shared memory.
        self.block = gpu and tiles_per_job > 1
        self.job_scope = "shared" if self.block else "local"
        self.names_used: set[str] = set()
        out = chain.out
        self.extent_of = dict(zip(out.axes, out.shape))
        self.row_axis = chain.rows[-1]
        self.outer = chain.rows[:-1]
        self.I = self.extent_of[self.row_axis]
        self.J = chain.extent if parts == 1 else chain.extent // parts  # (a part's elements: split_parts)
        self.running = {lk.name for _, lk in chain.links if lk.op == "max"}
        self.link_of = {lk.name: lp for (_, lk), lp in zip(chain.links, chain.plan.links)}
        self.last = chain.links[-1][1].name

    def var(self, base: str) -> ex.Var:
        name, k = base, 1
        while name in self.names_used:
            name, k = f"{base}{k}", k + 1
        self.names_used.add(name)
        return ex.Var(name, dtypes.int64)

    def local(self, base: str, shape) -> Buffer:
        return Buffer(self.lw.fresh(base), tuple(shape), F32, scope="local")

    def loop(self, var, extent, body, kind="serial", reduction=False):
        return For(var, extent, body, kind=kind, is_reduction=reduction)

    def sx(self, r) -> ex.Expr:
        """Where row ``r`` of the current tile keeps its running results (the job's tiles side by side;
        a GPU thread keeps its own)."""
        return r if self.T == 1 or self.block else ex.BinOp("add", ex.BinOp("mul", self.t, _int(self.R)), r)

    # The index of row r of the block (clamped: a last, partial block computes its last row again).
    def row(self, r) -> ex.Expr:
        i = ex.BinOp("add", ex.BinOp("mul", self.ib, _int(self.R)), r)
        return ex.simplify(ex.minimum(i, ex.BinOp("sub", _size(self.I), _int(1))))

    def at(self, e: ex.Expr, r, j) -> ex.Expr:
        """``e`` (over the output's axes and the reduced axis) at row ``r`` of the block and element ``j``
        (None: ``e`` does not read the axis)."""
        sub = {a: v for a, v in zip(self.outer, self.outer_vars)}
        sub[self.row_axis] = self.row(r)
        if j is not None:
            sub[self.c.axis] = j
        return ex.substitute(e, sub)

    def lower(self) -> Kernel:
        c, R, T = self.c, self.R, self.T
        self.p = self.var("blk")
        self.outer_vars = [self.var(f"o{k}") for k in range(len(self.outer))]
        n_rb = ex.simplify(ex.BinOp("floordiv", ex.BinOp("add", _size(self.I), _int(R - 1)), _int(R)))
        n_jobs = ex.simplify(ex.BinOp("floordiv", ex.BinOp("add", n_rb, _int(T - 1)), _int(T)))
        # A job is T tiles of R rows: each step's packed copies serve all of them.
        self.ch = self.var("ch")
        self.part = self.var("part") if self.P > 1 else None
        lo = ex.BinOp("mul", self.part, _int(self.J)) if self.P > 1 else _int(0)  # the part's first element
        self.t = (self.var("tid") if self.block else ex.Var("_tile", dtypes.int64)) if T > 1 else _int(0)
        self.ib = ex.BinOp("add", ex.BinOp("mul", self.ch, _int(T)), self.t) if T > 1 else self.ch
        # The running results per row, the last link's accumulators, and one step's new maxima.
        kept = R if self.block else T * R  # (rows whose running results a thread keeps)
        self.state = {lk.name: self.local(f"{lk.name}_run", (kept,)) for _, lk in c.links[:-1]}
        self.fresh = {n: self.local(f"{n}_new", (R,)) for n in self.running}
        col_ext = [self.extent_of[a] for a in c.cols]
        self.acc = self.local("acc", (kept, *col_ext))
        # (each tile of the job that has rows: a short last job clears no more than it uses)
        r = self.var("r")
        init = [self.loop(r, R, seq(*[Store(b, (self.sx(r),), NEG_INF if n in self.running else ex.Const(0.0, F32))
                                      for n, b in self.state.items()]), "unrolled"),
                self._over_cols(lambda r, cols: Store(self.acc, (self.sx(r), *cols), ex.Const(0.0, F32)))]
        init = [self._over_tiles(seq(*init), n_rb)]
        steps, done = [], _int(0)
        # Steps of B elements; what is left in one step each of B/2, B/4 ... W where it holds one (once
        # at most: a binary decomposition, few steps of much work each); then one masked step of W.
        # (A symbolic length takes steps of B, then of W: each size is one more copy of the step's
        # code, and LLVM's time grows with them.)
        sizes = [self.B, self.W]
        if isinstance(self.J, int) and not self.gpu:
            sizes = [self.B >> k for k in range((self.B // self.W).bit_length())]
        for size in dict.fromkeys(sizes):
            count = ex.simplify(ex.BinOp("floordiv", ex.BinOp("sub", _size(self.J), done), _int(size)))
            if not (isinstance(count, ex.Const) and count.value == 0):
                jb = self.var("jb")
                step = self._job_step(ex.BinOp("add", lo, ex.BinOp("add", done, ex.BinOp("mul", jb, _int(size)))),
                                      size, n_rb)
                steps.append(self.loop(jb, count.value if isinstance(count, ex.Const) else count, step,
                                       reduction=True))
                done = ex.simplify(ex.BinOp("add", done, ex.BinOp("mul", count, _int(size))))
        left = ex.simplify(ex.BinOp("sub", _size(self.J), done))
        if not (isinstance(left, ex.Const) and left.value == 0):
            if lower(self.J) >= self.W:
                # The last W elements, those done before masked: contiguous loads, no index past the end.
                step = self._job_step(ex.simplify(ex.BinOp("sub", _size(self.J), _int(self.W))), self.W, n_rb,
                                      first=done)
            else:  # fewer elements than a step: indices clamped to the last, lanes past it masked
                step = self._job_step(done, self.W, n_rb, first=done)
            steps.append(step if isinstance(left, ex.Const) else If(ex.gt(left, _int(0)), step))
        finish = self._over_tiles(self._finish(), n_rb) if self.P == 1 else self._store_part()
        body = seq(*init, *steps, finish)
        for b in [*self.state.values(), *self.fresh.values(), self.acc]:
            body = Allocate(b, body)
        if self.block:  # the job's rows are the block's threads, each running the whole body for its row
            body = self.loop(self.t, T, body, "thread.x")
        body = self._over_jobs(self.p, body, n_jobs, self.P)
        if self.P > 1:  # flash-decoding's second step: the parts' results merged, then finished
            body = seq(body, self._over_jobs(self.var("blk"), self._merge_parts(), n_jobs, 1))
        lw = self.lw
        job = f"{self.T} tiles of {self.R} rows" if self.T > 1 else f"{self.R} rows"
        if self.gpu:
            job = f"a row a thread, {self.T} threads a block" if self.block else "one row a thread"
        split = (f", split into {self.P} parts of {self.J} elements whose results merge after the pass "
                 f"(flash-decoding)" if self.P > 1 else "")
        if self.block:
            split = ", each step's keys copied to shared memory"
        workspace = list(self.partials.values()) if self.P > 1 else []
        kernel = Kernel(lw.name, list(lw.in_bufs.values()), list(lw.out_bufs.values()), body,
                        workspace=workspace, group=[n.name for n in lw.group.nodes],
                        notes=[f"reduction chain over {c.axis.name} in one pass, {job} x {self.B} elements "
                               f"a step{split} (ir/reduction_chains.py):"] + c.describe().splitlines())
        kernel.param_values = list(lw.in_bufs) + list(lw.out_bufs) + [None] * len(workspace)
        kernel.prescheduled = True  # its loops are made scheduled: the default schedule leaves it
        return kernel

    def _over_jobs(self, index: ex.Var, body, n_jobs, parts: int):
        """``body`` in a parallel loop ``index`` over the outer axes, the jobs and the parts: the
        part fastest, then the job, then the last outer axis."""
        rest_e, lets = index, {}
        if parts > 1:
            lets[self.part] = ex.BinOp("mod", rest_e, _int(parts))
            rest_e = ex.BinOp("floordiv", rest_e, _int(parts))
        lets[self.ch] = ex.BinOp("mod", rest_e, n_jobs)
        rest_e = ex.BinOp("floordiv", rest_e, n_jobs)
        for a, v in reversed(list(zip(self.outer, self.outer_vars))):
            n = _size(self.extent_of[a])
            lets[v] = ex.BinOp("mod", rest_e, n)
            rest_e = ex.BinOp("floordiv", rest_e, n)
        body = map_exprs(body, lambda e: ex.substitute(e, {v: ex.simplify(x) for v, x in lets.items()}))
        total = ex.BinOp("mul", n_jobs, _int(parts))
        for a in self.outer:
            total = ex.BinOp("mul", total, _size(self.extent_of[a]))
        total = ex.simplify(total)
        return self.loop(index, total.value if isinstance(total, ex.Const) else total, body,
                         "block.x" if self.block else "parallel")

    def _store_part(self):
        """A part's running results (the last link's accumulators unfinished), for the merge."""
        c, R = self.c, self.R
        self.partials = {lk.name: Buffer(self.lw.fresh(f"{lk.name}_parts"), (self._jobs_total(), R), F32)
                         for _, lk in c.links[:-1]}
        col_ext = [self.extent_of[a] for a in c.cols]
        self.partials[self.last] = Buffer(self.lw.fresh("acc_parts"), (self._jobs_total(), R, *col_ext), F32)
        r = self.var("r")
        stmts = [self.loop(r, R, seq(*[Store(self.partials[n], (self.p, r), ex.Load(b, (r,)))
                                       for n, b in self.state.items()]), "unrolled")]
        stmts.append(self._over_cols(lambda r, cols: Store(self.partials[self.last], (self.p, r, *cols),
                                                            ex.Load(self.acc, (r, *cols)))))
        return seq(*stmts)

    def _jobs_total(self) -> int:
        """The first loop's iterations when the axis is split: outer indices x row blocks x parts."""
        n = -(-upper(self.I) // self.R) * self.P
        for a in self.outer:
            n *= upper(self.extent_of[a])
        return n

    def _merge_parts(self):
        """The row block's results from its parts' (``reduction_chains.merge``: each sum rescaled by
        its own derived factor from the part's maxima to the merged ones), then finished."""
        c, R, P = self.c, self.R, self.P
        self.state = {n: self.local(f"{n}_merged", (R,)) for n in self.state}
        col_ext = [self.extent_of[a] for a in c.cols]
        self.acc = self.local("acc_merged", (R, *col_ext))
        r = self.var("r")

        def part_values(k, r, cols):  # (cols None: without the last link's accumulators)
            at = self._part_index(k)
            values = {n: ex.Load(self.partials[n], (at, r)) for n in self.state}
            if cols is not None:
                values[self.last] = ex.Load(self.partials[self.last], (at, r, *cols))
            return values

        maxima = [lk.name for _, lk in c.links if lk.op == "max"]
        merged_max = merge(c.plan, [part_values(k, r, None) for k in range(P)]) if maxima else {}
        stmts = [self.loop(r, R, seq(*[Store(self.state[n], (r,), merged_max[n]) for n in maxima]), "unrolled")]
        sums = [lk.name for _, lk in c.links[:-1] if lk.op == "sum"]
        if sums:
            r2 = self.var("r")
            at_max = {n: _safe(ex.Load(self.state[n], (r2,))) for n in maxima}
            merged = merge(c.plan, [part_values(k, r2, None) for k in range(P)], at_max)
            stmts.append(self.loop(r2, R, seq(*[Store(self.state[n], (r2,), merged[n]) for n in sums]), "unrolled"))

        def acc_at(r, cols):
            held = {n: _safe(ex.Load(self.state[n], (r,))) for n in maxima}
            merged = merge(c.plan, [part_values(k, r, cols) for k in range(P)], held)
            return Store(self.acc, (r, *cols), merged[self.last])

        stmts.append(self._over_cols(acc_at))
        stmts.append(self._finish())
        body = seq(*stmts)
        for b in [*self.state.values(), self.acc]:
            body = Allocate(b, body)
        return body

    def _part_index(self, k: int) -> ex.Expr:
        """The first loop's index of part ``k`` of the current job (outer indices, job, part)."""
        index = _int(0)
        for a, v in zip(self.outer, self.outer_vars):
            index = ex.BinOp("add", ex.BinOp("mul", index, _size(self.extent_of[a])), v)
        n_jobs = -(-upper(self.I) // self.R)
        index = ex.BinOp("add", ex.BinOp("mul", index, _int(n_jobs)), self.ch)
        return ex.simplify(ex.BinOp("add", ex.BinOp("mul", index, _int(self.P)), _int(k)))

    def _over_tiles(self, stmt, n_rb):
        """``stmt`` for each tile of the job (the last job may have fewer; a GPU thread does its own)."""
        if self.T == 1:
            return stmt
        if not (isinstance(n_rb, ex.Const) and n_rb.value % self.T == 0):
            stmt = If(ex.lt(self.ib, n_rb), stmt)
        if self.block:
            return stmt
        t = self.var("t")  # each loop over the tiles names its variable anew
        return self.loop(t, self.T, map_exprs(stmt, lambda e: ex.substitute(e, {self.t: t})))

    def _job_step(self, j0: ex.Expr, B: int, n_rb, first: ex.Expr | None = None):
        """One step of the job: the element values every tile reads in another order (K^T), copied
        once, then the step for each tile."""
        packed, body = self._block(j0, B, first)
        if self.block and packed:  # the block's threads copy together; each waits for the copy, then for
            # every thread to be done with it before the next step's copy replaces it
            stmt = seq(*[self._spread(s) for _, s in packed], Barrier(), self._over_tiles(body, n_rb), Barrier())
        else:
            stmt = seq(*[s for _, s in packed], self._over_tiles(body, n_rb))
        for buf, _ in packed:
            stmt = Allocate(buf, stmt)
        return stmt

    def _spread(self, nest):
        """A perfect nest of loops around one store, its iterations shared among the block's threads."""
        from minicomp.passes.schedules.gpu import decompose

        chain, inner = [], nest
        while isinstance(inner, For):
            chain.append(inner)
            inner = inner.body
        if not all(isinstance(lp.extent, int) for lp in chain):  # (sizes known at the call: one thread)
            return If(ex.eq(self.t, _int(0)), nest)
        total = math.prod(lp.extent for lp in chain)
        q = self.var("q")
        flat = ex.BinOp("add", ex.BinOp("mul", q, _int(self.T)), self.t)
        where = {v: ex.simplify(x) for v, x in decompose(flat, chain).items()}
        body = map_exprs(inner, lambda e: ex.substitute(e, where))
        if total % self.T:
            body = If(ex.lt(flat, _int(total)), body)
        return self.loop(q, -(-total // self.T), body)

    def lanes(self, B: int, store, r=None):
        """``store(j)`` for the step's B elements, W at a time as vectors (a vector as wide as the
        step would be 512 lanes: LLVM took 36 s over such code), for each of the block's rows when
        ``r`` (the row variable ``store`` uses) is given."""
        jc, jl = self.var("jc"), self.var("jj")
        body = self.loop(jl, self.W, store(ex.BinOp("add", ex.BinOp("mul", jc, _int(self.W)), jl)), "simd")
        if r is not None:
            body = self.loop(r, self.R, body, "unrolled")
        return self.loop(jc, B // self.W, body)

    def _over_cols(self, make, inner_kind="simd"):
        """Loops over the block's rows and the value columns around ``make(r, cols)``."""
        r = self.var("r")
        cols = [self.var(f"c{k}") for k in range(len(self.c.cols))]
        stmt = make(r, cols)
        for k, (v, a) in reversed(list(enumerate(zip(cols, self.c.cols)))):
            last = k == len(cols) - 1
            stmt = self.loop(v, self.extent_of[a], stmt, inner_kind if last else "serial")
        return self.loop(r, self.R, stmt, "unrolled")

    def _block(self, j0: ex.Expr, B: int, first: ex.Expr | None = None):
        """One step over ``B`` elements from ``j0``. With ``first``, the last step: only elements from
        ``first`` to the end count (the others are masked), and where the step would run past the end
        its indices stop at the last element."""
        c, R = self.c, self.R
        tail = first is not None
        ends_at_the_end = ex.format_expr(ex.simplify(ex.BinOp("add", j0, _int(B)))) == ex.format_expr(
            ex.simplify(_size(self.J)))
        clamp = tail and not ends_at_the_end

        def element(jj):
            j = ex.BinOp("add", j0, jj)
            return ex.simplify(ex.minimum(j, ex.BinOp("sub", _size(self.J), _int(1)))) if clamp else j

        def valid(jj):
            j = ex.BinOp("add", j0, jj)
            return ex.logical_and(ex.ge(j, first), ex.lt(j, _size(self.J)))

        stmts, tiles, packed = [], {}, []
        W = self.W
        reductions = {s for s in stage_dag([c.out]) if s.reduce is not None}
        for stage, ld in c.element_loads.items():  # each score of the step, W columns at a time
            tile = self.local(f"{stage.name}_tile", (R, B))
            tiles[stage] = tile
            red = stage.reduce
            jc, r, jj = self.var("jc"), self.var("r"), self.var("jj")
            acc = self.local(f"{stage.name}_acc", (R, W))
            raxes = [(self.var("d"), n) for _, n in red.axes]
            body = ex.substitute(self.lw.inline(red.body, reductions),
                                 {**dict(zip(stage.axes, ld.indices)), **{a: v for (a, _), (v, _) in
                                                                          zip(red.axes, raxes)}})
            # Index arithmetic simplified with the extents: K split into heads by a reshape of symbolic
            # length reads through divisions by that length until then.
            body = ex.simplify(body, {**self.extent_of, self.c.axis: self.J, **dict(raxes)})
            if upper(self.I) <= DOT_FORM_ROWS and self._dot_form(body, raxes):
                stmts.append(self._dot_tile(stage, body, raxes, tile, element, B))
                continue
            # (A GPU thread a row alone reads K as it is: a warp's threads read one key together.)
            if not self.gpu or self.block:
                body = self._pack(body, raxes, element, B, packed)
            offset = ex.BinOp("add", ex.BinOp("mul", jc, _int(W)), jj)
            body = self.at(ex.substitute(body, {OFFSET: offset}), r, element(offset))
            update = Store(acc, (r, jj), combine(red.op, ex.Load(acc, (r, jj)), body))
            update = self.loop(r, R, self.loop(jj, W, update, "simd"), "unrolled")
            for v, n in reversed(raxes):
                update = self.loop(v, n, update, reduction=True)
            r2, jj2, r3, jj3 = self.var("r"), self.var("jj"), self.var("r"), self.var("jj")
            init = self.loop(r2, R, self.loop(jj2, W, Store(acc, (r2, jj2), reduce_identity(red.op, F32)), "simd"),
                             "unrolled")
            out = self.loop(r3, R, self.loop(jj3, W, Store(
                tile, (r3, ex.BinOp("add", ex.BinOp("mul", jc, _int(W)), jj3)), ex.Load(acc, (r3, jj3))), "simd"),
                "unrolled")
            stmts.append(self.loop(jc, B // W, Allocate(acc, seq(init, update, out))))

        # Values computed once a step and read by the terms: per element, what no row changes (a padding
        # mask read through a gather); per row and element, a max link's term that other terms contain
        # (the masked, scaled score that the exponentials shift).
        ROW, ELEM = ex.Var("_row", dtypes.int64), ex.Var("_elem", dtypes.int64)
        table, made = {}, []
        terms = [self.link_of[lk.name].term for _, lk in c.links]
        for name in [lk.name for _, lk in c.links if lk.op == "max"]:
            t = self.link_of[name].term
            key = ex.format_expr(t)
            if not isinstance(t, ex.Load) and any(key in ex.format_expr(o) and o is not t for o in terms):
                buf = self.local(f"{name}_term", (R, B))
                made.append((buf, t, True))
                table[key] = ex.Load(buf, (ROW, ELEM))
        for e in self._per_element(terms):
            buf = Buffer(self.lw.fresh("elem"), (B,), e.dtype, scope=self.job_scope)
            made.insert(0, (buf, e, False))
            table[ex.format_expr(e)] = ex.Load(buf, (ELEM,))

        def shared(e, keep=None):
            return _replace(e, {k: v for k, v in table.items() if k != keep})

        def term(e, r, jj):
            """A plan expression at row r, element jj: element stages from their tiles, running results
            from this step's new values (read as 0 at -inf), others from their running values."""
            e = shared(e)
            e = ex.substitute(e, {ROW: r, ELEM: jj} if jj is not None else {ROW: r})
            e = ex.transform_loads(e, lambda ld: ex.Load(tiles[ld.tensor], (r, jj)) if ld.tensor in tiles else None)
            e = self.at(e, r, None if jj is None else element(jj))
            sub = {}
            for n in ex.walk(e):
                if isinstance(n, ex.Var) and n.name in self.link_of:
                    sub[n] = _safe(ex.Load(self.fresh[n.name], (r,))) if n.name in self.running \
                        else ex.Load(self.state[n.name], (self.sx(r),))
                elif isinstance(n, ex.Var) and n.name.endswith(".old") and n.name[:-4] in self.running:
                    sub[n] = _safe(ex.Load(self.state[n.name[:-4]], (self.sx(r),)))
            return ex.substitute(e, sub)

        for buf, e, per_row in made:
            r = self.var("r")
            key = ex.format_expr(e)

            def store(jj, buf=buf, key=key, e=e, per_row=per_row, r=r):
                value = ex.substitute(shared(e, keep=key), {ROW: r, ELEM: jj})
                value = ex.transform_loads(value, lambda ld: ex.Load(tiles[ld.tensor], (r, jj))
                                           if ld.tensor in tiles else None)
                value = self.at(value, r if per_row else _int(0), element(jj))
                return Store(buf, (r, jj) if per_row else (jj,), value)

            # (what no row changes is made once for all the job's tiles)
            if per_row:
                stmts.append(self.lanes(B, store, r))
            else:
                packed.append((buf, self.lanes(B, store)))
        # Max links: this step's new maxima.
        for name in [lk.name for _, lk in c.links if lk.op == "max"]:
            lp = self.link_of[name]
            r, jj = self.var("r"), self.var("jj")
            t = term(lp.term, r, jj)
            if tail:
                t = ex.select(valid(jj), t, NEG_INF)
            new = self.fresh[name]
            stmts.append(self.loop(r, R, seq(
                Store(new, (r,), ex.Load(self.state[name], (self.sx(r),))),
                self.loop(jj, B, Store(new, (r,), ex.maximum(ex.Load(new, (r,)), t)), "vectorized", True)),
                "unrolled"))
        # The last link's term as a(row, element) * b(element, column): a once per (row, element).
        last = self.link_of[self.last]
        col_set = set(c.cols)
        fs = _factors(last.term)
        a_fs = [f for f in fs if not (set(ex.free_vars(f)) & col_set)]
        b_fs = [f for f in fs if set(ex.free_vars(f)) & col_set]
        p = self.local("p", (R, B))
        if a_fs:
            r = self.var("r")

            def store_a(jj, r=r):
                a = term(_product(a_fs), r, jj)
                return Store(p, (r, jj), ex.select(valid(jj), a, ex.Const(0.0, F32)) if tail else a)

            stmts.append(self.lanes(B, store_a, r))
        a_text = ex.format_expr(_product(a_fs)) if a_fs else None
        # Sum links: rescale what is summed so far, add the step's terms.
        scales, by_text = {}, {}
        for name in [lk.name for _, lk in c.links if lk.op == "sum"]:
            lp = self.link_of[name]
            if ex._is_const(lp.rescale, 1.0):
                continue
            if ex.format_expr(lp.rescale) in by_text:  # the same factor (softmax's sum and the product by V)
                scales[name] = by_text[ex.format_expr(lp.rescale)]
                continue
            sc = self.local(f"{name}_rescale", (R,))
            r = self.var("r")
            olds = [n for n in ex.walk(lp.rescale) if isinstance(n, ex.Var) and n.name.endswith(".old")]
            factor = term(lp.rescale, r, None)
            for o in {o.name for o in olds}:  # a sum at the start (-inf before) is 0: any finite factor
                old = ex.Load(self.state[o[:-4]], (self.sx(r),))
                factor = ex.select(ex.gt(old, NEG_INF), factor, ex.Const(0.0, F32))
            stmts.append(self.loop(r, R, Store(sc, (r,), factor), "simd"))  # one vector of exps
            scales[name] = by_text[ex.format_expr(lp.rescale)] = sc
        for name in [lk.name for _, lk in c.links[:-1] if lk.op == "sum"]:
            lp, st = self.link_of[name], self.state[name]
            r, jj = self.var("r"), self.var("jj")
            if ex.format_expr(lp.term) == a_text:
                t = ex.Load(p, (r, jj))
            else:
                t = term(lp.term, r, jj)
                if tail:
                    t = ex.select(valid(jj), t, ex.Const(0.0, F32))
            head = Store(st, (self.sx(r),), ex.BinOp("mul", ex.Load(st, (self.sx(r),)), ex.Load(scales[name], (r,)))) \
                if name in scales else None
            stmts.append(self.loop(r, R, seq(head, self.loop(
                jj, B, Store(st, (self.sx(r),), ex.BinOp("add", ex.Load(st, (self.sx(r),)), t)), "vectorized", True)),
                "unrolled"))
        stmts.append(self._accumulate(p if a_fs else None, b_fs, scales.get(self.last), term, valid, B, tail))
        for name in self.running:  # the new maxima become the running ones
            r = self.var("r")
            stmts.append(self.loop(r, R, Store(self.state[name], (self.sx(r),), ex.Load(self.fresh[name], (r,))),
                                   "unrolled"))
        body = seq(*stmts)
        for b in [*tiles.values(), *by_text.values(), p, *(buf for buf, _, per_row in made if per_row)]:
            body = Allocate(b, body)
        return packed, body

    def _pack(self, body: ex.Expr, raxes, element, B: int, packed: list) -> ex.Expr:
        """``body`` with each load that moves with the element but not along its lanes (K read as
        it is, for lanes over keys) read instead from a copy made once a step for all the job's tiles:
        ``copy[d, e] = load at d and element j0 + e``, read at the step's offset :data:`OFFSET`.
        (A copy of all of K^T would be S x d per head in the arena: 12 MiB at S = 4096, 12 heads.)"""
        per_row = {self.row_axis, *self.c.cols}  # (sizes known at the call may appear: they are fixed)
        made = {}

        def replace(ld: ex.Load):
            names = set(ex.free_vars(ld))
            if not _across_lanes(ld, self.c.axis) or names & per_row:
                return None
            key = ex.format_expr(ld)
            if key not in made:
                used = [(v, n) for v, n in raxes if v in names]
                # (A GPU block's copy: a row of B + 1, so that threads storing one key's values down a
                # column of the copy meet no two in one bank of shared memory.)
                row = B + 1 if self.block else B
                buf = Buffer(self.lw.fresh(f"{ld.tensor.name}_step"), (*[n for _, n in used], row), F32,
                             scope=self.job_scope)
                fill_vars = [self.var("d") for _ in used]

                def store(e, buf=buf, ld=ld, fill_vars=fill_vars, used=used):
                    value = ex.substitute(ld, {**{v: fv for (v, _), fv in zip(used, fill_vars)},
                                               self.c.axis: element(e)})
                    return Store(buf, (*fill_vars, e), self.at(value, _int(0), None))

                def over_values(stmt, fill_vars=fill_vars, used=used):
                    for fv, (_, n) in reversed(list(zip(fill_vars, used))):
                        stmt = self.loop(fv, n, stmt)
                    return stmt

                if self.block:  # a key's values innermost: a block's threads read them side by side
                    fill = self.lanes(B, lambda e, store=store, over_values=over_values: over_values(store(e)))
                else:  # the lanes innermost: the copy's rows are vectors
                    fill = over_values(self.lanes(B, store))
                packed.append((buf, fill))
                made[key] = ex.Load(buf, (*[v for v, _ in used], OFFSET))
            return made[key]

        return ex.transform_loads(body, replace)

    def _dot_form(self, body: ex.Expr, raxes) -> bool:
        """Whether each element's value is better a dot product with the reduced axis as the lanes:
        the loads that change with the element are contiguous in the reduced axis (K read as it is,
        not as a copy of K^T: decoding fuses the copy away, docs/attention.md)."""
        if len(raxes) != 1 or self._dot_lanes(raxes[0][1]) < 4:
            return False
        d = raxes[0][0]
        moving = [n for n in ex.walk(body) if isinstance(n, ex.Load) and self.c.axis in ex.free_vars(n)]
        return bool(moving) and all(self.c.axis not in ex.free_vars(ld.indices[-1]) and
                                    ex.format_expr(ex.simplify(ld.indices[-1])) == d.name for ld in moving)

    def _dot_lanes(self, n) -> int:
        """Lanes for a reduced axis of ``n``: the largest power of two up to W that divides it."""
        if not isinstance(n, int):
            return 0
        w = self.W
        while w > 1 and n % w:
            w //= 2
        return w

    def _dot_tile(self, stage, body, raxes, tile, element, B):
        """``tile[r, j] = sum_d body`` for the step's elements, the reduced axis in vectors."""
        R = self.R
        (d, n), = raxes
        W = self._dot_lanes(n)
        red = stage.reduce
        j, r, dc, dl, dl2, dl3 = (self.var(x) for x in ("jj", "r", "dc", "dl", "dl", "dl"))
        part = self.local(f"{stage.name}_part", (W,))
        at = self.at(ex.substitute(body, {d: ex.BinOp("add", ex.BinOp("mul", dc, _int(W)), dl)}), r, element(j))
        per_row = Allocate(part, seq(
            self.loop(dl2, W, Store(part, (dl2,), reduce_identity(red.op, F32)), "simd"),
            self.loop(dc, n // W, self.loop(dl, W, Store(part, (dl,), combine(red.op, ex.Load(part, (dl,)), at)),
                                            "simd"), reduction=True),
            Store(tile, (r, j), reduce_identity(red.op, F32)),
            self.loop(dl3, W, Store(tile, (r, j), combine(red.op, ex.Load(tile, (r, j)), ex.Load(part, (dl3,)))),
                      "vectorized", True)))
        return self.loop(j, B, self.loop(r, R, per_row, "unrolled"))

    def _per_element(self, terms) -> list:
        """The largest subterms of ``terms`` that read the axis and no row, column or result, and
        do more than load a value (a mask read through a gather, compared): computed once a step."""
        rowish = {*self.c.rows, *self.c.cols}
        found: dict[str, ex.Expr] = {}

        def go(e):
            names = {v for v in ex.free_vars(e)}
            if (self.c.axis in names and not (names & rowish) and not any(v.name in self.link_of or
                                                                          v.name.endswith(".old") for v in names)
                    and not any(isinstance(n, ex.Load) and n.tensor in self.c.element_loads for n in ex.walk(e))):
                if not isinstance(e, (ex.Load, ex.Var, ex.Const)) and any(isinstance(n, ex.Load) for n in ex.walk(e)):
                    found.setdefault(ex.format_expr(e), e)
                return
            for ch in ex.children(e):
                go(ch)

        for t in terms:
            go(t)
        return list(found.values())

    def _accumulate(self, p, b_fs, scale, term, valid, B, tail):
        """acc = acc * rescale + sum over the step of a * b, as register tiles over chunks of columns."""
        c, R = self.c, self.R
        last_ext = self.extent_of[c.cols[-1]] if c.cols else 1
        w = self.W
        while w > 1 and not (isinstance(last_ext, int) and last_ext % w == 0):
            w //= 2
        outer_cols = [self.var(f"c{k}") for k in range(len(c.cols) - 1)]
        cc, r, cl, jj = self.var("cc"), self.var("r"), self.var("c"), self.var("jj")
        col = ex.BinOp("add", ex.BinOp("mul", cc, _int(w)), cl)
        cols = [*outer_cols, col] if c.cols else []
        t = self.local("acc_tile", (R, w))
        sub_cols = dict(zip(c.cols, cols))

        def b_at(jj):
            if not b_fs:
                return ex.Const(1.0, F32)
            return term(ex.substitute(_product(b_fs), sub_cols), r, jj)

        a = ex.Load(p, (r, jj)) if p is not None else ex.Const(1.0, F32)
        contrib = ex.BinOp("mul", a, b_at(jj))
        if p is None and tail:
            contrib = ex.select(valid(jj), contrib, ex.Const(0.0, F32))
        def cols_at(lane):
            return [*outer_cols, ex.BinOp("add", ex.BinOp("mul", cc, _int(w)), lane)] if c.cols else []

        r_in, cl_in = self.var("r"), self.var("c")
        start = ex.Load(self.acc, (self.sx(r_in), *cols_at(cl_in)))
        if scale is not None:
            start = ex.BinOp("mul", start, ex.Load(scale, (r_in,)))
        copy_in = self.loop(r_in, R, self.loop(cl_in, w, Store(t, (r_in, cl_in), start), "simd"), "unrolled")
        add = self.loop(jj, B, self.loop(r, R, self.loop(cl, w, Store(
            t, (r, cl), ex.BinOp("add", ex.Load(t, (r, cl)), contrib)), "simd"), "unrolled"), reduction=True)
        r_out, cl_out = self.var("r"), self.var("c")
        copy_out = self.loop(r_out, R, self.loop(cl_out, w, Store(self.acc, (self.sx(r_out), *cols_at(cl_out)),
                                                                  ex.Load(t, (r_out, cl_out))), "simd"), "unrolled")
        stmt = Allocate(t, seq(copy_in, add, copy_out))
        stmt = self.loop(cc, ex.size_div(last_ext, w) if c.cols else 1, stmt)
        for v, a_ in reversed(list(zip(outer_cols, c.cols[:-1]))):
            stmt = self.loop(v, self.extent_of[a_], stmt)
        return stmt

    def _finish(self):
        """The output: each result's after-pass factor."""
        c = self.c
        out_buf = self.lw.out_bufs[self.lw.group.outputs[0]]

        def make(r, cols):
            values = {}
            for (_, lk), lp in zip(c.links, c.plan.links):
                own = ex.Load(self.acc, (self.sx(r), *cols)) if lk.name == self.last \
                    else ex.Load(self.state[lk.name], (self.sx(r),))
                sub = {n: values.get(n.name, own if n.name == lk.name else None)
                       for n in ex.walk(lp.finish) if isinstance(n, ex.Var)}
                values[lk.name] = ex.substitute(lp.finish, {k: v for k, v in sub.items() if v is not None})
            # (a row's mask in a finishing factor reads the row and columns of this store)
            value = ex.substitute(self.at(values[self.last], r, None), dict(zip(c.cols, cols)))
            idx = [*self.outer_vars, self.row(r), *cols]
            return Store(out_buf, tuple(idx), value)

        return self._over_cols(make)


def _replace(e: ex.Expr, table: dict) -> ex.Expr:
    """``e`` with every subterm that prints as a key of ``table`` replaced by its value."""
    found = table.get(ex.format_expr(e))
    if found is not None:
        return found
    return ex.rebuild(e, tuple(_replace(c, table) for c in ex.children(e)))


def _safe(x: ex.Expr) -> ex.Expr:
    """A running max read as 0 while it is -inf (a row with every element masked so far)."""
    return ex.select(ex.gt(x, NEG_INF), x, ex.Const(0.0, F32))


def lower_chain(lowerer, chain: Chain, target=None, tiles: tuple | None = None) -> Kernel:
    """The one-pass loops of ``chain`` (found by :func:`find_chain` on ``lowerer``'s group), their
    tiles sized for ``target`` (the host when None): rows as the register tile's rows, the
    elements of a step by :func:`step_elements`, the tiles of a job by :func:`tiles_per_job`;
    ``tiles`` (rows, elements[, tiles a job]) chooses them instead (``fusion={"chain_tiles": ...}``:
    the benchmark's sweep)."""
    if target is None:
        from minicomp.target import Target

        target = Target.host()
    if target.gpu is not None:
        if tiles is not None:
            raise MinicompError(f"chain_tiles {tiles} sets a CPU's tiles; a GPU target takes one row a thread")
        return _lower_for_gpu(lowerer, chain)
    rows, lanes, step = _rule_tiles(chain, target)
    if tiles is not None:
        rows, step, *more = tiles
        blocks = step // lanes if step % lanes == 0 else 0
        if rows < 1 or blocks < 1 or blocks & (blocks - 1) or len(more) > 1 or (more and more[0] < 1):
            raise MinicompError(f"chain_tiles {tiles}: rows at least 1, elements {lanes} times a power of two, "
                                f"and tiles a job at least 1")
        per_job = more[0] if more else tiles_per_job(lowerer, chain, rows)
    else:
        per_job = tiles_per_job(lowerer, chain, rows)
    parts = split_parts(chain, rows, lanes) if per_job == 1 else 1
    return _ChainLowering(lowerer, chain, rows, lanes, step, per_job, parts).lower()


GPU_STEP = 32  # elements a thread's step takes: its scores and terms, 32 registers each
GPU_BLOCK_ROWS = 64  # threads (rows) of a block sharing each step's keys (d = 64: 64 x 33 floats, 8.25 KiB)
GPU_MIN_THREADS = 2048  # threads flash-decoding splits the axis for (a few rows over a long axis)
GPU_MIN_PART = 64
GPU_MAX_PARTS = 16  # (the merge is written out for each part: its code grows with them)


def _lower_for_gpu(lowerer, chain: Chain) -> Kernel:
    """The one pass for a GPU, one thread per row (each of its outer axes and row), which keeps the
    row's running results and accumulators. Many rows: a block of :data:`GPU_BLOCK_ROWS` threads
    takes as many rows, and its threads copy each step's keys into shared memory together (the CPU's
    copy a job, ``_pack``) and read them from there. A few rows: a thread a row reads the keys as
    they are (a warp's threads read one key together), and a long axis (decoding) is split into
    parts (flash-decoding) whose results a second launch merges, mapped by ``schedules/gpu.py``'s
    thread per point. The loops are the CPU's, one row and one lane wide."""
    from minicomp.passes.schedules.gpu import thread_per_point

    rows = upper(chain.out.shape[chain.out.axes.index(chain.rows[-1])])
    if rows >= GPU_BLOCK_ROWS:
        kernel = _ChainLowering(lowerer, chain, 1, 1, GPU_STEP, GPU_BLOCK_ROWS, 1, gpu=True).lower()
        return replace(kernel, body=_drop_unit_loops(_retag(kernel.body, {"simd": "serial", "vectorized": "serial"})))
    parts = split_parts(chain, 1, 1, GPU_MIN_THREADS, GPU_MIN_PART, GPU_MAX_PARTS)
    kernel = _ChainLowering(lowerer, chain, 1, 1, GPU_STEP, 1, parts, gpu=True).lower()
    serial = _drop_unit_loops(_retag(kernel.body, {"simd": "serial", "vectorized": "serial", "parallel": "serial"}))
    launches = [thread_per_point(top, f"g{n}") for n, top in enumerate(top_statements(serial))]
    return replace(kernel, body=seq(*launches))


def _drop_unit_loops(s):
    """``s`` with each loop of one iteration replaced by its body at index 0 (a row a block and a
    lane a vector leave many; the CUDA C reads better without them)."""
    def one(st):
        if isinstance(st, For) and isinstance(st.extent, int) and st.extent == 1 and not st.start \
                and st.kind in ("serial", "unrolled"):
            return map_exprs(st.body, lambda e: ex.simplify(ex.substitute(e, {st.var: _int(0)})))
        return None

    return map_stmts(s, one)


def _retag(s, kinds: dict):
    """``s`` with each loop of a kind in ``kinds`` made that kind's value."""
    return map_stmts(s, lambda st: replace(st, kind=kinds[st.kind]) if isinstance(st, For) and st.kind in kinds
                     else None)


def tile_candidates(lowerer, chain: Chain, target) -> list[tuple]:
    """The tiles the tuner measures for a chain (``compile(tune=True)``), the rule's first: at most 3,
    the rule's and steps of a half and a quarter of its elements (the sweep at S = 2048 found the
    step the choice that matters most: 64 elements 18-24% slower than 128 to 512)."""
    rows, lanes, step = _rule_tiles(chain, target)
    per_job = tiles_per_job(lowerer, chain, rows)
    return [(rows, s, per_job) for s in (step, step // 2, step // 4) if s >= lanes]


def _rule_tiles(chain: Chain, target) -> tuple[int, int, int]:
    """The rule's (rows, lanes, elements a step) for ``chain`` on ``target``."""
    from minicomp.passes.schedules.cpu_choices import register_tile

    rows, lanes = register_tile(target, F32)
    # Fewer rows than a tile (one query row: decoding) take a block of just those rows.
    rows = max(1, min(rows, upper(chain.out.shape[chain.out.axes.index(chain.rows[-1])])))
    return rows, lanes, step_elements(chain, target, lanes)


MIN_PART = 512


def split_parts(chain: Chain, rows: int, lanes: int, min_jobs: int | None = None, min_part: int | None = None,
                max_parts: int | None = None) -> int:
    """Parts to split the axis into (flash-decoding) when a few rows leave threads idle: a power of
    two, while the kernel has fewer than ``min_jobs`` (:data:`MIN_JOBS`) jobs and each part keeps at
    least ``min_part`` (:data:`MIN_PART`) elements, a whole number of vectors. Sizes must be known
    (parts are static), and the derived form must merge (``reduction_chains.why_not_split``)."""
    min_jobs, min_part = min_jobs or MIN_JOBS, min_part or MIN_PART
    out = chain.out
    sizes = [*out.shape, chain.extent]
    if upper(out.shape[out.axes.index(chain.rows[-1])]) > DOT_FORM_ROWS or not all(isinstance(n, int) for n in sizes):
        return 1
    if why_not_split(chain.plan) is not None:
        return 1
    jobs = -(-out.shape[out.axes.index(chain.rows[-1])] // rows) * _prod_upper(
        out.shape[out.axes.index(a)] for a in chain.rows[:-1])
    J, parts = chain.extent, 1
    while (jobs * parts < min_jobs and J % (2 * parts * lanes) == 0 and J // (2 * parts) >= min_part
           and (max_parts is None or 2 * parts <= max_parts)):
        parts *= 2
    return parts


JOB_ROWS = 256
MIN_JOBS = 8


def tiles_per_job(lowerer, chain: Chain, rows: int) -> int:
    """Tiles of ``rows`` rows that one job (one parallel iteration) takes: each step's copy of the
    element values read out of their lanes' order (K^T) serves them all, so more tiles share it,
    up to :data:`JOB_ROWS` rows (their accumulators, 64 KiB at 64 columns, stay in L2) and while
    the kernel keeps :data:`MIN_JOBS` jobs to share among threads. Without such a copy a job is one tile."""
    if not _reads_across_lanes(lowerer, chain):
        return 1
    blocks = -(-upper(chain.out.shape[chain.out.axes.index(chain.rows[-1])]) // rows)
    outer = _prod_upper(chain.out.shape[chain.out.axes.index(a)] for a in chain.rows[:-1])
    per_job = max(1, JOB_ROWS // rows)
    while per_job > 1 and outer * -(-blocks // per_job) < MIN_JOBS:
        per_job //= 2
    return min(per_job, blocks)


def _reads_across_lanes(lowerer, chain: Chain) -> bool:
    """Whether an element stage reads a value that moves with the axis out of its lanes' order."""
    reductions = {s for s in stage_dag([chain.out]) if s.reduce is not None}
    for st, ld in chain.element_loads.items():
        body = ex.substitute(lowerer.inline(st.reduce.body, reductions), dict(zip(st.axes, ld.indices)))
        if any(_across_lanes(n, chain.axis) for n in ex.walk(body) if isinstance(n, ex.Load)):
            return True
    return False


def _across_lanes(ld: ex.Load, axis: ex.Var) -> bool:
    """A load that moves with ``axis`` but not as its last index (strided across the lanes)."""
    return axis in ex.free_vars(ld) and ex.format_expr(ex.simplify(ld.indices[-1])) != axis.name


MAX_STEP = 512


def step_elements(chain: Chain, target, lanes: int) -> int:
    """Elements of the axis a step takes: the most (a power of two times ``lanes``, at most
    :data:`MAX_STEP`) whose values read per element (a K row and a V row: the element stages' reduced
    extent and the columns) fit in half the L2 cache, so a step's K and V stay there for all the rows
    of a block. Longer steps share the per-step work (a row's max, rescale and sums) among more
    elements: at S = 1024 (BERT-base sizes, AMD EPYC Zen 4) steps of 64, 128 and 256 took 24.5, 20.3
    and 20.0 ms. Beyond 512 no step was faster, and every halving of it adds code for a remainder."""
    per_element = sum(_prod_upper(n for _, n in st.reduce.axes) for st in chain.element_loads) or 1
    per_element += _prod_upper(chain.out.shape[chain.out.axes.index(a)] for a in chain.cols)
    budget = (target.l2_bytes or (1 << 20)) // 2
    step = lanes
    while step * 2 <= MAX_STEP and step * 2 * per_element * 4 <= budget:
        step *= 2
    return step


def _prod_upper(sizes) -> int:
    n = 1
    for s in sizes:
        n *= upper(s)
    return n
