"""matmul, with numpy's broadcasting of batch dimensions."""

from __future__ import annotations

import numpy as np

from minicomp.errors import ShapeError
from minicomp.ir.compute import compute, reduce, reduce_axis
from minicomp.ir.graph import TensorType
from minicomp.ir.ops import OpDef, broadcast_index, broadcast_shapes, register_op

# -- matmul ---------------------------------------------------------------------


def _matmul_shapes(a, b):
    if a.rank == 0 or b.rank == 0:
        raise ShapeError("matmul needs inputs of rank >= 1")
    if a.dtype != b.dtype:
        raise ShapeError(f"input dtypes {a.dtype.name} and {b.dtype.name} differ; cast one first")
    if a.dtype.is_bool:
        raise ShapeError("matmul needs a numeric dtype, got bool")
    ash = a.shape if a.rank > 1 else (1,) + a.shape
    bsh = b.shape if b.rank > 1 else b.shape + (1,)
    if ash[-1] != bsh[-2]:
        raise ShapeError(f"contracted dimensions differ: {ash[-1]} (last of A) vs {bsh[-2]} (rows of B)")
    batch = broadcast_shapes(ash[:-2], bsh[:-2])
    out = batch + ((ash[-2],) if a.rank > 1 else ()) + ((bsh[-1],) if b.rank > 1 else ())
    return ash, bsh, batch, out


def _matmul_infer(types, attrs):
    *_, out = _matmul_shapes(*types)
    return [TensorType(out, types[0].dtype)]


def _matmul_compute(a, b):
    ta, tb = TensorType(a.shape, a.dtype), TensorType(b.shape, b.dtype)
    ash, bsh, batch, out = _matmul_shapes(ta, tb)
    k_axis = reduce_axis(ash[-1], "k")
    k = k_axis[0]

    def fn(*idx):
        nb = len(batch)
        bidx = idx[:nb]
        rest = list(idx[nb:])
        i = rest.pop(0) if a.ndim > 1 else None
        j = rest.pop(0) if b.ndim > 1 else None
        ia = (broadcast_index(bidx, a.shape[:-2], batch) + (i, k)) if a.ndim > 1 else (k,)
        ib = (broadcast_index(bidx, b.shape[:-2], batch) + (k, j)) if b.ndim > 1 else (k,)
        return reduce("sum", a[ia] * b[ib], [k_axis])

    return compute(out, fn, "matmul")


register_op(OpDef("matmul", _matmul_infer, lambda a, b: np.matmul(a, b).astype(a.dtype),
                  _matmul_compute, num_inputs=2,
                  doc="numpy matmul: batch dimensions broadcast; 1-D operands as in numpy."))
