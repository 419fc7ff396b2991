"""Register tiles of a reduction: rows x vectors of accumulators held through the reduction, with
the epilogue folded into their stores; for convolutions, output channels as the vector lanes."""

from __future__ import annotations

from dataclasses import replace

from minicomp.ir import expr as ex
from minicomp.ir.dims import lower, upper
from minicomp.ir.loops import (
    For,
    Kernel,
    Store,
    loops,
)
from minicomp.passes.schedules.analysis import (
    flat_stride,
    group_axis,
)
from minicomp.passes.schedules.buffer_steps import split_init
from minicomp.passes.schedules.cpu_choices import DEFAULT_CHOICES, Choices, register_tile
from minicomp.passes.schedules.nests import (
    chain_below,
    only_child_loop,
    reduction_below,
    reduction_update,
    written_buffer,
)
from minicomp.passes.schedules.primitives import (
    CacheWrite,
    DecomposeReduction,
    Fuse,
    Pack,
    Partition,
    Reorder,
    ReverseComputeInline,
    Simd,
    Split,
    Unroll,
    apply_step,
)
from minicomp.passes.schedules.step import ScheduleError, find_loop

# A window's tile, 4 rows of one vector: each row loads its own inputs
# (nothing is shared between rows, unlike a product's), so more rows add code
# and few cycles; one vector's width keeps the remainders of short rows (7,
# 14, 28) to a few narrow tiles.
WINDOW_ROWS = 4


def channel_lanes(term, chain: list[For], inner, depth: int, constants, target, dtype, force: bool = False):
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
    extents = {id(lp.var): upper(lp.extent) for lp in chain}
    if extents[id(inner)] >= 4 * lanes and depth < 256 and not force:
        return None
    loads = [n for n in ex.walk(term) if isinstance(n, ex.Load)]
    for lp in chain:
        if lp.var is inner or not isinstance(lp.extent, int) or lp.extent < 2 * lanes:
            continue  # (lanes over a count known only at the call would need a remainder per call)
        moving = [ld for ld in loads if flat_stride(ld, lp.var) != 0]
        if len(moving) != 1 or moving[0].tensor.name not in constants or flat_stride(moving[0], inner) != 0:
            continue
        weights = moving[0]
        axis = [k for k, i in enumerate(weights.indices) if i is lp.var]
        if len(axis) == 1 and sum(1 for i in weights.indices for v in ex.free_vars(i) if v is lp.var) == 1:
            return lp, weights.tensor.name, axis[0]
    return None


def channel_lane_tiles(k, chain: list[For], channel: For, weights: str, axis: int, buf, target,
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
        k = _lane_tiles(k, chain_below(k, channel.var.name), channel.var.name, buf, target, True, choices)
        k = _lane_tiles(k, chain_below(k, rest.var.name), rest.var.name, buf, target, False, choices)
    else:
        k = _lane_tiles(k, chain, channel.var.name, buf, target, outer, choices)
    return apply_step(k, Pack(weights, axis, cols_tile))


def _lane_tiles(k, chain: list[For], channel: str, buf, target, outer: bool,
                choices: Choices = DEFAULT_CHOICES) -> Kernel:
    """The tiles of :func:`channel_lane_tiles` for one nest: the loop
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
    new_chain = chain_below(k, first)
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
        new_chain = chain_below(k, blocks)
        notes = ["channel blocks outermost: the weights outweigh the inputs"]
        k = replace(k, notes=k.notes + notes)
    return register_tiles(k, new_chain, rows.var, buf, (rows_tile, cols_tile), lanes_strided=True)


def _weights_outweigh_inputs(k: Kernel, weights: str, out) -> bool:
    """Are the ``weights`` more bytes than the other buffers of the kernel
    (but ``out``, the one the tiles write)?"""
    inputs = [b for b in k.inputs + k.workspace if b.name not in (weights, out.name)]
    w = next(b for b in k.inputs if b.name == weights)
    return w.nbytes > sum(b.nbytes for b in inputs)


def split_groups(k: Kernel, chain: list[For], update: Store) -> tuple[Kernel, str] | None:
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


def dividing_rows(n: int, most: int) -> int:
    """Rows of a register tile over ``n`` rows: all of them up to ``most``,
    else a divisor of ``n`` from ``most`` down to 6 (no remainder tile: 14
    rows as two tiles of 7, not one of 8 and one of 6, each tile its own
    unrolled copy of the loop body), else ``most``."""
    if not isinstance(n, int):
        return most  # a symbolic count: whole tiles, and remainder tiles of half, a quarter...
    if n <= most:
        return n
    return next((r for r in range(most, min(most, 6) - 1, -1) if n % r == 0), most)


def register_tiles(k, chain, rows_axis, buf, tile: tuple[int, int], lanes_strided=False) -> Kernel:
    """Tiles over the rows axis and the last (vector) axis of ``chain``
    (``tile``: rows and columns; ``lanes_strided``: the lanes are far apart
    in the output, see :func:`_tile`)."""
    rows_tile, cols_tile = tile
    ai = chain[[lp.var for lp in chain].index(rows_axis)]
    k, row_loops = row_tiles(k, ai.var.name, ai.extent, rows_tile)
    for rows in row_loops:
        below = [lp.var.name for lp in chain_below(k, rows)]
        if len(below) > 1:  # the rows loop goes innermost of the spatial loops
            k = apply_step(k, Reorder(tuple(below[1:]) + (rows,)))
        k = column_tiles(k, below[-1], rows, cols_tile, lanes_strided)
    return k


def row_tiles(k, rows: str, n, rows_tile: int) -> tuple[Kernel, list[str]]:
    """Split the loop ``rows`` (``n`` iterations) into the row loops of register tiles: (kernel, their
    names). ``n`` rows up to ``rows_tile``: one tile; more: tiles of ``rows_tile`` and one of the
    remainder. A symbolic ``n`` (mc.Dim) has its remainder only at the call: when the range holds at
    least one tile, tiles of ``rows_tile`` and, when rows are left, one more that ends at the last
    row (``split(..., widen)``); else tiles of ``rows_tile`` and one tile each of half, a quarter...
    of it, which runs when the remainder holds it (7 rows are 4 + 2 + 1). (A widened tile over a
    range from fewer rows than a tile would compute its last row again in the spare rows: at one row
    of a 784-256 product, 35 us against 19, AMD EPYC Zen 4.) Every tile is unrolled code of a
    static size."""
    if isinstance(n, int):
        if n <= rows_tile:
            return k, [rows]
        k = apply_step(k, Split(rows, rows_tile))
        return k, [f"{rows}.i"] + ([f"{rows}.t"] if n % rows_tile else [])
    if lower(n) >= rows_tile:  # whole tiles, and one more that ends at the last row (recomputing a few)
        try:
            return apply_step(k, Split(rows, rows_tile, "widen")), [f"{rows}.i", f"{rows}.t"]
        except ScheduleError:  # its body adds onto what it wrote: rows computed twice would count twice
            pass
    names, tail, width = [], rows, rows_tile // 2
    if upper(n) >= rows_tile:
        k = apply_step(k, Split(rows, rows_tile))
        names, tail = [f"{rows}.i"], f"{rows}.t"
    while width >= 1:
        lp = find_loop(k.body, tail)
        if lp is None or upper(lp.extent) < width:
            width //= 2
            continue
        k = apply_step(k, Split(tail, width))
        names.append(f"{tail}.i")
        tail, width = f"{tail}.t", width // 2
    return k, names


def column_tiles(k, cols: str, rows: str, width: int, lanes_strided: bool = False) -> Kernel:
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
    k = _tile(k, f"{cols}.o", f"{cols}.i", only_child_loop(k, f"{cols}.i"), lanes_strided)
    if J % width:
        tail = f"{cols}.t"
        if widen:  # one more full tile: its block loop (one iteration) holds the lanes
            k = apply_step(k, Split(tail, width))
            return _tile(k, f"{tail}.o", f"{tail}.i", only_child_loop(k, f"{tail}.i"), lanes_strided)
        return column_tiles(k, tail, only_child_loop(k, tail), width // 2, lanes_strided)
    return k


def _tile(k, block: str, lanes: str, rows: str, lanes_strided: bool = False) -> Kernel:
    """One register tile: accumulators for ``rows`` x ``lanes`` under loop ``block``.

    With ``lanes_strided`` (channels as lanes, each a plane apart in the
    output) the write-back is a plain loop, lanes outside and rows inside:
    as vectors it would be one scalar store per lane and row, unrolled into
    much code, for a copy that runs once per tile."""
    buf_name = written_buffer(find_loop(k.body, rows))
    k = apply_step(k, Reorder((rows, lanes)))
    k = apply_step(k, CacheWrite(buf_name, block))
    if split_init(find_loop(k.body, rows)) is not None:
        k = apply_step(k, DecomposeReduction(rows))
        copies = ("", ".init", ".wb")
    else:  # accumulating onto an earlier reduction block: the tile was copied in
        copies = ("", ".rd", ".wb")
    rs = reduction_update(reduction_below(find_loop(k.body, rows)))[0]
    k = apply_step(k, Reorder(tuple(r.var.name for r in rs) + (rows, lanes)))
    for suffix in copies:
        if suffix == ".wb" and lanes_strided:
            k = apply_step(k, Reorder((lanes + suffix, rows + suffix)))
            continue
        k = apply_step(k, Unroll(rows + suffix))
        k = apply_step(k, Simd(lanes + suffix))
    return k


def inline_epilogue(k: Kernel, buf) -> Kernel:
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
