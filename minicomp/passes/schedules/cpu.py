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
  copied once per block (``cache_read``) and the tiles accumulating onto the
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
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
    flat_stride,
    group_axis,
    spatial_innermost,
    tile_axis,
    window_axis,
)
from minicomp.passes.schedules.buffer_steps import split_init
from minicomp.passes.schedules.primitives import (
    CacheRead,
    CacheWrite,
    ComputeAt,
    DecomposeReduction,
    Fuse,
    Localize,
    Pack,
    Parallel,
    Partition,
    Reorder,
    ReverseComputeInline,
    Simd,
    Split,
    Unroll,
    Vectorize,
    apply_step,
)
from minicomp.passes.schedules.step import ScheduleError, accesses, find_loop

# Parallel regions cost a few microseconds to start; below this many inner
# iterations a loop nest runs faster on one thread.
MIN_PARALLEL_WORK = 1 << 15


@dataclass(frozen=True)
class Choices:
    """Decisions of the CPU schedule that a tuner may take instead of its
    rules (``backends/llvm_tuning.py``); a field left None keeps the rule's answer.

    - ``lanes``: for a convolution, ``"channels"`` runs output channels as the
      vector lanes (see :func:`_channel_lanes`), ``"spatial"`` the last output axis;
    - ``rows``, ``vectors``: a register tile's rows and vectors per row;
    - ``channel_blocks_outer``: channel-lane tiles with the channel blocks
      outermost (see :func:`_channel_lane_tiles`) or the pixels;
    - ``serial``: run every loop nest of the kernel on one thread.
    """

    lanes: str | None = None
    rows: int | None = None
    vectors: int | None = None
    channel_blocks_outer: bool | None = None
    serial: bool = False

    def as_dict(self) -> dict:
        """The fields that differ from the rules (empty for the default)."""
        return {k: v for k, v in self.__dict__.items() if v != getattr(DEFAULT_CHOICES, k)}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items()) or "default"


DEFAULT_CHOICES = Choices()


def register_tile(target, dtype, choices: Choices = DEFAULT_CHOICES) -> tuple[int, int]:
    """(rows, columns) of a register tile: two vectors per row, and as many
    rows (at most 8) as leave four registers for the operands; ``choices``
    may set either.

    8 rows rather than 6 on 32-register targets: convolutions with output
    rows as lanes ran faster, matrix products no slower
    (docs/measurements.md)."""
    lanes = max(1, target.vector_bits // 8 // dtype.itemsize)
    rows = max(1, min(8, (target.vector_registers - 4) // 2))
    return choices.rows or rows, (choices.vectors or 2) * lanes


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
        panel = _panel_operand(k, root, constants)
        # Steps rebuild the kernel they see: show them only the top-level
        # statement that holds this nest (loop names stay unique, since every
        # new name derives from a name of that statement's own loops).
        k, tiled = _on_part(k, root, lambda part: _schedule_reduction(part, root, target, num_threads, constants,
                                                                      choices))
        if tiled is not None:
            k = _inline_epilogue(k, tiled)
            if panel is not None:
                k = apply_step(k, Pack(panel, 1, register_tile(target, tiled.dtype, choices)[1]))
    k = _producers_per_slice(k)
    if choices != DEFAULT_CHOICES:
        k = replace(k, notes=k.notes + [f"tuned: {choices}"])
    return _partition_selects(_parallelize(k, 1 if choices.serial else num_threads))


def _panel_operand(k: Kernel, root: str, constants) -> str | None:
    """A constant right operand ``B[r, j]`` of the reduction nest at ``root``
    (j its last spatial loop, r a reduction loop), to be packed into panels
    that the register tiles read contiguously; None if there is none."""
    chain, _, rloop = _find_nest(k.body, root)
    rs, update = _update(rloop)
    if update is None or chain[-1].extent < 8:
        return None
    rvars = {id(r.var) for r in rs}
    for n in ex.walk(update.value):
        if (isinstance(n, ex.Load) and n.tensor.name in constants and len(n.indices) == 2
                and n.indices[1] is chain[-1].var and isinstance(n.indices[0], ex.Var)
                and id(n.indices[0]) in rvars and len(n.tensor.shape) == 2):
            return n.tensor.name
    return None


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
        if local.nbytes <= LOCAL_ROW_BYTES:
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
        if iterations(slices) * consumer.extent > buf.size:  # it would compute elements twice
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


def _on_part(k: Kernel, root: str, fn):
    """Apply ``fn`` (part -> (part, extra)) to the top-level statement holding loop ``root``."""
    tops = list(k.body.stmts) if isinstance(k.body, Seq) else [k.body]
    at = next(i for i, t in enumerate(tops) if find_loop(t, root) is not None)
    part, extra = fn(replace(k, body=tops[at], schedule=[]))
    new = top_statements(part.body)
    tops = tops[:at] + list(new) + tops[at + 1:]
    body = tops[0] if len(tops) == 1 else Seq(tops)
    return replace(k, body=body, inputs=part.inputs, packs=part.packs, notes=part.notes,
                   schedule=k.schedule + part.schedule), extra


# -- finding reductions ------------------------------------------------------------

def reduction_nests(body: Stmt):
    """Each reduction nest as (spatial loop chain, init store, reduction loops):
    a perfect nest of spatial loops around ``Seq(init, reduction loops)``."""
    out = []

    def visit(s: Stmt, chain: list):
        if isinstance(s, For) and not s.is_reduction:
            visit(s.body, chain + [s])
            return
        if (isinstance(s, Seq) and len(s.stmts) == 2 and isinstance(s.stmts[0], Store)
                and isinstance(s.stmts[1], For) and s.stmts[1].is_reduction and chain):
            out.append((chain, s.stmts[0], s.stmts[1]))
            return
        for c in stmt_children(s):
            visit(c, [])

    visit(body, [])
    return out


def _find_nest(body: Stmt, root: str):
    return next((n for n in reduction_nests(body) if n[0][0].var.name == root), None)


def _update(rloop: For):
    """The reduction loops (a perfect chain) and the update store under them."""
    rs, cur = [], rloop
    while isinstance(cur, For) and cur.is_reduction:
        rs.append(cur)
        cur = cur.body
    return rs, cur if isinstance(cur, Store) else None


# -- scheduling one reduction --------------------------------------------------------

def _schedule_reduction(k: Kernel, root: str, target, threads: int, constants=frozenset(),
                        choices: Choices = DEFAULT_CHOICES):
    """(kernel with the nest at loop ``root`` scheduled, the buffer its
    register tiles write when an epilogue may be folded into them, or None)."""
    chain, init, rloop = _find_nest(k.body, root)
    rs, update = _update(rloop)
    if update is None or update.buffer is not init.buffer:
        return k, None
    buf = update.buffer
    grouped = _split_groups(k, chain, update)
    if grouped is not None:
        k, root = grouped
        chain, init, rloop = _find_nest(k.body, root)
        rs, update = _update(rloop)
    term = _term(update)
    if term is None:
        return k, None
    axes = [(lp.var, lp.extent) for lp in chain]
    inner = spatial_innermost(term, buf.dtype, axes, [(r.var, r.extent) for r in rs])
    if inner is None:  # reduction innermost: accumulate in a scalar
        return apply_step(k, CacheWrite(buf.name, chain[-1].var.name)), None
    pos = [a for a, _ in axes].index(inner)
    if pos > 0 and _contiguous(term, update, chain[pos - 1], chain[pos]):
        k = apply_step(k, Fuse(chain[pos - 1].var.name, chain[pos].var.name))
        chain, init, rloop = _find_nest(k.body, chain[0].var.name if pos > 1 else f"{chain[0].var.name}_"
                                        f"{chain[1].var.name}")
        rs, update = _update(rloop)
        term = _term(update)
        axes = [(lp.var, lp.extent) for lp in chain]
        inner = chain[-1].var
    depth = math.prod(r.extent for r in rs)
    product_rows = tile_axis(term, buf.dtype, inner, axes)
    rows = product_rows or window_axis(term, buf.dtype, inner, axes, depth)
    if len(chain) == 1 and rows is None and _matvec_panels_fit(k, chain[0], rs, buf, constants, target, choices):
        return _matvec_panels(k, chain[0], rs, buf, target, choices), buf
    if rows is None or chain[-1].var is not inner:
        k = apply_step(k, DecomposeReduction(chain[-1].var.name))
        k = apply_step(k, Reorder(tuple(r.var.name for r in rs) + (chain[-1].var.name,)))
        if len(chain) == 1:
            k = _split_columns_over_threads(k, chain[0], rs, threads, target)
        return k, None
    lanes_over = None if choices.lanes == "spatial" else _channel_lanes(
        term, chain, inner, depth, constants, target, buf.dtype, force=choices.lanes == "channels")
    if lanes_over is not None:
        return _channel_lane_tiles(k, chain, *lanes_over, buf, target, choices), buf
    tile = register_tile(target, buf.dtype, choices)
    if choices.rows is None and product_rows is not None:
        tile = (dividing_rows(next(lp.extent for lp in chain if lp.var is rows), tile[0]), tile[1])
    blocks = cache_blocks(target, chain, rows, rs, buf.dtype, threads, tile[1])
    if blocks is not None:
        return _cache_blocked_tiles(k, chain, rs[0], buf, blocks, tile), None
    if product_rows is None:  # a window: see WINDOW_ROWS
        lanes = target.vector_lanes(buf.dtype)
        tile = (choices.rows or WINDOW_ROWS, (choices.vectors or 1) * lanes)
    return _register_tiles(k, chain, rows, buf, tile), buf


# A window's tile, 4 rows of one vector: each row loads its own inputs
# (nothing is shared between rows, unlike a product's), so more rows add code
# and few cycles; one vector's width keeps the remainders of short rows (7,
# 14, 28) to a few narrow tiles.
WINDOW_ROWS = 4


def _channel_lanes(term, chain: list[For], inner, depth: int, constants, target, dtype, force: bool = False):
    """For a convolution whose vector axis is short (under 4 vectors: the rows
    of a 7x7 to 56x56 map) or whose reduction is deep (``depth`` of 256 or
    more): the output channel loop to run as the vector lanes instead, with
    the weights it reads (a constant, packed so that channels are contiguous)
    and the axis of the weights that the channel indexes: ``(loop, weights,
    axis)``, or None.

    The short axis leaves lanes idle (7 of 16 on a 7x7 map) and small
    remainder tiles; the channels fill the lanes, and the pixels become the
    tile's rows, each a broadcast of one input value (several times the
    speed on small maps: docs/measurements.md); with a shallow reduction (an
    RGB image's 27) the rows' broadcasts cost more than the lanes save.
    The first convolutions of image models (stride 2 on 224x224: rows of
    111 or 112) ran faster with rows as lanes once stride-2 loads were one
    masked load and a shuffle, hence 4 vectors and not 8.
    ``force``: whenever a channel loop qualifies, however long the axis."""
    lanes = target.vector_lanes(dtype)
    extents = {id(lp.var): lp.extent for lp in chain}
    if extents[id(inner)] >= 4 * lanes and depth < 256 and not force:
        return None
    loads = [n for n in ex.walk(term) if isinstance(n, ex.Load)]
    for lp in chain:
        if lp.var is inner or lp.extent < 2 * lanes:
            continue
        moving = [ld for ld in loads if flat_stride(ld, lp.var) != 0]
        if len(moving) != 1 or moving[0].tensor.name not in constants or flat_stride(moving[0], inner) != 0:
            continue
        weights = moving[0]
        axis = [k for k, i in enumerate(weights.indices) if i is lp.var]
        if len(axis) == 1 and sum(1 for i in weights.indices for v in ex.free_vars(i) if v is lp.var) == 1:
            return lp, weights.tensor.name, axis[0]
    return None


def _channel_lane_tiles(k, chain: list[For], channel: For, weights: str, axis: int, buf, target,
                        choices: Choices = DEFAULT_CHOICES) -> Kernel:
    """Register tiles with ``channel`` as the lanes and the other loops after
    it, fused, as the rows (up to 8, a divisor of their count where one is
    near); the weights packed along ``axis``.

    When the weights outweigh the inputs they are multiplied with (deep
    layers on small maps: 2.4 MB of weights against 0.26 MB of input for a
    3x3 convolution of 256 channels on 14x14), the blocks of channels go
    outermost, so that each block's weights are read from memory once and
    the input, small enough for the L2 cache, is read again per block;
    otherwise the pixels go outermost and each channel block's weights are
    read again per block of pixels."""
    cols_tile = register_tile(target, buf.dtype, choices)[1]
    n = channel.extent
    heavy = _weights_outweigh_inputs(k, weights, buf) if choices.channel_blocks_outer is None \
        else choices.channel_blocks_outer
    outer = n > cols_tile and heavy
    if outer and n % cols_tile:
        # Channel blocks outermost need whole blocks: the last few channels
        # get a nest of their own (the channel loop first, partitioned).
        names = [lp.var.name for lp in chain]
        k = apply_step(k, Reorder((channel.var.name,) + tuple(x for x in names if x != channel.var.name)))
        k = apply_step(k, Partition(channel.var.name, n - n % cols_tile))
        rest = next(lp for lp in loops(k.body) if lp.var.name.startswith(channel.var.name + ".p"))
        k = _lane_tiles(k, _chain_below(k, channel.var.name), channel.var.name, buf, target, True, choices)
        k = _lane_tiles(k, _chain_below(k, rest.var.name), rest.var.name, buf, target, False, choices)
    else:
        k = _lane_tiles(k, chain, channel.var.name, buf, target, outer, choices)
    return apply_step(k, Pack(weights, axis, cols_tile))


def _lane_tiles(k, chain: list[For], channel: str, buf, target, outer: bool,
                choices: Choices = DEFAULT_CHOICES) -> Kernel:
    """The tiles of :func:`_channel_lane_tiles` for one nest: the loop
    ``channel`` of ``chain`` as the lanes, the other loops after it as the
    rows; with ``outer`` (the channel count a whole number of tiles), the
    channel blocks outermost."""
    names = [lp.var.name for lp in chain]
    extent = next(lp.extent for lp in chain if lp.var.name == channel)
    others = [n for n in names if n != channel]
    k = apply_step(k, Reorder(tuple(others) + (channel,)))
    tail = others[names.index(channel):]  # the loops that came after the channel
    first = others[0]
    if len(tail) >= 2:
        fused = f"{tail[-2]}_{tail[-1]}"
        k = apply_step(k, Fuse(tail[-2], tail[-1]))
        first = fused if first == tail[-2] else first
        tail = tail[:-2] + [fused]
    new_chain = _chain_below(k, first)
    rows = next(lp for lp in new_chain if lp.var.name == tail[-1])
    # At most a register tile's rows (8, 16 accumulator vectors, on AVX-512):
    # 14, all that 32 registers hold, measured slower on every convolution
    # tried, with more code. A divisor of the pixel count near 8 leaves no
    # remainder tile; without one, the most rows (docs/measurements.md).
    n = rows.extent
    rows_tile = min(n, choices.rows) if choices.rows else dividing_rows(n, register_tile(target, buf.dtype)[0])
    cols_tile = register_tile(target, buf.dtype, choices)[1]
    if outer and extent % cols_tile == 0 and extent > cols_tile:
        k = apply_step(k, Split(channel, cols_tile))
        blocks = f"{channel}.o"
        k = apply_step(k, Reorder((blocks,) + tuple(lp.var.name for lp in new_chain[:-1])))
        new_chain = _chain_below(k, blocks)
        notes = ["channel blocks outermost: the weights outweigh the inputs"]
        k = replace(k, notes=k.notes + notes)
    return _register_tiles(k, new_chain, rows.var, buf, (rows_tile, cols_tile), lanes_strided=True)


def _weights_outweigh_inputs(k: Kernel, weights: str, out) -> bool:
    """Are the ``weights`` more bytes than the other buffers of the kernel
    (but ``out``, the one the tiles write)?"""
    inputs = [b for b in k.inputs + k.workspace if b.name not in (weights, out.name)]
    w = next(b for b in k.inputs if b.name == weights)
    return w.nbytes > sum(b.nbytes for b in inputs)


def _split_groups(k: Kernel, chain: list[For], update: Store) -> tuple[Kernel, str] | None:
    """Split a grouped convolution's output channel loop by the group size
    (see :func:`group_axis`), so that its inner part can be a register tile's
    rows: (the kernel, the nest's outermost loop now), or None when the nest
    has no such loop."""
    found = group_axis(update.value, [(lp.var, lp.extent) for lp in chain])
    if found is None:
        return None
    var, size = found
    split = apply_step(k, Split(var.name, size))
    return split, (f"{var.name}.o" if chain[0].var is var else chain[0].var.name)


def _matvec_panels_fit(k: Kernel, lp: For, rs, buf, constants, target, choices: Choices = DEFAULT_CHOICES) -> bool:
    """Is this a matrix-vector product ``out[j] += x[r] * B[r, j]`` with a
    constant ``B`` and whole tiles of columns (see :func:`_matvec_panels`)?"""
    cols = register_tile(target, buf.dtype, choices)[1]
    if lp.extent % cols or len(rs) != 1 or lp.extent < 2 * cols:
        return False
    if _panel_operand(k, lp.var.name, constants) is None:
        return False
    _, update = _update(find_loop(k.body, rs[0].var.name))
    loads = [n for n in ex.walk(update.value) if isinstance(n, ex.Load) and n.tensor is not buf]
    return sum(1 for ld in loads if flat_stride(ld, lp.var) != 0) == 1  # x[r] does not move with the column


def _matvec_panels(k: Kernel, lp: For, rs, buf, target, choices: Choices = DEFAULT_CHOICES) -> Kernel:
    """A matrix-vector product over panels of ``cols`` columns: each panel
    accumulates in vector registers through the whole reduction, and its
    weights, packed so that the panel is one contiguous run (``pack``), are
    read as one stream; the panels are shared among the threads.

    Accumulating a whole thread's block of columns in memory instead (the
    reduction outside a long vector loop) read the weights as thousands of
    short runs and stored every partial sum, well below the machine's
    bandwidth (docs/measurements.md)."""
    cols = register_tile(target, buf.dtype, choices)[1]
    name = lp.var.name
    k = apply_step(k, Split(name, cols))
    k = apply_step(k, CacheWrite(buf.name, f"{name}.o"))
    k = apply_step(k, DecomposeReduction(f"{name}.i"))
    k = apply_step(k, Reorder(tuple(r.var.name for r in rs) + (f"{name}.i",)))
    for suffix in ("", ".init", ".wb"):
        k = apply_step(k, Simd(f"{name}.i{suffix}"))
    return k


def _split_columns_over_threads(k: Kernel, lp: For, rs, threads: int, target) -> Kernel:
    """A matrix-vector product (one row of outputs, the reduction outside the
    columns): give each thread an equal block of columns, outside the
    reduction, so that both cores stream the weights (batch-1 classifiers)."""
    n = lp.extent
    lanes = target.vector_lanes(dtypes.float32)
    work = n * math.prod(r.extent for r in rs)
    if threads < 2 or n % threads or (n // threads) % lanes or work < MIN_PARALLEL_WORK:
        return k
    name = lp.var.name
    k = apply_step(k, Split(name, n // threads))
    k = apply_step(k, Reorder((f"{name}.o",) + tuple(r.var.name for r in rs)))
    k = apply_step(k, Parallel(f"{name}.o"))
    return apply_step(k, Vectorize(f"{name}.i"))


def _right_operand(k, rname: str, out) -> str | None:
    """The buffer that the reduction ``rname`` reads moving with the column
    loop (a matmul's right operand), if it is a plain 2-D load."""
    rloop = find_loop(k.body, rname)
    _, update = _update(rloop)
    loads = [n for n in ex.walk(update.value) if isinstance(n, ex.Load) and n.tensor is not out]
    moving = [ld for ld in loads if flat_stride(ld, rloop.var) not in (0, 1)]
    return moving[0].tensor.name if len(moving) == 1 and len(moving[0].indices) == 2 else None


def cache_blocks(target, chain, rows_axis, rs, dtype, threads: int = 1, cols: int | None = None
                 ) -> tuple[int, int] | None:
    """(kc, nc): reduction and column blocks for a matrix product whose right
    operand does not fit in half the L2 cache, so that a kc x nc slice of it
    does and stays there while every row block passes over it; None when the
    operand fits already, or no block sizes divide the extents."""
    if len(chain) != 2 or len(rs) != 1 or chain[0].var is not rows_axis:
        return None
    K, N = rs[0].extent, chain[1].extent
    # The slice is copied to the stack of each thread: at most 512 KiB of it.
    l2 = min(target.l2_bytes or 1 << 20, 1 << 20)
    if K * N * dtype.itemsize <= l2 // 2:
        return None
    cols = cols or register_tile(target, dtype)[1]
    kc = next((c for c in (256, 384, 192, 512, 128) if K % c == 0), None)
    # Column blocks are what the threads share out: at least one per thread.
    nc = next((c for c in (1024, 768, 512, 384, 256, 128) if N % c == 0 and c % cols == 0 and N // c >= threads
               and kc is not None and kc * c * dtype.itemsize <= l2 // 2), None)
    return None if kc is None or nc is None else (kc, nc)


def _cache_blocked_tiles(k, chain, rloop, buf, blocks, tile: tuple[int, int]) -> Kernel:
    """Register tiles inside cache blocks: for each nc-wide column block and
    kc-deep reduction block, every row block's tiles accumulate onto the
    results of the previous reduction block (copied into the tile first)."""
    kc, nc = blocks
    ai, aj, r = chain[0].var.name, chain[1].var.name, rloop.var.name
    k = apply_step(k, DecomposeReduction(ai))
    k = apply_step(k, Split(r, kc))
    k = apply_step(k, Split(aj, nc))
    k = apply_step(k, Reorder((f"{aj}.o", f"{r}.o", ai, f"{aj}.i", f"{r}.i")))
    # The kc x nc slice of the right operand, copied once per block into rows
    # padded off the cache-set stride: the tiles then read it from L1/L2.
    right = _right_operand(k, f"{r}.i", buf)
    if right is not None:
        try:
            k = apply_step(k, CacheRead(right, f"{r}.o"))
        except ScheduleError:  # the operand is also read another way (x @ x): no copy, same tiles
            pass
    rows_tile, cols_tile = tile
    row_loops = [ai]
    if chain[0].extent > rows_tile:
        k = apply_step(k, Split(ai, rows_tile))
        row_loops = [f"{ai}.i"] + ([f"{ai}.t"] if chain[0].extent % rows_tile else [])
    for rows in row_loops:
        cols = _only_child_loop(k, rows)
        k = apply_step(k, Reorder((cols, rows)))
        k = _column_tiles(k, cols, rows, cols_tile)
    return k


def _term(update: Store):
    v = update.value
    if not isinstance(v, ex.BinOp):
        return None
    for own, other in ((v.a, v.b), (v.b, v.a)):
        if isinstance(own, ex.Load) and own.tensor is update.buffer:
            return other
    return None


def _contiguous(term, update, prev: For, inner: For) -> bool:
    """Do all accesses walk ``prev`` and ``inner`` as one contiguous run?"""
    probes = [n for n in ex.walk(term) if isinstance(n, ex.Load)] + [ex.Load(update.buffer, update.indices)]
    for ld in probes:
        s_in, s_prev = flat_stride(ld, inner.var), flat_stride(ld, prev.var)
        if s_in is None or s_prev is None or s_prev != s_in * inner.extent:
            return False
    return True


def _chain_below(k: Kernel, name: str) -> list[For]:
    """The perfect chain of spatial loops starting at loop ``name``."""
    out, cur = [], find_loop(k.body, name)
    while isinstance(cur, For) and not cur.is_reduction:
        out.append(cur)
        cur = cur.body
    return out


def dividing_rows(n: int, most: int) -> int:
    """Rows of a register tile over ``n`` rows: all of them up to ``most``,
    else a divisor of ``n`` from ``most`` down to 6 (no remainder tile: 14
    rows as two tiles of 7, not one of 8 and one of 6, each tile its own
    unrolled copy of the loop body), else ``most``."""
    if n <= most:
        return n
    return next((r for r in range(most, min(most, 6) - 1, -1) if n % r == 0), most)


def _register_tiles(k, chain, rows_axis, buf, tile: tuple[int, int], lanes_strided=False) -> Kernel:
    """Tiles over the rows axis and the last (vector) axis of ``chain``
    (``tile``: rows and columns; ``lanes_strided``: the lanes are far apart
    in the output, see :func:`_tile`)."""
    rows_tile, cols_tile = tile
    ai = chain[[lp.var for lp in chain].index(rows_axis)]
    row_loops = [ai.var.name]
    if ai.extent > rows_tile:
        k = apply_step(k, Split(ai.var.name, rows_tile))
        row_loops = [f"{ai.var.name}.i"] + ([f"{ai.var.name}.t"] if ai.extent % rows_tile else [])
    for rows in row_loops:
        below = [lp.var.name for lp in _chain_below(k, rows)]
        if len(below) > 1:  # the rows loop goes innermost of the spatial loops
            k = apply_step(k, Reorder(tuple(below[1:]) + (rows,)))
        k = _column_tiles(k, below[-1], rows, cols_tile, lanes_strided)
    return k


def _column_tiles(k, cols: str, rows: str, width: int, lanes_strided: bool = False) -> Kernel:
    """Split the column loop ``cols`` (with ``rows`` directly inside) into
    blocks of ``width`` lanes, and make a register tile of every block. The
    remainder is one more tile of ``width`` lanes that ends at the last
    column, recomputing a few columns of the tile before it (``widen``), when
    its body may run twice; else tiles of power-of-two widths."""
    J = find_loop(k.body, cols).extent
    while width > J:  # vector widths stay powers of two: LLVM splits other widths into small pieces
        width //= 2
    # Even one column is a (one-lane) vector loop: every tile then accumulates
    # in the same order, where a scalar one would be reassociated by LLVM.
    # A 111-wide row in tiles of 32: three tiles and one of 32 over columns
    # 79-110 (a widened tail), not tiles of 8, 4, 2 and 1 lanes, which cost
    # as many instructions as full ones; unless the tiles add onto earlier
    # results (cache blocks), which a column computed twice would add twice.
    widen = J % width != 0
    try:
        k = apply_step(k, Split(cols, width, "widen" if widen else "exact"))
    except ScheduleError:  # split refuses a widened remainder that would change results
        k, widen = apply_step(k, Split(cols, width)), False
    k = _tile(k, f"{cols}.o", f"{cols}.i", _only_child_loop(k, f"{cols}.i"), lanes_strided)
    if J % width:
        tail = f"{cols}.t"
        if widen:  # one more full tile: its block loop (one iteration) holds the lanes
            k = apply_step(k, Split(tail, width))
            return _tile(k, f"{tail}.o", f"{tail}.i", _only_child_loop(k, f"{tail}.i"), lanes_strided)
        return _column_tiles(k, tail, _only_child_loop(k, tail), width // 2, lanes_strided)
    return k


def _only_child_loop(k, name) -> str:
    body = find_loop(k.body, name).body
    if not isinstance(body, For):
        raise ScheduleError(f"kernel {k.name}: expected one loop inside {name}")
    return body.var.name


def _tile(k, block: str, lanes: str, rows: str, lanes_strided: bool = False) -> Kernel:
    """One register tile: accumulators for ``rows`` x ``lanes`` under loop ``block``.

    With ``lanes_strided`` (channels as lanes, each a plane apart in the
    output) the write-back is a plain loop, lanes outside and rows inside:
    as vectors it would be one scalar store per lane and row, unrolled into
    much code, for a copy that runs once per tile."""
    buf_name = _written_buffer(find_loop(k.body, rows))
    k = apply_step(k, Reorder((rows, lanes)))
    k = apply_step(k, CacheWrite(buf_name, block))
    if split_init(find_loop(k.body, rows)) is not None:
        k = apply_step(k, DecomposeReduction(rows))
        copies = ("", ".init", ".wb")
    else:  # accumulating onto an earlier reduction block: the tile was copied in
        copies = ("", ".rd", ".wb")
    rs = _update(_reduction_below(find_loop(k.body, rows)))[0]
    k = apply_step(k, Reorder(tuple(r.var.name for r in rs) + (rows, lanes)))
    for suffix in copies:
        if suffix == ".wb" and lanes_strided:
            k = apply_step(k, Reorder((lanes + suffix, rows + suffix)))
            continue
        k = apply_step(k, Unroll(rows + suffix))
        k = apply_step(k, Simd(lanes + suffix))
    return k


def _written_buffer(lp: For) -> str:
    return next(s.buffer.name for s in walk_stmts(lp) if isinstance(s, Store))


def _reduction_below(lp: For) -> For:
    return next(s for s in walk_stmts(lp) if isinstance(s, For) and s.is_reduction)


def _inline_epilogue(k: Kernel, buf) -> Kernel:
    """Apply an in-place elementwise consumer of ``buf`` as the tiles are written."""
    for lp in loops(k.body):
        cur = lp
        while isinstance(cur, For) and cur.kind == "serial" and not cur.is_reduction:
            cur = cur.body
        if isinstance(cur, Store) and cur.buffer is buf and any(
                isinstance(n, ex.Load) and n.tensor is buf for n in ex.walk(cur.value)):
            try:
                return apply_step(k, ReverseComputeInline(lp.var.name))
            except ScheduleError:
                return k
    return k


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
                if 0 < at < lp.extent:
                    yield at


ORDER_TESTS = ("lt", "le", "gt", "ge")
FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}


# -- threads and vectors -----------------------------------------------------------

def iterations(s: Stmt) -> int:
    """Rough count of innermost iterations under ``s``."""
    if isinstance(s, For):
        return s.extent * max(1, iterations(s.body))
    kids = stmt_children(s)
    return sum(iterations(c) for c in kids) if kids else 1


def _innermost_loops(s: Stmt) -> list[For]:
    out = []
    if isinstance(s, For) and not any(isinstance(c, For) for c in walk_stmts(s.body)):
        return [s]
    for c in stmt_children(s):
        out.extend(_innermost_loops(c))
    return out


def _parallelize(k: Kernel, num_threads: int) -> Kernel:
    """Fuse outer spatial loops until there is enough parallelism, run the
    outermost loop in parallel when the nest has enough work, and vectorize
    every innermost serial loop."""
    for nest in top_statements(k.body):
        if not isinstance(nest, For) or nest.kind != "serial":
            continue
        name, extent, inner = nest.var.name, nest.extent, nest.body
        fused = {name}
        while (num_threads > 1 and extent < 4 * num_threads and isinstance(inner, For)
               and inner.kind == "serial" and not inner.is_reduction and not nest.is_reduction):
            k = apply_step(k, Fuse(name, inner.var.name))
            name = f"{name}_{inner.var.name}"
            fused.add(inner.var.name)
            extent *= inner.extent
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
            if loop.extent >= 4:
                k = apply_step(k, Vectorize(loop.var.name))
    return k
