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
from minicomp.ir.loops import (  # noqa: F401  (map_exprs...: the steps' modules import them from here too)
    Allocate,
    Buffer,
    For,
    If,
    Kernel,
    Seq,
    Stmt,
    Store,
    enclosing_ranges,
    find_loop,
    flat_seq,
    loop_ranges,
    loops,
    map_exprs,
    map_stmts,
    stmt_children,
    stmt_exprs,
    walk_stmts,
)


class ScheduleError(MinicompError):
    """A schedule step that does not fit its kernel."""


# -- tree helpers (the general ones live in ir/loops.py) ---------------------------

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
        return flat_seq(new_kids)
    if isinstance(body, Allocate):
        return Allocate(body.buffer, new_kids[0])
    return If(body.cond, new_kids[0], new_kids[1] if len(new_kids) > 1 else None)


