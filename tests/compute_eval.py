"""Evaluate compute definitions directly with numpy.

This is a second, independent reading of each op's ``compute``: every index
variable becomes a broadcast ``arange``, loads become fancy indexing, and
reductions reduce over extra trailing axes. Tests use it to check that an
op's ``compute`` agrees with its ``reference`` without any code generation.
"""

from __future__ import annotations

import numpy as np

from minicomp.ir import expr as ex
from minicomp.ir.compute import Stage, stage_dag
from minicomp.ir.dtypes import DType

_UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "neg": np.negative,
    "abs": np.abs, "not": np.logical_not, "floor": np.floor,
}


def _np_binop(op: str, a, b, dtype: DType):
    if op == "div" and dtype.is_int:
        from minicomp.ir.opdefs.elementwise import int_div

        return int_div(np.asarray(a), np.asarray(b))
    if op == "mod" and dtype.is_float:  # code generators emit C's fmod (LLVM frem): the dividend's sign
        return np.fmod(a, b)
    if op in ("shl", "shr"):
        from minicomp.ir.opdefs.elementwise import shift_np

        return shift_np(np.asarray(a, dtype.numpy), np.asarray(b, dtype.numpy), op == "shl")
    fns = {
        "xor": np.bitwise_xor if dtype.is_int else np.logical_xor,
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
        "floordiv": np.floor_divide, "mod": np.mod, "max": np.maximum, "min": np.minimum,
        "pow": np.power, "and": np.bitwise_and if dtype.is_int else np.logical_and,
        "or": np.bitwise_or if dtype.is_int else np.logical_or,
        "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
        "eq": np.equal, "ne": np.not_equal,
    }
    return fns[op](a, b)


def evaluate_stage(stage: Stage, env: dict) -> np.ndarray:
    """The array a stage computes, given arrays for the tensors it loads."""
    red = stage.reduce
    raxes = red.axes if red is not None else ()
    ndim = len(stage.shape) + len(raxes)
    bind: dict = {}
    for k, v in enumerate(stage.axes):
        shape = [1] * ndim
        shape[k] = stage.shape[k]
        bind[v] = np.arange(stage.shape[k], dtype=np.int64).reshape(shape)
    for k, (v, n) in enumerate(raxes):
        shape = [1] * ndim
        shape[len(stage.shape) + k] = n
        bind[v] = np.arange(n, dtype=np.int64).reshape(shape)
    body = red.body if red is not None else stage.body
    with np.errstate(all="ignore"):
        val = np.broadcast_to(_eval(body, bind, env), tuple(stage.shape) + tuple(n for _, n in raxes))
        if red is not None:
            axes = tuple(range(len(stage.shape), ndim))
            if val.size == 0 and red.op in ("max", "min"):
                val = np.zeros(stage.shape, stage.dtype.numpy)
            else:
                val = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}[red.op](val, axis=axes)
    return np.asarray(val).astype(stage.dtype.numpy)


def _eval(e: ex.Expr, bind: dict, env: dict):
    if isinstance(e, ex.Const):
        return e.dtype.numpy.type(e.value)
    if isinstance(e, ex.Var):
        return bind[e]
    if isinstance(e, ex.Load):
        arr = env[id(e.tensor)]
        if not e.indices:
            return arr[()]
        idx = tuple(np.asarray(_eval(i, bind, env), dtype=np.int64) for i in e.indices)
        return arr[idx]
    if isinstance(e, ex.BinOp):
        a, b = _eval(e.a, bind, env), _eval(e.b, bind, env)
        out = _np_binop(e.op, a, b, e.a.dtype)
        return out if e.op in ex.CMP_OPS or e.op in ("and", "or") else np.asarray(out).astype(e.dtype.numpy)
    if isinstance(e, ex.Call):
        x = _eval(e.args[0], bind, env)
        if e.fn == "erf":
            from minicomp.ir.opdefs.elementwise import np_erf

            return np_erf(x).astype(e.dtype.numpy)
        fn = ex.EXTERN_NUMPY[e.fn] if e.fn in ex.EXTERN_NUMPY else _UNARY[e.fn]
        return np.asarray(fn(x)).astype(e.dtype.numpy)
    if isinstance(e, ex.Select):
        return np.where(_eval(e.cond, bind, env), _eval(e.a, bind, env), _eval(e.b, bind, env))
    if isinstance(e, ex.Bitcast):
        return np.array(_eval(e.x, bind, env), dtype=e.x.dtype.numpy, order="C").view(e.dtype.numpy)
    if isinstance(e, ex.Cast):
        from minicomp.ir.opdefs.elementwise import cast_np

        return cast_np(np.asarray(_eval(e.x, bind, env)), e.dtype)
    raise TypeError(f"cannot evaluate {type(e).__name__}")


def evaluate_compute(outputs: list[Stage], inputs: dict) -> list[np.ndarray]:
    """Evaluate the stage DAG behind ``outputs``; ``inputs`` maps tensor id to array."""
    env = dict(inputs)
    for st in stage_dag(outputs):
        env[id(st)] = evaluate_stage(st, env)
    return [env[id(o)] for o in outputs]
