"""The whole-model cache: a compiled model kept on disk under a key of what it
was compiled from (the graph with its weights, the options, the target and
the compiler's own source: ``compiler.py`` makes the key), loaded in one
step by the next compile of the same model, with no pass run.

An entry (``models/<key>.model`` in the compile cache's folder) is one file:

- a header: a magic string, the SHA-256 of the description, its length;
- the description (JSON): what ``model.save`` writes as ``meta.json``
  (``llvm_saved.describe``), the compile-cache entry of the machine code
  (``code``: a shared library or an object file, kept once, in the ``llvm``
  folder, whichever compile made it) and, for each constant, its offset,
  size and CRC-32 in the file;
- the constants after the passes (folded, packed into blocked layouts),
  each at an offset that is a multiple of 64.

A hit maps the constants from the file (copy-on-write: pages are shared with
the page cache and with other processes until written) after checking their
CRC-32s, loads the machine code as the compile cache's hit does, and checks
the description against the code's own buffer sizes (``@mc_slot_bytes``) as
``mc.load`` does. An entry that fails any check, or whose machine code is
gone, is a miss: the model compiles again and its entry is written again.
The folder keeps the most recently used entries within ``LIMIT_BYTES``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import zlib
from pathlib import Path

import numpy as np

from minicomp import cache as disk
from minicomp.errors import MinicompError

MAGIC = b"minicomp model\x00\x01"
ALIGN = 64
LIMIT_BYTES = 4 << 30  # entries hold a model's weights: the oldest go first beyond this
_HEADER = len(MAGIC) + 32 + 8
# Bytes this process wrote since it last looked at the folder's size: it looks at its first entry and then
# after every sixteenth of the limit (a look per entry read thousands of files per entry in the test suite).
_written_since_look: int | None = None


def _entry(key: str) -> Path | None:
    folder = disk.folder("models")
    return folder / f"{key}.model" if folder is not None else None


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _crc32s(views: list) -> list[int]:
    """The CRC-32 of each buffer; many megabytes are checked on two threads at once (zlib lets go of the
    interpreter's lock while it reads)."""
    if sum(len(v) for v in views) < (16 << 20):
        return [zlib.crc32(v) for v in views]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(zlib.crc32, views))


def keep(key: str, model) -> bool:
    """Write the entry of ``model`` under ``key``; True when it was written. A model whose machine code
    has no compile-cache entry of its own is not kept (its entry would point at nothing)."""
    from minicomp.backends.llvm_native import NativeModule
    from minicomp.backends.llvm_saved import describe
    from minicomp.runtime import contiguous

    path = _entry(key)
    code = getattr(model.native, "cache_entry", None)
    if path is None or not code:
        return False
    meta = describe(model)
    meta["code"] = ["library" if isinstance(model.native, NativeModule) else "object", code]
    arrays = [contiguous(a).reshape(-1).view(np.uint8) for a in model.signature.constants.values()]
    offsets, at = [], 0
    for a in arrays:
        offsets.append(at)
        at = _aligned(at + a.nbytes)
    meta["weights"] = [[off, a.nbytes, crc] for off, a, crc in zip(offsets, arrays, _crc32s(arrays))]
    text = json.dumps(meta).encode()
    start = _aligned(_HEADER + len(text))
    meta_part = MAGIC + hashlib.sha256(text).digest() + len(text).to_bytes(8, "little") + text

    def fill(f) -> None:
        f.write(meta_part)
        for off, a in zip(offsets, arrays):
            f.seek(start + off)
            f.write(a.data)
        f.truncate(start + at)

    if not disk.write_atomically(path, fill):
        return False
    global _written_since_look
    if _written_since_look is None or _written_since_look + start + at > LIMIT_BYTES // 16:
        _evict(path.parent, path)
        _written_since_look = 0
    else:
        _written_since_look += start + at
    return True


def find(key: str):
    """The model kept under ``key``, ready to run, or None (absent, damaged, or its code is gone)."""
    path = _entry(key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            meta, start = _read_description(f, str(path))
            size = os.fstat(f.fileno()).st_size
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        model = _model(meta, mapped, start, size, str(path))
    except (OSError, ValueError, MinicompError):
        return None  # a miss: compiled again, and the entry written again
    if model is not None:
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
    return model


def _read_description(f, path: str) -> tuple[dict, int]:
    head = f.read(_HEADER)
    if len(head) != _HEADER or not head.startswith(MAGIC):
        raise MinicompError(f"{path} is not a model entry")
    digest, length = head[len(MAGIC):len(MAGIC) + 32], int.from_bytes(head[-8:], "little")
    text = f.read(length)
    if len(text) != length or hashlib.sha256(text).digest() != digest:
        raise MinicompError(f"{path}: the description does not match its digest")
    meta = json.loads(text)
    if not isinstance(meta, dict):
        raise MinicompError(f"{path}: the description is not an object")
    return meta, _aligned(_HEADER + length)


def _model(meta: dict, mapped, start: int, size: int, path: str):
    from minicomp import __version__
    from minicomp.backends.llvm_saved import FORMAT, check_meta, rebuild
    from minicomp.ir.dtypes import as_dtype

    if meta.get("format") != FORMAT or meta.get("minicomp") != __version__:
        return None
    check_meta(meta, path)
    weights = meta.get("weights")
    if not isinstance(weights, list) or len(weights) != len(meta["constants"]):
        raise MinicompError(f"{path}: the constants' places do not match the constants")
    views = []
    for desc, place in zip(meta["constants"], weights):
        if not (isinstance(place, list) and len(place) == 3 and all(type(x) is int and x >= 0 for x in place)):
            raise MinicompError(f"{path}: constant {desc['name']}'s place is not three whole numbers")
        off, nbytes, _ = place
        count = nbytes // as_dtype(desc["dtype"]).itemsize
        if start + off + nbytes > size or off % ALIGN or count != int(np.prod(desc["shape"], dtype=np.int64)):
            raise MinicompError(f"{path}: constant {desc['name']} does not fit the file or its shape")
        views.append(memoryview(mapped)[start + off:start + off + nbytes] if nbytes else memoryview(b""))
    if _crc32s(views) != [place[2] for place in weights]:
        raise MinicompError(f"{path}: a constant does not match its CRC-32")
    jit = _machine_code(meta)
    if jit is None:
        return None
    arrays = {}
    for desc, view in zip(meta["constants"], views):
        arrays[desc["slot"]] = np.frombuffer(view, as_dtype(desc["dtype"]).numpy).reshape(desc["shape"])
    model = rebuild(meta, lambda desc, value: arrays[desc["slot"]], jit, path)
    model.native.cache_hit = True
    return model


def _machine_code(meta: dict):
    """The machine code the entry names, loaded from the compile cache; None when it is gone."""
    from minicomp.backends import llvm_native

    code = meta.get("code")
    if not (isinstance(code, list) and len(code) == 2 and code[0] in ("library", "object")
            and isinstance(code[1], str) and code[1].isalnum()):
        raise MinicompError("the entry's machine code is not named")
    kind, name = code
    if kind == "library":
        return llvm_native.load_cached(name, meta["cpu"], meta["features"])
    from minicomp.backends.llvm import JitModule, read_cached_object

    entry = read_cached_object(name)
    if entry is None:
        return None
    jit = JitModule.from_object(*entry, meta["cpu"], meta["features"])  # (a CompileError is a miss too)
    jit.cache_entry = name
    return jit


def _evict(folder: Path, keep_path: Path) -> None:
    """Remove the least recently used entries while the folder holds more than LIMIT_BYTES."""
    entries = []
    for p in folder.glob("*.model"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= LIMIT_BYTES:
            break
        if p != keep_path:
            try:
                p.unlink()
                total -= size
            except OSError:
                pass
