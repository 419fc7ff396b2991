"""Reduction nests of a kernel and their parts, as the CPU schedule finds them: the chain of
spatial loops, the init store, the reduction loops and the update, the term it accumulates."""

from __future__ import annotations

from dataclasses import replace

from minicomp.ir import expr as ex
from minicomp.ir.loops import (
    For,
    Kernel,
    Seq,
    Stmt,
    Store,
    stmt_children,
    top_statements,
    walk_stmts,
)
from minicomp.passes.schedules.analysis import (
    flat_stride,
)
from minicomp.passes.schedules.step import ScheduleError, find_loop


def on_part(k: Kernel, root: str, fn):
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


def find_nest(body: Stmt, root: str):
    return next((n for n in reduction_nests(body) if n[0][0].var.name == root), None)


def reduction_update(rloop: For):
    """The reduction loops (a perfect chain) and the update store under them."""
    rs, cur = [], rloop
    while isinstance(cur, For) and cur.is_reduction:
        rs.append(cur)
        cur = cur.body
    return rs, cur if isinstance(cur, Store) else None


def accumulated_term(update: Store):
    v = update.value
    if not isinstance(v, ex.BinOp):
        return None
    for own, other in ((v.a, v.b), (v.b, v.a)):
        if isinstance(own, ex.Load) and own.tensor is update.buffer:
            return other
    return None


def fuse_keeps_contiguous(term, update, prev: For, inner: For) -> bool:
    """Do all accesses walk ``prev`` and ``inner`` as one contiguous run?"""
    probes = [n for n in ex.walk(term) if isinstance(n, ex.Load)] + [ex.Load(update.buffer, update.indices)]
    for ld in probes:
        s_in, s_prev = flat_stride(ld, inner.var), flat_stride(ld, prev.var)
        if s_in is None or s_prev is None or s_prev != s_in * inner.extent:
            return False
    return True


def chain_below(k: Kernel, name: str) -> list[For]:
    """The perfect chain of spatial loops starting at loop ``name``."""
    out, cur = [], find_loop(k.body, name)
    while isinstance(cur, For) and not cur.is_reduction:
        out.append(cur)
        cur = cur.body
    return out


def only_child_loop(k, name) -> str:
    body = find_loop(k.body, name).body
    if not isinstance(body, For):
        raise ScheduleError(f"kernel {k.name}: expected one loop inside {name}")
    return body.var.name


def written_buffer(lp: For) -> str:
    return next(s.buffer.name for s in walk_stmts(lp) if isinstance(s, Store))


def reduction_below(lp: For) -> For:
    return next(s for s in walk_stmts(lp) if isinstance(s, For) and s.is_reduction)
