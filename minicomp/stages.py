"""The text of each compile stage (``model.stages``): a dict whose large
entries may be made only when read."""

from __future__ import annotations

import zlib


class _Deferred:
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


class Stages(dict):
    """Stage name -> text. An entry set by :meth:`defer` is made by its function
    at each read; :meth:`compress` keeps a text zlib-compressed until read
    (a large module's LLVM IR takes a tenth of the memory so)."""

    def defer(self, key: str, make) -> None:
        super().__setitem__(key, _Deferred(make))

    def compress(self, key: str, text: str) -> None:
        from minicomp.cache import compress_text

        data = compress_text(text)
        self.defer(key, lambda: zlib.decompress(data).decode())

    def __getitem__(self, key):
        value = super().__getitem__(key)
        return value.make() if isinstance(value, _Deferred) else value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def items(self):
        return [(k, self[k]) for k in self]

    def values(self):
        return [self[k] for k in self]

    def copy(self) -> dict:
        return dict(self.items())
