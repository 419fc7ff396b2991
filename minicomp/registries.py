"""A registry whose built-in entries are imported on first use, safely from any thread.

minicomp keeps four such registries (ops, passes, ONNX importers, torch
converters). Their built-ins load lazily, so ``import minicomp`` stays cheap,
and that laziness must not leak to users:

- Order does not matter. A user's ``replace=True`` registration made before
  the built-ins load still wins when they do; a user's plain registration of a
  name a built-in also takes is refused when the two meet, whichever came first.
- Threads do not race. The first lookups from several threads wait for one
  load to finish instead of seeing a half-filled registry (the flag is set
  only after the imports succeed; a failed load is retried on the next use).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator

from minicomp.errors import MinicompError


def _ours(fn) -> bool:
    """Whether ``fn`` (a function, or a functools.partial of one) is defined in minicomp."""
    module = getattr(fn, "__module__", None) or getattr(getattr(fn, "func", None), "__module__", None) or ""
    return module == "minicomp" or module.startswith("minicomp.")


class LazyRegistry:
    """Entries by key, with built-ins imported by ``load_builtins`` on first use."""

    def __init__(self, what: str, load_builtins: Callable[[], None]):
        self._what = what
        self._load_builtins = load_builtins
        self._entries: dict = {}
        self._user_keys: set = set()  # registered by a user (replace or not), before or after the load
        self._replaced: set = set()  # user entries that asked to replace whatever is there
        self._lock = threading.RLock()
        self._state = "unloaded"  # -> "loading" (one thread, inside the lock) -> "loaded"
        self._loading = threading.local()

    # -- loading --------------------------------------------------------------

    def ensure_loaded(self) -> None:
        """Import the built-ins once; other threads wait until that is done."""
        if self._state == "loaded":
            return
        with self._lock:
            if self._state != "unloaded":  # loaded meanwhile, or this thread is inside the load
                return
            self._state = "loading"
            self._loading.active = True
            try:
                self._load_builtins()
            except BaseException:
                self._state = "unloaded"
                raise
            finally:
                self._loading.active = False
            self._state = "loaded"

    # -- registering ----------------------------------------------------------

    def register(self, key: Hashable, value, *, replace: bool = False, label: str | None = None) -> None:
        """Add ``value`` under ``key``; ``replace=True`` overrides an entry (built-in or not)."""
        label = label or str(key)
        with self._lock:
            builtin = getattr(self._loading, "active", False)
            if key in self._entries:
                if builtin and key in self._replaced:
                    return  # the user's replacement, registered before the built-ins loaded, wins
                if builtin and key in self._user_keys:
                    raise MinicompError(
                        f"{self._what} {label} was registered before minicomp's built-in one loaded; "
                        f"pass replace=True to replace the built-in")
                if not replace:
                    raise MinicompError(f"{self._what} {label} is already registered")
            self._entries[key] = value
            if not builtin:
                self._user_keys.add(key)
                if replace:
                    self._replaced.add(key)

    # -- reading --------------------------------------------------------------

    def foreign_keys(self, functions: Callable) -> set:
        """The keys whose entry runs code from outside minicomp (a user's): ``functions(entry)`` lists the
        functions an entry calls, each judged by the module that defines it."""
        return {key for key, value in self.as_dict().items()
                if not all(_ours(f) for f in functions(value) if f is not None)}

    def get(self, key: Hashable, default=None):
        """The entry under ``key`` (built-ins loaded first), or ``default``."""
        self.ensure_loaded()
        return self._entries.get(key, default)

    def __contains__(self, key: Hashable) -> bool:
        self.ensure_loaded()
        return key in self._entries

    def __getitem__(self, key: Hashable):
        self.ensure_loaded()
        return self._entries[key]

    def __iter__(self) -> Iterator:
        self.ensure_loaded()
        return iter(dict(self._entries))

    def __len__(self) -> int:
        self.ensure_loaded()
        return len(self._entries)

    def as_dict(self) -> dict:
        """A copy of every entry, built-ins included."""
        self.ensure_loaded()
        return dict(self._entries)

    def unregister(self, key: Hashable) -> None:
        """Remove ``key`` (tests and plugins that clean up after themselves)."""
        with self._lock:
            self._entries.pop(key, None)
            self._user_keys.discard(key)
            self._replaced.discard(key)
