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
- ``partition(loop, at)``: iterations ``[0, at)`` stay in ``loop``, the
  rest run after them in ``loop.p``, in the same order; each part's bounds
  are known to the simplifier, so a ``select`` on ``loop < at`` (an inlined
  concatenation) and its index clamps fold away;
- ``reorder(a, b, ...)``: permute loops of one perfect nest;
- ``fuse(outer, inner)``: one loop over both (``outer_inner``);
- ``distribute(loop)``: loop fission, ``for v: {a; b}`` as ``for v_0: a;
  for v_1: b``, where every buffer the body writes is touched only in block
  ``v`` of some axis (each iteration its own slice, so they are independent);
- ``join(a, b)``: loop fusion, the inverse: two loops of one extent, one
  right after the other, as one, where the joined loop's iterations are
  independent in the same sense;
- ``tile(a, b, fa, fb)``: split both and order ``a.o, b.o, a.i, b.i``;
- ``parallel``, ``vectorize`` (a hint), ``simd`` (explicit vector lanes),
  ``unroll``, ``bind(loop, "thread.x")``: set a loop's kind;
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

from minicomp.ir import expr as ex
from minicomp.ir.dims import Size, lower, upper
from minicomp.ir.loops import (
    GPU_LOOP_KINDS,
    Allocate,
    For,
    Kernel,
    Seq,
    Store,
    loops,
    only_stores,
    seq,
    stmt_exprs,
    top_statements,
    walk_stmts,
)
from minicomp.passes.schedules.buffer_steps import (
    CacheRead,
    CacheWrite,
    ComputeAt,
    DecomposeReduction,
    Localize,
    Pack,
    ReverseComputeInline,
    split_init,
)
from minicomp.passes.schedules.step import (
    Names,
    ScheduleError,
    Step,
    accesses,
    copy_loops,
    enclosing_ranges,
    loop_ranges,
    map_exprs,
    replace_stmt,
)


@dataclass(frozen=True)
class Split(Step):
    """``loop`` -> ``loop.o`` (blocks) x ``loop.i`` (``factor`` iterations), plus ``loop.t`` for a remainder.

    ``tail``: ``exact`` (the remainder's iterations), or ``widen``: ``loop.t``
    runs ``factor`` iterations that end at the last one, recomputing some
    that the blocks ran, so a narrow remainder becomes one full register
    tile (on a symbolic extent that may hold fewer than ``factor`` iterations,
    the tile starts at 0 and its iterations past the last repeat the last).
    Widening needs a body that writes the same values when run again:
    it reads no buffer it writes (but those it allocates), or it is a
    reduction whose initialisation resets each element before updating it.
    A tile that adds onto an earlier block's results is refused."""

    loop: str
    factor: int
    tail: str = "exact"
    name = "split"

    def args(self) -> tuple:
        return (self.loop, self.factor) + ((self.tail,) if self.tail != "exact" else ())

    def apply(self, kernel, names):
        lp = self.loop_checked(kernel)
        n, f = lp.extent, self.factor
        # A symbolic extent (mc.Dim) gets a block loop over n // f and a remainder loop of n % f,
        # both counted at run time; either may run no iteration.
        symbolic = not isinstance(n, int)
        if not 1 <= f <= upper(n):
            self.fail(kernel, f"factor {f} must be between 1 and the extent of {self.loop} ({n})")
        if self.tail not in ("exact", "widen"):
            self.fail(kernel, f"tail must be exact or widen, not {self.tail!r}")
        widen = self.tail == "widen" and (symbolic or n % f != 0)
        if widen:
            reread = _rereads_what_it_writes(lp)
            if reread is not None:
                self.fail(kernel, f"its body reads {reread}, which it writes: an iteration run again "
                                  "would not write the same values")
        base = lp.var.name
        outside = enclosing_ranges(kernel.body, lp)
        inside = loop_ranges(lp.body)
        parts = []
        blocks = ex.size_div(n, f)
        if upper(n) // f:
            o, i = ex.Var(names.fresh(base + ".o")), ex.Var(names.fresh(base + ".i"))
            # One block: its index is 0 (the loop stays, as an anchor for later steps).
            index = o * f + i if upper(n) // f > 1 else i
            ranges = {**outside, **inside, o: blocks, i: f}
            body = map_exprs(lp.body, lambda e: ex.simplify(ex.substitute(e, {lp.var: index}), ranges))
            inner = For(i, f, body, "serial", 0, lp.is_reduction)
            parts.append(For(o, blocks, inner, "serial", 0, lp.is_reduction))
        if f > 1 if symbolic else n % f:  # (a symbolic extent may leave a remainder, unless f is 1)
            t = ex.Var(names.fresh(base + ".t"))
            size, first = (f, n - f) if widen else (ex.size_mod(n, f), blocks * f)
            index = t + first
            if widen and lower(n) < f:
                # A symbolic extent that may be shorter than one tile: the tile starts at max(n - f, 0)
                # and its iterations past the last one repeat the last (the same values, written again).
                whole = ex.size_expr(n) if isinstance(n, (int, Size)) else n
                index = ex.minimum(ex.maximum(whole - f, 0) + t, whole - 1)
            ranges = {**outside, **inside, t: size}
            body = map_exprs(lp.body, lambda e: ex.simplify(ex.substitute(e, {lp.var: index}), ranges))
            tail = For(t, size, copy_loops(body, names), "serial", 0, lp.is_reduction)
            if widen and symbolic:  # the widened tile runs only when whole blocks leave a remainder
                w = ex.Var(names.fresh(base + ".w"))
                tail = For(w, ex.simplify(ex.minimum(ex.size_mod(n, f), 1)), tail, "serial", 0, lp.is_reduction)
            parts.append(tail)
        return replace_stmt(kernel.body, lp, seq(*parts))

    def loop_checked(self, kernel):
        lp = self.find(kernel, self.loop)
        if lp.kind != "serial" or lp.start:
            self.fail(kernel, f"loop {self.loop} must be a serial loop starting at 0")
        return lp


@dataclass(frozen=True)
class Partition(Step):
    """``loop`` -> ``loop`` over ``[0, at)`` then ``loop.p`` over the rest (same iterations, same order)."""

    loop: str
    at: int
    name = "partition"

    def apply(self, kernel, names):
        lp = self.find(kernel, self.loop)
        if lp.kind in ("parallel", "simd", "unrolled") or lp.kind in GPU_LOOP_KINDS or lp.start:
            self.fail(kernel, f"loop {self.loop} must be a serial or vectorized loop starting at 0")
        if not 0 < self.at < lower(lp.extent):
            self.fail(kernel, f"the point must be inside the loop (1 to {lp.extent - 1}"
                              f"{'' if isinstance(lp.extent, int) else f', at its smallest {lower(lp.extent) - 1}'})")
        outside = enclosing_ranges(kernel.body, lp)
        inside = loop_ranges(lp.body)
        first = map_exprs(lp.body, lambda e: ex.simplify(e, {**outside, **inside, lp.var: self.at}))
        rest_var = ex.Var(names.fresh(lp.var.name + ".p"))
        ranges = {**outside, **inside, rest_var: lp.extent - self.at}
        rest = map_exprs(lp.body, lambda e: ex.simplify(ex.substitute(e, {lp.var: rest_var + self.at}), ranges))
        return replace_stmt(kernel.body, lp, seq(replace(lp, extent=self.at, body=first),
                                                 replace(lp, var=rest_var, extent=lp.extent - self.at,
                                                         body=copy_loops(rest, names))))


def _rereads_what_it_writes(lp: For) -> str | None:
    """The name of a buffer that ``lp``'s body stores to and also reads, other
    than one it allocates or a reduction's result that its initialisation
    resets first; None when there is none: then an iteration run again
    writes the same values (see :class:`Split`'s widened tail)."""
    own = {id(s.buffer) for s in walk_stmts(lp.body) if isinstance(s, Allocate)}
    parts = split_init(lp)
    reset = id(parts[1].buffer) if parts is not None else None
    stored = {id(s.buffer): s.buffer.name for s in walk_stmts(lp.body) if isinstance(s, Store)}
    for s in walk_stmts(lp.body):
        for e in stmt_exprs(s):
            for n in ex.walk(e):
                if isinstance(n, ex.Load) and id(n.tensor) in stored and id(n.tensor) not in own \
                        and id(n.tensor) != reset:
                    return n.tensor.name
    return None


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
        return replace_stmt(kernel.body, top, body)


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
        return replace_stmt(kernel.body, outer, new)


@dataclass(frozen=True)
class Distribute(Step):
    """Loop fission: ``for v: {a; b}`` as ``for v_0: a; for v_1: b`` (one loop per statement of the
    body), where the iterations are independent (:func:`iterations_independent`)."""

    loop: str
    name = "distribute"

    def apply(self, kernel, names):
        lp = self.find(kernel, self.loop)
        if lp.kind != "serial" or lp.is_reduction:
            self.fail(kernel, "only a serial spatial loop can be distributed")
        if not isinstance(lp.body, Seq) or len(lp.body.stmts) < 2:
            self.fail(kernel, "its body is one statement: nothing to distribute")
        if not iterations_independent(lp):
            self.fail(kernel, f"a buffer its body writes is not touched in one block per index of {lp.var.name}: "
                              f"its iterations may depend on each other")
        pieces = []
        for n, st in enumerate(lp.body.stmts):
            v = ex.Var(names.fresh(f"{lp.var.name}_{n}"), lp.var.dtype)
            pieces.append(replace(lp, var=v, body=map_exprs(st, lambda e, v=v: ex.substitute(e, {lp.var: v}))))
        return replace_stmt(kernel.body, lp, seq(*pieces))


def iterations_independent(lp: For) -> bool:
    """Does each iteration of ``lp`` have its own slice of every buffer its body writes? Every access
    to such a buffer must index one same axis by ``v * s + r``, ``v`` the loop's variable and ``r``
    within ``[0, s)`` (``v`` alone, or a block of ``s`` columns such as ``v * 32 + lane``). Then its
    iterations may run in any order, or statement by statement. A buffer the body allocates is its
    own in every iteration."""
    own = {st.buffer for st in walk_stmts(lp.body) if isinstance(st, Allocate)}
    written = {st.buffer for st in walk_stmts(lp.body) if isinstance(st, Store)} - own
    inside = loop_ranges(lp.body)
    for buf in written:
        axes = None
        for _, idx, _ in accesses(lp.body, buf):
            here = {(p, s) for p, i in enumerate(idx) if (s := _block_of(i, lp.var, inside)) is not None}
            axes = here if axes is None else axes & here
            if not axes:
                return False
    return True


def _block_of(index: ex.Expr, v: ex.Var, ranges: dict) -> int | None:
    """``s`` where ``index`` is ``v * s + r`` with ``r`` within ``[0, s)`` over ``ranges`` (the loops
    inside ``v``'s), so that each value of ``v`` owns the block ``[v * s, v * s + s)``; else None."""
    if index is v:
        return 1
    terms = ex.affine_terms(index, lambda e: e.value if isinstance(e, ex.Const) and e.dtype.is_int else None)
    if terms is None:
        return None
    coeffs, c = terms
    s = coeffs.get(v)
    if not isinstance(s, int) or s < 1:
        return None
    rest = [(atom, k) for atom, k in coeffs.items() if atom is not v]
    lo = hi = c
    for atom, k in rest:
        if not isinstance(k, int) or any(x is v for x in ex.walk(atom)):
            return None
        b = ex.bounds(atom, ranges)
        if b is None:
            return None
        lo, hi = lo + min(k * b[0], k * b[1]), hi + max(k * b[0], k * b[1])
    return s if 0 <= lo and hi < s else None


def _extent_text(n) -> str:
    """A loop's extent (an int, a Size or an expression) as text, to compare two extents."""
    return ex.format_expr(n if isinstance(n, ex.Expr) else ex.size_expr(n))


@dataclass(frozen=True)
class Join(Step):
    """Loop fusion, the inverse of ``distribute``: ``for a: A; for b: B`` (the next statement, the
    same extent) as one loop ``for a: {A; B}``, where the joined loop's iterations are independent
    (:func:`iterations_independent`): then B's iteration ``v`` may run before A's later ones."""

    first: str
    second: str
    name = "join"

    def apply(self, kernel, names):
        a, b = self.find(kernel, self.first), self.find(kernel, self.second)
        parent = next((st for st in walk_stmts(kernel.body) if isinstance(st, Seq)
                       and any(x is a and y is b for x, y in zip(st.stmts, st.stmts[1:]))), None)
        if parent is None:
            self.fail(kernel, f"loop {self.second} does not come right after loop {self.first}")
        for lp in (a, b):
            if lp.kind != "serial" or lp.is_reduction or lp.start:
                self.fail(kernel, f"loop {lp.var.name} must be a serial spatial loop starting at 0")
        if _extent_text(a.extent) != _extent_text(b.extent):
            self.fail(kernel, f"the loops run {a.extent} and {b.extent} iterations")
        second = map_exprs(b.body, lambda e: ex.substitute(e, {b.var: a.var}))
        joined = replace(a, body=seq(a.body, second))
        if not iterations_independent(joined):
            self.fail(kernel, f"a buffer they write is not touched in one block per index of {a.var.name}: "
                              f"an iteration of {self.second} could need a later one of {self.first}")
        stmts = list(parent.stmts)
        k = next(n for n, st in enumerate(stmts) if st is a)
        return replace_stmt(kernel.body, parent, seq(*stmts[:k], joined, *stmts[k + 2:]))


@dataclass(frozen=True)
class Tile(Step):
    """Split ``a`` and ``b`` by ``fa`` and ``fb`` and order the full tiles ``a.o, b.o, a.i, b.i``.

    ``b`` must be the loop directly inside ``a`` (a perfect nest). Remainders
    are handled: a row remainder ``a.t`` keeps the original order, and a
    column remainder ``b.t`` runs inside ``a.o`` after the full tiles, over
    the tile's rows (``b.t`` outside a copy of ``a.i``). Each is a loop of
    its own that later steps may schedule.
    """

    a: str
    b: str
    fa: int
    fb: int
    name = "tile"

    def apply(self, kernel, names):
        outer = self.find(kernel, self.a)
        inner = outer.body
        if not (isinstance(inner, For) and inner.var.name == self.b):
            self.fail(kernel, f"loop {self.b} must be the only statement directly inside {self.a}")
        k = kernel
        # Rows first; then, in the full row blocks, columns outside the tile's rows, so that splitting
        # them leaves full tiles (b.o, a.i, b.i) and one column remainder (b.t over a copy of a.i).
        steps = (Split(self.a, self.fa), Reorder((self.b, f"{self.a}.i")), Split(self.b, self.fb))
        try:
            for step in steps:
                k = replace(k, body=step.apply(k, names))
            return Reorder((f"{self.b}.o", f"{self.a}.i", f"{self.b}.i")).apply(k, names)
        except ScheduleError as exc:  # say it in the step the user wrote
            self.fail(kernel, str(exc).split(": ", 2)[-1])


def _set_kind(step, kernel, name: str, kind: str):
    lp = step.find(kernel, name)
    if lp.kind != "serial":
        step.fail(kernel, f"loop {name} is already {lp.kind}")
    if lp.is_reduction and (kind == "parallel" or kind in GPU_LOOP_KINDS):
        step.fail(kernel, f"loop {name} is a reduction: its iterations depend on each other")
    return replace_stmt(kernel.body, lp, replace(lp, kind=kind))


@dataclass(frozen=True)
class Parallel(Step):
    """Run a top-level loop's iterations on all threads."""

    loop: str
    name = "parallel"

    def apply(self, kernel, names):
        tops = top_statements(kernel.body)
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


MAX_LANES = 64  # the most lanes one simd loop runs


@dataclass(frozen=True)
class Simd(Step):
    """Run an innermost loop as explicit vector lanes: its extent is the vector width."""

    loop: str
    name = "simd"

    def apply(self, kernel, names):
        lp = self.find(kernel, self.loop)
        if not only_stores(lp.body):
            self.fail(kernel, f"loop {self.loop} must hold only stores to run as vector lanes")
        if not isinstance(lp.extent, int):
            self.fail(kernel, f"loop {self.loop} runs {lp.extent} times, fixed only at the call: lanes need a "
                              f"static count (split it first)")
        if lp.extent > MAX_LANES:
            self.fail(kernel, f"loop {self.loop} has {lp.extent} iterations; at most {MAX_LANES} lanes")
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
        if not isinstance(lp.extent, int):
            self.fail(kernel, f"loop {self.loop} runs {lp.extent} times, fixed only at the call: unrolling "
                              f"needs a static count (split it first)")
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
    """Run a loop's iterations as GPU blocks or threads along ``axis`` (``block.x``, ``thread.y`` ...; CUDA's
    own names, ``blockIdx.x`` and ``threadIdx.y``, are read as those)."""

    loop: str
    axis: str
    name = "bind"

    def apply(self, kernel, names):
        axis = CUDA_AXIS_NAMES.get(self.axis, self.axis)
        if axis not in GPU_LOOP_KINDS:
            self.fail(kernel, f"unknown axis {self.axis!r}; choose one of {', '.join(GPU_LOOP_KINDS)}")
        return _set_kind(self, kernel, self.loop, axis)


# The names CUDA programmers write, as the abstract axes they mean.
CUDA_AXIS_NAMES = {f"{cuda}.{d}": f"{axis}.{d}" for cuda, axis in (("blockIdx", "block"), ("threadIdx", "thread"))
                   for d in "xyz"}


STEPS = {cls.name: cls for cls in (Split, Partition, Reorder, Fuse, Distribute, Join, Tile, Parallel, Vectorize, Simd,
                                   Unroll, Bind, CacheWrite, CacheRead, DecomposeReduction, ComputeAt,
                                   ReverseComputeInline, Pack, Localize)}


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
