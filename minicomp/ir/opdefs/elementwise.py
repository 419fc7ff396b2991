"""Elementwise ops: unary math, casts, broadcasting binary ops, ``where``.

Integer division truncates toward zero (like C and ONNX Runtime) and a zero
divisor gives 0 instead of trapping: generated code must never fault on data.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.compute import compute
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import OpDef, broadcast_index, broadcast_shapes, register_op

SQRT_HALF = 1.0 / math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _check_kind(t: TensorType, kind: str, what: str = "input"):
    ok = {
        "float": t.dtype.is_float,
        "numeric": t.dtype.is_float or t.dtype.is_int,
        "int": t.dtype.is_int,
        "bool": t.dtype.is_bool,
        "any": True,
    }[kind]
    if not ok:
        want = {"float": "a float dtype", "numeric": "a numeric (float or int) dtype", "int": "an integer dtype",
                "bool": "bool"}[kind]
        raise ShapeError(f"{what} has dtype {t.dtype.name}, but this op needs {want}")


_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_erf(x: np.ndarray) -> np.ndarray:
    """erf in numpy (numpy has none), computed in float64."""
    return _erf(np.asarray(x, dtype=np.float64)) if np.size(x) else np.asarray(x, np.float64)


def int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division toward zero; division by zero gives 0, and the one
    overflow (the most negative value / -1) wraps, as in generated code."""
    safe = np.where(b == 0, 1, b)
    with np.errstate(over="ignore"):  # abs() of the most negative value would overflow: floor, then round up
        q = a // safe
        q = np.where((a - q * safe != 0) & ((a < 0) != (safe < 0)), q + 1, q)
    return np.where(b == 0, 0, q).astype(np.result_type(a, b))


def shift_np(a: np.ndarray, b: np.ndarray, left: bool) -> np.ndarray:
    """``a << b`` or ``a >> b`` as generated code computes them: an amount
    outside [0, bits) shifts every bit out (0, or the sign for a signed ``>>``)."""
    bits = a.dtype.itemsize * 8
    outside = (b < 0) | (b >= bits)
    safe = np.where(outside, 0, b).astype(a.dtype)
    with np.errstate(all="ignore"):
        shifted = np.left_shift(a, safe) if left else np.right_shift(a, safe)
    fill = np.zeros_like(a) if left or a.dtype.kind == "u" else np.where(a < 0, -1, 0).astype(a.dtype)
    return np.where(outside, fill, shifted).astype(a.dtype)


def register_unary_function(name: str, numpy_fn, c_name: str | None = None, doc: str = "") -> None:
    """Add an elementwise float op ``name`` computed by the C math function
    ``c_name`` (default ``name``; ``sinf`` for float32) in generated code and
    by ``numpy_fn`` in the reference, from outside the package::

        mc.register_unary_function("expm1", np.expm1)
        y = g.expm1(x)
    """
    ex.register_call(name, c_name, numpy_fn)
    _unary(name, numpy_fn, lambda x: ex.call(name, x), doc=doc or f"{name}(x), elementwise (C's {c_name or name}).")


def _unary(name: str, np_fn, expr_fn, kind: str = "float", attrs=None, doc: str = "", widen16: bool = True):
    """Register an elementwise op. ``widen16``: the reference computes a 16-bit float input in float32 and
    rounds once, as compiled code does; False where numpy's own 16-bit loop is the rule (relu's max keeps
    numpy's float16 tie, see ir/numerics.py)."""
    attrs = attrs or {}

    def infer(types, a):
        _check_kind(types[0], kind)
        return [types[0]]

    def reference(x, **a):
        # A 16-bit float op is computed in float32 and rounded once, as the compiled code does (numpy's
        # bfloat16 would round 1 / sqrt(x) twice).
        wide = x.astype(np.float32) if widen16 and dtypes.as_dtype(x.dtype).is_narrow_float else x
        with np.errstate(all="ignore"):
            return np.asarray(np_fn(wide, **a)).astype(x.dtype)

    def comp(x, **a):
        return compute(x.shape, lambda *i: expr_fn(x[i], **a), name)

    register_op(OpDef(name, infer, reference, comp, attrs=attrs, doc=doc))


def _gelu_np(x, approximate):
    xd = x.astype(np.float64)
    if approximate == "tanh":
        return 0.5 * xd * (1.0 + np.tanh(SQRT_2_OVER_PI * (xd + 0.044715 * xd**3)))
    return 0.5 * xd * (1.0 + np_erf(xd * SQRT_HALF))


def _gelu_expr(x, approximate):
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * SQRT_2_OVER_PI
        return x * 0.5 * (ex.call("tanh", inner) + 1.0)
    return x * 0.5 * (ex.call("erf", x * SQRT_HALF) + 1.0)


def _check_gelu(types, a):
    if a["approximate"] not in ("none", "tanh"):
        raise ShapeError(f"approximate must be 'none' or 'tanh', got {a['approximate']!r}")
    return a


def _clip_expr(x, min, max):
    if min is not None:
        x = ex.maximum(x, ex.const(min, x.dtype))
    if max is not None:
        x = ex.minimum(x, ex.const(max, x.dtype))
    return x


def _clip_np(x, min, max):
    if min is not None:
        x = np.maximum(x, np.asarray(min).astype(x.dtype))
    if max is not None:
        x = np.minimum(x, np.asarray(max).astype(x.dtype))
    return x


def _register_unary():
    _unary("neg", np.negative, lambda x: -x, "numeric")
    _unary("abs", np.abs, lambda x: ex.call("abs", x), "numeric")
    _unary("exp", np.exp, lambda x: ex.call("exp", x))
    _unary("log", np.log, lambda x: ex.call("log", x))
    _unary("sqrt", np.sqrt, lambda x: ex.call("sqrt", x))
    _unary("rsqrt", lambda x: 1.0 / np.sqrt(x), lambda x: 1.0 / ex.call("sqrt", x))
    _unary("reciprocal", lambda x: 1.0 / x, lambda x: 1.0 / x)
    _unary("tanh", np.tanh, lambda x: ex.call("tanh", x))
    _unary("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x)), lambda x: 1.0 / (ex.call("exp", -x) + 1.0))
    _unary("relu", lambda x: np.maximum(x, 0).astype(x.dtype), lambda x: ex.maximum(x, 0), "numeric", widen16=False)
    _unary("leaky_relu", lambda x, alpha: np.where(x >= 0, x, x * x.dtype.type(alpha)),
           lambda x, alpha: ex.select(ex.ge(x, 0), x, x * alpha), attrs={"alpha": 0.01})
    _unary("clip", _clip_np, _clip_expr, "numeric", attrs={"min": None, "max": None})
    _unary("erf", np_erf, lambda x: ex.call("erf", x))
    _unary("floor", np.floor, lambda x: ex.call("floor", x))
    _unary("logical_not", np.logical_not, lambda x: ex.call("not", x), "bool")
    _unary("bitwise_not", np.invert, lambda x: ex.BinOp("xor", x, ex.const(-1, x.dtype)), "int",
           doc="~x: every bit flipped, on integers.")
    _unary("sin", np.sin, lambda x: ex.call("sin", x))
    _unary("cos", np.cos, lambda x: ex.call("cos", x))
    _unary("silu", lambda x: x / (1.0 + np.exp(-x)), lambda x: x / (ex.call("exp", -x) + 1.0),
           doc="x * sigmoid(x) (swish).")
    register_op(OpDef(
        "gelu",
        infer=lambda types, a: (_check_kind(types[0], "float"), [types[0]])[1],
        reference=lambda x, approximate: _gelu_np(x, approximate).astype(x.dtype),
        compute=lambda x, approximate: compute(x.shape, lambda *i: _gelu_expr(x[i], approximate), "gelu"),
        attrs={"approximate": "none"},
        normalize=_check_gelu,
        doc="GELU, exact (erf) or with the tanh approximation.",
    ))


def _cast_normalize(types, a):
    a["dtype"] = dtypes.as_dtype(a["dtype"]).name
    return a


def cast_np(x: np.ndarray, dtype) -> np.ndarray:
    """numpy's astype, except float to integer: NaN gives 0 and values out of
    range saturate to the integer limits (the rule generated code follows)."""
    target = dtypes.as_dtype(dtype).numpy
    # bfloat16 (ml_dtypes) has numpy kind "V", not "f": ask minicomp's dtype.
    if dtypes.as_dtype(x.dtype).is_float and target.kind in "iu":
        info = np.iinfo(target)
        xd = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
        high, low = xd >= float(info.max), xd <= float(info.min)  # float64 cannot hold int64's maximum
        out = np.array(np.trunc(np.where(high | low, 0.0, xd)), dtype=target)  # a writable array, 0-d too
        out[high] = info.max
        out[low] = info.min
        return out
    return x.astype(target)


register_op(OpDef(
    "cast",
    infer=lambda types, a: [TensorType(types[0].shape, dtypes.as_dtype(a["dtype"]))],
    reference=cast_np,
    compute=lambda x, dtype: compute(x.shape, lambda *i: _cast_expr(x[i], dtypes.as_dtype(dtype)), "cast"),
    attrs={"dtype": None},
    normalize=_cast_normalize,
    doc="Convert to another dtype (float to int truncates toward zero, NaN gives 0 and values out of range "
        "saturate; nonzero to bool is true).",
))


def _bitcast_infer(types, a):
    src, dst = types[0].dtype, dtypes.as_dtype(a["dtype"])
    if src.itemsize != dst.itemsize:
        raise ShapeError(f"bitcast needs types of one size: {src.name} has {src.itemsize} bytes, {dst.name} "
                         f"{dst.itemsize}")
    return [TensorType(types[0].shape, dst)]


register_op(OpDef(
    "bitcast",
    infer=_bitcast_infer,
    reference=lambda x, dtype: np.array(x, order="C").view(dtypes.as_dtype(dtype).numpy),
    compute=lambda x, dtype: compute(x.shape, lambda *i: ex.Bitcast(dtypes.as_dtype(dtype), x[i]), "bitcast"),
    attrs={"dtype": None},
    normalize=_cast_normalize,
    doc="The bits of each element read as another type of the same size (no conversion of the value).",
))


def _cast_expr(v, dtype):
    if dtype.is_bool and not v.dtype.is_bool:
        return ex.binop("ne", v, ex.const(0, v.dtype))
    return ex.cast(dtype, v)


# -- binary ---------------------------------------------------------------------

def _binary_infer(kind: str, result_bool: bool = False):
    def infer(types, a):
        x, y = types
        if x.dtype != y.dtype:
            raise ShapeError(f"input dtypes {x.dtype.name} and {y.dtype.name} differ; cast one first")
        _check_kind(x, kind)
        shape = broadcast_shapes(x.shape, y.shape)
        return [TensorType(shape, dtypes.bool_ if result_bool else x.dtype)]

    return infer


def _binary(name, np_fn, expr_fn, kind="numeric", result_bool=False):
    def comp(x, y):
        shape = broadcast_shapes(x.shape, y.shape)
        return compute(
            shape,
            lambda *i: expr_fn(x[broadcast_index(i, x.shape, shape)], y[broadcast_index(i, y.shape, shape)]),
            name,
        )

    def reference(x, y):
        with np.errstate(all="ignore"):
            out = np_fn(x, y)
        return np.asarray(out).astype(np.bool_ if result_bool else x.dtype)

    register_op(OpDef(name, _binary_infer(kind, result_bool), reference, comp, num_inputs=2))


def _div_np(x, y):
    if np.issubdtype(x.dtype, np.integer):
        return int_div(x, y)
    return np.divide(x, y)


def _register_binary():
    _binary("add", np.add, lambda a, b: a + b)
    _binary("sub", np.subtract, lambda a, b: a - b)
    _binary("mul", np.multiply, lambda a, b: a * b)
    _binary("div", _div_np, lambda a, b: a / b)
    _binary("pow", np.power, lambda a, b: ex.binop("pow", a, b), kind="float")
    _binary("maximum", np.maximum, ex.maximum)
    _binary("minimum", np.minimum, ex.minimum)
    _binary("less", np.less, ex.lt, result_bool=True)
    _binary("greater", np.greater, ex.gt, result_bool=True)
    _binary("equal", np.equal, ex.eq, kind="any", result_bool=True)
    _binary("less_equal", np.less_equal, ex.le, result_bool=True)
    _binary("greater_equal", np.greater_equal, ex.ge, result_bool=True)
    _binary("not_equal", np.not_equal, lambda a, b: ex.binop("ne", a, b), kind="any", result_bool=True)
    _binary("floor_div", _floor_div_np, _floor_div_expr)
    _binary("mod", _mod_np, _mod_expr)
    _binary("fmod", _fmod_np, _fmod_expr)
    _binary("logical_and", np.logical_and, lambda a, b: ex.BinOp("and", a, b), kind="bool", result_bool=True)
    _binary("logical_or", np.logical_or, lambda a, b: ex.BinOp("or", a, b), kind="bool", result_bool=True)
    _binary("logical_xor", np.logical_xor, lambda a, b: ex.binop("ne", a, b), kind="bool", result_bool=True)
    _binary("bitwise_and", np.bitwise_and, lambda a, b: ex.binop("and", a, b), kind="int")
    _binary("bitwise_or", np.bitwise_or, lambda a, b: ex.binop("or", a, b), kind="int")
    _binary("bitwise_xor", np.bitwise_xor, lambda a, b: ex.binop("xor", a, b), kind="int")
    _binary("shift_left", lambda a, b: shift_np(a, b, True), lambda a, b: ex.binop("shl", a, b), kind="int")
    _binary("shift_right", lambda a, b: shift_np(a, b, False), lambda a, b: ex.binop("shr", a, b), kind="int")


def _fmod_np(x, y):
    """C's fmod: the remainder with the sign of the dividend (0 for a zero integer divisor)."""
    if np.issubdtype(x.dtype, np.integer):
        return np.where(y == 0, 0, x - int_div(x, y) * y).astype(x.dtype)
    return np.fmod(x, y)


def _fmod_expr(a, b):
    if a.dtype.is_float:
        return ex.binop("mod", a, b)  # frem / fmodf: C's fmod
    zero = ex.const(0, a.dtype)
    return ex.select(ex.eq(b, zero), zero, a - (a / b) * b)


# ``//`` and ``%`` (Python's operators on tensors): float ``//`` is floor(x / y)
# and float ``%`` is C's fmod moved into the divisor's sign (numpy's mod);
# integers floor toward minus infinity, and a zero divisor gives 0 for both
# (generated code never traps).
def _floor_div_np(x, y):
    if np.issubdtype(x.dtype, np.integer):
        q = int_div(x, y)
        return np.where((y != 0) & (q * y != x) & ((x < 0) != (y < 0)), q - 1, q).astype(x.dtype)
    return np.floor(x / y)


def _mod_np(x, y):
    if np.issubdtype(x.dtype, np.integer):
        return np.where(y == 0, 0, x - _floor_div_np(x, y) * y).astype(x.dtype)
    return np.mod(x, y)


def _floor_div_expr(a, b):
    if a.dtype.is_float:
        return ex.call("floor", a / b)
    q = a / b  # truncating, with 0 for a zero divisor (legalized)
    if a.dtype.is_unsigned:  # no operand is negative: truncating is flooring
        return q
    zero = ex.const(0, a.dtype)
    inexact = ex.logical_and(ex.binop("ne", q * b, a), ex.binop("ne", ex.lt(a, zero), ex.lt(b, zero)))
    return ex.select(ex.logical_and(ex.binop("ne", b, zero), inexact), q - ex.const(1, a.dtype), q)


def _mod_expr(a, b):
    if a.dtype.is_float:
        # C's fmod (exact), moved into the divisor's sign: x % inf is x or inf, as numpy's
        r = ex.binop("mod", a, b)
        zero = ex.const(0, a.dtype)
        flip = ex.logical_and(ex.binop("ne", r, zero), ex.binop("ne", ex.lt(r, zero), ex.lt(b, zero)))
        return ex.select(flip, r + b, r)
    zero = ex.const(0, a.dtype)
    return ex.select(ex.eq(b, zero), zero, a - _floor_div_expr(a, b) * b)


def _where_infer(types, a):
    c, x, y = types
    if not c.dtype.is_bool:
        raise ShapeError(f"condition has dtype {c.dtype.name}, but where needs bool")
    if x.dtype != y.dtype:
        raise ShapeError(f"branch dtypes {x.dtype.name} and {y.dtype.name} differ; cast one first")
    return [TensorType(broadcast_shapes(c.shape, x.shape, y.shape), x.dtype)]


def _where_compute(c, x, y):
    shape = broadcast_shapes(c.shape, x.shape, y.shape)
    return compute(shape, lambda *i: ex.select(
        c[broadcast_index(i, c.shape, shape)],
        x[broadcast_index(i, x.shape, shape)],
        y[broadcast_index(i, y.shape, shape)]), "where")


register_op(OpDef("where", _where_infer, lambda c, x, y: np.where(c, x, y), _where_compute, num_inputs=3,
                  doc="Pick from x where cond is true, else from y, with broadcasting."))
_register_unary()
_register_binary()

# Float functions of the C math library: generated code calls ``tanf``/``tan``
# and so on (``round`` is ``rint``: halves to even, as ONNX and torch round).
for _name, _np_fn, _c_name in (
        ("tan", np.tan, "tan"), ("asin", np.arcsin, "asin"), ("acos", np.arccos, "acos"), ("atan", np.arctan, "atan"),
        ("sinh", np.sinh, "sinh"), ("cosh", np.cosh, "cosh"), ("asinh", np.arcsinh, "asinh"),
        ("acosh", np.arccosh, "acosh"), ("atanh", np.arctanh, "atanh"), ("ceil", np.ceil, "ceil"),
        ("round", np.rint, "rint")):
    register_unary_function(_name, _np_fn, _c_name)
