"""Content checksums of a store, recorded at conversion and checked by :func:`~stimage_sd.io.validate`.

Scheme ``crc32-decoded-v1``, recorded in the store's root attributes
``attrs["stimage"]["checksums"]``::

    {"scheme": "crc32-decoded-v1",
     "tables": {"table": {"location": "X", "digest": "...", "chunks": {"data": 1, "indices": 1, "indptr": 1}}},
     "images": {"he": {"s0": {"digest": "...", "chunks": 400}, "s1": {...}, ...}}}

- **Raw counts** (``X``, or ``layers["counts"]`` after analysis) of each table: CRC-32 of
  the *decoded* CSR matrix — the text ``csr <n_obs>x<n_vars> <dtype>``, then ``indptr``
  and ``indices`` as little-endian int64 and ``data`` as little-endian values of its dtype
  (:func:`csr_digest`), with the number of values. Decoded values, not file bytes: the
  digest stays valid when the table is rewritten with other codecs or chunks, and is
  computed from the matrix already in memory at conversion (no extra read).
- **Every pyramid level** of the images written by the converter: the CRC-32 of each
  chunk's decoded ``uint8`` bytes (C order), taken while the chunk is in memory to be
  written, and one SHA-256 over those chunk CRCs in chunk-grid order (:class:`LevelDigest`).

Why CRC-32 (zlib's, as in gzip, PNG and Zarr's ``crc32c`` codec): the checksums guard against
accidental damage (flipped bits, deleted, truncated or swapped chunks), which a 32-bit CRC per
chunk detects with certainty for bursts up to 32 bits and otherwise misses with probability
2^-32; it costs a fraction of a cryptographic hash (several times faster than SHA-256 on CPUs
without SHA extensions; measured in ``benchmarks/RESULTS.md``). It is not a defence against
deliberate tampering: the release files' SHA-256, recorded in ``uns["stimage"]["source"]``,
is the provenance.
- ``chunks``: how many chunk files each array had on disk when written (a chunk whose values
  are all the fill value, e.g. an all-black image tile, is not stored by Zarr), so that a
  deleted chunk — which Zarr silently reads back as fill-value zeros — is named.
- **The gene index** of each table (``gene_index/<table>``, :mod:`stimage_sd.io._gene_index`),
  recorded as ``"gene_index": {"table": {"digest": ..., "chunks": {...}}}``: the CSC matrix's
  decoded contents as three CRC-32s run side by side, so that the index can be hashed while it
  is written block by block (:class:`SparseDigest`): the text ``csc <n_obs>x<n_vars> <dtype>
  <nnz>`` then ``indptr`` (little-endian int64); ``indices`` (little-endian int64); ``data``
  (little-endian values of its dtype). The digest is their 24 hex digits.

:func:`stimage_sd.io.replace_table` records the new table's entry.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHECKSUM_KEY",
    "SCHEME",
    "LevelDigest",
    "SparseDigest",
    "chunk_grid",
    "csr_digest",
    "level_digest",
    "stored_chunks",
    "table_record",
]

#: Key of the record in ``attrs["stimage"]``.
CHECKSUM_KEY = "checksums"
SCHEME = "crc32-decoded-v1"
#: Elements hashed at a time (bounded memory for the int64 conversion).
_BLOCK = 1 << 22


def _crc(data: Any, value: int = 0) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B"), value)


def _crc_array(value: int, a: np.ndarray, dtype: np.dtype) -> int:
    a = np.asarray(a).ravel()
    for i in range(0, a.size, _BLOCK):
        value = _crc(np.asarray(a[i : i + _BLOCK], dtype=dtype), value)
    return value


def csr_digest(X: Any) -> str:
    """CRC-32 of a CSR matrix's decoded contents (shape, dtype, ``indptr``, ``indices``, ``data``).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from stimage_sd.io._checksums import csr_digest
    >>> a = sp.csr_matrix([[0, 1], [2, 0]], dtype="int32")
    >>> csr_digest(a) == csr_digest(a.copy())
    True
    """
    dt = np.dtype(X.data.dtype)
    value = zlib.crc32(f"csr {X.shape[0]}x{X.shape[1]} {dt.str.lstrip('<>|=')} {X.data.size}\n".encode())
    value = _crc_array(value, X.indptr, np.dtype("<i8"))
    value = _crc_array(value, X.indices, np.dtype("<i8"))
    value = _crc_array(value, X.data, dt.newbyteorder("<"))
    return f"{value:08x}"


class SparseDigest:
    """CRC-32 of a compressed sparse matrix fed block by block (``indices``/``data`` in order).

    Parameters
    ----------
    fmt
        ``"csr"`` or ``"csc"``.
    shape
        The matrix shape.
    dtype
        The dtype of ``data``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from stimage_sd.io._checksums import SparseDigest
    >>> a = sp.csc_matrix([[0, 1], [2, 0]], dtype="int32")
    >>> d = SparseDigest("csc", a.shape, a.dtype)
    >>> d.add(a.indices[:1], a.data[:1]); d.add(a.indices[1:], a.data[1:])
    >>> d.digest(a.indptr) == SparseDigest.of(a)
    True
    """

    def __init__(self, fmt: str, shape: tuple[int, int], dtype: Any):
        self.fmt, self.shape, self.dtype = fmt, (int(shape[0]), int(shape[1])), np.dtype(dtype)
        self._indices = self._data = 0
        self.nnz = 0

    def add(self, indices: np.ndarray, data: np.ndarray) -> None:
        """Feed the next ``indices`` and ``data`` values (same length)."""
        self._indices = _crc_array(self._indices, indices, np.dtype("<i8"))
        self._data = _crc_array(self._data, data, self.dtype.newbyteorder("<"))
        self.nnz += int(np.asarray(indices).size)

    def digest(self, indptr: np.ndarray) -> str:
        """The digest, once every value was fed."""
        head = f"{self.fmt} {self.shape[0]}x{self.shape[1]} {self.dtype.str.lstrip('<>|=')} {self.nnz}\n"
        value = _crc_array(zlib.crc32(head.encode()), indptr, np.dtype("<i8"))
        return f"{value:08x}{self._indices:08x}{self._data:08x}"

    @classmethod
    def of(cls, X: Any) -> str:
        """The digest of an in-memory CSR or CSC matrix."""
        d = cls(X.format, X.shape, X.data.dtype)
        d.add(X.indices, X.data)
        return d.digest(X.indptr)

    @classmethod
    def of_group(cls, group: Any, block: int = _BLOCK) -> str:
        """The digest of a sparse matrix stored as a Zarr group (anndata encoding), read in blocks."""
        fmt = str(group.attrs["encoding-type"]).split("_")[0]
        shape = tuple(int(v) for v in group.attrs["shape"])
        data, indices = group["data"], group["indices"]
        d = cls(fmt, shape, data.dtype)  # type: ignore[arg-type]
        for i in range(0, int(data.shape[0]), block):
            d.add(indices[i : i + block], data[i : i + block])
        return d.digest(group["indptr"][...])


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Number of chunks along each axis."""
    return tuple(-(-int(s) // int(c)) if int(s) else 0 for s, c in zip(shape, chunks, strict=True))


def stored_chunks(array_dir: str | Path) -> set[tuple[int, ...]] | None:
    """Chunk indices with a file on disk, for a Zarr v3 array with the default ``/`` key encoding.

    Returns ``None`` when the array's layout is not that one (then chunks are not counted).
    """
    import json

    array_dir = Path(array_dir)
    try:
        meta = json.loads((array_dir / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    enc = meta.get("chunk_key_encoding", {})
    if meta.get("node_type") != "array" or enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    ndim = len(meta.get("shape", []))
    root = array_dir / "c"
    if ndim == 0 or not root.is_dir():
        return set()
    out: set[tuple[int, ...]] = set()
    for p in root.rglob("*"):
        if p.is_file():
            parts = p.relative_to(root).parts
            if len(parts) == ndim and all(s.isdigit() for s in parts):
                out.add(tuple(int(s) for s in parts))
    return out


class LevelDigest:
    """CRC-32 of the chunks of one image level, recorded as they are written (thread-safe)."""

    def __init__(self, shape: tuple[int, ...], chunks: tuple[int, ...], fill: int = 0):
        self.shape, self.chunks, self.fill = tuple(shape), tuple(chunks), fill
        self._digests: dict[tuple[int, ...], str] = {}
        self._stored = 0
        self._lock = threading.Lock()

    def add(self, key: tuple[slice, ...], block: np.ndarray) -> None:
        """Record the block written at ``key`` (slices aligned with the chunk grid)."""
        idx = tuple((s.start or 0) // c for s, c in zip(key, self.chunks, strict=True))
        d = f"{_crc(block):08x}"
        stored = bool(block.any()) if self.fill == 0 else bool((block != self.fill).any())
        with self._lock:
            self._digests[idx] = d
            self._stored += stored

    def record(self) -> dict[str, Any]:
        """``{"digest": ..., "chunks": n_stored}``; every chunk of the grid must have been added."""
        grid = chunk_grid(self.shape, self.chunks)
        h = hashlib.sha256()
        for idx in itertools.product(*(range(n) for n in grid)):
            h.update(self._digests[idx].encode())
        return {"digest": h.hexdigest(), "chunks": int(self._stored)}


def level_digest(arr: Any, advance: Any = None) -> tuple[str, list[tuple[int, ...]]]:
    """Recompute a level's digest from a Zarr array, one chunk in memory at a time.

    Returns the digest and the indices of chunks that cannot be decoded (damaged bytes).
    """
    shape, chunks = tuple(arr.shape), tuple(arr.chunks)
    grid = chunk_grid(shape, chunks)
    h = hashlib.sha256()
    broken: list[tuple[int, ...]] = []
    for idx in itertools.product(*(range(n) for n in grid)):
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=True))
        try:
            block = np.ascontiguousarray(arr[sl])
        except Exception:  # a codec error: the chunk's bytes are damaged
            broken.append(idx)
            continue
        h.update(f"{_crc(block):08x}".encode())
        if advance is not None:
            advance(1)
    return h.hexdigest(), broken


def table_record(table: Any, element_dir: str | Path | None) -> dict[str, Any] | None:
    """The checksum entry of a table: digest of its raw counts and their chunk files.

    ``None`` when the raw counts are not a CSR matrix.
    """
    import scipy.sparse as sp

    location = "layers/counts" if "counts" in table.layers else "X"
    X = table.layers["counts"] if location != "X" else table.X
    if not sp.issparse(X) or X.format != "csr":
        return None
    rec: dict[str, Any] = {"location": location, "digest": csr_digest(X)}
    if element_dir is not None:
        counts: dict[str, int] = {}
        for part in ("data", "indices", "indptr"):
            found = stored_chunks(Path(element_dir) / location / part)
            if found is not None:
                counts[part] = len(found)
        rec["chunks"] = counts
    return rec
