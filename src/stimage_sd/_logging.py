"""Logging and progress bars.

The library logs through the ``stimage_sd`` logger and never prints. Progress bars are
drawn with :mod:`rich` on standard error and can be silenced globally with
:func:`set_progress` (the CLI's ``--quiet``) or per call with ``progress=False``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

logger = logging.getLogger("stimage_sd")

T = TypeVar("T")

_PROGRESS: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Enable or disable progress bars globally.

    Parameters
    ----------
    enabled
        ``True`` or ``False`` to force; ``None`` (default) shows bars only when standard
        error is a terminal and ``STIMAGE_SD_NO_PROGRESS`` is unset.
    """
    global _PROGRESS
    _PROGRESS = enabled


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether a progress bar should be drawn for a call given its ``progress`` argument."""
    if progress is not None:
        return progress
    if _PROGRESS is not None:
        return _PROGRESS
    if os.environ.get("STIMAGE_SD_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def track(
    items: Iterable[T],
    description: str,
    *,
    total: float | None = None,
    progress: bool | None = None,
) -> Iterator[T]:
    """Iterate over ``items`` with a rich progress bar (or silently)."""
    if not progress_enabled(progress):
        yield from items
        return
    from rich.progress import track as _track

    yield from _track(items, description=description, total=total, transient=False)


@contextmanager
def progress_bar(description: str, total: float | None, *, progress: bool | None = None):
    """Context manager yielding an ``advance(n)`` callable for byte- or item-level progress."""
    if not progress_enabled(progress):
        yield lambda n=1: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn()]
    if total and total > 10_000:
        columns.insert(2, DownloadColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
