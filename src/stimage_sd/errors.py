"""Exceptions raised by :mod:`stimage_sd`.

Every error about bad input names the file and, where it applies, the line, the spot or
the field that is wrong, so that a user can open the file and look.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "FormatError",
    "IncompleteStoreError",
    "LockedError",
    "RemoteReadError",
    "SlideNotFoundError",
    "StimageError",
]


class StimageError(Exception):
    """Base class of every error raised on purpose by :mod:`stimage_sd`."""


class FormatError(StimageError, ValueError):
    """A release file is malformed.

    Parameters
    ----------
    path
        The file that is wrong.
    message
        What is wrong.
    line
        1-based physical line number in the file, when known.
    column
        Column (gene or field name) when known.
    spot
        Spot id when known.
    """

    def __init__(
        self,
        path: str | Path | None,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
        spot: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        self.line = line
        self.column = column
        self.spot = spot
        where = []
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        if spot is not None:
            where.append(f"spot {spot!r}")
        loc = f" ({', '.join(where)})" if where else ""
        prefix = f"{self.path}{loc}: " if self.path is not None else (f"{', '.join(where)}: " if where else "")
        super().__init__(f"{prefix}{message}")


class SlideNotFoundError(StimageError, FileNotFoundError):
    """A slide id, or one of its files, does not exist in the dataset root."""


class IncompleteStoreError(StimageError):
    """A Zarr store is missing its completion marker (an interrupted or foreign write)."""


class LockedError(StimageError):
    """Another live run holds the lock of a store (or of a batch output folder).

    The message names the other run (command, pid, host, start time) and the lock file.
    """


class RemoteReadError(StimageError, OSError):
    """Reading a store at a URL failed (connection cut, server error); reading again is safe."""
