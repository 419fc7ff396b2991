"""Build graphs from Python.

    g = GraphBuilder("mlp")
    x = g.input("x", (64, 784))
    h = g.relu(x @ g.constant(w1) + g.constant(b1))
    g.output(h @ g.constant(w2))
    graph = g.build()

Every registered op is a method of the builder (``g.softmax(x, axis=-1)``)
and of its tensors (``x.softmax(axis=-1)``). Python operators record nodes
(``+ - * / // % @ **``, the comparisons ``== != < <= > >=``, unary ``-``,
indexing with slices). numpy arrays and
Python scalars mixed into an expression become constants. Shape errors are
raised as the node is built, naming the op, the node and the shapes.
"""

from __future__ import annotations

import itertools

import numpy as np

from minicomp.errors import MinicompError, ShapeError
from minicomp.ir.dtypes import as_dtype
from minicomp.ir.graph import Graph, Node, TensorType, Value
from minicomp.ir.ops import all_ops, get_op

# The most elements one constant may hold (arange, filled tensors): larger ones are surely a mistake.
MAX_CONSTANT_ELEMENTS = 1 << 31


class Tensor:
    """A handle on a value being built; operators record new nodes."""

    __array_priority__ = 1000  # make numpy defer to our reflected operators

    def __init__(self, builder: GraphBuilder, value: Value):
        self.builder = builder
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def ndim(self) -> int:
        return len(self.value.shape)

    def __repr__(self):
        return f"Tensor(%{self.value.name}: {self.value.type})"

    def _other(self, x) -> Tensor:
        return self.builder.as_tensor(x, like=self)

    def _bin(self, op, other, reverse=False):
        o = self._other(other)
        return self.builder.op(op, o, self) if reverse else self.builder.op(op, self, o)

    def __add__(self, o):
        return self._bin("add", o)

    def __radd__(self, o):
        return self._bin("add", o, True)

    def __sub__(self, o):
        return self._bin("sub", o)

    def __rsub__(self, o):
        return self._bin("sub", o, True)

    def __mul__(self, o):
        return self._bin("mul", o)

    def __rmul__(self, o):
        return self._bin("mul", o, True)

    def __truediv__(self, o):
        return self._bin("div", o)

    def __rtruediv__(self, o):
        return self._bin("div", o, True)

    def __pow__(self, o):
        return self._bin("pow", o)

    def __matmul__(self, o):
        return self._bin("matmul", o)

    def __rmatmul__(self, o):
        return self._bin("matmul", o, True)

    def __rpow__(self, o):
        return self._bin("pow", o, True)

    def __floordiv__(self, o):
        return self._bin("floor_div", o)

    def __rfloordiv__(self, o):
        return self._bin("floor_div", o, True)

    def __mod__(self, o):
        return self._bin("mod", o)

    def __rmod__(self, o):
        return self._bin("mod", o, True)

    # Comparisons build nodes (bool tensors), like numpy's; a Tensor is then
    # hashed by identity, and its truth value is refused (it is not known yet).
    def __lt__(self, o):
        return self._bin("less", o)

    def __le__(self, o):
        return self._bin("less_equal", o)

    def __gt__(self, o):
        return self._bin("greater", o)

    def __ge__(self, o):
        return self._bin("greater_equal", o)

    def __eq__(self, o):
        return self._bin("equal", o)

    def __ne__(self, o):
        return self._bin("not_equal", o)

    __hash__ = object.__hash__

    def __bool__(self):
        raise MinicompError(f"the truth value of tensor %{self.name} is not known while the graph is built; "
                            f"use g.where(cond, a, b) to choose between values")

    def __neg__(self):
        return self.builder.op("neg", self)

    def __abs__(self):
        return self.builder.op("abs", self)

    def reshape(self, *shape) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self.builder.op("reshape", self, shape=tuple(shape))

    def transpose(self, *perm) -> Tensor:
        perm = perm[0] if len(perm) == 1 and isinstance(perm[0], (tuple, list)) else perm
        return self.builder.op("transpose", self, perm=tuple(perm) if perm else None)

    @property
    def T(self) -> Tensor:  # noqa: N802 - numpy's spelling
        return self.transpose()

    def astype(self, dtype) -> Tensor:
        return self.builder.op("cast", self, dtype=as_dtype(dtype).name)

    def __getitem__(self, key) -> Tensor:
        """numpy basic indexing: ints, slices, ``None`` and one ``...``."""
        key = key if isinstance(key, tuple) else (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise ShapeError(f"index {key!r} of %{self.name} has more than one '...'")
        n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
        if n_real > self.ndim:
            raise ShapeError(f"index {key!r} has {n_real} entries but %{self.name} has rank {self.ndim}")
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - n_real) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - sum(1 for k in key if k is not None))
        starts, ends, steps, drop, new_axes, axis = [], [], [], [], [], 0
        for pos, k in enumerate(key):
            if k is None:
                new_axes.append(pos)
                continue
            d = self.shape[axis]
            if isinstance(k, (int, np.integer)):
                i = int(k) + d if k < 0 else int(k)
                if not 0 <= i < d:
                    raise ShapeError(f"index {int(k)} is out of range for axis {axis} of %{self.name} "
                                     f"(size {d})")
                starts.append(i), ends.append(i + 1), steps.append(1), drop.append(axis)
            elif isinstance(k, slice):
                r = range(*k.indices(d))
                starts.append(r.start), ends.append(r.stop if r.stop >= 0 else -(d + 1)), steps.append(r.step)
            else:
                raise ShapeError(f"unsupported index {k!r} of %{self.name}; use ints, slices, None, ...")
            axis += 1
        out = self
        if any(s != 0 for s in starts) or any(e != d for e, d in zip(ends, self.shape)) or any(
                s != 1 for s in steps):
            out = self.builder.op("slice", self, starts=starts, ends=ends, steps=steps)
        if drop:
            out = self.builder.op("squeeze", out, axes=drop)
        if new_axes:
            out = self.builder.op("unsqueeze", out, axes=[p - sum(1 for q in drop if q < p) for p in new_axes])
        return out

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in all_ops():
            return lambda *others, **attrs: self.builder.op(name, self, *others, **attrs)
        raise AttributeError(f"Tensor has no attribute or op '{name}'")


def _axis_size(types, attrs):
    """The size of the first input's ``axis`` attribute, if it has one."""
    axis = dict(attrs).get("axis")
    return types[0].shape[axis] if isinstance(axis, int) and types and types[0].shape else None


def _expand_ellipses(equation: str, terms: list[str], out: str | None, ops) -> tuple[list[str], str]:
    """Labels with each ``...`` replaced by letters for the axes it stands for
    (aligned at the right, as in numpy), and the output spelled out: given, or
    the ellipsis axes then the labels that appear once, sorted."""
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    widths = []
    for term, t in zip(terms, ops):
        if term.count("...") > 1 or "." in term.replace("...", ""):
            raise MinicompError(f"einsum '{equation}': malformed ellipsis in '{term}'")
        widths.append(t.ndim - len(term.replace("...", "")) if "..." in term else 0)
    if min(widths, default=0) < 0:
        raise MinicompError(f"einsum '{equation}': more labels than axes")
    width = max(widths, default=0)
    letters = "".join(free[:width])
    terms = [term.replace("...", letters[width - w:]) for term, w in zip(terms, widths)]
    if out is None:  # implicit output: the ellipsis axes, then the labels that appear once, sorted
        named = "".join(terms)
        return terms, letters + "".join(sorted(c for c in set(named) if named.count(c) == 1 and c not in letters))
    if out.count("...") > 1 or "." in out.replace("...", ""):
        raise MinicompError(f"einsum '{equation}': malformed ellipsis in the output '{out}'")
    return terms, out.replace("...", letters)


class GraphBuilder:
    """Records a Graph from Python calls; see the module docstring."""

    def __init__(self, name: str = "main"):
        self.graph = Graph(name=name)
        self._counter = itertools.count()
        self._names: set[str] = set()
        self._built = False
        self._checks: list = []  # (value, (low, high, message)): outputs checked at each call, added last

    def _fresh(self, prefix: str, name: str | None = None) -> str:
        if name is not None:
            if name in self._names:
                raise MinicompError(f"name '{name}' is already used in graph '{self.graph.name}'")
            self._names.add(name)
            return name
        while True:
            cand = f"{prefix}_{next(self._counter)}"
            if cand not in self._names:
                self._names.add(cand)
                return cand

    def input(self, name: str, shape, dtype="float32") -> Tensor:
        """Declare a graph input of the given shape and dtype."""
        v = Value(self._fresh("input", name), TensorType(tuple(shape), as_dtype(dtype)))
        self.graph.inputs.append(v)
        return Tensor(self, v)

    def arange(self, start, stop=None, step=1, dtype="int64", name: str | None = None) -> Tensor:
        """A constant ``[start, start + step, ...)`` below ``stop`` (numpy's arange, ONNX Range)."""
        if stop is None:
            start, stop = 0, start
        if step == 0:
            raise MinicompError("arange: step must not be 0")
        length = max(0, -(-(stop - start) // step)) if all(isinstance(v, int) for v in (start, stop, step)) else \
            max(0, int(np.ceil((stop - start) / step)))
        if length > MAX_CONSTANT_ELEMENTS:
            raise MinicompError(f"arange({start}, {stop}, {step}) would hold {length:,} elements; a constant may "
                                f"hold at most {MAX_CONSTANT_ELEMENTS:,}")
        return self.constant(np.arange(start, stop, step, dtype=as_dtype(dtype).numpy), name=name)

    def einsum(self, equation: str, *operands) -> Tensor:
        """numpy's einsum for one or two operands, as transposes, reshapes,
        sums and one batched matmul (``"bij,bjk->bik"``, ``"ij->ji"``,
        ``"bhqd,bhkd->bhqk"``, ``"...ij,...jk->...ik"``, ``"ii->i"``). Axes an
        ellipsis stands for must have equal lengths in both operands (no
        broadcasting of size 1)."""
        ops = [self.as_tensor(t) for t in operands]
        lhs, arrow, out = equation.replace(" ", "").partition("->")
        terms = lhs.split(",")
        if len(terms) != len(ops) or not 1 <= len(ops) <= 2:
            raise MinicompError(f"einsum '{equation}': {len(terms)} operand labels for {len(ops)} tensors "
                                f"(one or two are supported)")
        terms, out = _expand_ellipses(equation, terms, out if arrow else None, ops)
        size = {}
        for k, (term, t) in enumerate(zip(terms, ops)):
            if len(term) != t.ndim or not term.isalpha() and term:
                raise MinicompError(f"einsum '{equation}': labels '{term}' do not fit %{t.name} of shape "
                                    f"{list(t.shape)} (one letter per axis)")
            terms[k], ops[k] = term, t = self._diagonals(equation, term, t)
            for c, d in zip(term, t.shape):
                if size.setdefault(c, d) != d:
                    raise MinicompError(f"einsum '{equation}': axis '{c}' is {size[c]} in one operand, {d} in another")
        if set(out) - set(size) or len(set(out)) != len(out):
            raise MinicompError(f"einsum '{equation}': output labels '{out}' must be distinct input labels")

        def reduce_alone(term, t, keep):
            """Sum the axes no other operand and not the output uses."""
            gone = [k for k, c in enumerate(term) if c not in keep]
            if gone:
                t = self.op("sum", t, axes=gone)
            return "".join(c for c in term if c in keep), t

        if len(ops) == 1:
            term, t = reduce_alone(terms[0], ops[0], set(out))
            return t if term == out else self.op("transpose", t, perm=tuple(term.index(c) for c in out))
        (ta, a), (tb, b) = (reduce_alone(terms[k], ops[k], set(out) | set(terms[1 - k])) for k in (0, 1))
        batch = [c for c in ta if c in tb and c in out]
        contract = [c for c in ta if c in tb and c not in out]
        m = [c for c in ta if c not in tb]
        n = [c for c in tb if c not in ta]

        def prod(cs):
            return int(np.prod([size[c] for c in cs], dtype=np.int64))

        def arrange(term, t, order, shape):
            if list(term) != order:
                t = self.op("transpose", t, perm=tuple(term.index(c) for c in order))
            return self.op("reshape", t, shape=shape)

        a = arrange(ta, a, batch + m + contract, (prod(batch), prod(m), prod(contract)))
        b = arrange(tb, b, batch + contract + n, (prod(batch), prod(contract), prod(n)))
        y = self.op("reshape", a @ b, shape=tuple(size[c] for c in batch + m + n))
        got = batch + m + n
        return y if got == list(out) else self.op("transpose", y, perm=tuple(got.index(c) for c in out))

    def _diagonals(self, equation: str, term: str, t: Tensor) -> tuple[str, Tensor]:
        """A label repeated in one operand keeps the diagonal: multiply by the
        identity over the two axes, then sum one of them away."""
        while len(set(term)) != len(term):
            c = next(c for c in term if term.count(c) > 1)
            p, q = term.index(c), term.index(c, term.index(c) + 1)
            if t.shape[p] != t.shape[q]:
                raise MinicompError(f"einsum '{equation}': the diagonal '{c}' joins axes of {t.shape[p]} and "
                                    f"{t.shape[q]}")
            eye = np.eye(t.shape[p], dtype=t.dtype.numpy).reshape(
                [t.shape[p] if k == p else t.shape[q] if k == q else 1 for k in range(t.ndim)])
            t = self.op("sum", self.op("mul", t, self.constant(eye)), axes=[q])
            term = term[:q] + term[q + 1:]
        return term, t

    def swish(self, x, name: str | None = None) -> Tensor:
        """x * sigmoid(x): another name of ``silu``."""
        return self.op("silu", x, name=name)

    def constant(self, array, name: str | None = None, dtype=None) -> Tensor:
        """Add a constant holding a copy of ``array``."""
        # np.array copies (once): the graph owns its constants, C-ordered.
        try:
            arr = np.array(array, dtype=as_dtype(dtype).numpy if dtype is not None else None, order="C")
        except (ValueError, TypeError, OverflowError) as exc:  # ragged lists, strings, ints out of range
            raise MinicompError(f"constant{' ' + name if name else ''}: {str(array)[:60]} is not a rectangular "
                                f"array of numbers"
                                f"{' of ' + as_dtype(dtype).name if dtype is not None else ''}: {exc}") from None
        if arr.dtype == object or arr.dtype.kind in "USMm":
            raise MinicompError(f"constant{' ' + name if name else ''}: {str(array)[:60]} holds {arr.dtype} values, "
                                f"not numbers")
        if arr.dtype == np.float64 and dtype is None and not isinstance(array, np.ndarray):
            arr = arr.astype(np.float32)  # Python floats default to float32, numpy arrays keep theirs
        if arr.dtype == np.int64 and dtype is None and not isinstance(array, np.ndarray):
            arr = arr.astype(np.int64)
        dt = as_dtype(arr.dtype)
        v = Value(self._fresh("const", name), TensorType(arr.shape, dt))
        self.graph.constants[v] = arr
        return Tensor(self, v)

    def as_tensor(self, x, like: Tensor | None = None) -> Tensor:
        """``x`` as a Tensor of this graph; scalars take ``like``'s dtype."""
        if isinstance(x, Tensor):
            if x.builder is not self:
                raise MinicompError(f"%{x.name} belongs to another graph builder")
            return x
        if isinstance(x, (bool, int, float, np.generic)) and like is not None:
            if isinstance(x, (float, np.floating)) and not like.dtype.is_float:
                raise MinicompError(f"the float {x!r} meets %{like.name} of dtype {like.dtype.name}: it would be "
                                    f"truncated; cast the tensor first (x.astype('float32'))")
            return self.constant(np.array(x, dtype=like.dtype.numpy))
        if isinstance(x, np.ndarray):
            return self.constant(x)
        if x is None:
            raise MinicompError("an op input is None: pass a Tensor, a number or an array (an optional input "
                                "cannot be left out by passing None)")
        return self.constant(x, dtype=like.dtype if like is not None else None)

    def op(self, op: str, *inputs, name: str | None = None, **attrs):
        """Record one node of ``op``; returns its output Tensor (a tuple if several)."""
        opdef = get_op(op)
        tensors = [self.as_tensor(x, like=next((t for t in inputs if isinstance(t, Tensor)), None))
                   for x in inputs]
        node_name = self._fresh(op, name)
        types = [t.value.type for t in tensors]
        frozen = opdef.make_attrs(types, attrs, node_name)
        out_types = opdef.infer_types(types, frozen, node_name)
        if opdef.check_constants is not None:
            arrays = [self.graph.constants.get(t.value) for t in tensors]
            if any(a is not None for a in arrays):
                try:
                    opdef.check_constants(arrays, {**dict(frozen), "_dim": _axis_size(types, frozen)})
                except ShapeError as exc:
                    raise opdef._wrap(exc, types, node_name) from None
        outs = [Value(node_name if len(out_types) == 1 else self._fresh(f"{node_name}_out{k}"), t)
                for k, t in enumerate(out_types)]
        node = Node(op, tuple(t.value for t in tensors), frozen, tuple(outs), node_name)
        self.graph.nodes.append(node)
        for i, low, high, reason in opdef.runtime_checks(types, frozen) if opdef.runtime_checks else ():
            self._checks.append((tensors[i].value, (low, high, f"{node.describe()}: {reason}")))
        res = tuple(Tensor(self, v) for v in outs)
        return res[0] if len(res) == 1 else res

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in all_ops():
            return lambda *inputs, **attrs: self.op(name, *inputs, **attrs)
        raise AttributeError(f"GraphBuilder has no attribute or op '{name}'")

    def output(self, *tensors: Tensor) -> None:
        """Mark tensors as graph outputs (in order)."""
        for t in tensors:
            self.graph.outputs.append(self.as_tensor(t).value)

    def write(self, target: Tensor, value) -> None:
        """After each call, the graph input ``target`` holds ``value``: the model writes it into the
        caller's array (a key/value cache, a step counter), which must then be a writable numpy
        array. ``value`` is an output that the call does not return. Where ``value`` is an
        ``index_copy`` of ``target`` that nothing else reads, llvm and c store only the copied
        slices into the caller's array; otherwise the value is computed and then copied in."""
        value = self.as_tensor(value)
        if not isinstance(target, Tensor) or target.value not in self.graph.inputs:
            raise MinicompError(f"write: the target must be an input of graph '{self.graph.name}', got "
                                f"{getattr(target, 'name', target)!r}")
        if value.value.type != target.value.type:
            raise MinicompError(f"write: %{value.name} ({value.value.type}) cannot be written into input "
                                f"%{target.name} ({target.value.type}): their types differ")
        position = self.graph.inputs.index(target.value)
        if position in self.graph.writes.values():
            raise MinicompError(f"write: input %{target.name} is already written")
        self.graph.outputs.append(value.value)
        self.graph.writes[len(self.graph.outputs) - 1] = position

    def build(self) -> Graph:
        """Finish: verify and return the Graph."""
        if not self.graph.outputs:
            raise MinicompError(f"graph '{self.graph.name}' has no outputs; call output() first")
        for value, check in self._checks:  # after the caller's outputs, whose positions stay as given
            self.graph.outputs.append(value)
            self.graph.checks[len(self.graph.outputs) - 1] = check
        self._checks = []
        return self.graph.verify()
