"""The default GPU schedule: every top-level loop nest of a kernel becomes one
CUDA launch, mapped to blocks and threads by its shape.

- **Contractions** (matmul, batched matmul, convolution as implicit GEMM):
  a nest ``out[s] = init; for r: out[s] += a(s, r) * b(s, r)`` whose spatial
  loops split into those only ``a`` reads (M), those only ``b`` reads (N) and
  those both read (batch). Each block computes a BM x BN tile of outputs: it
  stages BK-deep slices of ``a`` and ``b`` in ``__shared__`` memory (every
  thread loads a few elements, bounds-checked), ``__syncthreads()``, then each
  thread accumulates an RM x RN register tile; the epilogue nests that follow
  (bias, activation, residual) are folded into the final store. Tile sizes
  come from a traffic model (:func:`choose_gemm_tile`), reported in the
  kernel's notes.
- **Rows with reductions** (softmax, layer norm, sums over the last axes): one
  block per row; reductions are spread over the block's threads and combined
  with warp shuffles and a shared-memory step across warps; loops over the row
  are spread over the threads, with a barrier between steps that share memory.
- **Everything else** (elementwise, layout, small reductions): one thread per
  point of the nest's outer loops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import reduce_identity
from minicomp.ir.dims import Size, upper
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
    seq,
    top_statements,
    walk_stmts,
)
from minicomp.passes.schedules.analysis import flat_stride, vector_lanes
from minicomp.passes.schedules.buffer_steps import ReverseComputeInline
from minicomp.passes.schedules.primitives import apply_step, iterations_independent
from minicomp.passes.schedules.step import ScheduleError, accesses

WARP = 32
SHUFFLE_DTYPES = (dtypes.float32, dtypes.float64, dtypes.int32, dtypes.int64)
COMBINE_OPS = ("add", "max", "min")
ROWS_FOR_THREADS = 16384  # rows enough to fill an H100 (132 SMs x 4 x 32) with one thread per row


def gpu_schedule(kernel: Kernel, target) -> Kernel:
    """Map every top-level nest of ``kernel`` to blocks and threads (see the module docs)."""
    gpu = target.gpu
    tops = top_statements(kernel.body)
    notes, contractions = list(kernel.notes), []
    new_tops = []
    for top in [piece for nest in tops for piece in _split_for_contractions(nest)]:
        tiled = None if is_symbolic(top) else tile_contraction(kernel, top, gpu)
        if tiled is not None:
            stmt, note, buf = tiled
            new_tops.append(stmt)
            notes.append(note)
            contractions.append(buf)
        else:
            new_tops.append(top)
    k = replace(kernel, body=seq(*new_tops), notes=notes)
    k = _inline_epilogues(k, contractions)
    tops = top_statements(k.body)
    out = []
    for n, top in enumerate(tops):
        if _is_mapped(top):
            out.append(top)
            continue
        name = f"g{n}"  # unique in the kernel: lowering names loops i0.., r0..
        only_here = [b for b in k.workspace if len(accesses(top, b)) == len(accesses(k.body, b))]
        # A nest with a symbolic extent gets one thread per point: its extents enter the grid and the
        # guard as expressions; the tiles and row blocks above count in ints.
        mapped = None if is_symbolic(top) else block_per_row(top, gpu, name, only_here)
        if mapped is None:
            out.append(thread_per_point(top, name))
            continue
        stmt, in_registers = mapped
        out.append(stmt)
        k = _drop_workspace(k, in_registers)
    return replace(k, body=seq(*out))


def _split_for_contractions(top: Stmt) -> list[Stmt]:
    """``top`` as the pieces of :func:`distribute_loop` when one of them is a
    contraction (a convolution at batch > 1, which fusion nests in one loop over
    the batch with its padding and epilogue): the contraction then gets its tiled
    launch over the whole batch instead of one block per image. Other nests (a
    softmax row's steps) stay together, for one block per row."""
    pieces = distribute_loop(top)
    if len(pieces) > 1 and any(match_contraction(p) is not None for p in pieces):
        return pieces
    return [top]


def distribute_loop(top: Stmt) -> list[Stmt]:
    """Loop fission: ``for v: {a; b}`` as ``for v: a; for v: b`` (and so on down a
    chain of such loops), or ``[top]`` where it is not sure to keep the result.
    It is when every buffer the body writes is touched only at index ``v`` of
    one axis: each iteration then has its own slice, so the iterations are
    independent and may run statement by statement."""
    if not (isinstance(top, For) and top.kind == "serial" and not top.is_reduction):
        return [top]
    inner = list(top.body.stmts) if isinstance(top.body, Seq) else distribute_loop(top.body)
    if len(inner) < 2 or not iterations_independent(top):
        return [top]
    pieces = []
    for n, st in enumerate(inner):
        v = ex.Var(f"{top.var.name}_{n}", top.var.dtype)
        pieces.append(replace(top, var=v, body=substitute_stmt(st, {top.var: v})))
    return pieces


def _drop_workspace(k: Kernel, gone: list) -> Kernel:
    """``k`` without the workspaces in ``gone`` (they moved to registers)."""
    if not gone:
        return k
    n = len(k.inputs) + len(k.outputs)
    keep = [j for j, b in enumerate(k.workspace) if b not in gone]
    values = list(k.param_values[:n]) + [k.param_values[n + j] for j in keep] if k.param_values else []
    return replace(k, workspace=[k.workspace[j] for j in keep], param_values=values)


def _is_mapped(s: Stmt) -> bool:
    return any(lp.kind in GPU_LOOP_KINDS for lp in loops(s))


def _inline_epilogues(k: Kernel, outputs) -> Kernel:
    """Fold elementwise nests that update a contraction's output in place into its final stores."""
    for buf in outputs:
        while True:
            tops = top_statements(k.body)
            pos = next((i for i, t in enumerate(tops) if _writes(t, buf) and _is_mapped(t)), None)
            if pos is None or pos + 1 >= len(tops):
                break
            nxt = tops[pos + 1]
            if not (isinstance(nxt, For) and not _is_mapped(nxt) and _writes(nxt, buf)):
                break
            try:
                k = apply_step(k, ReverseComputeInline(nxt.var.name))
            except ScheduleError:
                break
    return k


def _writes(s: Stmt, buf: Buffer) -> bool:
    return any(isinstance(st, Store) and st.buffer is buf for st in walk_stmts(s))


# -- shared helpers ---------------------------------------------------------------

def spatial_chain(top: Stmt) -> tuple[list[For], Stmt]:
    """The perfectly nested non-reduction loops at the top of a nest, and what is below them."""
    chain, cur = [], top
    while isinstance(cur, For) and not cur.is_reduction and cur.kind in ("serial", "vectorized", "unrolled", "simd"):
        chain.append(cur)
        cur = cur.body
    return chain, cur


def decompose(flat: ex.Expr, chain: list[For]) -> dict:
    """Each loop variable of ``chain`` as digits of one flat index (row-major, the last loop fastest)."""
    mapping, stride = {}, 1
    for lp in reversed(chain):
        # Even the outermost digit keeps its modulo: flat indices past the end
        # (guarded by the caller) then still index inside every buffer.
        digit = ex.BinOp("floordiv", flat, _i(stride)) if not _is_one(stride) else flat
        mapping[lp.var] = _plus(ex.BinOp("mod", digit, _i(lp.extent)), lp.start)
        stride = _times(stride, lp.extent)
    return mapping


def is_symbolic(s: Stmt) -> bool:
    """Does a loop of ``s`` have a symbolic extent (a size over dimensions, ``mc.Dim``)?"""
    return any(not isinstance(lp.extent, int) for lp in loops(s))


def _i(v) -> ex.Expr:
    """An extent or a count as an int64 expression (a symbolic one reads the call's sizes)."""
    return ex.Const(int(v), dtypes.int64) if isinstance(v, int) else ex.size_expr(v) if isinstance(v, Size) else v


def _is_one(v) -> bool:
    return isinstance(v, int) and v == 1


def _times(a, b):
    """``a * b`` for extents: ints and Sizes multiply as they are, an expression as an expression."""
    if isinstance(a, ex.Expr) or isinstance(b, ex.Expr):
        return ex.simplify(ex.BinOp("mul", _i(a), _i(b)))
    return a * b


def _plus(e: ex.Expr, c: int) -> ex.Expr:
    return ex.BinOp("add", e, _i(c)) if c else e


def _product(xs):
    out = 1
    for lp in xs:
        out = _times(out, lp.extent)
    return out


def substitute_stmt(s: Stmt, mapping: dict, ranges: dict | None = None) -> Stmt:
    """``s`` with variables replaced in every expression (``ranges``: extents of
    the new variables, so that simplification drops needless ``//`` and ``%``)."""
    from minicomp.passes.schedules.step import map_exprs

    return map_exprs(s, lambda e: ex.simplify(ex.substitute(e, mapping), ranges))


def _threads_for(n: int, most: int = 256) -> int:
    """A block size for ``n`` parallel items: a multiple of the warp, at most ``most``."""
    return max(WARP, min(most, -(-n // WARP) * WARP))


# -- one thread per point -----------------------------------------------------------

VECTOR = 4  # float32 lanes of one 16-byte load or store (float4)


def thread_per_point(top: Stmt, name: str) -> Stmt:
    """One thread per iteration of the nest's outer loops; the rest runs in that
    thread. A plain elementwise nest gives each thread VECTOR consecutive points
    of its innermost loop (a ``vectorized`` loop: float4 loads and stores)."""
    chain, inner = spatial_chain(top)
    if chain and isinstance(chain[-1].extent, int) and chain[-1].extent % VECTOR == 0 and not chain[-1].start:
        last = chain[-1]
        quad, lane = ex.Var(f"{last.var.name}.v"), ex.Var(f"{last.var.name}.l")
        point = ex.BinOp("add", ex.BinOp("mul", quad, _i(VECTOR)), lane)
        lanes = For(lane, VECTOR, substitute_stmt(inner, {last.var: point}), "vectorized")
        if vector_lanes(lanes, VECTOR):  # the renderer asks the same of it before it writes float4
            inner = lanes
            chain = chain[:-1] + [For(quad, last.extent // VECTOR, last.body)]
    total = _product(chain)
    threads = _threads_for(upper(total))  # (a symbolic count: by its largest)
    bx, tx = ex.Var(f"{name}.bx"), ex.Var(f"{name}.tx")
    flat = ex.BinOp("add", ex.BinOp("mul", bx, _i(threads)), tx)
    body = substitute_stmt(inner, decompose(flat, chain)) if chain else inner
    if isinstance(total, int):
        blocks = max(1, -(-total // threads))
        guarded = blocks * threads > total
    else:  # as many blocks as the call's sizes need; the last one guarded
        blocks = ex.simplify(ex.BinOp("floordiv", ex.BinOp("add", _i(total), _i(threads - 1)), _i(threads)))
        guarded = True
    if guarded:
        body = If(ex.BinOp("lt", flat, _i(total)), body)
    return For(bx, blocks, For(tx, threads, body, "thread.x"), "block.x")


# -- one block per row ----------------------------------------------------------------

@dataclass
class _RowReduction:
    acc: Buffer
    idx: tuple
    op: str
    init: ex.Expr
    chain: list  # reduction loops
    term: ex.Expr  # the value combined with the accumulator


def _match_reduction(init: Stmt, loop: Stmt) -> _RowReduction | None:
    """``X[i] = init; for r...: X[i] = X[i] op term`` with op add/max/min and X[i] fixed in r."""
    if not (isinstance(init, Store) and isinstance(loop, For) and loop.is_reduction):
        return None
    chain, cur = [], loop
    while isinstance(cur, For) and cur.is_reduction and cur.kind == "serial":
        chain.append(cur)
        cur = cur.body
    if not isinstance(cur, Store) or cur.buffer is not init.buffer:
        return None
    from minicomp.passes.schedules.step import same_indices

    if not same_indices(cur.indices, init.indices):
        return None
    rvars = {id(lp.var) for lp in chain}
    if any(id(v) in rvars for i in cur.indices for v in ex.free_vars(i)):
        return None
    v = cur.value
    if not (isinstance(v, ex.BinOp) and v.op in COMBINE_OPS) or cur.buffer.dtype not in SHUFFLE_DTYPES:
        return None

    def is_acc(e):
        return isinstance(e, ex.Load) and e.tensor is cur.buffer and same_indices(e.indices, cur.indices)

    term = v.b if is_acc(v.a) else v.a if is_acc(v.b) else None
    if term is None or any(isinstance(n, ex.Load) and n.tensor is cur.buffer for n in ex.walk(term)):
        return None
    return _RowReduction(cur.buffer, cur.indices, v.op, init.value, chain, term)


def _row_reductions(s: Stmt) -> list[_RowReduction]:
    found = []
    for st in walk_stmts(s):
        if isinstance(st, Seq):
            for a, b in zip(st.stmts, st.stmts[1:]):
                m = _match_reduction(a, b)
                if m is not None:
                    found.append(m)
    return found


def block_per_row(top: Stmt, gpu, name: str, workspace=()) -> tuple[Stmt, list] | None:
    """One block per iteration of the outer loops when the body reduces long rows; else None.

    Returns the nest and the ``workspace`` buffers it now keeps in registers:
    a row workspace that every step touches at element ``j`` from thread
    ``j % threads`` becomes ``threads``-strided registers of each thread."""
    chain, inner = spatial_chain(top)
    reductions = _row_reductions(inner) if isinstance(inner, (Seq, Allocate)) else []
    if not reductions:
        return None
    length, rows = max(_product(r.chain) for r in reductions), _product(chain)
    # Short rows, or so many rows that one thread each fills the GPU: a thread per row does better.
    if length < WARP or (length < 512 and rows > ROWS_FOR_THREADS):
        return None
    longest = max([_product(r.chain) for r in reductions] + [lp.extent for lp in loops(inner)])
    threads = _threads_for(longest, 256)
    bx, tx = ex.Var(f"{name}.bx"), ex.Var(f"{name}.tx")
    body = substitute_stmt(inner, decompose(bx, chain), {bx: max(rows, 1)}) if chain else inner
    scalars = _row_scalars(body, list(workspace), {bx})
    body = _scalars_to_registers(body, scalars)
    registers = _row_registers(body, [b for b in workspace if b not in scalars], threads, {bx})
    spread = _RowSpreader(tx, threads, name, registers)
    row = spread.stmt(body)
    for local in list(registers.values()) + list(scalars.values()):
        row = Allocate(local, row)
    return For(bx, max(rows, 1), For(tx, threads, row, "thread.x"), "block.x"), \
        list(registers) + list(scalars)


def _row_scalars(body: Stmt, candidates: list, row_vars: set) -> dict:
    """Workspaces of one element per row, written outside every loop of the row
    (a reduction's result): each thread keeps its own copy in a register."""
    chosen = {}
    in_loops = {id(st) for lp in loops(body) for st in walk_stmts(lp.body) if isinstance(st, Store)}
    for buf in candidates:
        acc = accesses(body, buf)
        if not acc or any(is_store and id(st) in in_loops for st, _, is_store in acc):
            continue
        if all(id(v) in {id(r) for r in row_vars} for _, idx, _ in acc for i in idx for v in ex.free_vars(i)) and \
                len({tuple(ex.format_expr(i) for i in idx) for _, idx, _ in acc}) == 1:
            chosen[buf] = Buffer(f"{buf.name}_r", (), buf.dtype, "local")
    return chosen


def _scalars_to_registers(body: Stmt, scalars: dict) -> Stmt:
    if not scalars:
        return body
    from minicomp.passes.schedules.step import map_exprs, map_stmts

    def load(ld):
        return ex.Load(scalars[ld.tensor], ()) if ld.tensor in scalars else None

    def store(st):
        if isinstance(st, Store) and st.buffer in scalars:
            return Store(scalars[st.buffer], (), ex.transform_loads(st.value, load))
        return None

    return map_exprs(map_stmts(body, store), lambda e: ex.transform_loads(e, load))


MAX_ROW_REGISTERS = 32  # elements of a row one thread may hold in registers


def _spread_vars(s: Stmt, out: dict) -> dict:
    """The loops a row's spreading distributes over threads: row-level spatial
    loops and single-loop reductions (variable -> extent)."""
    if isinstance(s, Allocate):
        return _spread_vars(s.body, out)
    stmts = s.stmts if isinstance(s, Seq) else [s]
    i = 0
    while i < len(stmts):
        st = stmts[i]
        red = _match_reduction(st, stmts[i + 1]) if i + 1 < len(stmts) else None
        if red is not None:
            if len(red.chain) == 1:
                out[red.chain[0].var] = red.chain[0].extent
            i += 2
            continue
        if isinstance(st, For) and not st.is_reduction and st.start == 0:
            out[st.var] = st.extent
        elif isinstance(st, (Allocate, Seq)):
            _spread_vars(st, out)
        i += 1
    return out


def _row_registers(body: Stmt, candidates: list, threads: int, row_vars: set) -> dict:
    """Workspaces to hold in registers: every access indexes the last axis by a
    spread loop's variable (all of one extent, at most MAX_ROW_REGISTERS per
    thread) and the other axes by the row alone."""
    spread = _spread_vars(body, {})
    chosen = {}
    for buf in candidates:
        acc = accesses(body, buf)
        if not acc or buf.dtype == dtypes.bool_:
            continue
        lasts = [idx[-1] if idx else None for _, idx, _ in acc]
        if not all(isinstance(v, ex.Var) and v in spread for v in lasts):
            continue
        extents = {spread[v] for v in lasts}
        prefix = {tuple(ex.format_expr(i) for i in idx[:-1]) for _, idx, _ in acc}
        free = {id(v) for _, idx, _ in acc for i in idx[:-1] for v in ex.free_vars(i)}
        steps = -(-next(iter(extents)) // threads)
        if len(extents) == 1 and len(prefix) == 1 and free <= {id(v) for v in row_vars} and \
                steps <= MAX_ROW_REGISTERS:
            chosen[buf] = Buffer(f"{buf.name}_r", (steps,), buf.dtype, "local")
    return chosen


def _to_registers(s, registers: dict, var: ex.Var, step: ex.Var):
    """Accesses ``buf[..., var]`` of register rows become ``regs[step]``."""
    def load(ld):
        if ld.tensor in registers and ld.indices and ld.indices[-1] is var:
            return ex.Load(registers[ld.tensor], (step,))
        return None

    if isinstance(s, ex.Expr):
        return ex.transform_loads(s, load)
    from minicomp.passes.schedules.step import map_exprs, map_stmts

    def store(st):
        if isinstance(st, Store) and st.buffer in registers and st.indices and st.indices[-1] is var:
            return Store(registers[st.buffer], (step,), ex.transform_loads(st.value, load))
        return None

    return map_exprs(map_stmts(s, store), lambda e: ex.transform_loads(e, load))


class _RowSpreader:
    """Rewrites a row's statements to run on ``threads`` threads of one block."""

    def __init__(self, tid: ex.Var, threads: int, base: str, registers: dict | None = None):
        self.tid, self.threads, self.base = tid, threads, base
        self.registers = registers or {}
        self.count = 0

    def fresh(self, what: str) -> str:
        self.count += 1
        return f"{self.base}.{what}{self.count}"

    def stmt(self, s: Stmt) -> Stmt:
        if isinstance(s, Allocate):
            return Allocate(s.buffer, self.stmt(s.body))
        if isinstance(s, Seq):
            return self.seq(s.stmts)
        return self.seq([s])

    def seq(self, stmts: list[Stmt]) -> Stmt:
        out, i = [], 0
        while i < len(stmts):
            s = stmts[i]
            red = _match_reduction(s, stmts[i + 1]) if i + 1 < len(stmts) else None
            if red is not None:
                part = self.reduce(red)
                i += 2
            elif isinstance(s, (Allocate, Seq)):
                part = self.stmt(s)
                i += 1
            elif isinstance(s, For) and not s.is_reduction:
                part = self.spread_loop(s)
                i += 1
            elif isinstance(s, Store) and s.buffer.scope == "local":
                part = s  # every thread keeps its own copy of a local value
                i += 1
            else:  # a global store or a reduction we cannot split: thread 0 runs it
                part = If(ex.BinOp("eq", self.tid, _i(0)), s)
                i += 1
            if out and (_touches_global(out[-1]) or _touches_global(part)):
                out.append(Barrier())  # what one step wrote, the next may read on another thread
            out.append(part)
        return seq(*out)

    def spread_loop(self, lp: For) -> Stmt:
        outer = ex.Var(self.fresh("o"))
        steps = -(-lp.extent // self.threads)
        v = ex.BinOp("add", ex.BinOp("mul", outer, _i(self.threads)), self.tid)
        guarded = steps * self.threads > lp.extent
        # Under the guard the modulo changes nothing; it lets the verifier bound the index.
        index = ex.BinOp("mod", v, _i(lp.extent)) if guarded else v
        body = _to_registers(lp.body, self.registers, lp.var, outer) if self.registers else lp.body
        body = substitute_stmt(body, {lp.var: _plus(index, lp.start)}, {outer: steps, self.tid: self.threads})
        if guarded:
            body = If(ex.BinOp("lt", v, _i(lp.extent)), body)
        return For(outer, steps, body, "unrolled" if steps <= MAX_ROW_REGISTERS else "serial")

    def reduce(self, red: _RowReduction) -> Stmt:
        dt = red.acc.dtype
        part = Buffer(self.fresh("part").replace(".", "_"), (), dt, "local")
        here = ex.Load(part, ())
        outer = ex.Var(self.fresh("o"))
        total = _product(red.chain)
        steps = -(-total // self.threads)
        flat = ex.BinOp("add", ex.BinOp("mul", outer, _i(self.threads)), self.tid)
        if self.registers and len(red.chain) == 1:
            red = replace(red, term=_to_registers(red.term, self.registers, red.chain[0].var, outer))
        term = ex.simplify(ex.substitute(red.term, decompose(flat, red.chain)), {outer: steps, self.tid: self.threads})
        update = Store(part, (), ex.BinOp(red.op, here, term))
        if steps * self.threads > total:
            update = If(ex.BinOp("lt", flat, _i(total)), update)
        # The combining op (add, max, min) starts from its reduction's identity.
        body = [Store(part, (), reduce_identity("sum" if red.op == "add" else red.op, dt)),
                For(outer, steps, update, "unrolled" if steps <= MAX_ROW_REGISTERS else "serial")]
        for off in (16, 8, 4, 2, 1):  # within a warp
            body.append(Store(part, (), ex.BinOp(red.op, here, ex.Call("shfl_xor", (here, _i(off))))))
        warps = self.threads // WARP
        if warps > 1:  # across warps, through shared memory
            shared = Buffer(self.fresh("red").replace(".", "_"), (warps,), dt, "shared")
            lane0 = ex.BinOp("eq", ex.BinOp("mod", self.tid, _i(WARP)), _i(0))
            w = ex.Var(self.fresh("w"))
            body.append(Allocate(shared, seq(
                If(lane0, Store(shared, (ex.BinOp("floordiv", self.tid, _i(WARP)),), here)), Barrier(),
                Store(part, (), ex.Load(shared, (_i(0),))),
                For(w, warps - 1, Store(part, (), ex.BinOp(red.op, here, ex.Load(shared, (ex.BinOp(
                    "add", w, _i(1)),)))), "unrolled"),
                Barrier())))
        final = Store(red.acc, red.idx, ex.BinOp(red.op, red.init, here))
        if red.acc.scope != "local":
            final = If(ex.BinOp("eq", self.tid, _i(0)), final)
        return Allocate(part, seq(*body, final))


def _touches_global(s: Stmt) -> bool:
    return any(isinstance(st, Store) and st.buffer.scope == "global" for st in walk_stmts(s))


# -- contractions: shared-memory tiles ------------------------------------------------------

@dataclass(frozen=True)
class GemmTile:
    """A block tile BM x BN, reduction slice BK, and a per-thread register tile RM x RN."""

    bm: int
    bn: int
    bk: int
    rm: int
    rn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.rm) * (self.bn // self.rn)


@dataclass
class _Contraction:
    out: Buffer
    idx: tuple
    init: ex.Expr
    a: ex.Expr  # the factor that does not read N loops
    b: ex.Expr  # the factor that does not read M loops
    m: list  # loops of the M, N, batch and reduction sets, outermost first
    n: list
    batch: list
    r: list


def match_contraction(top: Stmt) -> _Contraction | None:
    """Recognize ``out[s] = init; for r...: out[s] += a * b`` with a and b each missing some loops of s."""
    chain, inner = spatial_chain(top)
    if not chain or not isinstance(inner, Seq) or len(inner.stmts) != 2:
        return None
    init, loop = inner.stmts
    red = _match_reduction(init, loop)
    if red is None or red.op != "add" or red.acc.scope != "global":
        return None
    if not (isinstance(red.term, ex.BinOp) and red.term.op == "mul"):
        return None
    own = [lp.var for lp in chain]
    index_vars = [i for i in red.idx if isinstance(i, ex.Var)]
    if any(not isinstance(i, (ex.Var, ex.Const)) for i in red.idx) or \
            sorted(map(id, index_vars)) != sorted(map(id, own)):
        return None  # one output element per point of the loops (constant indices allowed: a batch of 1)
    fa, fb = red.term.a, red.term.b
    in_a = {id(v) for v in ex.free_vars(fa)}
    in_b = {id(v) for v in ex.free_vars(fb)}
    m = [lp for lp in chain if id(lp.var) in in_a and id(lp.var) not in in_b]
    n = [lp for lp in chain if id(lp.var) in in_b and id(lp.var) not in in_a]
    batch = [lp for lp in chain if lp not in m and lp not in n]
    if not m or not n:
        return None
    # Threads run fastest along N: make N the loops of the output's last index (coalesced stores).
    last = index_vars[-1] if index_vars else None
    if any(last is lp.var for lp in m):
        fa, fb, m, n = fb, fa, n, m
    return _Contraction(red.acc, red.idx, red.init, fa, fb, m, n, batch, red.chain)


def choose_gemm_tile(m: int, n: int, k: int, batch: int, itemsize: int, gpu) -> tuple[GemmTile, dict]:
    """The tile with the least estimated time: global traffic against bandwidth
    (DRAM for the operands once, L2 for re-reads when they fit in it),
    FMAs (scaled by how well the register tile hides shared-memory loads)
    against compute, both counted in waves of blocks over the multiprocessors."""
    best = None
    for bm in (16, 32, 64, 128):
        for bn in (16, 32, 64, 128):
            for bk in (8, 16, 32):
                for rm in (1, 2, 4, 8):
                    for rn in (1, 2, 4, 8):
                        t = GemmTile(bm, bn, bk, rm, rn)
                        est = _estimate(t, m, n, k, batch, itemsize, gpu)
                        if est is not None and (best is None or est["seconds"] < best[1]["seconds"]):
                            best = (t, est)
    return best


def _estimate(t: GemmTile, m, n, k, batch, itemsize, gpu) -> dict | None:
    if t.rm > t.bm or t.rn > t.bn or not WARP <= t.threads <= 256:
        return None
    smem = t.bk * (t.bm + t.bn) * itemsize
    regs = t.rm * t.rn + t.rm + t.rn + 32
    if smem > gpu.shared_bytes_per_block or regs > gpu.max_registers_per_thread:
        return None
    mt, nt, kt = -(-m // t.bm), -(-n // t.bn), -(-k // t.bk)
    blocks = batch * mt * nt
    per_sm = min(gpu.max_threads_per_sm // t.threads, gpu.shared_bytes_per_sm // max(smem, 1),
                 gpu.registers_per_block // (t.threads * regs), 32)
    if per_sm < 1:
        return None
    waves = -(-blocks // (gpu.multiprocessors * per_sm))
    traffic = blocks * (t.bm + t.bn) * kt * t.bk * itemsize + batch * m * n * itemsize
    # Per step of the reduction a thread does rm*rn FMAs for rm+rn shared loads;
    # an SM issues 4 warp-FMAs per shared load, so below 4:1 the loads bound it.
    efficiency = min(1.0, t.rm * t.rn / (t.rm + t.rn) / 4)
    # Blocks run in waves over the SMs; the busiest SM sets the time. An SM
    # with few resident threads cannot hide latency (counted below 1024).
    full, rest = divmod(blocks, gpu.multiprocessors * per_sm)
    busiest = full * per_sm + -(-rest // gpu.multiprocessors)
    resident = min(per_sm, -(-blocks // gpu.multiprocessors)) * t.threads
    occupancy = min(1.0, resident / 1024)
    sm_flops = gpu.fp32_flops_per_s / gpu.multiprocessors
    compute = busiest * t.bm * t.bn * kt * t.bk * 2 / (sm_flops * efficiency * occupancy)
    # Bytes read again by other blocks come from L2 when the operands fit there.
    unique = batch * (m * k + k * n + m * n) * itemsize
    reread = max(traffic - unique, 0)
    memory = min(traffic, unique) / gpu.dram_bytes_per_s + reread / (
        gpu.l2_bytes_per_s if unique <= gpu.l2_bytes else gpu.dram_bytes_per_s)
    seconds = max(compute, memory) + 2e-6 * waves
    return {"seconds": seconds, "traffic": traffic, "waves": waves, "blocks": blocks, "per_sm": per_sm}


def tile_contraction(kernel: Kernel, top: Stmt, gpu) -> tuple[Stmt, str, Buffer] | None:
    """The shared-memory tiled form of a contraction nest, a note on the tile, and the output buffer."""
    c = match_contraction(top)
    if c is None:
        return None
    M, N, K, B = _product(c.m), _product(c.n), _product(c.r), _product(c.batch)
    itemsize = max(c.a.dtype.itemsize, c.b.dtype.itemsize, 4)
    tile, est = choose_gemm_tile(M, N, K, B, itemsize, gpu)
    mt, nt = -(-M // tile.bm), -(-N // tile.bn)
    if B > 65535 or min(mt, nt) > 65535:
        return None
    base = top.var.name
    v = lambda what: ex.Var(f"{base}.{what}")  # noqa: E731
    bz, by, bx, tid = v("bz"), v("by"), v("bx"), v("tx")
    # The larger tile count goes on block.x (y and z stop at 65535).
    m_axis, n_axis = ("block.y", "block.x") if mt <= 65535 else ("block.x", "block.y")
    cols = tile.bn // tile.rn
    ty_, tx_ = ex.BinOp("floordiv", tid, _i(cols)), ex.BinOp("mod", tid, _i(cols))
    batch_map = decompose(bz, c.batch) if c.batch else {}

    acc = Buffer(f"{base}_acc", (tile.rm, tile.rn), c.out.dtype, "local")
    a_sh = Buffer(f"{base}_As", (tile.bk, tile.bm), c.a.dtype, "shared")
    b_sh = Buffer(f"{base}_Bs", (tile.bk, tile.bn), c.b.dtype, "shared")
    ra = Buffer(f"{base}_ra", (tile.rm,), c.a.dtype, "local")
    rb = Buffer(f"{base}_rb", (tile.rn,), c.b.dtype, "local")
    k0, kk = v("k0"), v("kk")

    def load_tile(shared: Buffer, factor, rows: list, rows_total: int, block_var, rows_tile: int, tag: str):
        """Cooperative load of a BK x rows_tile slice of ``factor`` into ``shared``."""
        count = tile.bk * rows_tile
        steps = -(-count // tile.threads)
        lv = v(f"l{tag}")
        e = ex.BinOp("add", ex.BinOp("mul", lv, _i(tile.threads)), tid)
        # (The outer digit keeps a modulo too, so the verifier can bound it past the guard.)
        if _reduction_fastest(factor, c.r, rows):
            kk_e = ex.BinOp("mod", e, _i(tile.bk))
            rr_e = ex.BinOp("mod", ex.BinOp("floordiv", e, _i(tile.bk)), _i(rows_tile))
        else:
            rr_e = ex.BinOp("mod", e, _i(rows_tile))
            kk_e = ex.BinOp("mod", ex.BinOp("floordiv", e, _i(rows_tile)), _i(tile.bk))
        row = ex.BinOp("add", ex.BinOp("mul", block_var, _i(rows_tile)), rr_e)
        kidx = ex.BinOp("add", ex.BinOp("mul", k0, _i(tile.bk)), kk_e)
        mapping = {**batch_map, **decompose(row, rows), **decompose(kidx, c.r)}
        value = ex.simplify(ex.substitute(factor, mapping))
        inside = ex.BinOp("and", ex.BinOp("lt", row, _i(rows_total)), ex.BinOp("lt", kidx, _i(K)))
        put = If(inside, Store(shared, (kk_e, rr_e), value), Store(shared, (kk_e, rr_e), ex.const(0, factor.dtype)))
        if steps * tile.threads > count:
            put = If(ex.BinOp("lt", e, _i(count)), put)
        return For(lv, steps, put, "unrolled")

    a_, b_ = v("a"), v("b")
    a2, b2 = v("a2"), v("b2")
    a3, b3 = v("a3"), v("b3")
    rows_m = lambda av: ex.BinOp("add", ty_, ex.BinOp("mul", av, _i(tile.bm // tile.rm)))  # noqa: E731
    cols_n = lambda bv: ex.BinOp("add", tx_, ex.BinOp("mul", bv, _i(cols)))  # noqa: E731
    mac = For(a3, tile.rm, For(b3, tile.rn, Store(acc, (a3, b3), ex.BinOp(
        "add", ex.Load(acc, (a3, b3)), ex.BinOp("mul", ex.Load(ra, (a3,)), ex.Load(rb, (b3,))))), "unrolled"),
        "unrolled")
    step = For(kk, tile.bk, seq(
        For(a2, tile.rm, Store(ra, (a2,), ex.Load(a_sh, (kk, rows_m(a2)))), "unrolled"),
        For(b2, tile.rn, Store(rb, (b2,), ex.Load(b_sh, (kk, cols_n(b2)))), "unrolled"),
        mac), "unrolled" if tile.bk <= 16 else "serial")
    main = For(k0, -(-K // tile.bk), seq(
        load_tile(a_sh, c.a, c.m, M, by, tile.bm, "a"),
        load_tile(b_sh, c.b, c.n, N, bx, tile.bn, "b"),
        Barrier(), step, Barrier()))
    za, zb = v("za"), v("zb")
    zero = For(za, tile.rm, For(zb, tile.rn, Store(acc, (za, zb), ex.const(0, c.out.dtype)), "unrolled"), "unrolled")
    # Write out: out[s] = init + acc, only inside the output.
    m_e = ex.BinOp("add", ex.BinOp("mul", by, _i(tile.bm)), rows_m(a_))
    n_e = ex.BinOp("add", ex.BinOp("mul", bx, _i(tile.bn)), cols_n(b_))
    mapping = {**batch_map, **decompose(m_e, c.m), **decompose(n_e, c.n)}
    out_idx = tuple(ex.simplify(ex.substitute(i, mapping)) for i in c.idx)
    init = ex.simplify(ex.substitute(c.init, mapping))
    value = ex.Load(acc, (a_, b_))
    if not (isinstance(init, ex.Const) and init.value == 0):
        value = ex.BinOp("add", init, value)
    guard = ex.BinOp("and", ex.BinOp("lt", m_e, _i(M)), ex.BinOp("lt", n_e, _i(N)))
    write = For(a_, tile.rm, For(b_, tile.rn, If(guard, Store(c.out, out_idx, value)), "unrolled"), "unrolled")
    body = Allocate(acc, Allocate(ra, Allocate(rb, Allocate(a_sh, Allocate(b_sh, seq(zero, main, write))))))
    nest = For(tid, tile.threads, body, "thread.x")
    nest = For(by, mt, For(bx, nt, nest, n_axis), m_axis) if m_axis == "block.y" else \
        For(bx, nt, For(by, mt, nest, m_axis), n_axis)
    if c.batch:
        nest = For(bz, B, nest, "block.z")
    note = (f"gpu gemm {base}: M={M} N={N} K={K} batch={B}; block tile {tile.bm}x{tile.bn}x{tile.bk}, thread tile "
            f"{tile.rm}x{tile.rn}, {tile.threads} threads, {est['blocks']} blocks in {est['waves']} wave(s) "
            f"({est['per_sm']}/SM); est. {est['traffic'] / 1e6:.2f} MB global traffic, "
            f"{est['seconds'] * 1e6:.1f} us")
    return nest, note, c.out


def _reduction_fastest(factor: ex.Expr, rloops: list, rows: list) -> bool:
    """Do consecutive reduction indices sit next to each other in memory (load along k)?"""
    loads = [n for n in ex.walk(factor) if isinstance(n, ex.Load)]
    if not loads:
        return True
    load = max(loads, key=lambda ld: ld.tensor.size if hasattr(ld.tensor, "size") else 0)
    if flat_stride(load, rloops[-1].var) == 1:
        return True
    return not (rows and flat_stride(load, rows[-1].var) == 1)
