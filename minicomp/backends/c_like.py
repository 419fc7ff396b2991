"""The renderer every C-like target shares: loop IR -> C statements.

:class:`CRenderer` walks one kernel's statements and expressions and writes
C text; a target is a subclass that sets the spellings below and overrides
the few hooks where its language differs (CUDA C: ``cuda_codegen.py``;
portable C99: ``c.py``). The loop IR reaching a renderer is legalized
(``passes/legalize.py``): integer division and shifts are guarded, and the
numeric rules a target has no instruction for (NaN-propagating max/min,
saturating casts) are written out as selects, so a renderer only spells
operations.

What stays a renderer's job, spelled by its table:

- the type a dtype is computed in (``compute_type``) and kept in memory
  (``storage_type``), and the conversions between them: float16 and
  bfloat16 are computed in float and rounded to 16 bits on every store and
  every cast to them (``to_memory``/``from_memory``);
- signed 32- and 64-bit data arithmetic in unsigned types, which wrap as
  numpy's do where C's signed overflow is undefined;
- a value used more than once in a statement becomes a named temporary.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import CompileError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.dims import upper
from minicomp.ir.dtypes import DType
from minicomp.ir.loops import (
    Allocate,
    Barrier,
    Buffer,
    For,
    If,
    Kernel,
    Seq,
    Stmt,
    Store,
    dim_size,
    stmt_exprs,
    walk_stmts,
)
from minicomp.ir.numerics import accumulated_product

INFIX = {"add": "+", "sub": "-", "mul": "*", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}

# bfloat16 is float's upper half, kept as its 16 bits and rounded to nearest even; written once for every
# C-like language (the qualifier in front of each helper is the language's).
BF16_HELPERS = r"""
{q} float mc_from_bf16(unsigned short h) {{
  unsigned int b = (unsigned int)h << 16; float x; memcpy(&x, &b, 4); return x;
}}
{q} unsigned short mc_to_bf16(float x) {{
  unsigned int b; memcpy(&b, &x, 4);
  return x != x ? (unsigned short)0x7FC0 : (unsigned short)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}}"""


def c_identifier(name: str, prefix: str, taken) -> str:
    """``name`` made a C identifier (value names may hold '.', '/', ':') that is not in ``taken``."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    if not base or base[0].isdigit():
        base = prefix + base
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    return out


def unsigned_of(dt: DType) -> str:
    """The unsigned C type of a signed integer dtype's width."""
    return "unsigned long long" if dt.itemsize == 8 else "unsigned int"


def uses_var(body: Stmt, var: ex.Var) -> bool:
    """Does any expression in ``body`` read ``var``?"""
    return any(v is var for st in walk_stmts(body) for e in stmt_exprs(st) for v in ex.free_vars(e))


class CRenderer:
    """Writes the statements of one function as C lines; subclasses set the spellings (see module docs)."""

    language = "C"  # for error messages
    restrict = "restrict "
    helper_qualifier = "static inline"
    fuse_accumulation = False  # fuse an accumulation's product into one FMA (spelled by fma_function)
    unroll_pragma = ""  # written before a loop the schedule unrolled
    # Load a select's operands before it, as the loop IR means (its selects read both sides: indices
    # are clamped in range): C's ``c ? x[i] : 0`` reads x only where c holds.
    eager_select_loads = False
    narrow_storage = {"float16": "unsigned short", "bfloat16": "unsigned short"}
    to_narrow = {"float16": "mc_to_f16", "bfloat16": "mc_to_bf16"}
    from_narrow = {"float16": "mc_from_f16", "bfloat16": "mc_from_bf16"}

    def __init__(self, kernel: Kernel, index_type: str = "long long"):
        self.kernel = kernel
        self.index_type = index_type
        self.lines: list[str] = []
        self.names: dict = {}  # Var -> C name
        self.shared: dict = {}  # id of a repeated subexpression -> its temporary
        self.load_index: dict = {}  # id of a load -> (the load, the flat index it is printed with)
        self.fused: dict = {}  # id of an accumulation's combining op -> the product it fuses (mc_fma)
        self.tmp = 0
        self.buffers: dict = {}  # Buffer -> C identifier
        self.bit_helpers: dict = {}  # name -> C of a helper that reads one type's bits as another's

    # -- types ------------------------------------------------------------------
    @staticmethod
    def compute_type(dt: DType) -> str:
        """The C type a value of ``dt`` is computed in (float16 and bfloat16 are computed in float)."""
        return "float" if dt.is_narrow_float else dt.c

    @classmethod
    def storage_type(cls, dt: DType) -> str:
        """The C type of ``dt`` in memory."""
        return cls.narrow_storage.get(dt.name) or cls.compute_type(dt)

    def to_memory(self, v: str, dt: DType) -> str:
        """A computed value (C text) in ``dt``'s memory type: float16 and bfloat16 rounded to 16 bits."""
        return f"{self.to_narrow[dt.name]}({v})" if dt.is_narrow_float else v

    def from_memory(self, v: str, dt: DType) -> str:
        """A value in ``dt``'s memory type (C text) as the type it is computed in."""
        return f"{self.from_narrow[dt.name]}({v})" if dt.is_narrow_float else v

    def buffer_name(self, b: Buffer) -> str:
        """A C identifier for ``b``, unique in the function."""
        if b not in self.buffers:
            self.buffers[b] = c_identifier(b.name, "b_", self.buffers.values())
        return self.buffers[b]

    def parameter(self, b: Buffer, written: bool) -> str:
        """``b`` as a function parameter: const when only read, restrict unless it shares memory."""
        const = "" if written or self.kernel.may_alias(b) else "const "
        restrict = "" if self.kernel.may_alias(b) else self.restrict
        return f"{const}{self.storage_type(b.dtype)}* {restrict}{self.buffer_name(b)}"

    def fail(self, message: str):
        raise CompileError(f"kernel {self.kernel.name}: {message}")

    def emit(self, depth: int, line: str):
        self.lines.append("  " * depth + line)

    # -- statements -------------------------------------------------------------
    def stmt(self, s: Stmt, depth: int):
        if isinstance(s, Seq):
            for c in s.stmts:
                self.stmt(c, depth)
        elif isinstance(s, For):
            self.loop(s, depth)
        elif isinstance(s, Store):
            self.store(s, depth)
        elif isinstance(s, Allocate):
            size = max(upper(s.buffer.size), 1)
            self.emit(depth, f"{self.allocation(s.buffer)} {self.buffer_name(s.buffer)}[{size}];")
            self.stmt(s.body, depth)
        elif isinstance(s, If):
            self.emit(depth, f"if ({self.expr_in_place(s.cond, depth)}) {{")
            self._forget_shared()
            self.stmt(s.then, depth + 1)
            if s.otherwise is not None:
                self.emit(depth, "} else {")
                self.stmt(s.otherwise, depth + 1)
            self.emit(depth, "}")
        elif isinstance(s, Barrier):
            self.emit(depth, self.barrier())
        else:
            self.fail(f"no {self.language} for statement {type(s).__name__}")

    def allocation(self, b: Buffer) -> str:
        """The declaration's type (and qualifiers) of an allocated buffer."""
        if b.scope != "local":
            self.fail(f"allocation {b.name} has scope {b.scope}; {self.language} allocates local buffers")
        return self.storage_type(b.dtype)

    def barrier(self) -> str:
        self.fail(f"barriers exist only on GPU targets, not in {self.language}")

    def loop(self, s: For, depth: int):
        """A loop of the schedule; ``special_loop`` may take the kinds a language spells itself."""
        name = self._var_name(s.var)
        if not self.special_loop(s, name, depth):
            pragma = self.loop_pragma(s)
            if pragma:
                self.emit(depth, pragma)
            self.emit(depth, f"for ({self.index_type} {name} = {self.size(s.start)}; "
                             f"{name} < {self.size(s.start + s.extent)}; ++{name}) {{")
            self.stmt(s.body, depth + 1)
            self.emit(depth, "}")
        del self.names[s.var]

    def size(self, n) -> str:
        """A loop bound: a literal, or the expression of a symbolic one."""
        return str(n) if isinstance(n, int) else self.render(ex.simplify(ex.as_expr(n)))

    def special_loop(self, s: For, name: str, depth: int) -> bool:
        """Write ``s`` in a language's own way (GPU axes, vector types); False to write a plain ``for``."""
        return False

    def loop_pragma(self, s: For) -> str:
        """The pragma before a plain ``for`` of ``s``'s kind ('' for none)."""
        return self.unroll_pragma if s.kind in ("unrolled", "vectorized") else ""

    def _var_name(self, v: ex.Var) -> str:
        name = c_identifier("v_" + v.name, "v_", self.names.values())
        self.names[v] = name
        return name

    def store(self, s: Store, depth: int):
        self.emit(depth, "{")
        index = self._flat_expr(s.buffer, s.indices)
        found = accumulated_product(s) if self.fuse_accumulation else None
        fusable = found is not None and found[1] is not None and not found[0].dtype.is_narrow_float
        self.fused = {id(found[0]): found[1]} if fusable else {}
        value = self.expr_in_place(s.value, depth + 1, (index,))
        self.fused = {}
        idx = self.render(index)
        if s.value.dtype != s.buffer.dtype:
            value = self.cast(value, s.value.dtype, s.buffer.dtype)
        self.emit(depth + 1, f"{self.buffer_name(s.buffer)}[{idx}] = {self.to_memory(value, s.buffer.dtype)};")
        self.emit(depth, "}")
        self._forget_shared()  # ids of expressions die with the statement

    # -- expressions ------------------------------------------------------------
    def expr_in_place(self, e: ex.Expr, depth: int, extra=()) -> str:
        """Render ``e``; subexpressions used more than once become named temporaries first."""
        counts: dict = {}
        self._forget_shared()
        for root in [e, *extra]:
            self._count(root, counts)
        eager = self._select_loads([e, *extra]) if self.eager_select_loads else set()
        for node in self._postorder([e, *extra]):
            if (counts.get(id(node), 0) > 1 or id(node) in eager) and not isinstance(node, (ex.Const, ex.Var)):
                self.tmp += 1
                name = f"t{self.tmp}"
                self.emit(depth, f"const {self.value_type(node)} {name} = {self.render(node)};")
                self.shared[id(node)] = name
        return self.render(e)

    def _select_loads(self, roots) -> set:
        """The ids of the loads within either side of a select in ``roots``."""
        found = set()
        for node in self._postorder(roots):
            if isinstance(node, ex.Select):
                found.update(id(n) for n in self._postorder([node.a, node.b]) if isinstance(n, ex.Load))
        return found

    def value_type(self, e: ex.Expr) -> str:
        """The C type of a temporary: index arithmetic (int64 without loads) in the index type."""
        if e.dtype == dtypes.int64 and not any(isinstance(n, ex.Load) for n in ex.walk(e)):
            return self.index_type
        return self.compute_type(e.dtype)

    def _count(self, e: ex.Expr, counts: dict):
        counts[id(e)] = counts.get(id(e), 0) + 1
        if counts[id(e)] == 1:
            for c in self._parts(e):
                self._count(c, counts)

    def _postorder(self, roots):
        seen, order = set(), []

        def visit(n):
            if id(n) in seen:
                return
            seen.add(id(n))
            for c in self._parts(n):
                visit(c)
            order.append(n)

        for r in roots:
            visit(r)
        return order

    def _flat_expr(self, buf: Buffer, indices) -> ex.Expr:
        if len(indices) != len(buf.shape):
            self.fail(f"buffer {buf.name} has {len(buf.shape)} dimensions, indexed with {len(indices)}")
        return ex.simplify(ex.flat_index(indices, buf.shape)) if indices else ex.const(0, "int64")

    def _load_index(self, ld: ex.Load) -> ex.Expr:
        """The flat index ``ld`` is printed with, made once per statement:
        temporaries are counted on it, not on the indices it came from (a
        repeated ``i // 32`` of two loads' indices is gone once they are
        flattened, and its temporary was declared and never used)."""
        entry = self.load_index.get(id(ld))
        if entry is None or entry[0] is not ld:  # the load is kept, so its id is not reused
            entry = self.load_index[id(ld)] = (ld, self._flat_expr(ld.tensor, ld.indices))
        return entry[1]

    def _parts(self, e: ex.Expr):
        """The subexpressions ``e`` is printed with."""
        return (self._load_index(e),) if isinstance(e, ex.Load) else ex.children(e)

    def _forget_shared(self):
        self.shared = {}
        self.load_index = {}

    def render(self, e: ex.Expr) -> str:
        name = self.shared.get(id(e))
        if name is not None:
            return name
        if isinstance(e, ex.Const):
            return self.literal(e)
        if isinstance(e, ex.DimVar):  # a symbolic size: the kernel's mc_dims input holds it
            return self.render(dim_size(self.kernel, e))
        if isinstance(e, ex.Var):
            if e not in self.names:
                self.fail(f"index variable {e.name} is not bound")
            return self.names[e]
        if isinstance(e, ex.Load):
            buf = e.tensor
            return self.from_memory(f"{self.buffer_name(buf)}[{self.render(self._load_index(e))}]", buf.dtype)
        if isinstance(e, ex.BinOp):
            return self.binop(e)
        if isinstance(e, ex.Call):
            return self.call(e)
        if isinstance(e, ex.Select):
            return f"({self.render(e.cond)} ? {self.render(e.a)} : {self.render(e.b)})"
        if isinstance(e, ex.InRangeCast):
            return f"(({self.compute_type(e.dtype)})({self.render(e.x)}))"
        if isinstance(e, ex.Cast):
            return self.cast(self.render(e.x), e.x.dtype, e.dtype)
        if isinstance(e, ex.Bitcast):
            return self.bitcast(self.render(e.x), e.x.dtype, e.dtype)
        self.fail(f"no {self.language} for expression {type(e).__name__}")

    def binop(self, e: ex.BinOp) -> str:
        product = self.fused.get(id(e))
        if product is not None and id(product) not in self.shared:  # acc + a*b of an accumulation: one FMA
            acc = e.b if product is e.a else e.a
            fma = self.fma_function(e.dtype)
            return f"{fma}({self.render(product.a)}, {self.render(product.b)}, {self.render(acc)})"
        a, b = self.render(e.a), self.render(e.b)
        dt, op = e.a.dtype, e.op
        if op in ("add", "sub", "mul") and self._wraps_in_unsigned(e):
            u = unsigned_of(dt)
            return f"(({self.compute_type(dt)})(({u})({a}) {INFIX[op]} ({u})({b})))"
        if op in INFIX:
            return self.wrap_narrow(f"({a} {INFIX[op]} {b})", e.dtype)
        if op in ("max", "min") and not dt.is_float:  # index arithmetic the schedule made after legalizing
            return f"({a} {'>' if op == 'max' else '<'} {b} ? {a} : {b})"
        if dt.is_float:
            f = "f" if self.compute_type(dt) == "float" else ""
            if op == "div":
                return f"({a} / {b})"
            if op == "pow":
                return f"pow{f}({a}, {b})"
            if op == "mod":
                return f"fmod{f}({a}, {b})"
            if op == "floordiv":
                return f"floor{f}({a} / {b})"
        if op in ("and", "or"):
            sym = ("&&" if op == "and" else "||") if dt.is_bool else ("&" if op == "and" else "|")
            return f"({a} {sym} {b})"
        if op in ("xor", "shl", "shr"):  # legalization guarded the shift amounts; >> is arithmetic when signed
            return self.wrap_narrow(f"({a} {({'xor': '^', 'shl': '<<', 'shr': '>>'})[op]} {b})", dt)
        if op in ("floordiv", "tdiv", "div") and dt.is_int:
            # Index arithmetic (non-negative, positive constant divisors) and
            # legalized integer division (divisors 0 and -1 guarded): C's division.
            return self.wrap_narrow(f"({a} / {b})", dt)
        if op == "mod" and dt.is_int:
            return f"({a} % {b})"
        self.fail(f"no {self.language} for {op} on {dt.name} (is the kernel legalized?)")

    def fma_function(self, dt: DType) -> str:
        """The fused multiply-add of ``dt``'s compute type (C99's ``fmaf``/``fma``: one rounding)."""
        return "fmaf" if self.compute_type(dt) == "float" else "fma"

    def _wraps_in_unsigned(self, e: ex.Expr) -> bool:
        """Signed 32- and 64-bit data arithmetic is done in unsigned C types: it wraps, as numpy's does,
        where C's signed overflow is undefined and the compiler may assume it away (g++ turned
        ``a + b > a`` into ``b > 0``). Index arithmetic (no loads) keeps its signed type."""
        dt = e.dtype
        if not dt.is_int or dt.is_unsigned or dt.itemsize < 4:
            return False
        return dt != dtypes.int64 or any(isinstance(n, ex.Load) for n in ex.walk(e))

    def wrap_narrow(self, text: str, dt: DType) -> str:
        """C computes 8- and 16-bit integers in int: cast back so they wrap as stored."""
        return f"(({self.compute_type(dt)}){text})" if dt.is_int and dt.itemsize < 4 else text

    def call(self, e: ex.Call) -> str:
        x = self.render(e.args[0])
        dt = e.args[0].dtype
        ct = self.compute_type(dt)
        if e.fn == "neg":
            if self._wraps_in_unsigned(e):
                return f"(({ct})(({unsigned_of(dt)})0 - ({unsigned_of(dt)})({x})))"
            return self.wrap_narrow(f"(-{x})", dt)
        if e.fn == "not":
            return f"(!{x})"
        if e.fn == "abs":
            if dt.is_float:
                return f"fabs{'f' if ct == 'float' else ''}({x})"
            if self._wraps_in_unsigned(e):
                u = unsigned_of(dt)
                return f"({x} < 0 ? (({ct})(({u})0 - ({u})({x}))) : {x})"
            return x if dt.is_unsigned else self.wrap_narrow(f"({x} < 0 ? -{x} : {x})", dt)
        if not dt.is_float:
            self.fail(f"{e.fn} needs a float operand, got {dt.name}")
        if e.fn in ("exp", "log", "sqrt", "tanh", "erf", "floor"):
            return f"{e.fn}{'f' if ct == 'float' else ''}({x})"
        if e.fn in ex.EXTERN_CALLS:
            return f"{ex.EXTERN_CALLS[e.fn]}{'f' if ct == 'float' else ''}({x})"
        self.fail(f"no {self.language} for the function {e.fn}")

    def bitcast(self, v: str, src: DType, dst: DType) -> str:
        """The value in its memory type, its bits read as ``dst``'s memory type, then computed as ``dst``."""
        stored = self.to_memory(v, src) if src.is_narrow_float else f"(({self.storage_type(src)})({v}))"
        from_type, to_type = self.storage_type(src), self.storage_type(dst)
        helper = f"mc_bits_{from_type}_as_{to_type}".replace(" ", "_")
        self.bit_helpers[helper] = (f"{self.helper_qualifier} {to_type} {helper}({from_type} x) "
                                    f"{{ {to_type} y; memcpy(&y, &x, sizeof y); return y; }}")
        return self.from_memory(f"{helper}({stored})", dst)

    def cast(self, v: str, src: DType, dst: DType) -> str:
        """A conversion: to bool is ``!= 0``; float to integer was legalized (saturating selects) unless the
        target spells it; narrow floats round to 16 bits."""
        if src == dst:
            return v
        if dst.is_bool:
            return f"({v} != 0)"
        out = f"(({self.compute_type(dst)})({v}))"
        return self.from_memory(self.to_memory(out, dst), dst) if dst.is_narrow_float else out

    def literal(self, c: ex.Const) -> str:
        """A C literal for ``c`` (exact for floats; infinities and NaN by name)."""
        dt = c.dtype
        if dt.is_bool:
            return "true" if c.value else "false"
        if dt.is_float:
            single = self.compute_type(dt) == "float"
            v = float(c.value)
            if single:
                with np.errstate(over="ignore"):  # a value beyond the type's range is its infinity
                    v = float(dt.numpy.type(v)) if dt.is_narrow_float else float(np.float32(v))
            if math.isnan(v):
                return "NAN" if single else "(double)NAN"
            if math.isinf(v):
                text = "INFINITY" if single else "(double)INFINITY"
                return f"(-{text})" if v < 0 else text
            return repr(v) + ("f" if single else "")
        v = int(c.value)
        if dt.is_unsigned:
            return f"(({dt.c}){v}ULL)"
        if v == -(2**63):  # 9223372036854775808 does not fit: C would read the literal as unsigned
            return "(-9223372036854775807LL - 1)"
        if not -(2**31) <= v < 2**31:  # small int64 constants stay int: index arithmetic in int is faster
            return f"{v}LL" if v >= 0 else f"({v}LL)"
        return str(v) if v >= 0 else f"({v})"


def buffers_used(s: Stmt, params: list[Buffer]) -> list[Buffer]:
    """The parameters that ``s`` reads or writes, in parameter order."""
    used = set()
    for st in walk_stmts(s):
        if isinstance(st, Store):
            used.add(st.buffer)
        for e in stmt_exprs(st):
            used.update(n.tensor for n in ex.walk(e) if isinstance(n, ex.Load))
    return [b for b in params if b in used]


def written(s: Stmt) -> set:
    """The buffers ``s`` stores to."""
    return {st.buffer for st in walk_stmts(s) if isinstance(st, Store)}
