"""Loop IR: kernels made of loops, stores, allocations and conditionals.

A :class:`Kernel` has buffer parameters and a body statement. Statements:
:class:`For` (kind serial, parallel, vectorized, unrolled, simd — explicit
vector lanes — or a GPU axis: ``block.x/y/z``, ``thread.x/y/z``),
:class:`Seq`, :class:`Store`, :class:`Allocate` (scope local or shared),
:class:`If` and :class:`Barrier`. Expressions are those of
:mod:`minicomp.ir.expr`; a Load of a :class:`Buffer` reads memory.
Buffers are indexed with one index per dimension (row-major); code
generators flatten the indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, is_dataclass, replace

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import TensorLike
from minicomp.ir.dims import Size, static_or_symbolic, upper
from minicomp.ir.dtypes import DType

# GPU axes, abstract: a loop's iterations run as the blocks of a launch (block.x/y/z) or the threads of a
# block (thread.x/y/z). Each GPU renderer spells them (CUDA: blockIdx.x ... threadIdx.z).
GPU_LOOP_KINDS = ("block.x", "block.y", "block.z", "thread.x", "thread.y", "thread.z")
BLOCK_AXES, THREAD_AXES = GPU_LOOP_KINDS[:3], GPU_LOOP_KINDS[3:]
# The calls a ``simd`` loop body may make: every explicit-vector code
# generator provides these (anything else runs as scalar code).
SIMD_CALLS = ("neg", "abs", "sqrt")

LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled", "simd") + GPU_LOOP_KINDS


class Buffer(TensorLike):
    """A region of memory: a kernel parameter or an allocation."""

    def __init__(self, name: str, shape, dtype: DType, scope: str = "global"):
        self.name = name
        self.shape = static_or_symbolic(shape)  # symbolic sizes (mc.Dim) are their largest in memory
        self.dtype = dtype
        self.scope = scope

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def max_bytes(self) -> int:
        """The bytes it takes at the largest sizes of its symbolic dimensions (its memory)."""
        return upper(self.size) * self.dtype.itemsize

    def __repr__(self):
        return f"Buffer({self.name}: {self.dtype.short}{list(self.shape)}, {self.scope})"


class Stmt:
    """Base class of loop-IR statements."""

    def __str__(self) -> str:
        return "\n".join(format_stmt(self, 0))


@dataclass(eq=False)
class For(Stmt):
    var: ex.Var
    extent: int
    body: Stmt
    kind: str = "serial"
    start: int = 0
    is_reduction: bool = False  # iterations depend on each other: never parallel


@dataclass(eq=False)
class Seq(Stmt):
    stmts: list[Stmt] = field(default_factory=list)


@dataclass(eq=False)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[ex.Expr, ...]
    value: ex.Expr


@dataclass(eq=False)
class Allocate(Stmt):
    buffer: Buffer
    body: Stmt


@dataclass(eq=False)
class If(Stmt):
    cond: ex.Expr
    then: Stmt
    otherwise: Stmt | None = None


@dataclass(eq=False)
class Barrier(Stmt):
    """Every thread of a block waits here for the others (CUDA: ``__syncthreads()``)."""


@dataclass(eq=False)
class Kernel:
    """A function over buffers: ``name(params...) { body }``.

    ``inputs``/``outputs``/``workspace`` split ``params`` by role;
    ``schedule`` lists the schedule steps applied (for dumps) and ``group``
    names the graph nodes the kernel computes.
    """

    name: str
    inputs: list[Buffer]
    outputs: list[Buffer]
    body: Stmt
    workspace: list[Buffer] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    schedule: list = field(default_factory=list)
    param_values: list = field(default_factory=list)  # graph Value per parameter (None: workspace)
    packs: list = field(default_factory=list)  # (input position, Pack step): constants re-laid at compile time
    notes: list = field(default_factory=list)  # why the schedule chose what it did (tiles, blocks), for dumps
    in_place: list = field(default_factory=list)  # (output, input) buffer names that share memory: not noalias
    dims: tuple = ()  # names of the symbolic dimensions whose sizes its last input holds (with_dim_sizes)
    prescheduled: bool = False  # made with its loops scheduled (a reduction chain): no default schedule

    def may_alias(self, b: Buffer) -> bool:
        """Does ``b`` share its memory with another parameter (see ``in_place``)?"""
        return any(b.name in pair for pair in self.in_place)

    @property
    def params(self) -> list[Buffer]:
        return list(self.inputs) + list(self.outputs) + list(self.workspace)

    def constant_names(self, constants) -> set[str]:
        """Names of the parameters bound to graph constants (keys of ``constants``)."""
        return {b.name for b, v in zip(self.params, self.param_values) if v is not None and v in constants}

    def __str__(self) -> str:
        return format_kernel(self)


# -- traversal -----------------------------------------------------------------

def stmt_children(s: Stmt) -> list[Stmt]:
    if isinstance(s, (For, Allocate)):
        return [s.body]
    if isinstance(s, Seq):
        return list(s.stmts)
    if isinstance(s, If):
        return [s.then] + ([s.otherwise] if s.otherwise is not None else [])
    return []


def walk_stmts(s: Stmt):
    """Every statement under ``s`` (pre-order)."""
    stack = [s]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(stmt_children(n)))


def stmt_exprs(s: Stmt) -> list[ex.Expr]:
    """The expressions a statement itself holds (not those of its children):
    a store's indices and value, a branch's condition."""
    if isinstance(s, Store):
        return list(s.indices) + [s.value]
    if isinstance(s, If):
        return [s.cond]
    return []


def top_statements(body: Stmt) -> list[Stmt]:
    """The statements a body runs one after another (a kernel's top-level nests)."""
    return list(body.stmts) if isinstance(body, Seq) else [body]


def only_stores(s: Stmt) -> bool:
    """Is ``s`` nothing but stores (what a ``simd`` loop may hold as its lanes)?"""
    return all(isinstance(c, (Store, Seq)) for c in walk_stmts(s))


def does_nothing(s: Stmt) -> bool:
    """Does ``s`` store nothing: is every store under it into an empty buffer,
    or in a loop of extent 0 (a zero-size slice, concatenation or top-k)?"""
    if isinstance(s, Store):
        return s.buffer.size == 0
    if isinstance(s, For) and s.extent == 0:
        return True
    return all(does_nothing(c) for c in stmt_children(s))


def loops(s: Stmt) -> list[For]:
    return [n for n in walk_stmts(s) if isinstance(n, For)]


def seq(*stmts) -> Stmt:
    """A sequence, flattened; a single statement is returned as is."""
    flat: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Seq):
            flat.extend(s.stmts)
        elif s is not None:
            flat.append(s)
    return flat[0] if len(flat) == 1 else Seq(flat)


# -- printing ------------------------------------------------------------------

def format_stmt(s: Stmt, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(s, For):
        kind = "" if s.kind == "serial" else f"{s.kind} "
        end = s.extent if _is_zero(s.start) else s.start + s.extent
        v = s.var.name
        head = f"{pad}{kind}for ({v} = {_size_text(s.start)}; {v} < {_size_text(end)}; {v}++) {{"
        return [head] + format_stmt(s.body, depth + 1) + [f"{pad}}}"]
    if isinstance(s, Seq):
        out: list[str] = []
        for c in s.stmts:
            out.extend(format_stmt(c, depth))
        return out
    if isinstance(s, Store):
        idx = ", ".join(ex.format_expr(i) for i in s.indices)
        return [f"{pad}{s.buffer.name}[{idx}] = {ex.format_expr(s.value)};"]
    if isinstance(s, Allocate):
        b = s.buffer
        return [f"{pad}{b.scope} {b.dtype.short} {b.name}[{', '.join(map(str, b.shape))}];"] + format_stmt(
            s.body, depth)
    if isinstance(s, If):
        out = [f"{pad}if ({ex.format_expr(s.cond)}) {{"] + format_stmt(s.then, depth + 1)
        if s.otherwise is not None:
            out += [f"{pad}}} else {{"] + format_stmt(s.otherwise, depth + 1)
        return out + [f"{pad}}}"]
    if isinstance(s, Barrier):
        return [f"{pad}barrier();"]
    return [f"{pad}<{type(s).__name__}>"]


def _is_zero(x) -> bool:
    return isinstance(x, int) and x == 0


def _size_text(x) -> str:
    return ex.format_expr(x) if isinstance(x, ex.Expr) else str(x)


def format_kernel(k: Kernel) -> str:
    """C-like text of a kernel, with its schedule and source nodes as comments."""
    def param(b: Buffer, role: str) -> str:
        return f"{role} {b.dtype.short}* {b.name}[{', '.join(map(str, b.shape))}]"

    params = [param(b, "in") for b in k.inputs] + [param(b, "out") for b in k.outputs] + [
        param(b, "tmp") for b in k.workspace]
    lines = []
    if k.group:
        lines.append(f"// nodes: {', '.join(k.group)}")
    if k.schedule:
        lines.append(f"// schedule: {'; '.join(str(step) for step in k.schedule)}")
    lines += [f"// {note}" for note in k.notes]
    lines += [f"// in place: {out} is written over {inp}" for out, inp in k.in_place]
    dims = kernel_dims(k)
    if dims:  # (also part of the compile cache's key: another range makes other code)
        lines.append("// sizes known at the call: " + ", ".join(f"{name} in {lo}..{hi}" for name, lo, hi in dims))
    lines.append(f"kernel {k.name}({', '.join(params)}) {{")
    lines += format_stmt(k.body, 1)
    lines.append("}")
    return "\n".join(lines)


def structure_key(k: Kernel) -> str:
    """A digest of what the code of ``k`` depends on: its body and parameters with every buffer and
    variable named by where it first appears, so two kernels that differ only in names (the layers of a
    transformer) have the same key and can share one compiled function."""
    names: dict[int, str] = {}
    out: list[str] = []

    def name(obj, prefix: str) -> str:
        return names.setdefault(id(obj), f"{prefix}{len(names)}")

    def go(x) -> None:
        if isinstance(x, Buffer):
            out.append(f"{name(x, 'b')}:{x.dtype.short}{list(x.shape)}{x.scope}")
        elif isinstance(x, ex.Var):
            out.append(f"{name(x, 'v')}:{x.dtype.short}")
        elif isinstance(x, DType):
            out.append(x.short)
        elif isinstance(x, (list, tuple)):
            out.append("(")
            for item in x:
                go(item)
            out.append(")")
        elif is_dataclass(x):
            out.append(type(x).__name__ + "{")
            for f in fields(x):
                go(getattr(x, f.name))
            out.append("}")
        else:  # a number, a string or None: its type too (1 and 1.0 make different code)
            out.append(f"{type(x).__name__}:{x!r}")

    for b in k.params:
        go(b)
        out.append("a" if k.may_alias(b) else "n")
    go(k.body)
    return hashlib.sha256("|".join(out).encode()).hexdigest()


def kernel_dims(k: Kernel) -> list[tuple]:
    """The symbolic dimensions ``(name, min, max)`` the code of ``k`` depends on: in its loop bounds,
    buffer shapes and expressions, sorted by name (an empty list for a static kernel)."""
    found: set = set()

    def size(x) -> None:
        if isinstance(x, Size):
            found.update(x.dims())
        elif isinstance(x, ex.Expr):
            expr(x)

    def expr(e: ex.Expr) -> None:
        for n in ex.walk(e):
            if isinstance(n, ex.DimVar):
                found.add((n.name, n.lo, n.hi))
            elif isinstance(n, ex.Load) and isinstance(n.tensor, Buffer):
                for d in n.tensor.shape:
                    size(d)

    for b in k.params:
        for d in b.shape:
            size(d)
    for s in walk_stmts(k.body):
        if isinstance(s, For):
            size(s.extent)
            size(s.start)
        elif isinstance(s, Allocate):
            for d in s.buffer.shape:
                size(d)
        for e in stmt_exprs(s):
            expr(e)
        if isinstance(s, Store):
            for d in s.buffer.shape:
                size(d)
    return sorted(found)


# The table slot (a key of passes.memory.buffer_slots) of the int64 sizes of a call's symbolic
# dimensions, which every kernel that depends on them takes as its last input.
DIM_SIZES = "<sizes of the symbolic dimensions>"


def with_dim_sizes(k: Kernel, names: list[str]) -> Kernel:
    """``k`` with one more input, ``mc_dims``: the sizes of the dimensions ``names`` at the call,
    which code generators read wherever a symbolic size appears (loop bounds, strides). A kernel
    that depends on no symbolic size is returned as it is."""
    if not kernel_dims(k):
        return k
    sizes = Buffer("mc_dims", (len(names),), dtypes.int64)
    values = list(k.param_values)
    values.insert(len(k.inputs), DIM_SIZES)
    return replace(k, inputs=[*k.inputs, sizes], param_values=values, dims=tuple(names))


def dim_size(k: Kernel, var: ex.DimVar) -> ex.Load:
    """Where the code of ``k`` (made by :func:`with_dim_sizes`) reads the size of dimension ``var``:
    its element of the ``mc_dims`` input."""
    return ex.Load(k.inputs[-1], (ex.const(k.dims.index(var.name), "int64"),))


def code_kernels(program) -> list[Kernel]:
    """The program's kernels as code generators take them: with the sizes of the graph's symbolic
    dimensions as an input where they use any (:func:`with_dim_sizes`). ``program``: anything with a
    ``graph`` and its ``kernels`` (a compiled model too)."""
    names = [name for name, _, _ in program.graph.dims()]
    return [with_dim_sizes(k, names) for k in program.kernels] if names else list(program.kernels)


def kernel_functions(kernels: list[Kernel]) -> list[str]:
    """The function each kernel runs: ``k_{name}`` of the first kernel with the same structure
    (:func:`structure_key`). Code generators emit each such function once: the twelve layers of a
    transformer compile as one, in a twelfth of the time and the code."""
    first: dict[str, str] = {}
    return [first.setdefault(structure_key(k), f"k_{k.name}") for k in kernels]


# -- rewriting and searching statement trees (new trees; the given one is unchanged) --------------------

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
        s = flat_seq([map_stmts(c, fn) for c in s.stmts])
    elif isinstance(s, Allocate):
        s = Allocate(s.buffer, map_stmts(s.body, fn))
    elif isinstance(s, If):
        s = If(s.cond, map_stmts(s.then, fn), map_stmts(s.otherwise, fn) if s.otherwise else None)
    out = fn(s)
    return s if out is None else out


def flat_seq(stmts) -> Seq:
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
