"""Schedule steps that move data: ``cache_write``, ``cache_read``,
``compute_at``, ``localize``, ``decompose_reduction``,
``reverse_compute_inline`` and ``pack`` (see :mod:`primitives` for the list).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from minicomp.ir import expr as ex
from minicomp.ir.loops import (
    Allocate,
    Barrier,
    Buffer,
    For,
    If,
    Seq,
    Stmt,
    Store,
    loops,
    seq,
    stmt_exprs,
    walk_stmts,
)
from minicomp.passes.schedules.step import (
    Names,
    Step,
    accesses,
    copy_loops,
    enclosing_ranges,
    loop_ranges,
    map_exprs,
    map_stmts,
    replace_stmt,
    same_indices,
)

SCOPES = ("local", "shared")


def _scope(step, kernel, scope):
    if scope not in SCOPES:
        step.fail(kernel, f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")


def _buffer(step, kernel, name: str, body: Stmt | None = None) -> Buffer:
    bufs = list(kernel.params)
    for st in walk_stmts(kernel.body):
        if isinstance(st, Allocate):
            bufs.append(st.buffer)
    for b in bufs:
        if b.name == name:
            return b
    step.fail(kernel, f"no buffer named {name} (buffers: {', '.join(b.name for b in bufs)})")


def _check_outside(step, kernel, buf: Buffer, lp: For):
    """``buf`` must exist around ``lp``: a parameter, or allocated outside it."""
    if any(b is buf for b in kernel.params):
        return
    for st in walk_stmts(kernel.body):
        if isinstance(st, Allocate) and st.buffer is buf:
            if any(s is lp for s in walk_stmts(st.body)):
                return
            step.fail(kernel, f"{buf.name} is allocated inside {lp.var.name}: it does not exist around it")


def _written_first(acc, buf: Buffer) -> bool:
    """Is the first of these accesses a store of a value that does not read ``buf``?"""
    st, _, is_store = acc[0]
    return is_store and not any(isinstance(n, ex.Load) and n.tensor is buf for n in ex.walk(st.value))


def _cache_target(step, kernel):
    """(buffer, loop, accesses under the loop) of a cache_read/cache_write, checked."""
    _scope(step, kernel, step.scope)
    buf = _buffer(step, kernel, step.buffer)
    lp = step.find(kernel, step.loop)
    _check_outside(step, kernel, buf, lp)
    acc = accesses(lp.body, buf)
    if not acc:
        step.fail(kernel, f"nothing under {step.loop} touches {step.buffer}")
    return buf, lp, acc


def _inner_vars(lp: For, idx) -> list[For]:
    """The loops under ``lp`` (in nesting order) whose variables ``idx`` uses."""
    used = {id(v) for i in idx for v in ex.free_vars(i)}
    seen, out = set(), []
    for inner in loops(lp.body):
        if id(inner.var) in used and inner.var.name not in seen:
            seen.add(inner.var.name)
            out.append(inner)
    return out


@dataclass(frozen=True)
class CacheWrite(Step):
    """Compute the elements of ``buffer`` written under ``loop`` in a new
    ``scope`` buffer, indexed by the loops that pick the element, and copy
    them to ``buffer`` at the end of ``loop``'s body (a register tile)."""

    buffer: str
    loop: str
    scope: str = "local"
    name = "cache_write"

    def apply(self, kernel, names):
        buf, lp, acc = _cache_target(self, kernel)
        idx = acc[0][1]
        if not all(same_indices(idx, a[1]) for a in acc):
            self.fail(kernel, f"{self.buffer} is accessed at different indices under {self.loop}")
        # Read before written (an accumulation that started earlier): copy the elements in first.
        read_first = not _written_first(acc, buf)
        if any(lp2.var is v for lp2 in loops(kernel.body) if lp2.is_reduction for i in idx
               for v in ex.free_vars(i)):
            self.fail(kernel, f"{self.buffer}'s index depends on a reduction loop")
        picks = _inner_vars(lp, idx)
        shape = tuple(p.extent for p in picks)
        local = Buffer(_fresh_buffer(kernel, f"{buf.name}_{self.scope}"), shape, buf.dtype, self.scope)
        lidx = tuple(p.var for p in picks)

        def redirect(s):
            if isinstance(s, Store):
                s2 = Store(local, lidx, s.value) if s.buffer is buf else s
                return map_exprs(s2, lambda e: ex.transform_loads(
                    e, lambda ld: ex.Load(local, lidx) if ld.tensor is buf else None))
            return None

        body = map_stmts(lp.body, redirect)

        def copy(suffix, to_local):
            cvars = [ex.Var(names.fresh(p.var.name + suffix)) for p in picks]
            where = tuple(ex.substitute(i, dict(zip((p.var for p in picks), cvars))) for i in idx)
            st = (Store(local, tuple(cvars), ex.Load(buf, where)) if to_local
                  else Store(buf, where, ex.Load(local, tuple(cvars))))
            for v, p in reversed(list(zip(cvars, picks))):
                st = For(v, p.extent, st)
            return st

        parts = [copy(".rd", True)] if read_first else []
        sync = [Barrier()] if self.scope == "shared" else []
        body = seq(*parts, *sync, body, *sync, copy(".wb", False))
        return replace_stmt(kernel.body, lp, replace(lp, body=Allocate(local, body)))


def _fresh_buffer(kernel, base: str) -> str:
    name, k = base, 1
    while _has_buffer(kernel, name):
        name, k = f"{base}{k}", k + 1
    return name


def _has_buffer(kernel, name):
    return any(b.name == name for b in kernel.params) or any(
        isinstance(s, Allocate) and s.buffer.name == name for s in walk_stmts(kernel.body))


@dataclass(frozen=True)
class CacheRead(Step):
    """Copy the box of ``buffer`` read under ``loop`` into a new ``scope``
    buffer at the start of ``loop``'s body, and read it from there."""

    buffer: str
    loop: str
    scope: str = "local"
    name = "cache_read"

    def apply(self, kernel, names):
        buf, lp, acc = _cache_target(self, kernel)
        if any(is_store for _, _, is_store in acc):
            self.fail(kernel, f"{self.buffer} is written under {self.loop}")
        inner = loop_ranges(lp.body)
        base, lo, hi = _read_box(self, kernel, lp, buf, acc)
        shape = tuple(h - low + 1 for low, h in zip(lo, hi))
        # Rows a multiple of 1 KiB apart land in the same cache sets and evict
        # each other: pad such rows by one cache line.
        row_bytes = shape[-1] * buf.dtype.itemsize if shape else 0
        padded = shape[:-1] + (shape[-1] + 64 // buf.dtype.itemsize,) if len(shape) > 1 and row_bytes % 1024 == 0 \
            else shape
        local = Buffer(_fresh_buffer(kernel, f"{buf.name}_{self.scope}"), padded, buf.dtype, self.scope)

        def reread(e):
            def fn(ld):
                if ld.tensor is not buf:
                    return None
                return ex.Load(local, tuple(ex.simplify(i - b - low, inner)
                                            for i, b, low in zip(ld.indices, base, lo)))
            return ex.transform_loads(e, fn)

        body = map_exprs(lp.body, reread)
        copy = _box_nest(kernel, lp, names, buf, base, lo, shape,
                         lambda cvars, src: Store(local, tuple(cvars), ex.Load(buf, tuple(src))))
        parts = [copy, Barrier(), body, Barrier()] if self.scope == "shared" else [copy, body]
        return replace_stmt(kernel.body, lp, replace(lp, body=Allocate(local, seq(*parts))))


def _read_box(step, kernel, lp: For, buf: Buffer, acc):
    """The box of ``buf`` read under ``lp``: (corner expressions, which move
    only with loops outside ``lp``; lowest and highest offsets per axis)."""
    inner = loop_ranges(lp.body)
    zero = {v: ex.const(0, "int64") for v in inner}
    base = [ex.simplify(ex.substitute(i, zero)) for i in acc[0][1]]
    lo, hi = [None] * len(base), [None] * len(base)
    for _, idx, _ in acc:
        for d, (i, b) in enumerate(zip(idx, base)):
            off = ex.simplify(i - b, inner)
            if any(v not in inner for v in ex.free_vars(off)):
                step.fail(kernel, f"{buf.name}'s index moves with loops outside {lp.var.name} in ways a box cannot "
                                  f"follow")
            rng = ex.bounds(off, inner)
            if rng is None:
                step.fail(kernel, f"cannot bound the box of {buf.name} read under {lp.var.name}")
            lo[d] = rng[0] if lo[d] is None else min(lo[d], rng[0])
            hi[d] = rng[1] if hi[d] is None else max(hi[d], rng[1])
        # Reads may start at other corners (a remainder tile further along a
        # row), but only a fixed distance from the first: one box holds them.
        if not all(isinstance(ex.simplify(ex.substitute(i, zero) - b), ex.Const) for i, b in zip(idx, base)):
            step.fail(kernel, f"{buf.name} is read at boxes that do not share a corner under {lp.var.name}")
    return base, lo, hi


def _box_nest(kernel, lp: For, names: Names, buf: Buffer, base, lo, shape, make_store) -> Stmt:
    """Loops over a box of ``buf`` (corner ``base + lo``, ``shape``) at the
    start of ``lp``'s body, running ``make_store(box indices, buffer
    indices)`` for each element that lies inside ``buf``."""
    # An axis the box is one element deep along needs no loop (its index
    # then names the slice, which ``localize`` can see).
    cvars = [ex.Var(names.fresh(f"{buf.name}.c{d}")) if n > 1 else ex.const(0, "int64")
             for d, n in enumerate(shape)]
    ranges = {**enclosing_ranges(kernel.body, lp), lp.var: lp.extent,
              **{v: n for v, n in zip(cvars, shape) if isinstance(v, ex.Var)}}
    src = [ex.simplify(b + low + c, ranges) for b, low, c in zip(base, lo, cvars)]
    stmt: Stmt = make_store(cvars, src)
    conds = []
    for e, n in zip(src, buf.shape):
        b = ex.bounds(e, ranges)
        if b is None or b[0] < 0:
            conds.append(ex.ge(e, ex.const(0, "int64")))
        if not isinstance(n, int):  # a symbolic extent (mc.Dim): the edge moves with the call
            conds.append(ex.lt(e, ex.size_expr(n)))
        elif b is None or b[1] >= n:
            conds.append(ex.lt(e, ex.const(n, "int64")))
    if conds:  # the box may reach past the buffer's edge: only what exists
        cond = conds[0]
        for c in conds[1:]:
            cond = ex.logical_and(cond, c)
        stmt = If(cond, stmt)
    for v, n in reversed(list(zip(cvars, shape))):
        if isinstance(v, ex.Var):
            stmt = For(v, n, stmt)
    return stmt


@dataclass(frozen=True)
class ComputeAt(Step):
    """Compute the elementwise nest ``producer`` (one element of its buffer
    per iteration) inside ``loop`` instead, only for the box of elements
    that ``loop``'s body reads, just before it reads them; the producer's
    own loops go away. Elements read by several iterations are recomputed."""

    producer: str
    loop: str
    name = "compute_at"

    def apply(self, kernel, names):
        prod = self.find(kernel, self.producer)
        lp = self.find(kernel, self.loop)
        chain, cur = [], prod
        while isinstance(cur, For):
            chain.append(cur)
            cur = cur.body
        if not isinstance(cur, Store) or any(c.is_reduction or c.kind != "serial" for c in chain):
            self.fail(kernel, f"{self.producer} is not a serial perfect nest around one store")
        buf = cur.buffer
        var_dims = [d for d, i in enumerate(cur.indices) if not isinstance(i, ex.Const)]
        if [cur.indices[d] for d in var_dims] != [c.var for c in chain]:
            self.fail(kernel, f"{self.producer} must write {buf.name} at its loops' indices, in order")
        if any(isinstance(n, ex.Load) and n.tensor is buf for n in ex.walk(cur.value)):
            self.fail(kernel, f"{self.producer} reads the buffer it writes")
        if any(s is lp for s in walk_stmts(prod)) or not _before(kernel.body, prod, lp):
            self.fail(kernel, f"{self.loop} must come after the producer {self.producer}, outside it")
        _check_outside(self, kernel, buf, lp)
        acc = accesses(lp.body, buf)
        if not acc or any(is_store for _, _, is_store in acc):
            self.fail(kernel, f"the body of {self.loop} must read {buf.name} and not write it")
        elsewhere = [a for a in accesses(kernel.body, buf) if a[0] is not cur
                     and not any(a[0] is s for s in walk_stmts(lp.body))]
        if elsewhere:
            self.fail(kernel, f"{buf.name} is also used outside {self.loop}")
        base, lo, hi = _read_box(self, kernel, lp, buf, acc)
        shape = tuple(h - low + 1 for low, h in zip(lo, hi))

        def compute(cvars, src):
            at = {c.var: src[d] for c, d in zip(chain, var_dims)}
            return Store(buf, tuple(src), ex.substitute(cur.value, at))

        nest = _box_nest(kernel, lp, names, buf, base, lo, shape, compute)
        body = replace_stmt(kernel.body, lp, replace(lp, body=seq(nest, lp.body)))
        return drop_empty(replace_stmt(body, prod, Seq([])))


def _before(body: Stmt, a: Stmt, b: Stmt) -> bool:
    order = [s for s in walk_stmts(body) if s is a or s is b]
    return len(order) == 2 and order[0] is a


@dataclass(frozen=True)
class Localize(Step):
    """Give each iteration of ``loop`` its own ``local`` copy of the
    workspace ``buffer`` (a stack row buffer): legal when the buffer is used
    only inside ``loop``, every iteration touches one slice of it (picked by
    ``loop`` and the loops around it), and writes before it reads. The
    workspace leaves the kernel's parameters, so the arena does not hold it."""

    buffer: str
    loop: str
    name = "localize"

    def apply(self, kernel, names):
        buf = _buffer(self, kernel, self.buffer)
        if not any(b is buf for b in kernel.workspace):
            self.fail(kernel, f"{self.buffer} is not a workspace of the kernel")
        lp = self.find(kernel, self.loop)
        acc = accesses(lp.body, buf)
        if not acc or len(acc) != len(accesses(kernel.body, buf)):
            self.fail(kernel, f"{self.buffer} is used outside {self.loop}")
        if not _written_first(acc, buf):
            self.fail(kernel, f"{self.buffer} is read under {self.loop} before it is written there")
        around = {id(v) for v in enclosing_ranges(kernel.body, lp)} | {id(lp.var)}
        first = acc[0][1]
        fixed = [d for d, i in enumerate(first) if all(id(v) in around for v in ex.free_vars(i))]
        for _, idx, _ in acc:
            if any(ex.format_expr(idx[d]) != ex.format_expr(first[d]) for d in fixed) or any(
                    all(id(v) in around for v in ex.free_vars(idx[d])) for d in range(len(idx)) if d not in fixed):
                self.fail(kernel, f"the iterations of {self.loop} do not each touch one slice of {self.buffer}")
        kept = [d for d in range(len(first)) if d not in fixed]
        local = Buffer(buf.name, tuple(buf.shape[d] for d in kept), buf.dtype, "local")

        def slice_of(idx):
            return tuple(idx[d] for d in kept)

        def move(st):
            if isinstance(st, Store):
                st = Store(local, slice_of(st.indices), st.value) if st.buffer is buf else st
                return map_exprs(st, lambda e: ex.transform_loads(
                    e, lambda ld: ex.Load(local, slice_of(ld.indices)) if ld.tensor is buf else None))
            return None

        body = replace_stmt(kernel.body, lp, replace(lp, body=Allocate(local, map_stmts(lp.body, move))))
        w = next(k for k, b in enumerate(kernel.workspace) if b is buf)
        values = list(kernel.param_values)
        if values:
            del values[len(kernel.inputs) + len(kernel.outputs) + w]
        return replace(kernel, body=body, workspace=[b for b in kernel.workspace if b is not buf],
                       param_values=values)


def split_init(lp: For):
    """For a loop whose body is a perfect nest of spatial loops ending in
    ``Seq(init store, reduction loops...)``: (spatial chain, init, update)."""
    chain, cur = [], lp
    while isinstance(cur, For) and not cur.is_reduction:
        chain.append(cur)
        cur = cur.body
    if not (isinstance(cur, Seq) and len(cur.stmts) >= 2 and isinstance(cur.stmts[0], Store)
            and all(isinstance(s, For) and s.is_reduction for s in cur.stmts[1:])):
        return None
    return chain, cur.stmts[0], seq(*cur.stmts[1:])


@dataclass(frozen=True)
class DecomposeReduction(Step):
    """Give a reduction's initialisation its own copy of ``loop`` (and the
    spatial loops inside it, named ``*.init``), so the update is a perfect nest."""

    loop: str
    name = "decompose_reduction"

    def apply(self, kernel, names):
        lp = self.find(kernel, self.loop)
        parts = split_init(lp)
        if parts is None:
            self.fail(kernel, f"{self.loop} does not hold a reduction's initialisation and update")
        chain, init, update = parts

        def wrap(stmt, fresh):
            for c in reversed(chain):
                stmt = replace(c, body=stmt)
            return copy_loops(stmt, names, ".init") if fresh else stmt

        return replace_stmt(kernel.body, lp, seq(wrap(init, True), wrap(update, False)))


@dataclass(frozen=True)
class ReverseComputeInline(Step):
    """Fold the elementwise nest ``consumer`` — which updates one buffer in
    place, ``out[i] = f(out[i], ...)`` — into the stores that last wrote each
    element before it (bias, activation or residual applied as a register
    tile is written out), and remove the consumer's own loops."""

    consumer: str
    name = "reverse_compute_inline"

    def apply(self, kernel, names):
        cons = self.find(kernel, self.consumer)
        chain, cur = [], cons
        while isinstance(cur, For):
            chain.append(cur)
            cur = cur.body
        if not isinstance(cur, Store):
            self.fail(kernel, f"{self.consumer} is not a perfect nest around one store")
        buf, cidx = cur.buffer, cur.indices
        own = {id(lp.var) for lp in chain}
        if any(isinstance(n, ex.Load) and n.tensor is buf and not same_indices(n.indices, cidx)
               for n in ex.walk(cur.value)):
            self.fail(kernel, f"{self.consumer} reads {buf.name} at other elements than it writes")
        if sorted(id(v) for i in cidx for v in ex.free_vars(i) if id(v) in own) != sorted(own):
            self.fail(kernel, f"{self.consumer} does not write one element per iteration")
        before, writes = [], []
        for st in walk_stmts(kernel.body):
            if st is cons:
                break
            before.append(st)
            if isinstance(st, Store) and st.buffer is buf:
                writes.append(st)
        if any(isinstance(n, ex.Load) and n.tensor is buf for st in before for e in stmt_exprs(st) for n in ex.walk(e)):
            self.fail(kernel, f"{buf.name} is read before {self.consumer}: its last writes are not known")
        if not writes:
            self.fail(kernel, f"nothing before {self.consumer} writes {buf.name}")
        # The consumer's other operands must be final where the producer writes:
        # none of them may be written between the first write and the consumer.
        reads = {id(n.tensor) for n in ex.walk(cur.value) if isinstance(n, ex.Load) and n.tensor is not buf}
        first = next(i for i, st in enumerate(before) if st is writes[0])
        late = next((st.buffer.name for st in before[first:] if isinstance(st, Store) and id(st.buffer) in reads), None)
        if late is not None:
            self.fail(kernel, f"{self.consumer} reads {late}, which is written after {buf.name}'s first write")

        def fuse(st):
            if not (isinstance(st, Store) and any(st is w for w in writes)):
                return None
            sub = {}
            for c, p in zip(cidx, st.indices):
                if isinstance(c, ex.Var) and id(c) in own:
                    sub[c] = p
                elif ex.format_expr(c) != ex.format_expr(p):
                    self.fail(kernel, f"{self.consumer} and the producer index {buf.name} differently")
            value = ex.transform_loads(cur.value, lambda ld: st.value if ld.tensor is buf else None)
            return Store(buf, st.indices, ex.substitute(value, sub))

        body = map_stmts(replace_stmt(kernel.body, cons, Seq([])), fuse)
        return drop_empty(body)


def drop_empty(s: Stmt) -> Stmt:
    def fn(st):
        if isinstance(st, Seq):
            kept = [c for c in st.stmts if not (isinstance(c, Seq) and not c.stmts)]
            return Seq(kept) if len(kept) != 1 else kept[0]
        return None
    return map_stmts(s, fn)


@dataclass(frozen=True)
class Pack(Step):
    """Re-lay the constant input ``buffer`` once at compile time: blocks of
    ``factor`` along ``axis`` move innermost, ``(K, N) -> (ceil(N/f), K, f)``
    for axis 1 (zero-padded), so a loop over ``axis`` reads it contiguously."""

    buffer: str
    axis: int
    factor: int
    name = "pack"

    def apply(self, kernel, names):
        buf = _buffer(self, kernel, self.buffer)
        if not any(b is buf for b in kernel.inputs):
            self.fail(kernel, f"{self.buffer} is not an input of the kernel")
        pos = next(k for k, b in enumerate(kernel.params) if b is buf)
        rank = len(buf.shape)
        if not 0 <= self.axis < rank or self.factor < 2:
            self.fail(kernel, f"axis must be in [0, {rank}) and factor >= 2")
        n = buf.shape[self.axis]
        blocks = -(-n // self.factor)
        shape = (blocks,) + tuple(d for k, d in enumerate(buf.shape) if k != self.axis) + (self.factor,)
        name = f"{buf.name}_p{self.factor}"
        if _has_buffer(kernel, name):
            self.fail(kernel, f"{self.buffer} is packed already")
        packed = Buffer(name, shape, buf.dtype)

        def relayout(ld):
            if ld.tensor is not buf:
                return None
            a = ld.indices[self.axis]
            rest = tuple(i for k, i in enumerate(ld.indices) if k != self.axis)
            return ex.Load(packed, (a // self.factor,) + rest + (a % self.factor,))

        ranges = loop_ranges(kernel.body)
        body = map_exprs(kernel.body, lambda e: ex.simplify(ex.transform_loads(e, relayout), ranges))
        inputs = list(kernel.inputs)
        inputs[pos] = packed  # the packed constant replaces the parameter
        return replace(kernel, body=body, inputs=inputs, packs=list(kernel.packs) + [(pos, self)])


