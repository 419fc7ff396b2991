"""The compile cache on disk: compiled code keyed by what produced it.

Entries live under ``$MINICOMP_CACHE_DIR`` (default ``~/.cache/minicomp``),
one folder per kind (``llvm`` object code, ``cuda-emu`` libraries). A key is
the hash of everything the compiled bytes depend on: the generated source
(LLVM IR, CUDA C), the target CPU and features, the optimization level, the
versions of minicomp and LLVM, and a format number. Writes are atomic
(another process may write the same entry); an entry that cannot be read is
compiled again; a cache folder that cannot be written is skipped silently,
so compiling never fails for the cache's sake. A folder that other users
may write, or that is not yours, is not used at all (entries are machine
code that runs): see :func:`trusted_folder`. ``MINICOMP_CACHE=0`` or
``compile(..., cache=False)`` turns it off; ``minicomp cache --clear`` empties it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path

FORMAT = 1


def root() -> Path:
    """The cache's folder (not created here)."""
    base = os.environ.get("MINICOMP_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minicomp"


def enabled() -> bool:
    """False when ``MINICOMP_CACHE=0`` (or ``off``/``false``) turns the cache off."""
    return os.environ.get("MINICOMP_CACHE", "1").lower() not in ("0", "off", "false", "no")


def folder(kind: str) -> Path | None:
    """The folder of one kind of entry, created; None when it cannot be, or
    when it cannot be trusted (:func:`trusted_folder`)."""
    base = root()
    path = base / kind
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for d in (base, path):
            d.mkdir(mode=0o700, exist_ok=True)  # only its owner may plant code in a new folder
    except OSError:
        return None
    return path if trusted_folder(base) and trusted_folder(path) else None


_warned: set[str] = set()


def trusted_folder(path: Path) -> bool:
    """Whether code kept in ``path`` may be run: the folder belongs to this
    user and no one else may write it (the rule ssh applies to its keys).
    A cache entry is machine code, loaded and run on the next compile of its
    model: in a folder others can write, anyone could plant one. An
    untrusted folder is neither read nor written, with one warning."""
    try:
        st = path.stat()
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    if owner_ok and not st.st_mode & 0o022:
        return True
    if str(path) not in _warned:
        _warned.add(str(path))
        why = "is not owned by you" if not owner_ok else "may be written by other users (group or others)"
        warnings.warn(f"minicomp does not use the compile cache at {path}: the folder {why}, so the machine code "
                      f"in it could be anyone's. Make it yours alone (chmod go-w; chown) or set "
                      f"MINICOMP_CACHE_DIR to a folder of your own", RuntimeWarning, stacklevel=3)
    return False


# Text is encoded this many characters at a time, so that hashing or
# compressing a module's IR (megabytes) never holds a second copy of it.
CHUNK = 1 << 20


def text_chunks(text: str):
    """The UTF-8 bytes of ``text``, a piece at a time (the same bytes as ``text.encode()``)."""
    for i in range(0, len(text), CHUNK):
        yield text[i:i + CHUNK].encode()


def compress_text(text: str) -> bytes:
    """``zlib.compress(text.encode(), 1)``, without the whole encoded copy."""
    z = zlib.compressobj(1)
    return b"".join([z.compress(chunk) for chunk in text_chunks(text)] + [z.flush()])


def key(*parts) -> str:
    """A hex key over ``parts`` (strings or bytes), the minicomp version and the format."""
    from minicomp import __version__

    h = hashlib.sha256(f"minicomp {__version__} format {FORMAT}".encode())
    for p in parts:
        h.update(b"\0")
        for chunk in ([p] if isinstance(p, bytes) else text_chunks(str(p))):
            h.update(chunk)
    return h.hexdigest()[:32]


def read(kind: str, name: str) -> bytes | None:
    """The bytes of an entry, or None when it is absent, unreadable or damaged
    (each entry starts with the SHA-256 of its bytes: machine code that does
    not match it is never loaded)."""
    path = folder(kind)
    if path is None:
        return None
    try:
        raw = (path / name).read_bytes()
    except OSError:
        return None
    digest, data = raw[:32], raw[32:]
    return data if len(raw) >= 32 and hashlib.sha256(data).digest() == digest else None


def write(kind: str, name: str, data: bytes) -> bool:
    """Store an entry atomically: True when it was stored; failures are
    otherwise ignored (the cache is only a speed-up)."""
    path = folder(kind)
    if path is None:
        return False
    return write_atomically(path / name, lambda f: f.write(hashlib.sha256(data).digest() + data))


def write_atomically(path: Path, fill) -> bool:
    """Write ``path`` through ``fill(file)`` into a new file beside it, then put it in place at once
    (another process may read or write the same entry meanwhile); False, and nothing left behind, when
    the disk refuses."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
        return False


def usage() -> tuple[int, int]:
    """Entries and bytes under the cache's folder."""
    files = [p for p in root().rglob("*") if p.is_file()] if root().exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def clear() -> None:
    """Remove every entry."""
    if root().exists():
        shutil.rmtree(root())


_compiler_digest: str | None = None


def compiler_digest() -> str:
    """A hash of minicomp's own source (every module of the package): an entry that depends on all of
    the compiler, a whole compiled model, is never used by a compiler that changed since it was made."""
    global _compiler_digest
    if _compiler_digest is None:
        package = Path(__file__).parent
        h = hashlib.sha256()
        for path in sorted(package.rglob("*.py")):
            h.update(str(path.relative_to(package)).encode() + b"\0")
            h.update(path.read_bytes())
        _compiler_digest = h.hexdigest()
    return _compiler_digest
