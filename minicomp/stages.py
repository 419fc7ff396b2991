"""The text of each compile stage (``model.stages``): a read-only mapping
whose large entries may be made only when read."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping


class _Deferred:
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


class Stages(Mapping):
    """Stage name -> text, read-only for users (``dict(model.stages)`` gives
    plain strings). The compiler and the backends fill it while compiling:
    :meth:`set` a text, :meth:`defer` one made by a function at each read, or
    :meth:`compress` one kept zlib-compressed until read (a large module's
    LLVM IR takes a tenth of the memory so)."""

    def __init__(self, **texts: str):
        self._entries: dict = dict(texts)
        self._more = None

    def more_on_read(self, make) -> None:
        """Have ``make()`` (a Stages) give the stages not here yet, when one of them, or the list of
        stages, is first read (a model from the whole-model cache makes them by compiling again)."""
        self._more = make

    def _fill(self) -> None:
        if self._more is not None:
            make, self._more = self._more, None
            for key, value in make()._entries.items():
                self._entries.setdefault(key, value)

    def set(self, key: str, text: str) -> None:
        self._entries[key] = text

    def defer(self, key: str, make) -> None:
        self._entries[key] = _Deferred(make)

    def compress(self, key: str, text: str) -> None:
        from minicomp.cache import compress_text

        data = compress_text(text)
        self.defer(key, lambda: zlib.decompress(data).decode())

    def __getitem__(self, key: str) -> str:
        if key not in self._entries:
            self._fill()
        value = self._entries[key]
        return value.make() if isinstance(value, _Deferred) else value

    def __iter__(self) -> Iterator[str]:
        self._fill()
        return iter(self._entries)

    def __len__(self) -> int:
        self._fill()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Stages({', '.join(self)})"

    def copy(self) -> dict:
        """Every stage's text in a plain dict."""
        return dict(self.items())
