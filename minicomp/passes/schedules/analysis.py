"""Access analysis shared by lowering (which loops to share across stages)
and the schedules (loop order, register tiles): strides of loads along a
loop variable, and which axes a multiply-accumulate can tile over.

Everything here reads expressions only; nothing depends on a target.
"""

from __future__ import annotations

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.dims import upper
from minicomp.ir.loops import SIMD_CALLS, For, Store, only_stores, walk_stmts

# Per-row intermediates up to this size can live on the stack of their row
# loop (one copy per thread): lowering materializes a shared transcendental
# stage only when its row fits, and the CPU schedule localizes such rows.
LOCAL_ROW_BYTES = 64 * 1024


def flat_stride(load: ex.Load, v: ex.Var) -> int | None:
    """Elements moved in memory per step of ``v``, or None if not affine."""
    flat = ex.flat_index(load.indices, load.tensor.shape)
    aff = ex._affine(flat)  # over the whole address, so x // d and x % d pairs recombine
    if aff is None:
        return None if v in ex.free_vars(flat) else 0
    terms, _ = aff
    total = 0
    for t, c in terms.items():
        if t is v:
            total += c
        elif v in ex.free_vars(t):
            return None
    return total


def aligned_unit_stride(load: ex.Load, v: ex.Var, lanes: int) -> bool | None:
    """True if ``load`` moves one element per step of ``v`` and starts on a multiple of ``lanes`` elements
    whenever ``v`` does; False if it does not move along ``v``; None otherwise.

    The flat index is read as a sum of terms times constants: every term but ``v`` itself (a variable,
    or an integer expression such as ``t // 24 % 4`` that does not hold ``v``) must step by a multiple of
    ``lanes``."""
    aff = ex._affine(ex.flat_index(load.indices, load.tensor.shape))
    if aff is None:
        return None
    terms, const = aff
    coeff = sum(c for t, c in terms.items() if t is v)
    others = [(t, c) for t, c in terms.items() if t is not v]
    if coeff == 0 and not any(v in ex.free_vars(t) for t, _ in others):
        return False
    if coeff != 1 or const % lanes or any(c % lanes or v in ex.free_vars(t) for t, c in others):
        return None
    return True


def vector_lanes(loop: For, lanes: int, dtype=dtypes.float32) -> bool:
    """Can ``loop`` (of ``lanes`` iterations from 0) run as one vector of ``lanes`` elements of ``dtype``
    per statement: only stores, each writing ``lanes`` consecutive elements from a multiple of ``lanes``,
    and every load that moves with the loop reading so too (a load that does not move is one value for
    every lane)? What the GPU schedule asks before it makes a ``vectorized`` loop, and the CUDA renderer
    before it writes one as float4 loads and stores."""
    if loop.extent != lanes or loop.start or not only_stores(loop.body):
        return False
    v = loop.var
    for st in walk_stmts(loop.body):
        if not isinstance(st, Store):
            continue
        if st.buffer.dtype != dtype or aligned_unit_stride(ex.Load(st.buffer, st.indices), v, lanes) is not True:
            return False
        for n in ex.walk(st.value):
            if isinstance(n, ex.Load):
                moves = aligned_unit_stride(n, v, lanes)
                if moves is None or moves and n.tensor.dtype != dtype:
                    return False
    return True


def access_cost(e: ex.Expr, v: ex.Var) -> int:
    """Rough cost of the loads in ``e`` if ``v`` is the innermost loop: free when
    they do not move, 1 for unit stride, 2 for short strides (same cache
    lines), 8 for long strides or indices that are not affine."""
    cost = 0
    for n in ex.walk(e):
        if isinstance(n, ex.Load):
            stride = flat_stride(n, v)
            if stride is None:
                cost += 8
            elif stride:
                cost += 1 if abs(stride) == 1 else 2 if abs(stride) <= 4 else 8
    return cost


def tileable(body: ex.Expr, dtype) -> bool:
    """Is ``body`` (a reduction's term) plain float arithmetic that vector lanes can run?"""
    if dtype not in (dtypes.float32, dtypes.float64):
        return False
    for n in ex.walk(body):
        if isinstance(n, ex.Call) and n.fn not in SIMD_CALLS:
            return False
        if isinstance(n, ex.Cast) or (isinstance(n, ex.BinOp) and n.op in ("div", "pow")):
            return False
        if isinstance(n, ex.Load) and n.dtype != dtype:
            return False
    return True


def tile_axis(body: ex.Expr, dtype, inner: ex.Var, axes) -> ex.Var | None:
    """The second axis of a register tile for a reduction of ``body`` with
    ``inner`` as the vector axis: among ``axes`` (pairs of Var and extent),
    the one most moving loads do not depend on (the rows of a matmul), or
    None when the term is not a plain multiply-accumulate over unit-stride,
    short-strided or invariant loads."""
    if not tileable(body, dtype):
        return None
    loads = [n for n in ex.walk(body) if isinstance(n, ex.Load)]
    if any(flat_stride(ld, inner) not in (0, 1, 2, 3, 4) for ld in loads):
        return None  # lanes must load as vectors (short strides load wide and shuffle)
    moving = [ld for ld in loads if flat_stride(ld, inner) != 0]
    broadcast = [ld for ld in loads if flat_stride(ld, inner) == 0]
    best, best_score = None, (0, 0.0)
    for a, n in axes:
        if a is inner or upper(n) < 2:  # a symbolic extent is judged at its largest
            continue
        # On a tie a static axis wins over a symbolic one (a batch of images): rows of a count
        # known only at the call need remainder tiles of every smaller size, which is more code.
        shared = sum(1 for ld in moving if flat_stride(ld, a) == 0) + (0.5 if isinstance(n, int) else 0)
        score = (shared, -_lines_per_row(broadcast, a))
        if score > best_score and shared >= 1:
            best, best_score = a, score
    return best


# Bytes of a cache line (64 on every x86 and on most ARM cores).
CACHE_LINE = 64


def _lines_per_row(loads, a: ex.Var) -> float:
    """The cache lines one more row along ``a`` adds for ``loads`` (the values a tile broadcasts to its
    lanes): a fraction where neighbouring rows share a line. Between axes that share the moving loads
    alike, the rows go where this is least: a 1x1 convolution of a plain (N, C, H, W) input takes its
    rows along W, whose pixels are neighbours, not along H, where each row is another line for every input
    channel (EfficientNet's 136-channel layers: the tile's lines outgrew L1 and it ran at half speed)."""
    total = 0.0
    for ld in loads:
        stride = flat_stride(ld, a)
        total += 1.0 if stride is None else min(1.0, abs(stride) * ld.dtype.itemsize / CACHE_LINE)
    return total


# A reduction at most this deep (a pooling or depthwise window: 9 for 3x3,
# 49 for 7x7) is too short to be worth a loop of its own innermost.
WINDOW_DEPTH = 64


def window_axis(body: ex.Expr, dtype, inner: ex.Var, axes, depth: int) -> ex.Var | None:
    """The rows of a register tile for a shallow reduction (``depth`` up to
    :data:`WINDOW_DEPTH`: pooling, depthwise convolution) whose loads all walk
    ``inner`` with short strides, when :func:`tile_axis` finds none: the
    spatial axis just outside ``inner`` (neighbouring output rows, each its
    own accumulators), or None.

    Such a window reads a different input for every output, so no axis
    shares loads; but with ``inner`` as the lanes and a few rows of
    independent accumulators, one max or multiply-add covers 16 outputs
    where the reduction innermost made one scalar at a time."""
    if depth > WINDOW_DEPTH or not tileable(body, dtype):
        return None
    loads = [n for n in ex.walk(body) if isinstance(n, ex.Load)]
    if any(flat_stride(ld, inner) not in (0, 1, 2, 3, 4) for ld in loads):
        return None
    outer = [a for a, n in axes if a is not inner and upper(n) > 1]
    return outer[-1] if outer else None


def rows_axis(body: ex.Expr, dtype, inner: ex.Var, axes, raxes) -> ex.Var | None:
    """The rows of a register tile with ``inner`` as its lanes, for a
    reduction of ``body`` over ``raxes`` (pairs of Var and extent): the
    :func:`tile_axis` of a multiply-accumulate, else the :func:`window_axis`
    of a shallow window, else None."""
    depth = 1
    for _, n in raxes:
        depth *= upper(n)
    return tile_axis(body, dtype, inner, axes) or window_axis(body, dtype, inner, axes, depth)


def group_axis(body: ex.Expr, axes) -> tuple[ex.Var, int] | None:
    """An axis ``v`` of ``axes`` (pairs of variable and extent) that ``body``
    reads as ``v // g``, with ``g`` dividing its extent: a grouped
    convolution's output channel, whose input channel block is ``c // g``.
    Such an axis is the rows of a register tile only once split by ``g``
    (within a group the input no longer moves with it): ``(v, g)`` or None."""
    extents = {id(v): n for v, n in axes}
    for n in ex.walk(body):
        if (isinstance(n, ex.BinOp) and n.op == "floordiv" and id(n.a) in extents and isinstance(n.b, ex.Const)
                and 1 < n.b.value < extents[id(n.a)] and extents[id(n.a)] % n.b.value == 0):
            return n.a, int(n.b.value)
    return None


def spatial_innermost(body: ex.Expr, dtype, axes, raxes) -> ex.Var | None:
    """For a reduction of ``body`` over ``raxes`` into an element picked by
    ``axes`` (pairs of Var and extent): the spatial axis to run innermost,
    accumulating into memory (as matmul's i-k-j order), or None to keep the
    reduction innermost with a scalar accumulator."""
    inner = next((a for a, n in reversed(list(axes)) if upper(n) > 1), None)
    last_r = next((v for v, n in reversed(list(raxes)) if upper(n) > 1), None)
    if inner is None:
        return None
    if last_r is None or rows_axis(body, dtype, inner, axes, raxes) is not None:
        return inner  # nothing to reduce innermost, or a register tile fits
    # The accumulator moves with the spatial axis (one unit-stride access).
    cost_spatial = access_cost(body, inner) + 1
    cost_reduce = access_cost(body, last_r)
    if cost_spatial != cost_reduce:
        return inner if cost_spatial < cost_reduce else None
    extents = dict((id(v), upper(n)) for v, n in list(axes) + list(raxes))
    return inner if extents[id(inner)] > extents[id(last_r)] else None
