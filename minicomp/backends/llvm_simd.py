"""Explicit SIMD code for ``simd`` loops.

A ``simd`` loop of extent W runs as one straight line of W-lane vector
instructions: the loop variable is the lane number. Each load is classified
by how its flat index moves with the lane: not at all (a scalar load, splat
when combined with vectors), by one element (one vector load), or otherwise
(W scalar loads gathered into a vector). Stores likewise. Register-tiled
reductions use this: their accumulator tile lives in a few vector registers.

Only arithmetic, comparisons, selects, min/max, abs/neg/sqrt and float casts
are handled; :func:`simd_supported` says whether a body qualifies (lowering
only makes ``simd`` loops whose bodies do).
"""

from __future__ import annotations

from minicomp.errors import CompileError
from minicomp.ir import expr as ex
from minicomp.ir.loops import SIMD_CALLS, Seq, Stmt, Store


def simd_supported(body: Stmt, var: ex.Var | None = None) -> bool:
    """Can this loop body (of the loop over ``var``) be emitted as explicit vectors?

    Indices never are vectors: an address is computed per lane or as a base
    and a stride, in scalar code, whatever its arithmetic (the ``//`` and ``%``
    of a fused parallel loop). Nor is a value that is the same in every lane."""
    stores = body.stmts if isinstance(body, Seq) else [body]
    for s in stores:
        if not isinstance(s, Store) or s.buffer.dtype.is_bool or s.buffer.dtype.is_narrow_float:
            return False
        for n in _lane_values(s.value, var):
            if isinstance(n, ex.Call) and n.fn not in SIMD_CALLS:
                return False
            if isinstance(n, ex.BinOp) and not _has_vector_form(n):
                return False
            if isinstance(n, ex.Reduce) or (isinstance(n, ex.Load) and n.dtype.is_bool):
                return False
            if isinstance(n, ex.Bitcast) or isinstance(n, ex.Cast) and not (
                    n.dtype.is_float and (n.x.dtype.is_float or n.x.dtype.is_int)):
                return False  # (float to int saturates, which the scalar code spells)
            if isinstance(n, ex.Cast) and (n.dtype.is_narrow_float or n.x.dtype.is_narrow_float):
                return False  # 16-bit rounding has no vector form here
            if isinstance(n, ex.Load) and n.dtype.is_narrow_float:
                return False
    return True


FLOAT_VECTOR_OPS = ("add", "sub", "mul", "div", "max", "min")
INT_VECTOR_OPS = ("add", "sub", "mul", "and", "or", "xor", "shl", "shr", "max", "min")


def _has_vector_form(e: ex.BinOp) -> bool:
    """Does :meth:`SimdEmitter` have a vector instruction for this operation
    (``pow``, ``mod`` and integer division have none: such a loop runs scalar)?"""
    ops = FLOAT_VECTOR_OPS if e.a.dtype.is_float else INT_VECTOR_OPS
    return e.op in ex.CMP_OPS or e.op in ops


def _lane_values(e: ex.Expr, var: ex.Var | None):
    """The nodes of ``e`` computed as vectors: not a load's indices, and (with
    ``var``) not a subexpression that does not depend on the lane."""
    stack = [e]
    while stack:
        n = stack.pop()
        if var is not None and not any(m is var for m in ex.walk(n)):
            continue
        yield n
        if not isinstance(n, ex.Load):
            stack.extend(ex.children(n))


class SimdEmitter:
    """Emits one simd loop body into a FunctionGen."""

    def __init__(self, fn, var: ex.Var, width: int):
        self.fn = fn
        self.var = var
        self.w = width
        self.memo: dict[int, tuple[str, bool]] = {}
        # (buffer, index, lane) -> (index, pointer) and (index, "stride") -> (index, stride), by ids
        self.addresses: dict[tuple, tuple] = {}
        self.accumulations: dict[int, str] = {}

    def vty(self, scalar_ty: str) -> str:
        return f"<{self.w} x {scalar_ty}>"

    def splat(self, value: str, ty: str) -> str:
        fn = self.fn
        one = fn.tmp("ins")
        fn.emit(f"{one} = insertelement <1 x {ty}> poison, {ty} {value}, i64 0")
        out = fn.tmp("splat")
        fn.emit(f"{out} = shufflevector <1 x {ty}> {one}, <1 x {ty}> poison, <{self.w} x i32> zeroinitializer")
        return out

    def vector(self, e: ex.Expr) -> str:
        """``e`` as a vector value (splatting scalars)."""
        v, is_vec = self.value(e)
        return v if is_vec else self.splat(v, e.dtype.llvm)

    def value(self, e: ex.Expr) -> tuple[str, bool]:
        key = id(e)
        if key not in self.memo:
            self.memo[key] = self._value(e)
        return self.memo[key]

    def _scalar(self, e: ex.Expr) -> tuple[str, bool]:
        return self.fn.value(e), False

    def _depends(self, e: ex.Expr) -> bool:
        return any(n is self.var for n in ex.walk(e))

    def _value(self, e: ex.Expr) -> tuple[str, bool]:
        fn = self.fn
        if not self._depends(e):
            return self._scalar(e)
        if isinstance(e, ex.Var):  # the lane index itself
            lanes = ", ".join(f"i64 {k}" for k in range(self.w))
            return f"<{lanes}>", True
        if isinstance(e, ex.Load):
            return self._load(e), True
        if isinstance(e, ex.BinOp):
            return self._binop(e), True
        if isinstance(e, ex.Call):
            x = self.vector(e.args[0])
            ty = self.vty(e.dtype.llvm)
            out = fn.tmp("v")
            if e.fn == "neg":
                fn.emit(f"{out} = fneg {ty} {x}" if e.dtype.is_float else f"{out} = sub {ty} zeroinitializer, {x}")
                return out, True
            suffix = f"v{self.w}{_sfx(e.dtype.llvm)}"
            if e.fn == "abs":
                if e.dtype.is_float:
                    return self._intrinsic(f"llvm.fabs.{suffix}", ty, [x]), True
                if e.dtype.is_unsigned:
                    return x, True
                return self._intrinsic(f"llvm.abs.{suffix}", ty, [x], extra=", i1 false"), True
            return self._intrinsic(f"llvm.sqrt.{suffix}", ty, [x]), True
        if isinstance(e, ex.Select):
            c, cv = self.value(e.cond)
            a, b = self.vector(e.a), self.vector(e.b)
            ty = self.vty(e.dtype.llvm)
            out = fn.tmp("v")
            cty = f"<{self.w} x i1>" if cv else "i1"
            fn.emit(f"{out} = select {cty} {c}, {ty} {a}, {ty} {b}")
            return out, True
        if isinstance(e, ex.Cast):
            x = self.vector(e.x)
            s, d = e.x.dtype.llvm, e.dtype.llvm
            if s == d:
                return x, True
            out = fn.tmp("v")
            if e.x.dtype.is_int:  # int8 weights widened as they are read (quantize="int8-weight")
                fn.emit(f"{out} = {'uitofp' if e.x.dtype.is_unsigned else 'sitofp'} {self.vty(s)} {x} to {self.vty(d)}")
            else:
                fn.emit(f"{out} = {'fpext' if d == 'double' else 'fptrunc'} {self.vty(s)} {x} to {self.vty(d)}")
            return out, True
        raise CompileError(f"simd loop: cannot vectorize {type(e).__name__}")

    def _intrinsic(self, name: str, ty: str, args: list[str], extra: str = "") -> str:
        arg_tys = ", ".join(ty for _ in args) + (", i1" if extra else "")
        self.fn.module.declare(name, f"declare {ty} @{name}({arg_tys})")
        out = self.fn.tmp("v")
        self.fn.emit(f"{out} = call {ty} @{name}({', '.join(f'{ty} {a}' for a in args)}{extra})")
        return out

    def _binop(self, e: ex.BinOp) -> str:
        from minicomp.backends.llvm_codegen import FMF, compare_instruction, float_extremum, int_instruction

        fn = self.fn
        a, b = self.vector(e.a), self.vector(e.b)
        dt = e.a.dtype
        ty = self.vty(dt.llvm)
        out = fn.tmp("v")
        op = e.op
        if op in ex.CMP_OPS:
            fn.emit(f"{out} = {compare_instruction(op, dt)} {ty} {a}, {b}")
            return out
        suffix = f"v{self.w}{_sfx(dt.llvm)}"
        if dt.is_float and op in ("add", "sub", "mul", "div"):
            fn.emit(f"{out} = f{op} {self.accumulations.get(id(e), FMF)} {ty} {a}, {b}")
            return out
        if op in ("max", "min") and dt.is_float:
            return float_extremum(fn, op, dt, ty, a, b, f"<{self.w} x i1>")
        if op in ("max", "min"):
            name = f"llvm.{'u' if dt.is_unsigned else 's'}{op}.{suffix}"
            return self._intrinsic(name, ty, [a, b])
        if op in ("add", "sub", "mul", "and", "or", "xor", "shl", "shr"):
            fn.emit(f"{out} = {int_instruction(op, dt)} {ty} {a}, {b}")
            return out
        raise CompileError(f"simd loop: no vector form of {op} on {dt.name}")

    # -- memory ------------------------------------------------------------------
    def _flat(self, buf, indices) -> ex.Expr:
        return ex.simplify(ex.flat_index(indices, buf.shape))

    def _lane_stride(self, flat: ex.Expr):
        """How far ``flat`` moves from one lane to the next (an int), or None where it is not a
        constant multiple of the lane (a gather or scatter, one address per lane)."""
        step = self._linear_step(flat)
        if step is not None:
            return step
        aff = ex._affine(flat)  # atoms the simplifier merges, such as (x // d) * d + x % d
        if aff is None:
            return None
        terms, _ = aff
        for t in terms:
            if t is not self.var and any(n is self.var for n in ex.walk(t)):
                return None
        return terms.get(self.var, 0)

    def _linear_step(self, e: ex.Expr):
        """The lane's coefficient in ``e`` read off its sums and its products by constants, whatever
        the other terms are (a row's stride over a symbolic size, ``i0 * (64 * seq)``); None otherwise."""
        if e is self.var:
            return 1
        if not self._depends(e):
            return 0
        if isinstance(e, ex.BinOp) and e.op in ("add", "sub"):
            a, b = self._linear_step(e.a), self._linear_step(e.b)
            if a is None or b is None:
                return None
            return a + b if e.op == "add" else a - b
        if isinstance(e, ex.BinOp) and e.op == "mul":
            for x, k in ((e.a, e.b), (e.b, e.a)):
                if isinstance(k, ex.Const) and k.dtype.is_int:
                    step = self._linear_step(x)
                    return None if step is None else step * int(k.value)
        return None

    def _address(self, buf, flat: ex.Expr, lane: int) -> str:
        """A pointer to ``buf[flat]`` at ``lane``. Where the lanes are a constant stride apart, lane
        k is lane 0's pointer moved by k strides: the index is simplified once, not once a lane."""
        fn = self.fn
        storage = buf.dtype.llvm_storage
        if lane and (id(flat), "stride") not in self.addresses:
            self.addresses[id(flat), "stride"] = (flat, self._lane_stride(flat))
        stride = self.addresses[id(flat), "stride"][1] if lane else None
        if stride is not None:
            p = fn.tmp("p")
            fn.emit(f"{p} = getelementptr inbounds {storage}, ptr {self._address(buf, flat, 0)}, i64 {stride * lane}")
            return p
        key = (id(buf), id(flat), lane)  # buffers live as long as the kernel; flat is held below
        if key not in self.addresses:
            idx = fn.value(ex.simplify(ex.substitute(flat, {self.var: ex.const(lane, "int64")})))
            p = fn.tmp("p")
            fn.emit(f"{p} = getelementptr inbounds {storage}, ptr {fn.ptrs[buf]}, i64 {idx}")
            self.addresses[key] = (flat, p)  # holds flat, so its id is not reused
        return self.addresses[key][1]

    def _load(self, e: ex.Load) -> str:
        fn = self.fn
        buf = e.tensor
        flat = self._flat(buf, e.indices)
        ty = buf.dtype.llvm
        stride = self._lane_stride(flat)
        if stride == 1:
            p = self._address(buf, flat, 0)
            out = fn.tmp("vl")
            fn.emit(f"{out} = load {self.vty(ty)}, ptr {p}, align {buf.dtype.itemsize}")
            return out
        if stride in (2, 3, 4):
            # One masked wide load of the span (no lane past the last one needed is
            # touched), then a shuffle that keeps every stride-th element. The
            # wide vector is a whole number of vectors (the last lanes masked off):
            # an odd width (31 lanes for stride 2) was split into pieces down to
            # single elements (docs/measurements.md).
            need = (self.w - 1) * stride + 1
            span = stride * self.w
            wide = f"<{span} x {ty}>"
            mask = "<" + ", ".join(f"i1 {'true' if k < need else 'false'}" for k in range(span)) + ">"
            p = self._address(buf, flat, 0)
            name = f"llvm.masked.load.v{span}{_sfx(ty)}.p0"
            fn.module.declare(name, f"declare {wide} @{name}(ptr, i32, <{span} x i1>, {wide})")
            raw, out = fn.tmp("vw"), fn.tmp("vs")
            fn.emit(f"{raw} = call {wide} @{name}(ptr {p}, i32 {buf.dtype.itemsize}, <{span} x i1> {mask}, "
                    f"{wide} poison)")
            picks = ", ".join(f"i32 {k * stride}" for k in range(self.w))
            fn.emit(f"{out} = shufflevector {wide} {raw}, {wide} poison, <{self.w} x i32> <{picks}>")
            return out
        vec = "poison"
        for lane in range(self.w):  # a gather, one lane at a time
            p = self._address(buf, flat, lane)
            x, nxt = fn.tmp("ld"), fn.tmp("vg")
            fn.emit(f"{x} = load {ty}, ptr {p}, align {buf.dtype.itemsize}")
            fn.emit(f"{nxt} = insertelement {self.vty(ty)} {vec}, {ty} {x}, i64 {lane}")
            vec = nxt
        return vec

    def store(self, s: Store):
        from minicomp.backends.llvm_codegen import accumulation_flags

        self.accumulations = accumulation_flags(s)
        fn = self.fn
        buf = s.buffer
        ty = buf.dtype.llvm
        val = self.vector(s.value if s.value.dtype == buf.dtype else ex.cast(buf.dtype, s.value))
        flat = self._flat(buf, s.indices)
        if self._lane_stride(flat) == 1:
            p = self._address(buf, flat, 0)
            fn.emit(f"store {self.vty(ty)} {val}, ptr {p}, align {buf.dtype.itemsize}")
            return
        for lane in range(self.w):  # a scatter
            p = self._address(buf, flat, lane)
            x = fn.tmp("ex")
            fn.emit(f"{x} = extractelement {self.vty(ty)} {val}, i64 {lane}")
            fn.emit(f"store {ty} {x}, ptr {p}, align {buf.dtype.itemsize}")


def _sfx(ty: str) -> str:
    return {"float": "f32", "double": "f64"}.get(ty, ty)


def emit_simd_loop(fn, loop) -> None:
    """Emit ``loop`` (kind simd) as vector code; the body must be simd_supported."""
    stores = loop.body.stmts if isinstance(loop.body, Seq) else [loop.body]
    em = SimdEmitter(fn, loop.var, loop.extent)
    saved = fn.vars.get(loop.var)
    fn.vars[loop.var] = "0"  # scalar parts see lane 0; vector parts use the lane number
    for s in stores:
        fn.memo = {}
        em.memo = {}
        em.addresses = {}
        em.store(s)
    fn.memo = {}
    if saved is None:
        del fn.vars[loop.var]
    else:
        fn.vars[loop.var] = saved
