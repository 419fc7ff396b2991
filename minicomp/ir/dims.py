"""Symbolic sizes: a dimension declared with a range (``mc.Dim``) and the
integer polynomials over such dimensions that shape inference makes of them.

``Dim("batch", 1, 256)`` stands wherever a size goes. Arithmetic on it builds
a :class:`Size` (``2 * batch + 1``, ``batch * seq``); sizes compare by value,
so two shapes built apart from the same dimensions are equal. A comparison
that the declared ranges decide gives a bool (``batch >= 1`` is True). A
question the ranges cannot answer, or a use that needs a Python int
(``range(batch)``, ``int(batch)``), raises :class:`SymbolicSizeError`, which
the op registry reports as "this op needs that dimension static": code that
was written for ints fails loudly on a symbol, never silently.

A symbolic size is never 1 for broadcasting: a dimension that is 1 at some
calls and larger at others would need two programs.
"""

from __future__ import annotations

from minicomp.errors import MinicompError, RuntimeInputError


class SymbolicSizeError(MinicompError):
    """A symbolic size was used where only a static one can go."""


class Size:
    """An integer polynomial over dimensions: ``terms`` maps a sorted tuple of
    dimension keys ``(name, min, max)`` (repeated for powers; ``()`` for the
    constant) to its coefficient. Make them with :class:`Dim` and arithmetic;
    a result without dimensions is a plain int."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: dict):
        self.terms = terms
        self._hash = None

    # -- arithmetic: results are Sizes, or ints when no dimension is left --------------------------

    def __add__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        terms = dict(self.terms)
        for key, c in other.items():
            terms[key] = terms.get(key, 0) + c
        return make(terms)

    __radd__ = __add__

    def __neg__(self):
        return make({key: -c for key, c in self.terms.items()})

    def __sub__(self, other):
        other = _as_terms(other)
        return NotImplemented if other is None else self + make({key: -c for key, c in other.items()})

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        terms: dict = {}
        for ka, ca in self.terms.items():
            for kb, cb in other.items():
                key = tuple(sorted(ka + kb))
                terms[key] = terms.get(key, 0) + ca * cb
        return make(terms)

    __rmul__ = __mul__

    def __floordiv__(self, k):
        """Exact division by an int: every coefficient must divide (``(2 * batch) // 2``); a floor
        that depends on the size (``batch // 2``) has no polynomial and is refused."""
        if not _is_int(k) or k == 0:
            raise SymbolicSizeError(f"{self} // {k!r}: a symbolic size divides only by a nonzero int")
        if k < 0:
            return (-self) // -k
        if all(c % k == 0 for key, c in self.terms.items() if key):
            return make({key: c // k for key, c in self.terms.items()})
        raise SymbolicSizeError(f"{self} // {k}: the quotient depends on the size (only exact divisions "
                                f"of a symbolic size are supported)")

    def __mod__(self, k):
        if not _is_int(k) or k <= 0:
            raise SymbolicSizeError(f"{self} % {k!r}: a symbolic size has a remainder only by a positive int")
        if all(c % k == 0 for key, c in self.terms.items() if key):
            return self.terms.get((), 0) % k
        raise SymbolicSizeError(f"{self} % {k}: the remainder depends on the size")

    def __rfloordiv__(self, other):
        raise SymbolicSizeError(f"{other!r} // {self}: division by a symbolic size")

    def __rmod__(self, other):
        raise SymbolicSizeError(f"{other!r} % {self}: remainder by a symbolic size")

    def __truediv__(self, other):
        raise SymbolicSizeError(f"{self} / {other!r}: a symbolic size is an integer")

    __rtruediv__ = __truediv__

    # -- comparison: equal by value; an order only where the ranges decide it ----------------------

    def __eq__(self, other):
        if isinstance(other, Size):
            return self.terms == other.terms
        if _is_int(other):
            return False  # a Size has a dimension; made from ints alone it would be an int
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(tuple(sorted(self.terms.items())))
        return self._hash

    def _decide(self, other, op: str, holds) -> bool:
        other_terms = _as_terms(other)
        if other_terms is None:
            return NotImplemented
        lo, hi = bounds(self - other)
        verdict = holds(lo, hi)
        if verdict is None:
            raise SymbolicSizeError(f"whether {self} {op} {other} depends on the sizes at the call")
        return verdict

    def __lt__(self, other):
        return self._decide(other, "<", lambda lo, hi: True if hi < 0 else False if lo >= 0 else None)

    def __le__(self, other):
        return self._decide(other, "<=", lambda lo, hi: True if hi <= 0 else False if lo > 0 else None)

    def __gt__(self, other):
        return self._decide(other, ">", lambda lo, hi: True if lo > 0 else False if hi <= 0 else None)

    def __ge__(self, other):
        return self._decide(other, ">=", lambda lo, hi: True if lo >= 0 else False if hi < 0 else None)

    def __bool__(self):
        lo, hi = bounds(self)
        if lo > 0 or hi < 0:
            return True
        if lo == hi == 0:
            return False
        raise SymbolicSizeError(f"whether {self} is 0 depends on the sizes at the call")

    def __int__(self):
        raise SymbolicSizeError(f"{self} is symbolic: this needs a static size")

    __index__ = __int__

    # -- what else a size is asked ----------------------------------------------------------------

    def dims(self) -> list[tuple]:
        """The dimension keys ``(name, min, max)`` it depends on, by name."""
        return sorted({d for key in self.terms for d in key})

    def value(self, sizes: dict) -> int:
        """Its value when each dimension (by name) has the size ``sizes[name]``."""
        total = 0
        for key, c in self.terms.items():
            for name, _, _ in key:
                c *= sizes[name]
            total += c
        return total

    def __str__(self):
        parts = []
        for key, c in sorted(self.terms.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            names = "*".join(name for name, _, _ in key)
            if not names:
                parts.append(str(c))
            elif c == 1:
                parts.append(names)
            elif c == -1:
                parts.append(f"-{names}")
            else:
                parts.append(f"{c}*{names}")
        return "+".join(parts).replace("+-", "-")  # compact: the IR text format reads it back

    __repr__ = __str__


class Dim(Size):
    """A symbolic dimension: ``Dim("batch", 1, 256)`` is any size from 1 to 256,
    fixed at each call. ``name`` is how errors, dumps and the runtime speak of it."""

    __slots__ = ("name", "min", "max")

    def __init__(self, name: str, min: int, max: int):  # noqa: A002 - the natural names of a range
        if not isinstance(name, str) or not name.isidentifier():
            raise MinicompError(f"Dim name {name!r} must be an identifier")
        if not (_is_int(min) and _is_int(max)) or not 0 <= min <= max:
            raise MinicompError(f"Dim {name}: the range must be integers 0 <= min <= max, got {min!r}..{max!r}")
        super().__init__({((name, int(min), int(max)),): 1})
        self.name, self.min, self.max = name, int(min), int(max)

    def __reduce__(self):
        return Dim, (self.name, self.min, self.max)


def make(terms: dict):
    """A Size of ``terms`` without zero coefficients, or the int it is when no dimension is left."""
    terms = {key: c for key, c in terms.items() if c}
    if all(not key for key in terms):
        return terms.get((), 0)
    return Size(terms)


def bounds(size) -> tuple[int, int]:
    """The least and greatest value of ``size`` over the declared ranges (sound, not always tight:
    each term is bounded alone)."""
    if _is_int(size):
        return int(size), int(size)
    lo = hi = 0
    for key, c in size.terms.items():
        t_lo = t_hi = 1
        for _, d_lo, d_hi in key:
            t_lo, t_hi = t_lo * d_lo, t_hi * d_hi
        lo += min(c * t_lo, c * t_hi)
        hi += max(c * t_lo, c * t_hi)
    return lo, hi


def upper(size) -> int:
    """The greatest value ``size`` (an int, a :class:`Size` or an int64 expression over dimension
    variables, as loop IR has them) takes: what memory is planned for and schedules decide by."""
    return size_range(size)[1]


def lower(size) -> int:
    """The least value ``size`` takes (see :func:`upper`)."""
    return size_range(size)[0]


def size_range(size) -> tuple[int, int]:
    if isinstance(size, Size) or _is_int(size):
        return bounds(size)
    from minicomp.ir import expr as ex

    found = ex.bounds(size, {})
    if found is None:
        raise SymbolicSizeError(f"{ex.format_expr(size)} has no known bound")
    return found


def at_sizes(size, sizes: dict) -> int:
    """The value of ``size`` (an int, a :class:`Size`, or an int64 expression over dimension variables)
    when each dimension has the size ``sizes[name]``."""
    if isinstance(size, Size):
        return size.value(sizes)
    if _is_int(size):
        return int(size)
    from minicomp.ir import expr as ex

    folded = ex.with_sizes(size, sizes)
    if not isinstance(folded, ex.Const):
        raise SymbolicSizeError(f"{ex.format_expr(size)} is not a size")
    return int(folded.value)


def corners(dims: list[tuple], limit: int = 64) -> list[dict]:
    """Size assignments at the ends of the ranges of ``dims`` (keys ``(name, min, max)``): every
    combination of each dimension's min and max (the first ``limit``), where bounds are checked."""
    out: list[dict] = [{}]
    for name, lo, hi in dims:
        out = [{**c, name: v} for c in out for v in dict.fromkeys((lo, hi))][:limit]
    return out


def static_or_symbolic(shape) -> tuple:
    """``shape`` with each size a Python int or a symbolic :class:`Size` (numpy ints become ints)."""
    return tuple(d if isinstance(d, Size) else int(d) for d in shape)


def symbolic_dims(shape) -> list[tuple]:
    """The dimension keys a shape depends on."""
    return sorted({d for s in shape if isinstance(s, Size) for d in s.dims()})


def _is_int(x) -> bool:
    import numpy as np

    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _as_terms(x) -> dict | None:
    if isinstance(x, Size):
        return x.terms
    if _is_int(x):
        return {(): int(x)}
    return None


def concrete_attrs(attrs, sizes: dict) -> dict:
    """An op's attributes with every symbolic size in them (a reshape's target) evaluated at ``sizes``."""
    def fix(v):
        if isinstance(v, Size):
            return v.value(sizes)
        if isinstance(v, tuple):
            return tuple(fix(x) for x in v)
        return v

    return {k: fix(v) for k, v in attrs.items()}


def lone_dim(size) -> tuple | None:
    """The key ``(name, min, max)`` of a size that is one dimension by itself, else None."""
    if isinstance(size, Size) and len(size.terms) == 1:
        ((key, c),) = size.terms.items()
        if c == 1 and len(key) == 1:
            return key[0]
    return None


def concrete(shape, sizes: dict) -> tuple[int, ...]:
    """``shape`` with every symbolic size evaluated at ``sizes`` (dimension name -> int)."""
    return tuple(d.value(sizes) if isinstance(d, Size) else d for d in shape)


class SizeReader:
    """Reads the size of each symbolic dimension from the arrays given for graph input ``values``
    (planned once per graph: a model reads them at every call)."""

    def __init__(self, values):
        self.names = [v.name for v in values]
        # Dimensions that stand alone in a shape give the sizes; the rest (2*batch, batch*seq) are checked.
        self.lone = [(k, axis, key) for k, v in enumerate(values) for axis, d in enumerate(v.shape)
                     if (key := lone_dim(d)) is not None]
        given = {key[0] for _, _, key in self.lone}
        self.made = [(k, axis, d) for k, v in enumerate(values) for axis, d in enumerate(v.shape)
                     if isinstance(d, Size) and lone_dim(d) is None]
        self.orphans = sorted({name for _, _, d in self.made for name, _, _ in d.dims()} - given)

    def read(self, arrays) -> dict[str, int]:
        """The sizes, each checked against its range and everywhere else it appears; a mismatch is a
        :class:`~minicomp.errors.RuntimeInputError` naming the input, the dimension, the size and
        the range."""
        sizes: dict[str, int] = {}
        where: dict[str, tuple] = {}  # the input and axis that gave each size first
        for k, axis, (name, lo, hi) in self.lone:
            n = int(arrays[k].shape[axis])
            if not lo <= n <= hi:
                raise RuntimeInputError(f"input '{self.names[k]}' has {n} at axis {axis}, dimension {name}, which "
                                        f"is declared {lo}..{hi}; compile with a wider range to call it so")
            if sizes.setdefault(name, n) != n:
                k0, axis0 = where[name]
                raise RuntimeInputError(f"input '{self.names[k]}' has {n} at axis {axis}, dimension {name}, but "
                                        f"input '{self.names[k0]}' axis {axis0} gave it {sizes[name]}")
            where.setdefault(name, (k, axis))
        if self.orphans:
            raise RuntimeInputError(f"dimension {self.orphans[0]} is given by no input axis of its own, so the "
                                    f"sizes made of it cannot be checked")
        for k, axis, d in self.made:
            n = arrays[k].shape[axis]
            if d.value(sizes) != n:
                raise RuntimeInputError(f"input '{self.names[k]}' has {n} at axis {axis}, where {d} is "
                                        f"{d.value(sizes)} ({_show(sizes)})")
        return sizes


def _show(sizes: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(sizes.items()))
