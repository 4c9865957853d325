"""Small helpers shared by every layer (no imports from the rest of the package)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy.sparse import spmatrix

__all__ = ["cpu_count", "hash_file", "naming_path", "os_error_message", "raw_counts", "sha256_file"]

_READ_BLOCK = 1 << 22


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one).

    Examples
    --------
    >>> from stimage_sd._utils import cpu_count
    >>> cpu_count() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def hash_file(path: str | Path, h: hashlib._Hash, advance: Callable[[int], object] | None = None) -> str:
    """Feed the bytes of ``path`` into the hash object ``h`` in 4 MiB blocks; return its hex digest.

    ``advance(n)`` is called after each block (for progress bars).
    """
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
            if advance is not None:
                advance(len(block))
    return h.hexdigest()


def sha256_file(path: str | Path, advance: Callable[[int], object] | None = None) -> str:
    """SHA-256 of a file, as a hex string (read in blocks: bounded memory).

    Examples
    --------
    >>> from pathlib import Path
    >>> from stimage_sd._utils import sha256_file
    >>> _ = Path("hello.txt").write_bytes(b"hello")
    >>> sha256_file("hello.txt")[:16]
    '2cf24dba5fb0a30e'
    """
    return hash_file(path, hashlib.sha256(), advance)


def raw_counts(adata: AnnData, layer: str | None = None) -> spmatrix:
    """The raw count matrix of a table.

    ``layers[layer]`` if given, else ``layers["counts"]`` when present (after
    normalisation), else ``X``.
    """
    if layer is not None:
        return adata.layers[layer]
    return adata.layers["counts"] if "counts" in adata.layers else adata.X


@contextlib.contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` of the block that has no file name.

    ``write`` on a full disk raises ``ENOSPC`` without one; the message then names the file.
    """
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
        raise


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: the path(s), the cause, the errno name.

    ``/out/.stimage-convert.lock: No space left on device (ENOSPC)``
    """
    import errno

    cause = e.strerror or str(e)
    if e.errno in errno.errorcode:
        cause += f" ({errno.errorcode[e.errno]})"
    if e.errno == errno.ENOSPC:
        cause += ": the disk is full"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause += ": check the permissions (or a read-only file system)"
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {cause}" if where else cause
