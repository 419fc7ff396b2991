"""Small helpers for the messages users read."""


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 kernel"``, ``"2 kernels"``: a number with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


BYTE_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1))


def byte_unit(nbytes: float) -> tuple[str, int]:
    """The largest binary unit in which ``nbytes`` is at least 1 (``("KiB", 1024)``)."""
    for name, size in BYTE_UNITS:
        if nbytes >= size:
            return name, size
    return "B", 1
