"""Loop IR -> LLVM IR text.

Each kernel becomes a function taking one pointer per buffer parameter. A
top-level parallel loop is outlined into its own function that runs its
thread's share of the iterations and then helps the other threads with
theirs, called through libgomp's ``GOMP_parallel`` (or directly when one
thread is asked for). The module's entry point ``mc_main(ptr table)`` loads
every kernel's buffer pointers from one table and calls the kernels in
order, so one native call runs a model.

Values are computed in each dtype's ``llvm`` type; memory uses its
``llvm_storage`` type (bool is an ``i8`` in memory, float16 a ``half``, bfloat16 its 16 bits as an ``i16``).
"""

from __future__ import annotations

import math
import struct

from minicomp.backends.llvm_simd import emit_simd_loop, simd_supported
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
    kernel_functions,
    top_statements,
)
from minicomp.ir.numerics import accumulated_product, extremum_keeps_first_on_tie

# Fast-math flags. Float operations ignore the sign of zero but never
# contract into an FMA on their own: an expression that a kernel computes in
# several places (an inlined ``x*x`` read by a max loop and by an exp loop)
# must give the same bits in each, and ``fma(x, x, -m)`` is not
# ``round(x*x) - m`` (a softmax of it rose above 1, or to inf). Only an
# accumulation (``acc = acc + a*b``) contracts its product, whose rounding no
# other place observes, and only its combining operation may reassociate,
# which LLVM needs to vectorize a reduction; it does not also ignore the sign
# of zero, since the two together let LLVM fold ``acc + (x - x)`` to ``acc``
# (NaN for an infinite x). Reassociating elsewhere breaks
# cancellation guards (``x - max - log(sum)`` in log_softmax) and ``arcp``
# turns ``1 / sqrt(x)`` into an estimate that is NaN at 0 and inf; no-NaN/
# no-inf flags are left out because -inf is a real value here (max-reduction
# init, padding).
FMF = "nsz"
FMF_CONTRACT = "nsz contract"
FMF_ACCUMULATE = "reassoc contract"
MAX_UNROLL = 64  # unrolled loops up to this extent are replicated in the IR
NUM_THREADS_GLOBAL = "mc_num_threads"


def compare_instruction(op: str, dt: DType) -> str:
    """``fcmp olt``, ``icmp slt``...: ordered float compares (NaN is false, as in
    numpy) except ``ne``, which is true for NaN."""
    if dt.is_float:
        return "fcmp " + {"lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge", "eq": "oeq", "ne": "une"}[op]
    sign = "u" if dt.is_unsigned else "s"
    return "icmp " + {"lt": sign + "lt", "le": sign + "le", "gt": sign + "gt", "ge": sign + "ge", "eq": "eq",
                      "ne": "ne"}[op]


def int_instruction(op: str, dt: DType) -> str:
    """The LLVM instruction for an integer ``op`` whose meaning depends on the
    sign (``tdiv``: sdiv/udiv, ``shr``: ashr/lshr, ``mod``: srem/urem...)."""
    u = dt.is_unsigned
    return {"tdiv": "udiv" if u else "sdiv", "floordiv": "udiv" if u else "sdiv", "mod": "urem" if u else "srem",
            "shr": "lshr" if u else "ashr", "shl": "shl", "xor": "xor", "and": "and", "or": "or", "add": "add",
            "sub": "sub", "mul": "mul"}[op]


def int_literal(value: int, dt: DType) -> str:
    """An LLVM literal for an integer constant: two's complement, signed spelling."""
    value = dt.wrap(value)
    return str(value - (1 << dt.bits) if value >= 1 << (dt.bits - 1) else value)  # unsigned tops read negative


def float_literal(value: float, ty: str) -> str:
    """An LLVM literal for ``value`` in type ``float`` or ``double`` (hex form)."""
    if ty == "float" and math.isfinite(value):
        try:
            value = struct.unpack("f", struct.pack("f", value))[0]
        except OverflowError:
            value = math.copysign(math.inf, value)
    if math.isnan(value):
        return "0x7FF8000000000000"
    return f"0x{struct.unpack('>Q', struct.pack('>d', value))[0]:016X}"


def _suffix(ty: str) -> str:
    """The type's spelling in intrinsic names: ``llvm.fabs.f32``, ``llvm.smax.i8``."""
    return {"float": "f32", "double": "f64", "half": "f16"}.get(ty, ty)


class Module:
    """Collects functions, declarations and metadata of one LLVM module."""

    def __init__(self):
        self.functions: list[str] = []
        self.declarations: dict[str, str] = {}
        self.metadata: list[str] = []
        self.helpers: set[str] = set()

    def use_helper(self, name: str):
        """Include one of the IR math functions of :mod:`llvm_math` (and what it needs)."""
        from minicomp.backends.llvm_math import HELPERS

        if name in self.helpers:
            return
        self.helpers.add(name)
        _, needs, decls = HELPERS[name]
        for d in decls:
            self.declare(d.split("@")[1].split("(")[0], d)
        for n in needs:
            self.use_helper(n)

    def declare(self, name: str, signature: str):
        self.declarations[name] = signature

    def loop_metadata(self, hint: str) -> str:
        """A distinct loop ID node with one hint; returns its ``!N`` name."""
        n = len(self.metadata)
        hint_text = {"vectorize": '!{!"llvm.loop.vectorize.enable", i1 true}',
                     "unroll": '!{!"llvm.loop.unroll.full"}'}[hint]
        self.metadata.append(f"!{n} = distinct !{{!{n}, !{n + 1}}}")
        self.metadata.append(f"!{n + 1} = {hint_text}")
        return f"!{n}"

    def text(self) -> str:
        parts = [f"@{NUM_THREADS_GLOBAL} = global i32 1, align 4", ""]
        parts += sorted(self.declarations.values())
        parts.append("")
        from minicomp.backends.llvm_math import HELPERS

        parts += [HELPERS[h][0] for h in sorted(self.helpers)]
        parts += self.functions
        parts += self.metadata
        return "\n".join(parts) + "\n"


class FunctionGen:
    """Emits one function: SSA names, blocks, entry-block allocas."""

    def __init__(self, module: Module, name: str):
        self.module = module
        self.name = name
        self.lines: list[str] = []
        self.allocas: list[str] = []
        self.counter = 0
        self.block = "start"
        self.vars: dict[ex.Var, str] = {}
        self.ptrs: dict[Buffer, str] = {}
        self.memo: dict[int, tuple[str, str]] = {}
        self.accumulations: dict[int, str] = {}  # fast-math flags of an accumulation's ops, by id
        self.kernel: Kernel | None = None  # whose symbolic sizes the function reads (loops.dim_size)

    def tmp(self, hint: str = "t") -> str:
        self.counter += 1
        return f"%{hint}{self.counter}"

    def emit(self, line: str):
        self.lines.append("  " + line)

    def start_block(self, label: str):
        self.lines.append(f"{label}:")
        self.block = label

    def label(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}{self.counter}"

    def finish(self, signature: str) -> str:
        body = ["entry:"] + ["  " + a for a in self.allocas] + ["  br label %start", "start:"] + self.lines
        return f"define {signature} {{\n" + "\n".join(body) + "\n  ret void\n}\n"

    # -- expressions -----------------------------------------------------------
    def value(self, e: ex.Expr) -> str:
        """Emit ``e`` and return its SSA value (or literal)."""
        key = id(e)
        if key in self.memo:
            return self.memo[key][0]
        v = self._value(e)
        self.memo[key] = (v, e)  # keep e alive so its id is not reused
        return v

    def _call(self, ret: str, fn: str, args: list[tuple[str, str]], flags: str = "") -> str:
        sig_args = ", ".join(t for t, _ in args)
        self.module.declare(fn, f"declare {ret} @{fn}({sig_args})")
        out = self.tmp()
        flag = f"{flags} " if flags else ""
        self.emit(f"{out} = call {flag}{ret} @{fn}({', '.join(f'{t} {v}' for t, v in args)})")
        return out

    def _value(self, e: ex.Expr) -> str:
        if isinstance(e, ex.Const):
            return self._const(e)
        if isinstance(e, ex.DimVar):  # a symbolic size: the kernel's mc_dims input holds it
            return self.value(dim_size(self.kernel, e))
        if isinstance(e, ex.Var):
            try:
                return self.vars[e]
            except KeyError:
                raise CompileError(f"function {self.name}: index variable {e.name} is not bound") from None
        if isinstance(e, ex.Load):
            return self._load(e.tensor, e.indices)
        if isinstance(e, ex.BinOp):
            return self._binop(e)
        if isinstance(e, ex.Call):
            return self._callop(e)
        if isinstance(e, ex.Select):
            c, a, b = self.value(e.cond), self.value(e.a), self.value(e.b)
            out = self.tmp()
            self.emit(f"{out} = select i1 {c}, {e.dtype.llvm} {a}, {e.dtype.llvm} {b}")
            return out
        if isinstance(e, ex.Cast):
            return self._cast(self.value(e.x), e.x.dtype, e.dtype)
        if isinstance(e, ex.Bitcast):
            return self._bitcast(self.value(e.x), e.x.dtype, e.dtype)
        raise CompileError(f"function {self.name}: cannot generate code for {type(e).__name__}")

    def _const(self, c: ex.Const) -> str:
        if c.dtype.is_bool:
            return "true" if c.value else "false"
        if c.dtype.is_float:
            v = float(c.value)
            if c.dtype.is_narrow_float:
                v = float(c.dtype.numpy.type(v))
            return float_literal(v, c.dtype.llvm)
        return int_literal(int(c.value), c.dtype)

    def size(self, n) -> str:
        """A loop bound or count: a literal, or the code that computes a symbolic one (here, before the loop)."""
        return str(n) if isinstance(n, int) else self.value(ex.simplify(ex.as_expr(n)))

    def _flat_index(self, buf, indices) -> str:
        return self.value(ex.simplify(ex.flat_index(indices, buf.shape)))

    def _pointer(self, buf, indices) -> str:
        if buf not in self.ptrs:
            raise CompileError(f"function {self.name}: buffer {buf.name} is not a parameter or allocation")
        idx = self._flat_index(buf, indices)
        p = self.tmp("p")
        self.emit(f"{p} = getelementptr inbounds {buf.dtype.llvm_storage}, ptr {self.ptrs[buf]}, i64 {idx}")
        return p

    def _load(self, buf, indices) -> str:
        p = self._pointer(buf, indices)
        st, ty = buf.dtype.llvm_storage, buf.dtype.llvm
        raw = self.tmp("ld")
        self.emit(f"{raw} = load {st}, ptr {p}, align {buf.dtype.itemsize}")
        return raw if st == ty else self._from_storage(raw, buf.dtype)

    def store(self, s: Store):
        self.accumulations = accumulation_flags(s)
        val = self.value(s.value)
        if s.value.dtype != s.buffer.dtype:
            val = self._cast(val, s.value.dtype, s.buffer.dtype)
        p = self._pointer(s.buffer, s.indices)
        dt = s.buffer.dtype
        self.emit(f"store {dt.llvm_storage} {self._to_storage(val, dt)}, ptr {p}, align {dt.itemsize}")

    def _binop(self, e: ex.BinOp) -> str:
        a, b = self.value(e.a), self.value(e.b)
        dt: DType = e.a.dtype
        ty = dt.llvm
        out = self.tmp()
        op = e.op
        if op in ex.CMP_OPS:
            self.emit(f"{out} = {compare_instruction(op, dt)} {ty} {a}, {b}")
            return out
        if dt.is_float:
            if op in ("add", "sub", "mul", "div"):
                self.emit(f"{out} = f{op} {self.accumulations.get(id(e), FMF)} {ty} {a}, {b}")
                return out
            if op in ("max", "min"):
                if id(e) in self.accumulations:  # a reduction: an intrinsic LLVM vectorizes (ir/numerics.py)
                    fn = "maximum" if op == "max" else "minimum"
                    return self._call(ty, f"llvm.{fn}.{_suffix(ty)}", [(ty, a), (ty, b)])
                return float_extremum(self, op, e.dtype, ty, a, b)
            if op == "pow":
                return self._call(ty, f"llvm.pow.{_suffix(ty)}", [(ty, a), (ty, b)])
            if op == "mod":
                self.emit(f"{out} = frem {ty} {a}, {b}")
                return out
            if op == "floordiv":
                self.emit(f"{out} = fdiv {ty} {a}, {b}")
                return self._call(ty, f"llvm.floor.{_suffix(ty)}", [(ty, out)])
        if op in ("max", "min"):
            sign = "u" if dt.is_unsigned else "s"
            return self._call(ty, f"llvm.{sign}{op}.{_suffix(ty)}", [(ty, a), (ty, b)])
        # floordiv and mod are index arithmetic here (positive constant divisors,
        # non-negative dividends); legalization guarded tdiv's divisors 0 and -1
        # and the shifts' amounts.
        if op in ("and", "or", "xor", "add", "sub", "mul", "shl", "shr", "floordiv", "mod", "tdiv"):
            self.emit(f"{out} = {int_instruction(op, dt)} {ty} {a}, {b}")
            return out
        raise CompileError(f"function {self.name}: no code for {op} on {dt.name}")

    def _callop(self, e: ex.Call) -> str:
        x = self.value(e.args[0])
        dt = e.args[0].dtype
        ty = dt.llvm
        out = self.tmp()
        if e.fn == "neg":
            self.emit(f"{out} = fneg {ty} {x}" if dt.is_float else f"{out} = sub {ty} 0, {x}")
            return out
        if e.fn == "not":
            self.emit(f"{out} = xor i1 {x}, true")
            return out
        if e.fn == "abs":
            if dt.is_float:
                return self._call(ty, f"llvm.fabs.{_suffix(ty)}", [(ty, x)])
            if dt.is_unsigned:
                return x
            return self._call(ty, f"llvm.abs.{_suffix(ty)}", [(ty, x), ("i1", "false")])
        if not dt.is_float:
            raise CompileError(f"function {self.name}: {e.fn} needs a float operand, got {dt.name}")
        if e.fn in ex.EXTERN_CALLS:  # the C math library's function, resolved in the process
            name = ex.EXTERN_CALLS[e.fn] + ("f" if ty == "float" else "")
            return self._call(ty, name, [(ty, x)])
        if ty == "float" and e.fn in ("exp", "tanh", "erf"):
            helper = f"mc_{e.fn}f"
            self.module.use_helper(helper)
            self.emit(f"{out} = call float @{helper}(float {x})")
            return out
        if e.fn in ("exp", "log", "sqrt", "floor"):
            return self._call(ty, f"llvm.{e.fn}.{_suffix(ty)}", [(ty, x)])
        if e.fn in ("tanh", "erf"):
            return self._call(ty, e.fn + ("f" if ty == "float" else ""), [(ty, x)])
        raise CompileError(f"function {self.name}: unknown intrinsic {e.fn}")

    def _cast(self, v: str, src: DType, dst: DType) -> str:
        if src == dst:
            return v
        out = self.tmp()
        s, d = src.llvm, dst.llvm
        if dst.is_bool:
            if src.is_float:
                self.emit(f"{out} = fcmp une {s} {v}, 0.0")
            else:
                self.emit(f"{out} = icmp ne {s} {v}, 0")
            return out
        if src.is_bool:
            self.emit(f"{out} = {'uitofp' if dst.is_float else 'zext'} i1 {v} to {d}")
            return self._round_half(out, dst)
        if src.is_float and dst.is_float:
            if s == d:
                return self._round_half(v, dst)
            self.emit(f"{out} = {'fpext' if d == 'double' else 'fptrunc'} {s} {v} to {d}")
            return self._round_half(out, dst)
        if src.is_float and dst.is_int:
            sat = "fptoui" if dst.is_unsigned else "fptosi"
            return self._call(d, f"llvm.{sat}.sat.{_suffix(d)}.{_suffix(s)}", [(s, v)])
        if src.is_int and dst.is_float:
            self.emit(f"{out} = {'uitofp' if src.is_unsigned else 'sitofp'} {s} {v} to {d}")
            return self._round_half(out, dst)
        if src.is_int and dst.is_int:
            if s == d:  # the same bits, another sign
                return v
            widen = "zext" if src.is_unsigned else "sext"
            self.emit(f"{out} = {widen if dst.itemsize > src.itemsize else 'trunc'} {s} {v} to {d}")
            return out
        raise CompileError(f"function {self.name}: no cast from {src.name} to {dst.name}")

    def _bitcast(self, v: str, src: DType, dst: DType) -> str:
        """Reinterpret the bits: a register value goes to its memory form (bool a
        byte, float16 a half, bfloat16 its i16), is bitcast, and comes back."""
        bits = self._to_storage(v, src)
        if src.llvm_storage != dst.llvm_storage:
            out = self.tmp()
            self.emit(f"{out} = bitcast {src.llvm_storage} {bits} to {dst.llvm_storage}")
            bits = out
        return self._from_storage(bits, dst)

    def _to_storage(self, v: str, dt: DType) -> str:
        """A register value in its memory form (bool a byte, float16 a half, bfloat16 rounded to its i16)."""
        if dt.llvm_storage == dt.llvm:
            return v
        out = self.tmp()
        if dt.is_bool:
            self.emit(f"{out} = zext i1 {v} to i8")
        elif dt == dtypes.bfloat16:
            self.module.use_helper("mc_to_bf16")
            self.emit(f"{out} = call i16 @mc_to_bf16(float {v})")
        else:
            self.emit(f"{out} = fptrunc float {v} to half")
        return out

    def _from_storage(self, v: str, dt: DType) -> str:
        """A value in memory form as the register type it is computed in."""
        if dt.llvm_storage == dt.llvm:
            return v
        out = self.tmp()
        if dt.is_bool:
            self.emit(f"{out} = icmp ne i8 {v}, 0")
        elif dt == dtypes.bfloat16:
            self.module.use_helper("mc_from_bf16")
            self.emit(f"{out} = call float @mc_from_bf16(i16 {v})")
        else:
            self.emit(f"{out} = fpext half {v} to float")
        return out

    def _round_half(self, v: str, dst: DType) -> str:
        """float16 and bfloat16 values live in float registers: round them as a store would."""
        if not dst.is_narrow_float:
            return v
        return self._from_storage(self._to_storage(v, dst), dst)

    # -- statements ------------------------------------------------------------
    def stmt(self, s: Stmt):
        self.memo = {}
        if isinstance(s, Seq):
            for c in s.stmts:
                self.stmt(c)
        elif isinstance(s, Store):
            self.store(s)
        elif isinstance(s, For) and s.kind == "simd" and s.start == 0 and simd_supported(s.body, s.var):
            emit_simd_loop(self, s)
        elif isinstance(s, For) and isinstance(s.extent, int) and (
                s.kind == "unrolled" and s.extent <= MAX_UNROLL or s.extent == 1):
            for k in range(s.extent):  # replicate the body with the index as a constant
                self.vars[s.var] = str(s.start + k)
                self.stmt(s.body)
            self.vars.pop(s.var, None)
        elif isinstance(s, For):
            hint = "unroll" if s.kind == "unrolled" else None
            if s.kind in ("vectorized", "simd") and vectorizable(s.body):
                hint = "vectorize"
            self.loop(s.var, self.size(s.start), self.size(s.start + s.extent), s.body, hint)
        elif isinstance(s, Allocate):
            b = s.buffer
            p = self.tmp(b.name + ".")  # unique even when an unrolled body allocates again
            self.allocas.append(f"{p} = alloca {b.dtype.llvm_storage}, i64 {max(upper(b.size), 1)}, align 64")
            self.ptrs[b] = p
            self.stmt(s.body)
        elif isinstance(s, If):
            c = self.value(s.cond)
            then, other, done = self.label("then"), self.label("else"), self.label("endif")
            self.emit(f"br i1 {c}, label %{then}, label %{other if s.otherwise else done}")
            self.start_block(then)
            self.stmt(s.then)
            self.emit(f"br label %{done}")
            if s.otherwise is not None:
                self.start_block(other)
                self.stmt(s.otherwise)
                self.emit(f"br label %{done}")
            self.start_block(done)
        elif isinstance(s, Barrier):
            raise CompileError("barriers exist only on GPU targets")
        else:
            raise CompileError(f"cannot generate code for statement {type(s).__name__}")
        self.memo = {}

    def loop(self, var: ex.Var, start: str, end: str, body: Stmt, hint: str | None):
        header, bodyl, latch, exit_ = (self.label(x) for x in ("loop", "body", "latch", "exit"))
        pre = self.block
        iv = self.tmp(var.name.replace(".", "_") + "_")
        nxt = self.tmp("next")
        self.emit(f"br label %{header}")
        self.start_block(header)
        self.emit(f"{iv} = phi i64 [{start}, %{pre}], [{nxt}, %{latch}]")
        cond = self.tmp("cond")
        self.emit(f"{cond} = icmp slt i64 {iv}, {end}")
        self.emit(f"br i1 {cond}, label %{bodyl}, label %{exit_}")
        self.start_block(bodyl)
        self.vars[var] = iv
        self.stmt(body)
        self.emit(f"br label %{latch}")
        self.start_block(latch)
        self.emit(f"{nxt} = add nuw nsw i64 {iv}, 1")
        md = f", !llvm.loop {self.module.loop_metadata(hint)}" if hint else ""
        self.emit(f"br label %{header}{md}")
        self.start_block(exit_)
        del self.vars[var]


def float_extremum(fn, op: str, dt: DType, ty: str, a: str, b: str, mask: str = "i1") -> str:
    """numpy's ``max(a, b)``/``min(a, b)`` of floats (scalars, or vectors with ``mask`` ``<w x i1>``): NaN
    if either is NaN, else the larger (smaller), the tie (+0, -0) as numpy answers it
    (:func:`~minicomp.ir.numerics.extremum_keeps_first_on_tie`). Compares and selects, which x86
    runs as one ``vmaxps`` (it returns ``b`` when either is NaN), an unordered compare and a masked
    move; ``llvm.maximum`` orders -0 below +0, which numpy does not, and takes six instructions."""
    strict = not extremum_keeps_first_on_tie(dt)
    cmp = {("max", True): "ogt", ("max", False): "oge", ("min", True): "olt", ("min", False): "ole"}[op, strict]
    wins, larger, nan, out = fn.tmp("c"), fn.tmp("v"), fn.tmp("c"), fn.tmp("v")
    fn.emit(f"{wins} = fcmp {cmp} {ty} {a}, {b}")
    fn.emit(f"{larger} = select {mask} {wins}, {ty} {a}, {ty} {b}")
    fn.emit(f"{nan} = fcmp uno {ty} {a}, {a}")
    fn.emit(f"{out} = select {mask} {nan}, {ty} {a}, {ty} {larger}")
    return out


def accumulation_flags(s: Store) -> dict[int, str]:
    """Fast-math flags, by expression id, of the accumulation in ``s``
    (:func:`~minicomp.ir.numerics.accumulated_product`): its combining
    operation may reassociate and contract, the product it adds may contract
    into an FMA. Every other float operation keeps :data:`FMF`."""
    found = accumulated_product(s)
    if found is None:
        return {}
    combine, product = found
    flags = {id(combine): FMF_ACCUMULATE}
    if product is not None:
        flags[id(product)] = FMF_CONTRACT
    return flags


def vectorizable(s: Stmt) -> bool:
    """False if the body calls a libm function that no vector form replaces
    (float64 tanh and erf); forcing vectorization there only makes LLVM warn."""
    from minicomp.ir.loops import stmt_exprs, walk_stmts

    for st in walk_stmts(s):
        for e in stmt_exprs(st):
            for n in ex.walk(e):
                if isinstance(n, ex.Call) and n.fn in ("tanh", "erf") and n.dtype == dtypes.float64:
                    return False
    return True


def _has_loop(s: Stmt) -> bool:
    if isinstance(s, For):
        return True
    if isinstance(s, Seq):
        return any(_has_loop(c) for c in s.stmts)
    if isinstance(s, Allocate):
        return _has_loop(s.body)
    if isinstance(s, If):
        return _has_loop(s.then) or (s.otherwise is not None and _has_loop(s.otherwise))
    return False


def emit_kernel(module: Module, kernel: Kernel) -> str:
    """Add ``kernel`` (and its outlined parallel loops) to ``module``; returns its function name."""
    fname = f"k_{kernel.name}"
    params = kernel.params
    fn = FunctionGen(module, fname)
    for k, b in enumerate(params):
        fn.ptrs[b] = f"%arg{k}"
    fn.kernel = kernel
    tops = top_statements(kernel.body)
    n_par = 0
    for top in tops:
        if isinstance(top, For) and top.kind == "parallel":
            outlined = f"{fname}_par{n_par}"
            n_par += 1
            _emit_parallel_body(module, outlined, kernel, top)
            _emit_parallel_call(fn, outlined, len(params), fn.size(top.extent))
        else:
            fn.stmt(top)
    sig = ", ".join(f"ptr {_noalias(kernel, b)}%arg{k}" for k, b in enumerate(params))
    # Not internal: the runtime looks kernels up one by one to profile them.
    module.functions.append(fn.finish(f"void @{fname}({sig})"))
    return fname


# Each thread's share of a parallel loop is handed out in about this many
# grains, so that a thread that finishes early (its core was less busy, or
# its iterations cheaper) takes grains from the others' shares.
GRAINS_PER_SHARE = 16


def _emit_parallel_call(fn: FunctionGen, outlined: str, n_params: int, extent: str):
    """Pack the parameters into an array and run ``outlined`` on the threads
    (``extent``: the loop's iteration count, a literal or a value computed before).

    Beside the parameters goes a table of work counters, one cache line per
    thread: line 0 holds the share size and the thread count, line ``1 + t``
    the next unclaimed iteration of thread ``t``'s share (see
    :func:`_emit_parallel_body`)."""
    arr = f"%params_{outlined}"
    fn.allocas.append(f"{arr} = alloca [{n_params + 1} x ptr], align 8")
    for k in range(n_params):
        slot = fn.tmp("slot")
        fn.emit(f"{slot} = getelementptr [{n_params + 1} x ptr], ptr {arr}, i64 0, i64 {k}")
        fn.emit(f"store ptr %arg{k}, ptr {slot}, align 8")
    nt, nt64, lines, share, work = (fn.tmp(h) for h in ("nt", "nt", "lines", "share", "work"))
    fn.emit(f"{nt} = load i32, ptr @{NUM_THREADS_GLOBAL}, align 4")
    fn.emit(f"{nt64} = sext i32 {nt} to i64")
    fn.emit(f"{lines} = add i64 {nt64}, 1")
    # Not in the entry block: sized by the thread count, freed when the kernel returns.
    fn.emit(f"{work} = alloca [8 x i64], i64 {lines}, align 64")
    whole, last = fn.tmp("whole"), fn.tmp("last")  # the share is ceil(extent / threads)
    fn.emit(f"{last} = sub i64 {extent}, 1")
    fn.emit(f"{whole} = sdiv i64 {last}, {nt64}")
    fn.emit(f"{share} = add i64 {whole}, 1")
    fn.emit(f"store i64 {share}, ptr {work}, align 64")
    ntslot = fn.tmp("slot")
    fn.emit(f"{ntslot} = getelementptr i64, ptr {work}, i64 1")
    fn.emit(f"store i64 {nt64}, ptr {ntslot}, align 8")
    pre, init, go = fn.block, fn.label("claims"), fn.label("go")
    fn.emit(f"br label %{init}")
    fn.start_block(init)
    t, t1, first, line, more = (fn.tmp(h) for h in ("t", "t", "first", "line", "more"))
    fn.emit(f"{t} = phi i64 [0, %{pre}], [{t1}, %{init}]")
    fn.emit(f"{first} = mul i64 {t}, {share}")
    fn.emit(f"{t1} = add i64 {t}, 1")
    fn.emit(f"{line} = getelementptr [8 x i64], ptr {work}, i64 {t1}")
    fn.emit(f"store i64 {first}, ptr {line}, align 64")
    fn.emit(f"{more} = icmp slt i64 {t1}, {nt64}")
    fn.emit(f"br i1 {more}, label %{init}, label %{go}")
    fn.start_block(go)
    wslot = fn.tmp("slot")
    fn.emit(f"{wslot} = getelementptr [{n_params + 1} x ptr], ptr {arr}, i64 0, i64 {n_params}")
    fn.emit(f"store ptr {work}, ptr {wslot}, align 8")
    # One thread, or at most one iteration (a symbolic loop's count can be that at a call): no team.
    one, single, alone = fn.tmp(), fn.tmp(), fn.tmp()
    fn.emit(f"{one} = icmp sle i32 {nt}, 1")
    fn.emit(f"{single} = icmp sle i64 {extent}, 1")
    fn.emit(f"{alone} = or i1 {one}, {single}")
    serial, par, done = fn.label("serial"), fn.label("par"), fn.label("pardone")
    fn.emit(f"br i1 {alone}, label %{serial}, label %{par}")
    fn.start_block(serial)
    fn.emit(f"call void @{outlined}(ptr {arr})")
    fn.emit(f"br label %{done}")
    fn.start_block(par)
    fn.module.declare("GOMP_parallel", "declare void @GOMP_parallel(ptr, ptr, i32, i32)")
    fn.emit(f"call void @GOMP_parallel(ptr @{outlined}, ptr {arr}, i32 {nt}, i32 0)")
    fn.emit(f"br label %{done}")
    fn.start_block(done)


def _noalias(kernel: Kernel, b: Buffer) -> str:
    """``noalias `` for a parameter that shares memory with no other (all but an in-place pair)."""
    return "" if kernel.may_alias(b) else "noalias "


def _emit_parallel_body(module: Module, name: str, kernel: Kernel, loop: For):
    """``name(data)`` runs its thread's share of ``loop``, then helps the others.

    Each thread owns a contiguous share of the iterations (so a thread
    touches the same data from kernel to kernel) and claims it a grain at
    a time from its counter with an atomic add; when its share is done it
    claims grains from the other threads' counters. On a machine whose
    cores are not equally free (a shared VM, another process), the threads
    finish closer together instead of all waiting for the slowest
    (docs/measurements.md).

    The loop itself lives in ``name_range(ptr noalias..., lo, hi)``: passing
    the buffers as ``noalias`` arguments (rather than loading them from
    ``data`` in the loop's function) tells LLVM that stores cannot change the
    inputs, so it can hoist loads and vectorize without runtime checks.
    """
    params = kernel.params
    rng = FunctionGen(module, f"{name}_range")
    for k, b in enumerate(params):
        rng.ptrs[b] = f"%arg{k}"
    rng.kernel = kernel
    inner = not _has_loop(loop.body) and vectorizable(loop.body)
    rng.loop(loop.var, "%lo", "%hi", loop.body, "vectorize" if inner else None)
    sig = ", ".join([f"ptr {_noalias(kernel, b)}%arg{k}" for k, b in enumerate(params)] + ["i64 %lo", "i64 %hi"])
    module.functions.append(rng.finish(f"internal void @{name}_range({sig})"))

    fn = FunctionGen(module, name)
    loaded = []
    for k in range(len(params) + 1):  # the parameters, then the work counters
        slot, p = fn.tmp("slot"), fn.tmp("arg")
        fn.emit(f"{slot} = getelementptr ptr, ptr %data, i64 {k}")
        fn.emit(f"{p} = load ptr, ptr {slot}, align 8")
        loaded.append(p)
    *args, work = loaded
    fn.ptrs.update(zip(params, args))  # (a symbolic extent reads its size through them)
    fn.kernel = kernel
    args = [f"ptr {a}" for a in args]
    module.declare("omp_get_thread_num", "declare i32 @omp_get_thread_num()")
    module.declare("llvm.smin.i64", "declare i64 @llvm.smin.i64(i64, i64)")
    module.declare("llvm.smax.i64", "declare i64 @llvm.smax.i64(i64, i64)")
    tid32, tid, share, ntslot, nt, g0, grain = (fn.tmp(h) for h in ("tid", "tid", "share", "slot", "nt", "g", "grain"))
    fn.emit(f"{tid32} = call i32 @omp_get_thread_num()")
    fn.emit(f"{tid} = sext i32 {tid32} to i64")
    fn.emit(f"{share} = load i64, ptr {work}, align 64")
    fn.emit(f"{ntslot} = getelementptr i64, ptr {work}, i64 1")
    fn.emit(f"{nt} = load i64, ptr {ntslot}, align 8")
    fn.emit(f"{g0} = sdiv i64 {share}, {GRAINS_PER_SHARE}")
    fn.emit(f"{grain} = call i64 @llvm.smax.i64(i64 {g0}, i64 1)")
    n = fn.size(loop.extent)
    # for k in 0..nt: v = (tid + k) % nt; claim grains of v's share until it is done
    entry = fn.block
    owner, claim, run, next_owner, finished = (fn.label(h) for h in ("owner", "claim", "run", "nextowner", "finished"))
    fn.emit(f"br label %{owner}")
    fn.start_block(owner)
    k, k1, vk, v, end0, end, line = (fn.tmp(h) for h in ("k", "k", "vk", "v", "end", "end", "line"))
    fn.emit(f"{k} = phi i64 [0, %{entry}], [{k1}, %{next_owner}]")
    fn.emit(f"{vk} = add i64 {tid}, {k}")
    fn.emit(f"{v} = srem i64 {vk}, {nt}")
    fn.emit(f"{end0} = mul i64 {v}, {share}")
    end1 = fn.tmp("end")
    fn.emit(f"{end1} = add i64 {end0}, {share}")
    fn.emit(f"{end} = call i64 @llvm.smin.i64(i64 {end1}, i64 {n})")
    v1 = fn.tmp("v")
    fn.emit(f"{v1} = add i64 {v}, 1")
    fn.emit(f"{line} = getelementptr [8 x i64], ptr {work}, i64 {v1}")
    fn.emit(f"br label %{claim}")
    fn.start_block(claim)
    lo, left = fn.tmp("lo"), fn.tmp("left")
    fn.emit(f"{lo} = atomicrmw add ptr {line}, i64 {grain} monotonic, align 8")
    fn.emit(f"{left} = icmp slt i64 {lo}, {end}")
    fn.emit(f"br i1 {left}, label %{run}, label %{next_owner}")
    fn.start_block(run)
    hi0, hi, lo_s, hi_s = (fn.tmp(h) for h in ("hi", "hi", "lo", "hi"))
    fn.emit(f"{hi0} = add i64 {lo}, {grain}")
    fn.emit(f"{hi} = call i64 @llvm.smin.i64(i64 {hi0}, i64 {end})")
    start = fn.size(loop.start)
    fn.emit(f"{lo_s} = add i64 {lo}, {start}")
    fn.emit(f"{hi_s} = add i64 {hi}, {start}")
    fn.emit(f"call void @{name}_range({', '.join(args + [f'i64 {lo_s}', f'i64 {hi_s}'])})")
    fn.emit(f"br label %{claim}")
    fn.start_block(next_owner)
    more = fn.tmp("more")
    fn.emit(f"{k1} = add i64 {k}, 1")
    fn.emit(f"{more} = icmp slt i64 {k1}, {nt}")
    fn.emit(f"br i1 {more}, label %{owner}, label %{finished}")
    fn.start_block(finished)
    module.functions.append(fn.finish(f"internal void @{name}(ptr %data)"))


def emit_module(kernels: list[Kernel], calls: list[list[int]], functions: list[str] | None = None) -> str:
    """The whole module: kernels plus ``mc_main(ptr table)`` calling each kernel
    with pointers from the table slots listed in ``calls``. ``functions`` (from
    :func:`~minicomp.ir.loops.kernel_functions`, computed when not given) names the function each
    kernel runs; a kernel whose function another emitted is not emitted again."""
    module = Module()
    names = functions or kernel_functions(kernels)
    for k, name in zip(kernels, names):
        if name == f"k_{k.name}":
            emit_kernel(module, k)
    lines = ["define void @mc_main(ptr %table) {", "entry:"]
    c = 0
    for name, slots in zip(names, calls):
        args = []
        for s in slots:
            c += 1
            lines.append(f"  %s{c} = getelementptr ptr, ptr %table, i64 {s}")
            lines.append(f"  %a{c} = load ptr, ptr %s{c}, align 8")
            args.append(f"ptr %a{c}")
        lines.append(f"  call void @{name}({', '.join(args)})")
    lines += ["  ret void", "}", ""]
    module.functions.append("\n".join(lines))
    module.functions.append(_slot_signature(kernels, calls))
    return module.text()


def _slot_signature(kernels: list[Kernel], calls: list[list[int]]) -> str:
    """``@mc_slot_bytes``: the bytes each table slot's buffer must hold, as the code reads and writes it
    (0 for a slot no kernel uses), and ``@mc_slot_count``. A saved model's description of its buffers is
    checked against these on load, so an edited one cannot make the code write past an array."""
    sizes: dict[int, int] = {}
    for k, slots in zip(kernels, calls):
        for b, s in zip(k.params, slots):
            sizes[s] = max(sizes.get(s, 0), b.max_bytes)
    n = max(sizes, default=-1) + 1
    values = ", ".join(f"i64 {sizes.get(i, 0)}" for i in range(n))
    return (f"@mc_slot_count = constant i64 {n}\n"
            f"@mc_slot_bytes = constant [{n} x i64] [{values}]\n")
