"""Schedule primitives: small, checked rewrites of a loop-IR kernel.

Every loop of a kernel has a name unique in that kernel (lowering names them
``i0, i1, ...`` for spatial loops and ``r0, r1, ...`` for reductions); a step
names the loops it works on, and the loops it creates get derived names
(``split(i0, 6)`` makes ``i0.o`` and ``i0.i``, and ``i0.t`` for a remainder).
Steps are frozen dataclasses: they print as text (``split(i0, 6)``), parse
back (:func:`parse_schedule`), and apply with :func:`apply_step`. A step that
does not fit the kernel raises a :class:`MinicompError` naming the kernel, the
step and the loop.

The primitives, in the spirit of TVM's TIR schedule:

- ``split(loop, factor)``: ``loop.o`` over whole blocks of ``factor``
  iterations, ``loop.i`` inside; a remainder becomes its own loop ``loop.t``
  after them, with fresh names for the loops it copies;
- ``reorder(a, b, ...)``: permute loops of one perfect nest;
- ``fuse(outer, inner)``: one loop over both (``outer_inner``);
- ``tile(a, b, fa, fb)``: split both and order ``a.o, b.o, a.i, b.i``;
- ``parallel``, ``vectorize`` (a hint), ``simd`` (explicit vector lanes),
  ``unroll``, ``bind(loop, "threadIdx.x")``: set a loop's kind;
- ``cache_write(buffer, loop, scope)``: accumulate a buffer's elements
  written under ``loop`` in a new ``local``/``shared`` buffer and copy them
  out once at the end of ``loop``'s body (copied in first when they are read
  before they are written there);
- ``cache_read(buffer, loop, scope)``: copy the box of a buffer read under
  ``loop`` into a new buffer first;
- ``decompose_reduction(loop)``: give a reduction's initialisation its own
  copy of ``loop`` (and of the loops inside it), so that the update loops
  form a perfect nest that can be reordered;
- ``compute_at(producer, loop)``: compute an elementwise producer nest
  inside ``loop``, only for the box of elements its body reads;
- ``reverse_compute_inline(consumer)``: fold an elementwise nest that
  updates a buffer in place (bias, activation, residual) into the stores
  that last wrote each element, and drop the consumer's own loops;
- ``localize(buffer, loop)``: a workspace used one slice per iteration of
  ``loop`` becomes a ``local`` buffer of that slice inside ``loop`` (a stack
  row buffer), and leaves the arena;
- ``pack(buffer, axis, factor)``: re-lay a constant input once at compile
  time, moving blocks of ``factor`` along ``axis`` innermost.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields, replace

from minicomp.errors import MinicompError
from minicomp.ir import expr as ex
from minicomp.ir.loops import (
    GPU_LOOP_KINDS,
    Allocate,
    Barrier,
    Buffer,
    For,
    If,
    Kernel,
    Seq,
    Stmt,
    Store,
    loops,
    only_stores,
    seq,
    stmt_children,
    walk_stmts,
)


class ScheduleError(MinicompError):
    """A schedule step that does not fit its kernel."""


# -- tree helpers ----------------------------------------------------------------

def map_exprs(s: Stmt, fn) -> Stmt:
    """A copy of ``s`` with every expression passed through ``fn``."""
    if isinstance(s, Store):
        return Store(s.buffer, tuple(fn(i) for i in s.indices), fn(s.value))
    if isinstance(s, For):
        return replace(s, body=map_exprs(s.body, fn))
    if isinstance(s, Seq):
        return Seq([map_exprs(c, fn) for c in s.stmts])
    if isinstance(s, Allocate):
        return Allocate(s.buffer, map_exprs(s.body, fn))
    if isinstance(s, If):
        return If(fn(s.cond), map_exprs(s.then, fn), map_exprs(s.otherwise, fn) if s.otherwise else None)
    return s


def map_stmts(s: Stmt, fn) -> Stmt:
    """Rebuild ``s`` bottom-up, passing every statement through ``fn`` (which
    returns a replacement, or None to keep it)."""
    if isinstance(s, For):
        s = replace(s, body=map_stmts(s.body, fn))
    elif isinstance(s, Seq):
        s = _flat_seq([map_stmts(c, fn) for c in s.stmts])
    elif isinstance(s, Allocate):
        s = Allocate(s.buffer, map_stmts(s.body, fn))
    elif isinstance(s, If):
        s = If(s.cond, map_stmts(s.then, fn), map_stmts(s.otherwise, fn) if s.otherwise else None)
    out = fn(s)
    return s if out is None else out


def _flat_seq(stmts) -> Seq:
    """A Seq of ``stmts`` with nested Seqs spliced in (a split loop becomes
    two siblings, never a sequence inside a sequence)."""
    flat = []
    for c in stmts:
        flat.extend(c.stmts if isinstance(c, Seq) else [c])
    return Seq(flat)


def loop_ranges(s: Stmt) -> dict:
    """Every loop variable under ``s`` and its extent (for the simplifier)."""
    return {lp.var: lp.extent for lp in loops(s)}


def find_loop(body: Stmt, name: str) -> For | None:
    """The loop called ``name`` under ``body``, or None."""
    return next((s for s in walk_stmts(body) if isinstance(s, For) and s.var.name == name), None)


def enclosing_ranges(body: Stmt, target: Stmt) -> dict:
    """Extents of the loops around ``target`` (by identity) in ``body``."""
    path: list[For] = []

    def go(s) -> bool:
        if s is target:
            return True
        if isinstance(s, For):
            path.append(s)
        for c in stmt_children(s):
            if go(c):
                return True
        if isinstance(s, For):
            path.pop()
        return False

    go(body)
    return {lp.var: lp.extent for lp in path}


def same_indices(a, b) -> bool:
    return len(a) == len(b) and all(ex.format_expr(x) == ex.format_expr(y) for x, y in zip(a, b))


def accesses(s: Stmt, buf: Buffer):
    """Every (statement, indices, is_store) that touches ``buf`` under ``s``, in program order."""
    out = []
    for st in walk_stmts(s):
        exprs = []
        if isinstance(st, Store):
            exprs = list(st.indices) + [st.value]
        elif isinstance(st, If):
            exprs = [st.cond]
        for e in exprs:
            for n in ex.walk(e):
                if isinstance(n, ex.Load) and n.tensor is buf:
                    out.append((st, n.indices, False))
        if isinstance(st, Store) and st.buffer is buf:
            out.append((st, st.indices, True))
    return out


class Names:
    """The loop names of one kernel, to derive new unique ones."""

    def __init__(self, body: Stmt):
        self.body = body
        self.used: set | None = None

    def fresh(self, base: str) -> str:
        if self.used is None:  # most steps name no new loop: look only when asked
            self.used = {lp.var.name for lp in loops(self.body)}
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def copy_loops(s: Stmt, names: Names, suffix: str = "") -> Stmt:
    """A copy of ``s`` whose loops get new variables with fresh names (``name + suffix``)."""
    mapping = {}
    for lp in loops(s):
        mapping[lp.var] = ex.Var(names.fresh(lp.var.name + suffix))

    def fn(st):
        if isinstance(st, For):
            return replace(st, var=mapping[st.var])
        return None

    renamed = map_stmts(s, fn)
    return map_exprs(renamed, lambda e: ex.substitute(e, mapping))


# -- steps -----------------------------------------------------------------------

class Step:
    """Base of schedule steps: ``apply(kernel) -> kernel``; prints as ``name(args)``."""

    name = ""

    def args(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        return f"{self.name}({', '.join(str(a) for a in self.args())})"

    def apply(self, kernel: Kernel, names: Names) -> Stmt:
        raise NotImplementedError

    def fail(self, kernel: Kernel, message: str):
        raise ScheduleError(f"kernel {kernel.name}: {self}: {message}")

    def find(self, kernel: Kernel, name: str) -> For:
        lp = find_loop(kernel.body, name)
        if lp is None:
            names = ", ".join(sorted(lp.var.name for lp in loops(kernel.body))) or "none"
            self.fail(kernel, f"no loop named {name} (loops: {names})")
        return lp


def _replace(body: Stmt, old: Stmt, new: Stmt) -> Stmt:
    """``body`` with the statement ``old`` (by identity) replaced by ``new``."""
    if body is old:
        return new
    kids = stmt_children(body)
    if not kids:
        return body
    new_kids = [_replace(c, old, new) for c in kids]
    if all(a is b for a, b in zip(kids, new_kids)):
        return body
    if isinstance(body, For):
        return replace(body, body=new_kids[0])
    if isinstance(body, Seq):
        return _flat_seq(new_kids)
    if isinstance(body, Allocate):
        return Allocate(body.buffer, new_kids[0])
    return If(body.cond, new_kids[0], new_kids[1] if len(new_kids) > 1 else None)


@dataclass(frozen=True)
class Split(Step):
    """``loop`` -> ``loop.o`` (blocks) x ``loop.i`` (``factor`` iterations), plus ``loop.t`` for a remainder."""

    loop: str
    factor: int
    name = "split"

    def apply(self, kernel, names):
        lp = self.loop_checked(kernel)
        n, f = lp.extent, self.factor
        if not 1 <= f <= n:
            self.fail(kernel, f"factor must be between 1 and the extent ({n})")
        base = lp.var.name
        outside = enclosing_ranges(kernel.body, lp)
        inside = loop_ranges(lp.body)
        parts = []
        if n // f:
            o, i = ex.Var(names.fresh(base + ".o")), ex.Var(names.fresh(base + ".i"))
            # One block: its index is 0 (the loop stays, as an anchor for later steps).
            index = o * f + i if n // f > 1 else i
            ranges = {**outside, **inside, o: n // f, i: f}
            body = map_exprs(lp.body, lambda e: ex.simplify(ex.substitute(e, {lp.var: index}), ranges))
            inner = For(i, f, body, "serial", 0, lp.is_reduction)
            parts.append(For(o, n // f, inner, "serial", 0, lp.is_reduction))
        if n % f:
            t = ex.Var(names.fresh(base + ".t"))
            ranges = {**outside, **inside, t: n % f}
            body = map_exprs(lp.body, lambda e: ex.simplify(ex.substitute(e, {lp.var: t + (n // f) * f}), ranges))
            parts.append(For(t, n % f, copy_loops(body, names), "serial", 0, lp.is_reduction))
        return _replace(kernel.body, lp, seq(*parts))

    def loop_checked(self, kernel):
        lp = self.find(kernel, self.loop)
        if lp.kind != "serial" or lp.start:
            self.fail(kernel, f"loop {self.loop} must be a serial loop starting at 0")
        return lp


def _chain(top: For, wanted: set) -> list[For]:
    """The perfect nest from ``top`` down to the deepest wanted loop."""
    chain, cur, found = [], top, 0
    while isinstance(cur, For):
        chain.append(cur)
        found += cur.var.name in wanted
        if found == len(wanted):
            return chain
        cur = cur.body
    return chain


@dataclass(frozen=True)
class Reorder(Step):
    """Put the named loops of one perfect nest in this order (other loops keep their places)."""

    loops: tuple
    name = "reorder"

    def __str__(self):
        return f"reorder({', '.join(self.loops)})"

    def args(self):
        return self.loops

    def apply(self, kernel, names):
        wanted = list(self.loops)
        if len(set(wanted)) != len(wanted) or len(wanted) < 2:
            self.fail(kernel, "name two or more different loops")
        found = [self.find(kernel, n) for n in wanted]
        top = next(lp for lp in loops(kernel.body) if lp.var.name in wanted)
        chain = _chain(top, set(wanted))
        if {lp.var.name for lp in chain} & set(wanted) != set(wanted):
            missing = [n for n in wanted if n not in {lp.var.name for lp in chain}]
            self.fail(kernel, f"loops {', '.join(missing)} are not perfectly nested under {top.var.name}")
        for lp in found:
            if lp.kind != "serial":
                self.fail(kernel, f"loop {lp.var.name} is already {lp.kind}; reorder before setting kinds")
        order = iter(wanted)
        by_name = {lp.var.name: lp for lp in chain}
        new_chain = [by_name[next(order)] if lp.var.name in wanted else lp for lp in chain]
        body = chain[-1].body
        for lp in reversed(new_chain):
            body = replace(lp, body=body)
        return _replace(kernel.body, top, body)


@dataclass(frozen=True)
class Fuse(Step):
    """Merge ``outer`` and its directly nested ``inner`` loop into one loop ``outer_inner``."""

    outer: str
    inner: str
    name = "fuse"

    def apply(self, kernel, names):
        outer = self.find(kernel, self.outer)
        inner = outer.body
        if not isinstance(inner, For) or inner.var.name != self.inner:
            self.fail(kernel, f"{self.inner} is not directly inside {self.outer}")
        if outer.start or inner.start or outer.kind != "serial" or inner.kind != "serial":
            self.fail(kernel, "can only fuse serial loops that start at 0")
        if outer.is_reduction != inner.is_reduction:
            self.fail(kernel, "cannot fuse a reduction loop with a spatial loop")
        fused = ex.Var(names.fresh(f"{outer.var.name}_{inner.var.name}"))
        mapping = {outer.var: fused // inner.extent, inner.var: fused % inner.extent}
        ranges = {**loop_ranges(inner.body), fused: outer.extent * inner.extent,
                  **enclosing_ranges(kernel.body, outer)}
        body = map_exprs(inner.body, lambda e: ex.simplify(ex.substitute(e, mapping), ranges))
        new = For(fused, outer.extent * inner.extent, body, "serial", 0, outer.is_reduction)
        return _replace(kernel.body, outer, new)


@dataclass(frozen=True)
class Tile(Step):
    """Split ``a`` and ``b`` by ``fa`` and ``fb`` and order the full tiles ``a.o, b.o, a.i, b.i``.

    Remainders (``a.t``, ``b.t``) keep their loop order and can be scheduled on their own.
    """

    a: str
    b: str
    fa: int
    fb: int
    name = "tile"

    def apply(self, kernel, names):
        k = kernel
        for step in (Split(self.a, self.fa), Split(self.b, self.fb)):
            k = replace(k, body=step.apply(k, names))
        order = (f"{self.a}.o", f"{self.b}.o", f"{self.a}.i", f"{self.b}.i")
        return Reorder(order).apply(k, names)


def _set_kind(step, kernel, name: str, kind: str):
    lp = step.find(kernel, name)
    if lp.kind != "serial":
        step.fail(kernel, f"loop {name} is already {lp.kind}")
    if lp.is_reduction and (kind == "parallel" or kind in GPU_LOOP_KINDS):
        step.fail(kernel, f"loop {name} is a reduction: its iterations depend on each other")
    return _replace(kernel.body, lp, replace(lp, kind=kind))


@dataclass(frozen=True)
class Parallel(Step):
    """Run a top-level loop's iterations on all threads."""

    loop: str
    name = "parallel"

    def apply(self, kernel, names):
        tops = kernel.body.stmts if isinstance(kernel.body, Seq) else [kernel.body]
        if not any(isinstance(t, For) and t.var.name == self.loop for t in tops):
            self.find(kernel, self.loop)
            self.fail(kernel, f"parallel loop {self.loop} must be at the top level")
        return _set_kind(self, kernel, self.loop, "parallel")


@dataclass(frozen=True)
class Vectorize(Step):
    """Ask the code generator to vectorize a loop as it sees fit."""

    loop: str
    name = "vectorize"

    def apply(self, kernel, names):
        return _set_kind(self, kernel, self.loop, "vectorized")


@dataclass(frozen=True)
class Simd(Step):
    """Run an innermost loop as explicit vector lanes: its extent is the vector width."""

    loop: str
    name = "simd"

    def apply(self, kernel, names):
        lp = self.find(kernel, self.loop)
        if not only_stores(lp.body):
            self.fail(kernel, f"loop {self.loop} must hold only stores to run as vector lanes")
        if lp.extent > 64:
            self.fail(kernel, f"loop {self.loop} has {lp.extent} iterations; at most 64 lanes")
        for st in walk_stmts(lp.body):
            if isinstance(st, Store) and not any(v is lp.var for i in st.indices for v in ex.free_vars(i)):
                self.fail(kernel, f"the lanes of {self.loop} would all write {st.buffer.name} at one element")
        return _set_kind(self, kernel, self.loop, "simd")


@dataclass(frozen=True)
class Unroll(Step):
    """Replicate a loop's body once per iteration."""

    loop: str
    name = "unroll"

    def apply(self, kernel, names):
        lp = self.find(kernel, self.loop)
        copies = lp.extent
        for other in loops(kernel.body):  # unrolled loops around it or inside it multiply the copies
            if other.kind == "unrolled" and (_contains(other, lp) or _contains(lp, other)):
                copies *= other.extent
        if lp.extent > MAX_UNROLL or copies > MAX_UNROLLED_COPIES:
            self.fail(kernel, f"unrolling {self.loop} would make {copies} copies of its body; "
                              f"at most {MAX_UNROLL} per loop and {MAX_UNROLLED_COPIES} in all (split it first)")
        return _set_kind(self, kernel, self.loop, "unrolled")


# Unrolled code grows with the product of the unrolled extents: past these
# sizes the code generator spends more time than the unrolling saves.
MAX_UNROLL = 64
MAX_UNROLLED_COPIES = 256


def _contains(outer: For, inner: For) -> bool:
    return outer is not inner and any(s is inner for s in walk_stmts(outer.body))


@dataclass(frozen=True)
class Bind(Step):
    """Run a loop's iterations as GPU blocks or threads along ``axis`` (``blockIdx.x``, ``threadIdx.y`` ...)."""

    loop: str
    axis: str
    name = "bind"

    def apply(self, kernel, names):
        if self.axis not in GPU_LOOP_KINDS:
            self.fail(kernel, f"unknown axis {self.axis!r}; choose one of {', '.join(GPU_LOOP_KINDS)}")
        return _set_kind(self, kernel, self.loop, self.axis)


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
        _scope(self, kernel, self.scope)
        buf = _buffer(self, kernel, self.buffer)
        lp = self.find(kernel, self.loop)
        _check_outside(self, kernel, buf, lp)
        acc = accesses(lp.body, buf)
        if not acc:
            self.fail(kernel, f"nothing under {self.loop} touches {self.buffer}")
        idx = acc[0][1]
        if not all(same_indices(idx, a[1]) for a in acc):
            self.fail(kernel, f"{self.buffer} is accessed at different indices under {self.loop}")
        # Read before written (an accumulation that started earlier): copy the elements in first.
        read_first = not acc[0][2] or any(isinstance(n, ex.Load) and n.tensor is buf
                                          for n in ex.walk(acc[0][0].value))
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
        return _replace(kernel.body, lp, replace(lp, body=Allocate(local, body)))


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
        _scope(self, kernel, self.scope)
        buf = _buffer(self, kernel, self.buffer)
        lp = self.find(kernel, self.loop)
        _check_outside(self, kernel, buf, lp)
        acc = accesses(lp.body, buf)
        if not acc:
            self.fail(kernel, f"nothing under {self.loop} reads {self.buffer}")
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
        return _replace(kernel.body, lp, replace(lp, body=Allocate(local, seq(*parts))))


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
        if not all(same_indices([ex.simplify(ex.substitute(i, zero))], [b]) for i, b in zip(idx, base)):
            step.fail(kernel, f"{buf.name} is read at boxes that do not share a corner under {lp.var.name}")
    return base, lo, hi


def _box_nest(kernel, lp: For, names: Names, buf: Buffer, base, lo, shape, make_store) -> Stmt:
    """Loops over a box of ``buf`` (corner ``base + lo``, ``shape``) at the
    start of ``lp``'s body, running ``make_store(box indices, buffer
    indices)`` for each element that lies inside ``buf``."""
    cvars = [ex.Var(names.fresh(f"{buf.name}.c{d}")) for d in range(len(shape))]
    ranges = {**enclosing_ranges(kernel.body, lp), lp.var: lp.extent, **dict(zip(cvars, shape))}
    src = [ex.simplify(b + low + c, ranges) for b, low, c in zip(base, lo, cvars)]
    stmt: Stmt = make_store(cvars, src)
    conds = []
    for e, n in zip(src, buf.shape):
        b = ex.bounds(e, ranges)
        if b is None or b[0] < 0:
            conds.append(ex.ge(e, ex.const(0, "int64")))
        if b is None or b[1] >= n:
            conds.append(ex.lt(e, ex.const(n, "int64")))
    if conds:  # the box may reach past the buffer's edge: only what exists
        cond = conds[0]
        for c in conds[1:]:
            cond = ex.logical_and(cond, c)
        stmt = If(cond, stmt)
    for v, n in reversed(list(zip(cvars, shape))):
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
        body = _replace(kernel.body, lp, replace(lp, body=seq(nest, lp.body)))
        return _drop_empty(_replace(body, prod, Seq([])))


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
        if not acc[0][2] or any(isinstance(n, ex.Load) and n.tensor is buf for n in ex.walk(acc[0][0].value)):
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

        body = _replace(kernel.body, lp, replace(lp, body=Allocate(local, map_stmts(lp.body, move))))
        w = next(k for k, b in enumerate(kernel.workspace) if b is buf)
        values = list(kernel.param_values)
        if values:
            del values[len(kernel.inputs) + len(kernel.outputs) + w]
        return replace(kernel, body=body, workspace=[b for b in kernel.workspace if b is not buf],
                       param_values=values)


def _split_init(lp: For):
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
        parts = _split_init(lp)
        if parts is None:
            self.fail(kernel, f"{self.loop} does not hold a reduction's initialisation and update")
        chain, init, update = parts

        def wrap(stmt, fresh):
            for c in reversed(chain):
                stmt = replace(c, body=stmt)
            return copy_loops(stmt, names, ".init") if fresh else stmt

        return _replace(kernel.body, lp, seq(wrap(init, True), wrap(update, False)))


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
        if any(isinstance(n, ex.Load) and n.tensor is buf for st in before for e in _exprs(st) for n in ex.walk(e)):
            self.fail(kernel, f"{buf.name} is read before {self.consumer}: its last writes are not known")
        if not writes:
            self.fail(kernel, f"nothing before {self.consumer} writes {buf.name}")

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

        body = map_stmts(_replace(kernel.body, cons, Seq([])), fuse)
        return _drop_empty(body)


def _exprs(st):
    if isinstance(st, Store):
        return list(st.indices) + [st.value]
    if isinstance(st, If):
        return [st.cond]
    return []


def _drop_empty(s: Stmt) -> Stmt:
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


STEPS = {cls.name: cls for cls in (Split, Reorder, Fuse, Tile, Parallel, Vectorize, Simd, Unroll, Bind,
                                   CacheWrite, CacheRead, DecomposeReduction, ComputeAt, ReverseComputeInline, Pack,
                                   Localize)}


def apply_step(kernel: Kernel, step: Step) -> Kernel:
    """Apply one step; returns a new kernel with the step recorded."""
    if not isinstance(step, Step):
        raise ScheduleError(f"kernel {kernel.name}: {step!r} is not a schedule step")
    names = Names(kernel.body)
    result = step.apply(kernel, names)  # a new body, or a new kernel when parameters change
    new = result if isinstance(result, Kernel) else replace(kernel, body=result)
    if not isinstance(step, (Parallel, Vectorize, Simd, Unroll, Bind)):  # those only set a loop's kind
        for lp in loops(new.body):
            if lp.kind == "simd" and not only_stores(lp.body):
                step.fail(kernel, f"it would put loops or branches inside simd loop {lp.var.name}")
    return replace(new, schedule=kernel.schedule + [step])


def apply_schedule(kernel: Kernel, steps) -> Kernel:
    """Apply a list of steps (or schedule text) in order."""
    if isinstance(steps, str):
        steps = parse_schedule(steps)
    for step in steps:
        kernel = apply_step(kernel, step)
    return kernel


# -- text ------------------------------------------------------------------------

_STEP_RE = re.compile(r"\s*([a-z_]+)\s*\(([^()]*)\)\s*")


def parse_schedule(text: str) -> list[Step]:
    """Steps from text: ``split(i0, 6); reorder(i0.o, r0, i0.i)`` (``;`` or
    newlines between; ``#`` starts a comment)."""
    steps = []
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # comments run to the line's end
    for part in re.split(r"[;\n]", text):
        if not part.strip():
            continue
        m = _STEP_RE.fullmatch(part)
        if not m or m.group(1) not in STEPS:
            known = ", ".join(sorted(STEPS))
            raise ScheduleError(f"cannot read schedule step {part.strip()!r}; steps are {known}")
        cls = STEPS[m.group(1)]
        args = [a.strip().strip("'\"") for a in m.group(2).split(",") if a.strip()]
        if cls is Reorder:
            steps.append(Reorder(tuple(args)))
            continue
        flds = fields(cls)
        required = [f for f in flds if f.default is MISSING]
        if not len(required) <= len(args) <= len(flds):
            raise ScheduleError(f"{part.strip()!r}: {cls.name} takes {', '.join(f.name for f in flds)}")
        values = []
        for f, a in zip(flds, args):
            if f.type in ("int", int):
                try:
                    values.append(int(a))
                except ValueError:
                    raise ScheduleError(f"{part.strip()!r}: {f.name} must be an integer") from None
            else:
                values.append(a)
        steps.append(cls(*values))
    return steps


def format_schedule(steps) -> str:
    """The text of a list of steps, one line each (reads back with :func:`parse_schedule`)."""
    return "\n".join(str(s) for s in steps)
