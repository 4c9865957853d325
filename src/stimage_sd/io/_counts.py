"""Reader of the dense count matrices ``<tech>/gene_exp/<slide>_count.csv``.

The release writes every slide's counts as a dense spots x genes CSV (``0.0``, ``3.0``...),
80-640 MB per Visium slide and up to 44 GB per VisiumHD slide, although only a few percent
of the values are non-zero. :func:`read_counts` streams such a file in fixed-size byte
blocks: the main thread reads block *i + 1* while worker threads parse earlier blocks with
a compiled kernel (:mod:`._counts_kernel`, numba, GIL released) into CSR pieces, which are
appended in file order to output arrays grown in place. Memory is the CSR output plus a
constant (a few blocks), whatever the file size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.sparse as sp

from .._logging import logger, progress_bar
from .._utils import cpu_count
from ..errors import FormatError

#: Control characters (other than the newline separating ids) are refused in spot ids.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")

__all__ = ["Counts", "read_counts"]

_BOM = b"\xef\xbb\xbf"
_DEFAULT_CHUNK = 4 << 20
_MAX_WORKERS = 8
_MAX_HEADER = 64 << 20  # real headers: up to ~100k gene names, a few MB


@dataclass
class Counts:
    """A count matrix read from the release.

    Attributes
    ----------
    X
        Spots x genes CSR matrix in the narrowest dtype that holds every value of the file
        exactly: ``int32`` (integers up to ``2**31 - 1``), ``int64`` (integers up to
        ``2**53``), ``float32`` (non-integers, when float32 holds every value: at most 6
        significant digits, or a float32 number, and integers up to ``2**24``), else
        ``float64``.
    spot_ids
        Spot ids in row order (object array of str).
    genes
        Gene names in column order, verbatim (duplicates kept; object array of str).
    sha256
        SHA-256 of the bytes read (hex), when :func:`read_counts` was asked for it.

    """

    X: sp.csr_matrix
    spot_ids: np.ndarray
    genes: np.ndarray
    sha256: str | None = None


def read_counts(
    source: str | Path | BinaryIO,
    *,
    spots: Iterable[str] | None = None,
    chunk_bytes: int = _DEFAULT_CHUNK,
    workers: int | None = None,
    dtype: str | np.dtype | type | None = None,
    checksum: bool = False,
    progress: bool | None = None,
) -> Counts:
    r"""Read a dense count CSV into a sparse matrix, streaming, in bounded memory.

    The file is a header line (an empty or ignored first field, then one gene name per
    column) followed by one line per spot: the spot id, then one non-negative number per
    gene. Everything a CSV writer produces for such a table is accepted: quoted fields
    (header and spot ids; ``""`` escapes a quote), ``\n`` or ``\r\n`` line ends, a missing
    final newline, blank lines at the end, a UTF-8 byte-order mark, integers, decimals,
    exponents (``1e+03``) and ``-0.0``. Numbers may be quoted and surrounded by spaces.
    Values are stored exactly (see ``dtype``) or refused: nothing is rounded silently.

    Parameters
    ----------
    source
        Path of ``<slide>_count.csv``, or a binary file object (read sequentially with
        ``readinto`` or ``read``; it need not be seekable, e.g. a download stream).
    spots
        Spot ids to keep, others are dropped while parsing; ``None`` keeps every row.
    chunk_bytes
        Size of the byte blocks parsed at a time (grown when one line is longer).
    workers
        Parser threads (default: the usable CPU cores, at most 8). The reader thread
        overlaps with them.
    dtype
        ``None`` (default): the narrowest of ``int32``, ``int64``, ``float32`` and
        ``float64`` that holds every value exactly (see :attr:`Counts.X`). ``"float32"`` or
        ``"float64"`` forces a float dtype; a file that float32 cannot hold exactly is then
        refused.
    checksum
        Also compute the SHA-256 of the bytes read (the whole file for a path) on the way,
        in :attr:`Counts.sha256`, instead of reading the file a second time for it.
    progress
        Show a progress bar over the bytes read (``None``: the global setting).

    Returns
    -------
    :class:`Counts`, rows in file order. A file with a header but no data rows gives a
    ``0 x n_genes`` matrix.

    Raises
    ------
    FormatError
        For an empty file; ragged rows (too few or too many values, a trailing
        delimiter); empty, non-numeric, non-finite (``NaN``, ``inf``) or negative values;
        values that cannot be stored exactly (integers above ``2**53``, more than 17
        significant digits, below float64's normal range); blank lines before the end;
        lone carriage returns (classic Mac OS line ends); malformed quoted spot ids;
        duplicated spot ids. The message names
        the file, the 1-based physical line and the gene (column) or spot.

    Notes
    -----
    A missing final newline is legal, so a file cut in the middle of its last line is
    detected only when the line is left ragged (too few values); a file cut inside the
    last number (``12`` for ``123``) is not detectable.

    """
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be None, float32 or float64, got {dtype!r}")
    if chunk_bytes < 1 or (workers is not None and workers < 1):
        raise ValueError("chunk_bytes and workers must be positive")
    if workers is None:
        workers = max(1, min(_MAX_WORKERS, cpu_count()))
    keep = None if spots is None else {str(s) for s in spots}
    with _Source(source, checksum=checksum) as src:
        genes, first_line, carry, eof = _read_header(src)
        acc = _Accumulator(src, genes, first_line, keep, force=None if dtype is None else np.dtype(dtype))
        with progress_bar(
            f"reading {Path(src.name).name}", total=src.size, progress=progress
        ) as advance:
            advance(src.consumed - len(carry))
            _stream(src, acc, carry, eof, chunk_bytes, workers, advance)
        counts = acc.finish()
        counts.sha256 = src.hexdigest()
    logger.debug(
        "read %s: %d spots x %d genes, %d non-zeros (%s)",
        src.name,
        counts.X.shape[0],
        counts.X.shape[1],
        counts.X.nnz,
        counts.X.dtype,
    )
    if keep is not None and len(keep) > counts.X.shape[0]:
        logger.debug(
            "%s: %d of the requested spots are not in the file",
            src.name,
            len(keep) - counts.X.shape[0],
        )
    return counts


# --------------------------------------------------------------------------- input


class _Source:
    """A path or binary file object, read sequentially into caller buffers."""

    def __init__(self, source: str | Path | BinaryIO, checksum: bool = False) -> None:
        self.consumed = 0
        self._hash = hashlib.sha256() if checksum else None
        if isinstance(source, str | Path):
            self.name = str(source)
            self._file = open(source, "rb", buffering=0)
            self._own = True
        else:
            if isinstance(source, io.TextIOBase):
                raise TypeError("read_counts needs a binary file object, not a text one")
            self.name = str(getattr(source, "name", "<stream>"))
            self._file = source
            self._own = False
        self.size: int | None = None
        try:
            st = os.fstat(self._file.fileno())
            if st.st_size > 0 and self._file.seekable():
                self.size = st.st_size - self._file.tell()
        except (AttributeError, OSError, io.UnsupportedOperation):
            pass
        self._readinto = getattr(self._file, "readinto", None)

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc) -> None:
        if self._own:
            self._file.close()

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as possible; return the bytes read (0 at end of file)."""
        total = 0
        while total < len(view):
            if self._readinto is not None:
                got = self._readinto(view[total:])
            else:
                data = self._file.read(len(view) - total)
                got = len(data)
                view[total : total + got] = data
            if not got:
                break
            total += got
        if self._hash is not None and total:
            self._hash.update(view[:total])
        self.consumed += total
        return total

    def hexdigest(self) -> str | None:
        """SHA-256 of every byte read so far (``None`` unless asked for)."""
        return None if self._hash is None else self._hash.hexdigest()


def _read_header(src: _Source, piece: int = 1 << 16) -> tuple[np.ndarray, int, bytes, bool]:
    """Read and parse the header record.

    Returns the gene names, the physical line number of the first data line, the bytes
    read past the header, and whether the end of the file was reached.
    """
    data = bytearray()
    eof = False
    end = None
    search = 0
    while end is None:
        if not eof:
            old = len(data)
            data.extend(bytes(piece))
            with memoryview(data) as view:
                got = src.readinto(view[old:])
            del data[old + got :]
            eof = got == 0
            piece *= 2
        if len(data) == 0 and eof:
            raise FormatError(src.name, "empty count file (no header line)", line=1)
        while end is None:
            i = data.find(b"\n", search)
            if i < 0:
                break
            search = i + 1
            if data.count(b'"', 0, i) % 2 == 0:
                end = i
        if end is None and eof:
            end = len(data)
        if end is None and len(data) > _MAX_HEADER:
            if b"\r" in data:
                raise FormatError(src.name, _LONE_CR, line=1)
            raise FormatError(
                src.name,
                f"no end of the header line in its first {_MAX_HEADER >> 20} MB "
                "(an unbalanced quote?)",
                line=1,
            )
    rest = bytes(data[end + 1 :])
    raw = bytes(data[:end])
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(src.name, f"header is not valid UTF-8 ({e.reason})", line=1) from e
    if text.endswith("\r"):
        text = text[:-1]
    if "\r" in "".join(text.split('"')[::2]):  # outside quotes
        raise FormatError(src.name, _LONE_CR, line=1)
    if not text.strip():
        raise FormatError(src.name, "empty header line", line=1)
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as e:
        raise FormatError(src.name, f"malformed header: {e}", line=1) from e
    if len(records) != 1:
        raise FormatError(src.name, "malformed header (unbalanced quotes)", line=1)
    if len(records[0]) == 1:
        for sep, name in ((";", "semicolons (';')"), ("\t", "tabs")):
            if sep in text:
                raise FormatError(
                    src.name,
                    f"count file fields are separated by {name}, not commas (a spreadsheet "
                    "export with another locale?): save it as comma-separated values",
                    line=1,
                )
    genes = np.asarray(records[0][1:], dtype=object)
    first_line = text.count("\n") + 2
    return genes, first_line, rest, eof and not rest


# --------------------------------------------------------------------------- pipeline


class _Block:
    """A byte buffer and the kernel's scratch outputs for it."""

    def __init__(self, size: int) -> None:
        self.allocate(size)
        self.err = np.zeros(4, dtype=np.int64)

    def allocate(self, size: int, keep: int = 0) -> None:
        old = getattr(self, "raw", None)
        self.size = size
        self.raw = bytearray(size + 8)  # + room for the kernel's sentinel and word reads
        if old is not None and keep:
            self.raw[:keep] = old[:keep]
        self.view = memoryview(self.raw)[:size]
        self.buf = np.frombuffer(self.raw, dtype=np.uint8)
        # a non-zero field needs >= 2 bytes ("1,"), a valid line >= 2 bytes ("a\n")
        self.idx = np.empty(size // 2 + 2, dtype=np.int32)
        self.val = np.empty(size // 2 + 2, dtype=np.float64)
        self.row_nnz = np.empty(size // 2 + 2, dtype=np.int64)
        self.ids = np.empty(size + 1, dtype=np.uint8)

    def fill(self, src: _Source, carry: bytes, eof: bool) -> tuple[int, int, bool]:
        """Fill with ``carry`` then the file; return (bytes of whole lines, bytes held, eof)."""
        if len(carry) >= self.size:
            self.allocate(2 * len(carry) + 1)
        self.raw[: len(carry)] = carry
        filled = len(carry)
        while True:
            if not eof:
                got = src.readinto(self.view[filled:])
                filled += got
                eof = filled < self.size
            if eof:
                return filled, filled, True
            last = self.raw.rfind(b"\n", 0, filled)
            if last >= 0:
                return last + 1, filled, False
            self.allocate(2 * self.size, keep=filled)  # one line longer than a block


def _parse(block: _Block, n: int, n_genes: int):
    from ._counts_kernel import parse_block

    block.err[:] = 0
    block.buf[n] = 0  # sentinel (the bytes after n were copied out as the next carry)
    return parse_block(
        block.buf, n, n_genes, block.idx, block.val, block.row_nnz, block.ids, block.err
    )


def _stream(src, acc, carry, eof, chunk_bytes, workers, advance) -> None:
    if eof:
        return
    n_genes = len(acc.genes)
    if src.size is not None:  # small files: smaller blocks, still one per worker or more
        chunk_bytes = min(chunk_bytes, max(1 << 16, src.size // (2 * workers) + 1))
    free = [_Block(chunk_bytes) for _ in range(workers + 1)]
    pending: deque[tuple[_Block, int, Future]] = deque()
    reading = True
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read_counts") as pool:
        try:
            while reading or pending:
                while reading and free:
                    block = free.pop()
                    n, held, eof = block.fill(src, carry, eof)
                    carry = bytes(block.raw[n:held])
                    reading = not eof
                    if n == 0:
                        free.append(block)
                        break
                    pending.append((block, n, pool.submit(_parse, block, n, n_genes)))
                if not pending:
                    break
                block, n, fut = pending.popleft()
                acc.add(block, n, *fut.result())
                advance(n)
                free.append(block)
        except BaseException:
            for _, _, fut in pending:
                fut.cancel()
            raise


# --------------------------------------------------------------------------- output


_MESSAGES = {  # by the error codes of _counts_kernel (ERR_TOO_FEW = 1, ...)
    1: "too few values: the row ends before this gene",
    2: "too many values: the row goes on after the last gene",
    3: "empty value",
    4: "not a number: {text!r}",
    5: "negative count {text!r}",
    6: "value {text!r} is out of range: it cannot be stored exactly (integers up to 2**53, "
    "non-integers within float64's normal range)",
    7: "malformed quoted spot id",
    8: "empty line (blank lines are allowed only at the end of the file)",
    9: "value {text!r} has more than 17 significant digits: float64 cannot store it exactly",
    10: None,  # _LONE_CR
}
_LONE_CR = (
    "a lone carriage return (CR) ends a line (classic Mac OS line ends): "
    "save the file with LF or CRLF line ends"
)
_TRAILING = "too many values: a trailing delimiter (the row ends with a comma after the last gene)"


class _Accumulator:
    """CSR output arrays grown in place (``ndarray.resize``: no copy, no double peak)."""

    def __init__(self, src: _Source, genes: np.ndarray, first_line: int, keep, force: np.dtype | None):
        self.src = src
        self.genes = genes
        self.first_line = first_line
        self.keep = keep
        self.force = force
        self.indices = np.empty(0, dtype=np.int32)
        # the values: a byte buffer (grown in place) viewed as `dtype`, widened or converted
        # in place when a block needs another dtype (see _dtype_for)
        self.raw = np.empty(0, dtype=np.uint8)
        self.dtype = np.dtype(np.int32)
        self.flags = 0
        self.blank_line: int | None = None  # first of the blank lines seen so far at a block end
        self.nnz = 0
        self.rows = 0  # data rows read from the file, kept or not
        self.bytes = 0
        self.row_nnz: list[np.ndarray] = []
        self.ids: list[list[str]] = []
        self.kept_rows: list[np.ndarray] = []

    # -- errors
    def _fail(self, block: _Block, n: int, rows: int, q: int) -> None:
        code, row, col, pos = (int(v) for v in block.err)
        line = self.first_line + self.rows + row
        end = pos
        while end < n and end - pos < 60 and block.raw[end] not in b",\r\n":
            end += 1
        text = bytes(block.raw[pos:end]).decode("utf-8", "replace")
        message = _MESSAGES[code].format(text=text) if code != 10 else _LONE_CR
        if code == 8 and self.blank_line is not None:
            line = self.blank_line
        if text == "" and (pos >= n or block.raw[pos] in b"\r\n"):
            if code == 2:
                message = _TRAILING
            elif code == 3 and col == len(self.genes) - 1 and self.genes[-1] == "":
                message = (
                    "trailing delimiter: the header and the rows end with a comma "
                    "(an unnamed, empty last column)"
                )
        if code == 4 and text.strip('"+-').lower() in {"nan", "inf", "infinity"}:
            message = f"non-finite value {text!r}"
        if code == 1 and col == 0:
            message = "too few values: the row has no value at all"
        column = None
        if code == 2:
            column = str(self.genes[-1]) if len(self.genes) else None
        elif col >= 0 and col < len(self.genes):
            column = str(self.genes[col])
        spot = None
        if code not in (7, 8, 10):
            ids = bytes(block.ids[:q]).decode("utf-8", "replace").split("\n")
            if len(ids) > row:
                spot = ids[row]
        raise FormatError(self.src.name, message, line=line, column=column, spot=spot)

    # -- growth
    def _reserve(self, need: int) -> None:
        cap = len(self.indices)
        if need <= cap:
            return
        if self.src.size and self.bytes:
            # Projected from the density so far. Capacity never written costs address space
            # only (np.empty), so the first reservation is generous; a later growth is done
            # in place (realloc/mremap) but zero-fills, hence touches, its new tail.
            projected = need * self.src.size / self.bytes
            new = max(need, int(projected * (2.0 if cap == 0 else 1.1)), cap + cap // 8)
            new = min(new, max(need, self.src.size // 2 + 2))  # a non-zero takes >= 2 bytes
        else:
            new = max(need, cap + cap // 2, 1 << 16)
        size = self.dtype.itemsize
        if cap == 0:
            self.indices = np.empty(new, dtype=np.int32)
            self.raw = np.empty(new * size, dtype=np.uint8)
        else:
            self.indices.resize(new, refcheck=False)
            if len(self.raw) < new * size:
                self.raw.resize(new * size, refcheck=False)

    def _view(self, dtype: np.dtype | None = None) -> np.ndarray:
        dtype = self.dtype if dtype is None else dtype
        n = len(self.raw) // dtype.itemsize
        return self.raw[: n * dtype.itemsize].view(dtype)

    def _convert(self, dtype: np.dtype) -> None:
        """Convert the values read so far to ``dtype`` in place (bounded extra memory)."""
        old = self.dtype
        step = 1 << 20
        if dtype.itemsize > old.itemsize:  # widen: from the end, so no unread value is hit
            self.raw.resize(max(len(self.indices), 1) * dtype.itemsize, refcheck=False)
            src, dst = self._view(old), self._view(dtype)
            for end in range(self.nnz, 0, -step):
                start = max(0, end - step)
                dst[start:end] = src[start:end].astype(dtype)
        else:  # same size or narrower: from the start
            src, dst = self._view(old), self._view(dtype)
            for start in range(0, self.nnz, step):
                dst[start : start + step] = src[start : start + step].astype(dtype)
        self.dtype = dtype

    def _dtype_for(self, flags: int) -> np.dtype:
        from ._counts_kernel import F_F32_INEXACT, F_INT64, F_NONINT

        if self.force is not None:
            if self.force == np.float32 and flags & F_F32_INEXACT:
                raise FormatError(
                    self.src.name,
                    "float32 was asked for, but it cannot store every value of the file "
                    "exactly (read it with dtype=None)",
                )
            return self.force
        if flags & F_NONINT:
            return np.dtype(np.float64 if flags & F_F32_INEXACT else np.float32)
        return np.dtype(np.int64 if flags & F_INT64 else np.int32)

    def _slow_values(self, block: _Block, n: int, rows: int, val: np.ndarray) -> int:
        """Convert the values the kernel left to Python (``-(offset + 1)``); return flags."""
        from ._counts_kernel import F_F32_INEXACT

        flags = 0
        for i in np.flatnonzero(val < 0):
            pos = int(-val[i]) - 1
            end = pos
            while end < n and block.raw[end] not in b",\r\n":
                end += 1
            text = bytes(block.raw[pos:end]).decode("ascii")
            v = float(text.strip(' \t"'))
            if not v >= np.finfo(np.float64).tiny:
                line = self.first_line + self.rows - rows + bytes(block.raw[:pos]).count(b"\n")
                raise FormatError(self.src.name, _MESSAGES[6].format(text=text), line=line)
            if not np.finfo(np.float32).tiny <= v <= np.finfo(np.float32).max:
                flags |= F_F32_INEXACT
            val[i] = v
        return flags

    # -- one parsed block
    def add(self, block: _Block, n: int, rows: int, nnz: int, q: int, flags: int) -> None:
        from ._counts_kernel import F_SLOW, F_TRAILING_BLANK

        if self.blank_line is not None and (rows or block.err[0]):
            block.err[:] = (8, 0, -1, 0)  # data after blank lines: they were not the end
        if block.err[0]:
            self._fail(block, n, rows, q)
        if flags & F_TRAILING_BLANK and self.blank_line is None:
            self.blank_line = self.first_line + self.rows + rows
        self.bytes += n
        try:
            text = bytes(block.ids[:q]).decode("utf-8")
        except UnicodeDecodeError as e:
            row = bytes(block.ids[: e.start]).count(b"\n")
            raise FormatError(
                self.src.name, "spot id is not valid UTF-8", line=self.first_line + self.rows + row
            ) from e
        bad = _CONTROL.search(text)
        if bad is not None:
            row = text.count("\n", 0, bad.start())
            raise FormatError(
                self.src.name,
                f"spot id contains a control character ({bad.group()!r})",
                line=self.first_line + self.rows + row,
            )
        ids = text.split("\n")[:-1]
        row_nnz = block.row_nnz[:rows]
        idx = block.idx[:nnz]
        val = block.val[:nnz]
        if self.keep is not None:
            mask = np.fromiter((s in self.keep for s in ids), dtype=bool, count=rows)
            if not mask.all():
                sel = np.repeat(mask, row_nnz)
                idx, val = idx[sel], val[sel]
                row_nnz = row_nnz[mask]
                ids = [s for s, m in zip(ids, mask, strict=True) if m]
            self.kept_rows.append(self.rows + np.flatnonzero(mask))
            nnz = len(idx)
        self.rows += rows
        self.row_nnz.append(row_nnz.copy())
        self.ids.append(ids)
        if nnz == 0:
            return
        if flags & F_SLOW:
            flags |= self._slow_values(block, n, rows, val)
        self.flags |= flags
        dtype = self._dtype_for(self.flags)
        if dtype != self.dtype:
            self._convert(dtype)
        self._reserve(self.nnz + nnz)
        end = self.nnz + nnz
        self.indices[self.nnz : end] = idx
        self._view()[self.nnz : end] = val
        self.nnz = end

    def finish(self) -> Counts:
        dtype = self._dtype_for(self.flags)
        if dtype != self.dtype:
            self._convert(dtype)
        if len(self.indices) != self.nnz:
            if self.nnz == 0:
                self.indices = np.empty(0, dtype=np.int32)
                self.raw = np.empty(0, dtype=np.uint8)
            else:
                self.indices.resize(self.nnz, refcheck=False)
        if len(self.raw) != self.nnz * self.dtype.itemsize:
            self.raw.resize(self.nnz * self.dtype.itemsize, refcheck=False)
        data = self.raw.view(self.dtype)
        row_nnz = np.concatenate(self.row_nnz) if self.row_nnz else np.empty(0, dtype=np.int64)
        n_rows = len(row_nnz)
        index_dtype = np.int32 if self.nnz < 2**31 else np.int64
        indptr = np.zeros(n_rows + 1, dtype=index_dtype)
        np.cumsum(row_nnz, out=indptr[1:])
        indices = self.indices if index_dtype == np.int32 else self.indices.astype(np.int64)
        X = sp.csr_matrix((data, indices, indptr), shape=(n_rows, len(self.genes)), copy=False)
        X.has_sorted_indices = True
        spot_ids = np.empty(n_rows, dtype=object)
        pos = 0
        for part in self.ids:
            spot_ids[pos : pos + len(part)] = part
            pos += len(part)
        self._check_unique(spot_ids)
        return Counts(X=X, spot_ids=spot_ids, genes=self.genes)

    def _check_unique(self, spot_ids: np.ndarray) -> None:
        import pandas as pd

        index = pd.Index(spot_ids)
        if index.is_unique:
            return
        dup = np.flatnonzero(index.duplicated(keep="first"))[0]
        first = np.flatnonzero(spot_ids == spot_ids[dup])[0]
        rows = np.concatenate(self.kept_rows) if self.keep is not None else None

        def line(i: int) -> int:
            return self.first_line + int(i if rows is None else rows[i])

        raise FormatError(
            self.src.name,
            f"duplicated spot id (first on line {line(first)})",
            line=line(dup),
            spot=str(spot_ids[dup]),
        )
