"""The one progress-bar rule of the library.

Every long loop takes ``progress: bool | None``: ``True`` always shows a bar, ``False`` never does,
and ``None`` (the default everywhere) shows one only once the loop has run for
:data:`AUTO_AFTER_S` seconds, so short calls in notebooks and tests stay quiet while long ones
report. The rule is about time, not item counts, because one "item" costs very different amounts
of work in different loops (a forward pass over a batch, a whole generation, a Ray task).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

AUTO_AFTER_S = 2.0

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str, *, progress: bool | None = None, total: int | None = None,
                 initial: int = 0, unit: str = "it", leave: bool = False) -> tqdm:
    """``items`` wrapped in a tqdm bar that follows the module's rule (``items`` may be empty with ``total``)."""
    return tqdm(items, desc=desc, total=total, initial=initial, unit=unit, leave=leave,
                disable=progress is False, delay=0.0 if progress else AUTO_AFTER_S)
