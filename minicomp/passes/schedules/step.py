"""The base of schedule steps and the loop-IR tree helpers they share.

A :class:`Step` names loops of a kernel by their unique names and rewrites
the kernel; :class:`Names` derives new unique loop names; the helpers copy,
map and search statement trees (always returning new trees: steps never
change the kernel they are given).
"""

from __future__ import annotations

from dataclasses import fields, replace

from minicomp.errors import MinicompError
from minicomp.ir import expr as ex
from minicomp.ir.loops import (
    Allocate,
    Buffer,
    For,
    If,
    Kernel,
    Seq,
    Stmt,
    Store,
    loops,
    stmt_children,
    stmt_exprs,
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
        for e in stmt_exprs(st):
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


def replace_stmt(body: Stmt, old: Stmt, new: Stmt) -> Stmt:
    """``body`` with the statement ``old`` (by identity) replaced by ``new``."""
    if body is old:
        return new
    kids = stmt_children(body)
    if not kids:
        return body
    new_kids = [replace_stmt(c, old, new) for c in kids]
    if all(a is b for a, b in zip(kids, new_kids)):
        return body
    if isinstance(body, For):
        return replace(body, body=new_kids[0])
    if isinstance(body, Seq):
        return _flat_seq(new_kids)
    if isinstance(body, Allocate):
        return Allocate(body.buffer, new_kids[0])
    return If(body.cond, new_kids[0], new_kids[1] if len(new_kids) > 1 else None)


