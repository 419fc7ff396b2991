"""The default schedule for a CPU target, written with the primitives.

For every reduction nest (``out[i] = init; for r: out[i] += term``):

- a multiply-accumulate whose vector axis loads are unit-stride or
  short-strided (matmul, convolution) gets **register tiles**: ``rows`` x
  ``cols`` accumulators, sized from the target's vector width and register
  count (8 x 32 floats with 32 AVX-512 registers, 6 x 16 with 16 AVX2 ones),
  held in a local buffer through the whole reduction (``cache_write``), the
  rows unrolled and the columns run as explicit vector lanes; a column
  remainder is one more full tile ending at the last column (``split(j,
  32, widen)``), other remainders get tiles of power-of-two widths. An
  elementwise epilogue that updates the result in place (bias,
  activation, residual) is applied as the tiles are
  written (``reverse_compute_inline``). When every access walks the vector
  axis and the axis before it as one contiguous run (1x1 convolutions over
  image rows), the two are fused first, so vectors are long;
- a matrix product whose right operand does not fit in half the L2 cache
  gets **cache blocks** around the tiles: reduction blocks of ``kc`` and
  column blocks of ``nc`` (one or more per thread), the ``kc x nc`` slice
  copied once per block (``cache_read``; a constant operand is packed into
  panels at compile time instead) and the tiles accumulating onto the
  previous block's results;
- otherwise the reduction is innermost with a scalar accumulator, or — when
  that reads memory with a worse stride — the last spatial axis goes
  innermost and accumulates in memory (matmul's i-k-j order).

Then every top-level nest: outer spatial loops are fused until there is
enough parallelism, the outermost runs on all threads when the nest has
enough work, and innermost serial loops are vectorized. Last, a loop whose
body chooses between inputs by comparing the loop's index with a constant
(a concatenation fused into its consumer) is partitioned at that point, so
each part reads one input with no ``select``.

This module drives the schedule; the parts live beside it: ``nests.py``
(finding reduction nests), ``cpu_tiles.py`` (register and channel-lane
tiles), ``cpu_blocks.py`` (cache blocks), ``cpu_panels.py`` (matrix-vector
panels) and ``cpu_choices.py`` (what a tuner may choose instead).
"""

from __future__ import annotations

import math
from dataclasses import replace

from minicomp.ir import expr as ex
from minicomp.ir.dims import lower, upper
from minicomp.ir.loops import (
    Allocate,
    For,
    Kernel,
    Seq,
    Stmt,
    Store,
    loops,
    stmt_children,
    top_statements,
    walk_stmts,
)
from minicomp.passes.schedules.analysis import (
    LOCAL_ROW_BYTES,
    spatial_innermost,
    tile_axis,
    window_axis,
)
from minicomp.passes.schedules.cpu_blocks import cache_blocked_tiles, cache_blocks
from minicomp.passes.schedules.cpu_choices import DEFAULT_CHOICES, MIN_PARALLEL_WORK, Choices, register_tile
from minicomp.passes.schedules.cpu_panels import (
    matvec_panels,
    matvec_panels_fit,
    panel_operand,
    split_columns_over_threads,
)
from minicomp.passes.schedules.cpu_tiles import (
    WINDOW_ROWS,
    channel_lane_tiles,
    channel_lanes,
    dividing_rows,
    inline_epilogue,
    register_tiles,
    split_groups,
)
from minicomp.passes.schedules.nests import (
    accumulated_term,
    find_nest,
    fuse_keeps_contiguous,
    on_part,
    reduction_nests,
    reduction_update,
)
from minicomp.passes.schedules.primitives import (
    CacheWrite,
    ComputeAt,
    DecomposeReduction,
    Distribute,
    Fuse,
    Join,
    Localize,
    Pack,
    Parallel,
    Partition,
    Reorder,
    Simd,
    Vectorize,
    apply_step,
    iterations_independent,
)
from minicomp.passes.schedules.step import ScheduleError, accesses, find_loop


def cpu_schedule(kernel: Kernel, target, num_threads: int, constants=frozenset(),
                 choices: Choices = DEFAULT_CHOICES) -> Kernel:
    """``kernel`` with the default CPU schedule applied (its steps recorded).

    ``constants`` names the kernel's inputs that are constants: a constant
    right operand of a register-tiled product is packed into panels once,
    at compile time. ``choices`` overrides some of the rules' decisions
    (the tuner's candidates).
    """
    k = _localize_rows(kernel)
    for root in [chain[0].var.name for chain, _, _ in reduction_nests(k.body)]:
        panel = panel_operand(k, root, constants)
        # Steps rebuild the kernel they see: show them only the top-level
        # statement that holds this nest (loop names stay unique, since every
        # new name derives from a name of that statement's own loops).
        k, tiled = on_part(k, root, lambda part: _schedule_reduction(part, root, target, num_threads, constants,
                                                                      choices))
        if tiled is not None:
            k = inline_epilogue(k, tiled)
            if panel is not None:
                k = apply_step(k, Pack(panel, 1, register_tile(target, tiled.dtype, choices)[1]))
    k = _producers_per_slice(k)
    if choices != DEFAULT_CHOICES:
        k = replace(k, notes=k.notes + [f"tuned: {choices}"])
    return _partition_selects(_parallelize(k, 1 if choices.serial else num_threads, target))


def _localize_rows(k: Kernel) -> Kernel:
    """Workspaces used one row at a time inside a loop, small enough for the
    stack, become per-row local buffers of that loop (``localize``)."""
    for buf in list(k.workspace):
        lp = _innermost_loop_around(k.body, buf)
        if lp is None:
            continue
        try:
            trial = apply_step(k, Localize(buf.name, lp.var.name))
        except ScheduleError:
            continue
        local = next(s.buffer for s in walk_stmts(trial.body) if isinstance(s, Allocate) and s.buffer.name == buf.name)
        if local.max_bytes <= LOCAL_ROW_BYTES:
            k = trial
    return k


def _producers_per_slice(k: Kernel) -> Kernel:
    """A workspace that an elementwise nest fills whole (a padded input) and
    a later nest reads one slice of per iteration of its outer loop (a
    depthwise convolution: output channel c reads padded channel c) is
    computed inside that loop instead, a slice just before it is read
    (``compute_at``), and kept on the stack when a slice is small enough
    (``localize``). Nothing is computed twice: a consumer that reads more
    than its own slice (a dense convolution reads every channel) keeps the
    nest as it is.

    The whole padded input of MobileNetV2's stride-2 depthwise convolution on
    96 x 112 x 112 was 5 MB written and read back from memory; per channel it
    is 52 KB that stays in the L1/L2 cache."""
    tops = top_statements(k.body)
    for buf in list(k.workspace):
        writers = [t for t in tops if isinstance(t, For) and _fills(t, buf)]
        readers = [t for t in tops if isinstance(t, For) and not _fills(t, buf) and accesses(t, buf)]
        if len(writers) != 1 or len(readers) != 1:
            continue
        producer, consumer = writers[0], readers[0]
        try:
            trial = apply_step(k, ComputeAt(producer.var.name, consumer.var.name))
        except ScheduleError:
            continue
        slices = top_statements(find_loop(trial.body, consumer.var.name).body)[0]
        if iterations(slices) * upper(consumer.extent) > upper(buf.size):  # it would compute elements twice
            continue
        note = f"{buf.name} computed per slice at {consumer.var.name}"
        k = replace(_localize_rows(trial), notes=trial.notes + [note])
        tops = top_statements(k.body)
    return k


def _fills(nest: For, buf) -> bool:
    """Is ``nest`` a perfect nest of spatial loops around one store to ``buf``?"""
    cur = nest
    while isinstance(cur, For) and not cur.is_reduction:
        cur = cur.body
    return isinstance(cur, Store) and cur.buffer is buf


def _innermost_loop_around(body: Stmt, buf):
    """The innermost spatial loop whose body holds every access to ``buf``."""
    users = {id(st) for st, _, _ in accesses(body, buf)}
    best = None
    for lp in loops(body):
        if users and not lp.is_reduction and users <= {id(s) for s in walk_stmts(lp.body)}:
            best = lp  # loops() is in pre-order: a later hit is deeper
    return best


# -- scheduling one reduction --------------------------------------------------------

def _schedule_reduction(k: Kernel, root: str, target, threads: int, constants=frozenset(),
                        choices: Choices = DEFAULT_CHOICES):
    """(kernel with the nest at loop ``root`` scheduled, the buffer its
    register tiles write when an epilogue may be folded into them, or None)."""
    chain, init, rloop = find_nest(k.body, root)
    rs, update = reduction_update(rloop)
    if update is None or update.buffer is not init.buffer:
        return k, None
    # Threads split only a nest at the top level: a blocked squeeze-and-excitation
    # FC runs inside the unit loops of its output, and a thread loop cannot.
    at_top = any(t is chain[0] for t in top_statements(k.body))
    buf = update.buffer
    grouped = split_groups(k, chain, update)
    if grouped is not None:
        k, root = grouped
        chain, init, rloop = find_nest(k.body, root)
        rs, update = reduction_update(rloop)
    term = accumulated_term(update)
    if term is None:
        return k, None
    axes = [(lp.var, lp.extent) for lp in chain]
    inner = spatial_innermost(term, buf.dtype, axes, [(r.var, r.extent) for r in rs])
    if inner is None:  # reduction innermost: accumulate in a scalar
        return apply_step(k, CacheWrite(buf.name, chain[-1].var.name)), None
    pos = [a for a, _ in axes].index(inner)
    if pos > 0 and fuse_keeps_contiguous(term, update, chain[pos - 1], chain[pos]):
        k = apply_step(k, Fuse(chain[pos - 1].var.name, chain[pos].var.name))
        chain, init, rloop = find_nest(k.body, chain[0].var.name if pos > 1 else f"{chain[0].var.name}_"
                                        f"{chain[1].var.name}")
        rs, update = reduction_update(rloop)
        term = accumulated_term(update)
        axes = [(lp.var, lp.extent) for lp in chain]
        inner = chain[-1].var
    depth = math.prod(upper(r.extent) for r in rs)
    product_rows = tile_axis(term, buf.dtype, inner, axes)
    rows = product_rows or window_axis(term, buf.dtype, inner, axes, depth)
    if len(chain) == 1 and rows is None and matvec_panels_fit(k, chain[0], rs, buf, constants, target, choices):
        return matvec_panels(k, chain[0], rs, buf, target, choices), buf
    if rows is None or chain[-1].var is not inner:
        k = apply_step(k, DecomposeReduction(chain[-1].var.name))
        k = apply_step(k, Reorder(tuple(r.var.name for r in rs) + (chain[-1].var.name,)))
        if len(chain) == 1 and at_top:
            k = split_columns_over_threads(k, chain[0], rs, threads, target)
        return k, None
    lanes_over = None if choices.lanes == "spatial" else channel_lanes(
        term, chain, inner, depth, constants, target, buf.dtype, force=choices.lanes == "channels")
    if lanes_over is not None:
        return channel_lane_tiles(k, chain, *lanes_over, buf, target, choices), buf
    tile = register_tile(target, buf.dtype, choices)
    if choices.rows is None and product_rows is not None:
        tile = (dividing_rows(next(lp.extent for lp in chain if lp.var is rows), tile[0]), tile[1])
    blocks = cache_blocks(target, chain, rows, rs, buf.dtype, threads, tile[1])
    if blocks is not None:
        return cache_blocked_tiles(k, chain, rs[0], buf, blocks, tile, constants), None
    if product_rows is None:  # a window: see WINDOW_ROWS
        lanes = target.vector_lanes(buf.dtype)
        tile = (choices.rows or WINDOW_ROWS, (choices.vectors or 1) * lanes)
    return register_tiles(k, chain, rows, buf, tile), buf


# -- concatenations ------------------------------------------------------------------

# Each partition copies a loop's body; past this many parts per kernel the
# code grows more than the selects cost (a concatenation of many inputs).
MAX_PARTITIONS = 32


def _partition_selects(k: Kernel) -> Kernel:
    """Partition every serial or vectorized loop at the points where a
    ``select`` in its body compares the loop's index alone with a constant.

    A concatenation inlined into its consumer reads ``select(c < 256,
    a[min(c, 255)], b[max(c - 256, 0)])``: both inputs are loaded for every
    element and the choice is made after. Split at 256, each part loads one
    input; the iterations keep their order, so results are bit-identical.
    On SqueezeNet's last convolution (a concatenation of two 256-channel
    maps as its reduction) this halved the kernel's time."""
    for _ in range(MAX_PARTITIONS):
        found = next(((lp, at) for lp in loops(k.body) if lp.kind in ("serial", "vectorized")
                      for at in _select_points(lp)), None)
        if found is None:
            return k
        k = apply_step(k, Partition(found[0].var.name, found[1]))
    return k


def _select_points(lp: For):
    """The points ``p`` inside ``lp`` where a select in its body tests ``lp``'s index ``< p``."""
    for st in walk_stmts(lp.body):
        if not isinstance(st, Store):
            continue
        for e in (st.value, *st.indices):
            for n in ex.walk(e):
                if not (isinstance(n, ex.Select) and isinstance(n.cond, ex.BinOp) and n.cond.op in ORDER_TESTS):
                    continue
                aff = ex._affine(ex.binop("sub", n.cond.a, n.cond.b)) if n.cond.a.dtype.is_int else None
                if aff is None or len(aff[0]) != 1 or aff[0].get(lp.var) not in (1, -1):
                    continue
                op, c = n.cond.op, aff[1]
                if aff[0][lp.var] == -1:  # c - i < 0 is i - c > 0
                    op, c = FLIPPED[op], -c
                at = -c + (1 if op in ("le", "gt") else 0)  # i + c < 0 changes at -c, i + c <= 0 at -c + 1
                if 0 < at < lower(lp.extent):  # (a symbolic loop may end before it)
                    yield at


ORDER_TESTS = ("lt", "le", "gt", "ge")
FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}


# -- threads and vectors -----------------------------------------------------------

def iterations(s: Stmt) -> int:
    """Rough count of innermost iterations under ``s``."""
    if isinstance(s, For):
        return upper(s.extent) * max(1, iterations(s.body))
    kids = stmt_children(s)
    return sum(iterations(c) for c in kids) if kids else 1


def _innermost_loops(s: Stmt) -> list[For]:
    out = []
    if isinstance(s, For) and not any(isinstance(c, For) for c in walk_stmts(s.body)):
        return [s]
    for c in stmt_children(s):
        out.extend(_innermost_loops(c))
    return out


def _distribute_short_symbolic_loops(k: Kernel, num_threads: int) -> Kernel:
    """Distribute each top-level loop over a symbolic extent that may be too short to fill the threads
    (a batch from 1) whose body is several nests (a convolution's padding, then the convolution), so
    that each nest can fuse the loop with its own inner loop and run that in parallel."""
    if num_threads < 2:
        return k
    for nest in top_statements(k.body):
        if (isinstance(nest, For) and nest.kind == "serial" and not nest.is_reduction
                and not isinstance(nest.extent, int) and lower(nest.extent) < 4 * num_threads
                and isinstance(nest.body, Seq) and len(nest.body.stmts) > 1
                and any(isinstance(st, For) and upper(st.extent) > 1 for st in nest.body.stmts)  # one to fuse
                and iterations_independent(nest)):
            k = apply_step(k, Distribute(nest.var.name))
    return k


def _gather_row_tails(k: Kernel, num_threads: int) -> Kernel:
    """Symbolic rows split into tiles of 8, 4, 2 and 1 leave one nest per smaller tile that runs at
    most once at a call (7 rows: 4 + 2 + 1), each over the same blocks of columns. Each run in parallel
    would start the threads once per nest (7 rows of a 784-256 product: 22 us, against 15 for one
    7-row tile); instead the column loop goes outside in each (a loop that runs at most once moves
    freely), and such neighbours join into one loop (``join``), which runs in parallel once: each
    block of columns does all the remainder's tiles."""
    if num_threads < 2:
        return k

    def at_most_once(st) -> bool:
        return (isinstance(st, For) and st.kind == "serial" and not st.is_reduction
                and not isinstance(st.extent, int) and upper(st.extent) <= 1)

    tails = []
    for nest in top_statements(k.body):
        if at_most_once(nest) and isinstance(nest.body, For) and nest.body.kind == "serial" \
                and not nest.body.is_reduction and not at_most_once(nest.body):
            k = apply_step(k, Reorder((nest.body.var.name, nest.var.name)))
            tails.append(nest.body.var.name)
    for first, second in zip(tails, tails[1:]):
        try:
            k = apply_step(k, Join(first, second))
            tails[tails.index(second)] = first  # the next one joins onto the joined loop
        except ScheduleError:
            pass
    return k


def _parallelize(k: Kernel, num_threads: int, target) -> Kernel:
    """Fuse outer spatial loops until there is enough parallelism, run the
    outermost loop in parallel when the nest has enough work, and vectorize
    every innermost serial loop."""
    k = _distribute_short_symbolic_loops(k, num_threads)
    k = _gather_row_tails(k, num_threads)
    for nest in top_statements(k.body):
        if not isinstance(nest, For) or nest.kind != "serial":
            continue
        # A symbolic extent is judged at its largest for the work, at its least for the parallelism: a
        # batch of 1..32 fuses with the loop inside it, so that one image still fills the threads.
        name, extent, least, inner = nest.var.name, upper(nest.extent), lower(nest.extent), nest.body
        fused = {name}
        while (num_threads > 1 and least < 4 * num_threads and isinstance(inner, For)
               and inner.kind == "serial" and not inner.is_reduction and not nest.is_reduction):
            k = apply_step(k, Fuse(name, inner.var.name))
            name = f"{name}_{inner.var.name}"
            fused.add(inner.var.name)
            extent *= upper(inner.extent)
            least *= lower(inner.extent)
            inner = inner.body
        fused.add(name)
        top = find_loop(k.body, name)
        parallel = num_threads > 1 and extent > 1 and not nest.is_reduction and iterations(top) >= MIN_PARALLEL_WORK
        if parallel:
            k = apply_step(k, Parallel(name))
        innermost = [lp for lp in _innermost_loops(top) if lp.var.name not in fused and lp.kind == "serial"]
        holds_loops = any(isinstance(s, For) for s in walk_stmts(top.body))
        if not holds_loops and not parallel and extent >= 4:
            k = apply_step(k, Vectorize(name))  # the fused loop itself is innermost
        for loop in innermost:
            if _whole_vectors(loop, target):
                try:
                    k = apply_step(k, Simd(loop.var.name))
                    continue
                except ScheduleError:  # not lanes the step runs (past its most lanes): LLVM's to vectorize
                    pass
            if upper(loop.extent) >= 4:
                k = apply_step(k, Vectorize(loop.var.name))
    return k


def _whole_vectors(loop: For, target) -> bool:
    """Whether an innermost loop of stores, each contiguous along it, runs exactly one to four
    whole vectors (the lanes of a blocked layout): it then runs as explicit lanes. Left to LLVM's
    vectorizer, such a short loop is unrolled first and the loop around it vectorized instead,
    with a gather and a scatter per element (a squeeze-and-excitation's gate times a blocked map:
    77 us, against 8.6 as explicit lanes)."""
    stores = [s for s in walk_stmts(loop.body) if isinstance(s, Store)]
    if not stores or not isinstance(loop.extent, int):
        return False
    lanes = target.vector_lanes(stores[0].buffer.dtype)
    # (each store contiguous along the loop: a strided one, a transpose's, stays LLVM's to choose;
    # whether the lanes can run at all, the simd step itself checks)
    return loop.extent % lanes == 0 and loop.extent <= 4 * lanes and all(
        s.indices and s.indices[-1] is loop.var for s in stores)
