"""Errors raised by minicomp.

Every error a user can trigger is a :class:`MinicompError`. Subclasses say
which stage refused the input; the message names the node, the op and the
shapes involved so that the user can find the problem in their model.
"""

from __future__ import annotations


class MinicompError(Exception):
    """Base class of every error minicomp raises on bad input."""


class ShapeError(MinicompError):
    """An op was given inputs whose shapes or dtypes do not fit its rules."""


class VerifyError(MinicompError):
    """A graph or a loop-IR kernel broke an invariant (order, types, dangling
    values, names; buffers in scope, loop kinds, bounds)."""


class ParseError(MinicompError):
    """The IR text could not be read."""


class UnsupportedError(MinicompError):
    """An op, dtype or feature is not supported by the chosen stage."""


class CompileError(MinicompError):
    """Code generation or native compilation failed."""


class RuntimeInputError(MinicompError):
    """A compiled model was called with inputs that do not match its signature."""


def describe_types(types) -> str:
    """Format a list of tensor types for an error message: ``f32[2, 3], i64[4]``."""
    return ", ".join(str(t) for t in types) if types else "(none)"
