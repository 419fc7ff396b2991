"""The loop-IR verifier: checks a kernel after every loop-level pass.

- every buffer read or written is a parameter or an allocation in scope;
- every index variable is bound by an enclosing loop, and loop names are
  unique in the kernel (schedules name loops);
- indices stay inside their buffer wherever the bounds can be proven;
- loop kinds suit the target: GPU axes only for a GPU target, ``parallel``
  only at the top level of a CPU kernel, ``simd`` loops hold only stores;
- a ``Barrier`` appears only inside a loop bound to a thread axis; in a GPU
  nest that binds threads, every store to memory is inside a thread loop.
"""

from __future__ import annotations

from minicomp.errors import VerifyError
from minicomp.ir import expr as ex
from minicomp.ir.dims import at_sizes, corners
from minicomp.ir.index_symbolic import mentions_dim
from minicomp.ir.loops import (
    GPU_LOOP_KINDS,
    LOOP_KINDS,
    THREAD_AXES,
    Allocate,
    Barrier,
    For,
    If,
    Kernel,
    Seq,
    Stmt,
    Store,
    kernel_dims,
    only_stores,
    stmt_children,
    top_statements,
    walk_stmts,
)


def verify_kernel(kernel: Kernel, target=None) -> None:
    """Raise VerifyError naming the kernel and the problem; return None if the kernel is well formed."""
    _Verifier(kernel, target).run()


class _Verifier:
    def __init__(self, kernel: Kernel, target):
        self.k = kernel
        self.gpu = getattr(target, "gpu", None) is not None
        self.names: set[str] = set()
        # A kernel with symbolic sizes has its bounds checked at every corner of their ranges.
        dims = kernel_dims(kernel)
        self.corners = corners(dims) if dims else []
        self._extents_seen: dict = {}
        self._sizes_seen: dict = {}

    def fail(self, message: str):
        raise VerifyError(f"kernel {self.k.name}: {message}")

    def run(self):
        tops = top_statements(self.k.body)
        for top in tops:
            if isinstance(top, For) and top.kind == "parallel" and self.gpu:
                self.fail(f"loop {top.var.name} is parallel: a GPU kernel binds loops to blocks and threads")
            if self.gpu:
                self.threads_cover_stores(top)
        self.stmt(self.k.body, set(self.k.params), {}, thread_bound=False, top=True)

    def threads_cover_stores(self, top: Stmt):
        """In a nest that binds threads, a store to memory outside every
        thread loop would run once per thread of the block: refuse it."""
        if not any(isinstance(n, For) and n.kind in THREAD_AXES for n in walk_stmts(top)):
            return

        def go(s: Stmt):
            if isinstance(s, For) and s.kind in THREAD_AXES:
                return
            if isinstance(s, Store) and s.buffer.scope != "local":
                self.fail(f"{s.buffer.name}[...] is stored outside every loop bound to a thread axis, in a nest that "
                          f"binds threads: every thread of the block would run it (bind or split that loop too)")
            for c in stmt_children(s):
                go(c)

        go(top)

    def stmt(self, s: Stmt, buffers: set, ranges: dict, thread_bound: bool, top: bool = False):
        if isinstance(s, Seq):
            for c in s.stmts:
                self.stmt(c, buffers, ranges, thread_bound, top)
        elif isinstance(s, For):
            name = s.var.name
            if name in self.names:
                self.fail(f"two loops are named {name}")
            self.names.add(name)
            if s.kind not in LOOP_KINDS:
                self.fail(f"loop {name} has unknown kind {s.kind!r}")
            if s.kind in GPU_LOOP_KINDS and not self.gpu:
                self.fail(f"loop {name} is bound to {s.kind}, which needs a GPU target")
            if s.kind == "parallel" and not top:
                self.fail(f"parallel loop {name} is not at the top level")
            if s.kind == "simd" and not only_stores(s.body):
                self.fail(f"simd loop {name} must hold only stores")
            if any(at_sizes(s.extent, c) < 0 for c in self.corners or [{}]):
                self.fail(f"loop {name} has extent {s.extent}")
            inner = {**ranges, s.var: (s.start, s.start + s.extent - 1)}
            self.stmt(s.body, buffers, inner, thread_bound or s.kind in THREAD_AXES)
        elif isinstance(s, Allocate):
            self.stmt(s.body, buffers | {s.buffer}, ranges, thread_bound, top)
        elif isinstance(s, Store):
            self.access(s.buffer, s.indices, buffers, ranges)
            self.expr(s.value, buffers, ranges)
            for i in s.indices:
                self.expr(i, buffers, ranges)
        elif isinstance(s, If):
            self.expr(s.cond, buffers, ranges)
            self.stmt(s.then, buffers, ranges, thread_bound)
            if s.otherwise is not None:
                self.stmt(s.otherwise, buffers, ranges, thread_bound)
        elif isinstance(s, Barrier):
            if not thread_bound:
                self.fail("a barrier outside every loop bound to a thread axis")
        else:
            self.fail(f"unknown statement {type(s).__name__}")

    def expr(self, e: ex.Expr, buffers: set, ranges: dict):
        for n in ex.walk(e):
            if isinstance(n, ex.Var) and n not in ranges and not isinstance(n, ex.DimVar):
                self.fail(f"index variable {n.name} is used outside its loop")
            if isinstance(n, ex.Load) and hasattr(n.tensor, "scope"):
                self.access(n.tensor, n.indices, buffers, ranges)

    def access(self, buf, indices, buffers: set, ranges: dict):
        if buf not in buffers:
            self.fail(f"buffer {buf.name} is used where it is not a parameter or allocation")
        if len(indices) != len(buf.shape):
            self.fail(f"buffer {buf.name} has {len(buf.shape)} dimensions, indexed with {len(indices)}")
        for sizes in self.corners or [None]:
            self.access_at(buf, indices, ranges, sizes)

    def _extents(self, ranges: dict, sizes: dict | None) -> dict | None:
        """The loops' extents with the sizes at ``sizes``, or None where a loop does not start at 0
        (bounds() assumes it does) or never runs. Kept per loop scope: every access in it asks."""
        key = (id(ranges), None if sizes is None else tuple(sizes.items()))
        if key not in self._extents_seen:
            def fix(x):
                if sizes is None or isinstance(x, int):
                    return x
                at = (id(x), key[1])
                if at not in self._sizes_seen:  # loops share their outer loops' ranges
                    self._sizes_seen[at] = (x, at_sizes(x, sizes))
                return self._sizes_seen[at][1]

            extents = {v: fix(hi) + 1 for v, (lo, hi) in ranges.items() if fix(lo) == 0}
            if len(extents) != len(ranges) or any(n < 1 for n in extents.values()):
                extents = None
            self._extents_seen[key] = (ranges, extents)  # holds ranges, so its id is not reused
        return self._extents_seen[key][1]

    def access_at(self, buf, indices, ranges: dict, sizes: dict | None):
        """Check the indices with every symbolic size at ``sizes`` (None: a static kernel)."""
        def fix(x):
            return x if sizes is None else at_sizes(x, sizes)

        def fix_expr(e):  # an index that no size enters is checked as a static kernel's is
            return e if sizes is None or not mentions_dim(e) else ex.with_sizes(e, sizes)

        extents = self._extents(ranges, sizes)
        if extents is None:
            return  # loops that do not start at 0 (bounds() assumes they do), or code that never runs
        for d, (i, n) in enumerate(zip(indices, buf.shape)):
            b, n = ex.bounds(fix_expr(i), extents), fix(n)
            if b is not None and (b[0] < 0 or b[1] >= n):
                at = "" if sizes is None else f" (at {', '.join(f'{k} = {v}' for k, v in sizes.items())})"
                self.fail(f"{buf.name}[{', '.join(ex.format_expr(x) for x in indices)}]: index {d} runs over "
                          f"{b[0]}..{b[1]}, outside 0..{n - 1}{at}")

