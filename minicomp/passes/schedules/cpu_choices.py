"""The decisions of the CPU schedule a tuner may make instead of its rules, and the register
tile they size (``cpu.py`` drives the schedule)."""

from __future__ import annotations

from dataclasses import dataclass

# Parallel regions cost a few microseconds to start; below this many inner
# iterations a loop nest runs faster on one thread.
MIN_PARALLEL_WORK = 1 << 15


@dataclass(frozen=True)
class Choices:
    """Decisions of the CPU schedule that a tuner may take instead of its
    rules (``backends/llvm_tuning.py``); a field left None keeps the rule's answer.

    - ``lanes``: for a convolution, ``"channels"`` runs output channels as the
      vector lanes (see :func:`channel_lanes`), ``"spatial"`` the last output axis;
    - ``rows``, ``vectors``: a register tile's rows and vectors per row;
    - ``channel_blocks_outer``: channel-lane tiles with the channel blocks
      outermost (see :func:`channel_lane_tiles`) or the pixels;
    - ``serial``: run every loop nest of the kernel on one thread.
    """

    lanes: str | None = None
    rows: int | None = None
    vectors: int | None = None
    channel_blocks_outer: bool | None = None
    serial: bool = False

    def as_dict(self) -> dict:
        """The fields that differ from the rules (empty for the default)."""
        return {k: v for k, v in self.__dict__.items() if v != getattr(DEFAULT_CHOICES, k)}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items()) or "default"


DEFAULT_CHOICES = Choices()


def register_tile(target, dtype, choices: Choices = DEFAULT_CHOICES) -> tuple[int, int]:
    """(rows, columns) of a register tile: two vectors per row, and as many
    rows (at most 8) as leave four registers for the operands; ``choices``
    may set either.

    8 rows rather than 6 on 32-register targets: convolutions with output
    rows as lanes ran faster, matrix products no slower
    (docs/measurements.md)."""
    lanes = max(1, target.vector_bits // 8 // dtype.itemsize)
    rows = max(1, min(8, (target.vector_registers - 4) // 2))
    return choices.rows or rows, (choices.vectors or 2) * lanes
