"""The dtypes minicomp knows, with their numpy, LLVM and C spellings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minicomp.errors import MinicompError


@dataclass(frozen=True)
class DType:
    """A scalar element type.

    ``short`` is the spelling used in the IR text (``f32``), ``llvm`` the LLVM
    IR type used for arithmetic, ``llvm_storage`` the type used in memory
    (``bool`` is ``i1`` in registers but one byte in memory; ``f16`` is
    computed in ``float`` and stored as ``half``), and ``c`` the C spelling.
    """

    name: str
    short: str
    # The numpy dtype, or a function that makes it (bfloat16's comes from ml_dtypes, whose import takes
    # half a second: it is made on first use). Not part of equality or the hash, which the name fixes.
    numpy_spec: object = field(compare=False, hash=False)
    llvm: str
    llvm_storage: str
    c: str
    itemsize: int

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype of this element type."""
        if callable(self.numpy_spec):
            object.__setattr__(self, "numpy_spec", np.dtype(self.numpy_spec()))
        return self.numpy_spec

    @property
    def is_float(self) -> bool:
        return self.name.startswith(("float", "bfloat"))

    @property
    def is_narrow_float(self) -> bool:
        """float16 and bfloat16: stored in 16 bits, computed in float32."""
        return self.name in ("float16", "bfloat16")

    @property
    def is_int(self) -> bool:
        """Signed or unsigned integer."""
        return self.name.startswith(("int", "uint"))

    @property
    def is_unsigned(self) -> bool:
        return self.name.startswith("uint")

    @property
    def bits(self) -> int:
        return self.itemsize * 8

    def wrap(self, value: int) -> int:
        """``value`` reduced to this integer type's range, two's complement (as a
        store would keep it)."""
        value &= (1 << self.bits) - 1
        if not self.is_unsigned and value >= 1 << (self.bits - 1):
            value -= 1 << self.bits
        return value

    @property
    def is_bool(self) -> bool:
        return self.name == "bool"

    def __str__(self) -> str:
        return self.short

    def __repr__(self) -> str:
        return f"dtypes.{self.name}"


float32 = DType("float32", "f32", np.dtype(np.float32), "float", "float", "float", 4)
float64 = DType("float64", "f64", np.dtype(np.float64), "double", "double", "double", 8)
# float16 is stored as half and computed in float: every x86 core can convert
# but few can do arithmetic in half, and numpy also rounds per operation.
float16 = DType("float16", "f16", np.dtype(np.float16), "float", "half", "__half", 2)
int32 = DType("int32", "i32", np.dtype(np.int32), "i32", "i32", "int", 4)
int64 = DType("int64", "i64", np.dtype(np.int64), "i64", "i64", "long long", 8)
bool_ = DType("bool", "bool", np.dtype(np.bool_), "i1", "i8", "bool", 1)
# Narrow and unsigned integers: LLVM integers have no sign, so the code
# generators pick signed or unsigned instructions (sdiv/udiv, icmp slt/ult,
# sext/zext) from ``is_unsigned``; arithmetic wraps at the type's width, as
# in numpy.
int8 = DType("int8", "i8", np.dtype(np.int8), "i8", "i8", "signed char", 1)
int16 = DType("int16", "i16", np.dtype(np.int16), "i16", "i16", "short", 2)
uint8 = DType("uint8", "u8", np.dtype(np.uint8), "i8", "i8", "unsigned char", 1)
uint16 = DType("uint16", "u16", np.dtype(np.uint16), "i16", "i16", "unsigned short", 2)
uint32 = DType("uint32", "u32", np.dtype(np.uint32), "i32", "i32", "unsigned int", 4)
uint64 = DType("uint64", "u64", np.dtype(np.uint64), "i64", "i64", "unsigned long long", 8)
# bfloat16 is float32's upper half: computed in float, kept in memory as its 16
# bits (an ``i16``), rounded to nearest even on every store and cast.
def _ml_dtypes_bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


bfloat16 = DType("bfloat16", "bf16", _ml_dtypes_bfloat16, "float", "i16", "unsigned short", 2)

ALL_DTYPES = (float32, float64, float16, int32, int64, bool_, int8, int16, uint8, uint16, uint32, uint64, bfloat16)
FLOAT_DTYPES = (float32, float64, float16, bfloat16)
INT_DTYPES = (int32, int64, int8, int16, uint8, uint16, uint32, uint64)
NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES

_BY_NAME = {}
for _d in ALL_DTYPES:
    _BY_NAME[_d.name] = _d
    _BY_NAME[_d.short] = _d
_BY_NAME["bool_"] = bool_


def as_dtype(spec) -> DType:
    """Turn a DType, a name (``"float32"``/``"f32"``), or a numpy dtype into a DType."""
    if isinstance(spec, DType):
        return spec
    if isinstance(spec, str) and spec in _BY_NAME:
        return _BY_NAME[spec]
    try:
        npd = np.dtype(spec)
    except TypeError as exc:
        raise MinicompError(f"unknown dtype {spec!r}") from exc
    for d in ALL_DTYPES:
        if d.name == npd.name and d.numpy == npd:  # (by name first: bfloat16's numpy dtype loads a module)
            return d
    raise MinicompError(
        f"unsupported dtype {npd}; minicomp supports "
        + ", ".join(d.name for d in ALL_DTYPES)
    )
