"""Matrix-vector products on a CPU: panels of columns accumulated in vector registers over the
whole reduction, with their constant weights packed, or blocks of columns shared among the threads."""

from __future__ import annotations

import math

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.dims import upper
from minicomp.ir.loops import (
    For,
    Kernel,
)
from minicomp.passes.schedules.analysis import (
    flat_stride,
)
from minicomp.passes.schedules.cpu_choices import DEFAULT_CHOICES, MIN_PARALLEL_WORK, Choices, register_tile
from minicomp.passes.schedules.nests import find_nest, reduction_update
from minicomp.passes.schedules.primitives import (
    CacheWrite,
    DecomposeReduction,
    Parallel,
    Reorder,
    Simd,
    Split,
    Vectorize,
    apply_step,
)
from minicomp.passes.schedules.step import find_loop


def panel_operand(k: Kernel, root: str, constants) -> str | None:
    """A constant right operand ``B[r, j]`` of the reduction nest at ``root``
    (j its last spatial loop, r a reduction loop), to be packed into panels
    that the register tiles read contiguously; None if there is none."""
    chain, _, rloop = find_nest(k.body, root)
    rs, update = reduction_update(rloop)
    if update is None or upper(chain[-1].extent) < 8:
        return None
    rvars = {id(r.var) for r in rs}
    for n in ex.walk(update.value):
        if (isinstance(n, ex.Load) and n.tensor.name in constants and len(n.indices) == 2
                and n.indices[1] is chain[-1].var and isinstance(n.indices[0], ex.Var)
                and id(n.indices[0]) in rvars and len(n.tensor.shape) == 2):
            return n.tensor.name
    return None


def matvec_panels_fit(k: Kernel, lp: For, rs, buf, constants, target, choices: Choices = DEFAULT_CHOICES) -> bool:
    """Is this a matrix-vector product ``out[j] += x[r] * B[r, j]`` with a
    constant ``B`` and whole tiles of columns (see :func:`matvec_panels`)?"""
    cols = register_tile(target, buf.dtype, choices)[1]
    if not isinstance(lp.extent, int) or lp.extent % cols or len(rs) != 1 or lp.extent < 2 * cols:
        return False
    if panel_operand(k, lp.var.name, constants) is None:
        return False
    _, update = reduction_update(find_loop(k.body, rs[0].var.name))
    loads = [n for n in ex.walk(update.value) if isinstance(n, ex.Load) and n.tensor is not buf]
    return sum(1 for ld in loads if flat_stride(ld, lp.var) != 0) == 1  # x[r] does not move with the column


def panel_width(columns: int, cols: int) -> int:
    """Columns a panel accumulates: twice a register tile's where the columns make at least 4 such
    panels. Each step of the reduction adds one product into each of the panel's vector registers,
    and the additions into one register wait for each other (the FMA units' latency): weights read
    faster than from memory (in cache, or int8 weights, a quarter of the bytes) find the 2 registers
    of one tile too few."""
    wide = 2 * cols
    return wide if wide <= 64 and columns % wide == 0 and columns // wide >= 4 else cols


def matvec_panels(k: Kernel, lp: For, rs, buf, target, choices: Choices = DEFAULT_CHOICES) -> Kernel:
    """A matrix-vector product over panels of ``cols`` columns: each panel
    accumulates in vector registers through the whole reduction, and its
    weights, packed so that the panel is one contiguous run (``pack``), are
    read as one stream; the panels are shared among the threads.

    Accumulating a whole thread's block of columns in memory instead (the
    reduction outside a long vector loop) read the weights as thousands of
    short runs and stored every partial sum, well below the machine's
    bandwidth (docs/measurements.md)."""
    cols = panel_width(lp.extent, register_tile(target, buf.dtype, choices)[1])
    name = lp.var.name
    k = apply_step(k, Split(name, cols))
    k = apply_step(k, CacheWrite(buf.name, f"{name}.o"))
    k = apply_step(k, DecomposeReduction(f"{name}.i"))
    k = apply_step(k, Reorder(tuple(r.var.name for r in rs) + (f"{name}.i",)))
    for suffix in ("", ".init", ".wb"):
        k = apply_step(k, Simd(f"{name}.i{suffix}"))
    return k


def split_columns_over_threads(k: Kernel, lp: For, rs, threads: int, target) -> Kernel:
    """A matrix-vector product (one row of outputs, the reduction outside the
    columns): give each thread an equal block of columns, outside the
    reduction, so that both cores stream the weights (batch-1 classifiers)."""
    n = lp.extent
    if not isinstance(n, int):
        return k  # (equal blocks of a count known only at the call: not yet)
    lanes = target.vector_lanes(dtypes.float32)
    work = n * math.prod(upper(r.extent) for r in rs)
    if threads < 2 or n % threads or (n // threads) % lanes or work < MIN_PARALLEL_WORK:
        return k
    name = lp.var.name
    k = apply_step(k, Split(name, n // threads))
    k = apply_step(k, Reorder((f"{name}.o",) + tuple(r.var.name for r in rs)))
    k = apply_step(k, Parallel(f"{name}.o"))
    return apply_step(k, Vectorize(f"{name}.i"))
