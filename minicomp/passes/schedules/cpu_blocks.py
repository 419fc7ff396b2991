"""Cache blocks for matrix products whose right operand does not fit in half the L2 cache: a
``kc x nc`` slice copied once per block, with the register tiles inside."""

from __future__ import annotations

from minicomp.ir import expr as ex
from minicomp.ir.loops import (
    Kernel,
)
from minicomp.passes.schedules.analysis import (
    flat_stride,
)
from minicomp.passes.schedules.cpu_choices import register_tile
from minicomp.passes.schedules.cpu_tiles import column_tiles, row_tiles
from minicomp.passes.schedules.nests import only_child_loop, reduction_update
from minicomp.passes.schedules.primitives import (
    CacheRead,
    DecomposeReduction,
    Pack,
    Reorder,
    Split,
    apply_step,
)
from minicomp.passes.schedules.step import ScheduleError, find_loop


def _right_operand(k, rname: str, out) -> str | None:
    """The buffer that the reduction ``rname`` reads moving with the column
    loop (a matmul's right operand), if it is a plain 2-D load."""
    rloop = find_loop(k.body, rname)
    _, update = reduction_update(rloop)
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
    if not (isinstance(K, int) and isinstance(N, int)):
        return None  # blocks that divide a count known only at the call: not yet
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


def cache_blocked_tiles(k, chain, rloop, buf, blocks, tile: tuple[int, int], constants=frozenset()) -> Kernel:
    """Register tiles inside cache blocks: for each nc-wide column block and
    kc-deep reduction block, every row block's tiles accumulate onto the
    results of the previous reduction block (copied into the tile first).

    A constant right operand is packed into panels of a tile's columns once, at compile time
    (``pack``), instead of copied per block at every call: a block's panels are then runs of
    kc x cols that the tiles read in order, as they arrive from memory."""
    kc, nc = blocks
    ai, aj, r = chain[0].var.name, chain[1].var.name, rloop.var.name
    k = apply_step(k, DecomposeReduction(ai))
    k = apply_step(k, Split(r, kc))
    k = apply_step(k, Split(aj, nc))
    k = apply_step(k, Reorder((f"{aj}.o", f"{r}.o", ai, f"{aj}.i", f"{r}.i")))
    # The kc x nc slice of the right operand, copied once per block into rows
    # padded off the cache-set stride: the tiles then read it from L1/L2.
    right = _right_operand(k, f"{r}.i", buf)
    packed = right is not None and right in constants
    if right is not None and not packed:
        try:
            k = apply_step(k, CacheRead(right, f"{r}.o"))
        except ScheduleError:  # the operand is also read another way (x @ x): no copy, same tiles
            pass
    rows_tile, cols_tile = tile
    k, row_loops = row_tiles(k, ai, chain[0].extent, rows_tile)
    for rows in row_loops:
        cols = only_child_loop(k, rows)
        k = apply_step(k, Reorder((cols, rows)))
        k = column_tiles(k, cols, rows, cols_tile)
    return apply_step(k, Pack(right, 1, cols_tile)) if packed else k
