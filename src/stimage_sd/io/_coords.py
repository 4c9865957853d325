"""Reader of ``<tech>/coord/<slide>_coord.csv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._logging import logger
from ..errors import FormatError

__all__ = ["read_coords", "utf8_error"]

_REQUIRED = ("yaxis", "xaxis", "r")


def read_coords(path: str | Path) -> pd.DataFrame:
    """Read a coordinate file of the release.

    The header is ``,yaxis,xaxis,r``: an empty first field holding the spot id, then the
    *vertical* position before the horizontal one. Columns are matched by name, so files
    whose columns come in another order are read correctly.

    Parameters
    ----------
    path
        Path of ``<slide>_coord.csv``.

    Returns
    -------
    Indexed by spot id (``index.name == "spot"``), columns ``x`` (image column, from
    ``xaxis``), ``y`` (image row, from ``yaxis``) and ``r`` (radius), all float64 pixels
    of the released image, in file order.

    Raises
    ------
    FormatError
        For a missing column, an empty file, a non-numeric, non-finite or negative value,
        a non-positive radius or a duplicated spot id; the message names the file, the line
        and the column or spot.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> coords = ssd.io.read_coords(ssd.io.find_slide(root, "GSE000001_GSM0000001").coord)
    >>> list(coords.columns)
    ['x', 'y', 'r']
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as e:
        raise FormatError(path, "empty coordinate file", line=1) from e
    except UnicodeDecodeError as e:
        raise utf8_error(path, "coordinate file") from e
    except pd.errors.ParserError as e:
        raise parser_error(path, "coordinate file", e) from e
    cols = [str(c).strip() for c in df.columns]
    df.columns = cols
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        hint = delimiter_error(path, "coordinate file")
        if hint is not None:
            raise hint
        raise FormatError(
            path, f"coordinate file lacks column(s) {missing}; header has {cols}", line=1
        )
    if len(df) == 0:
        raise FormatError(path, "coordinate file has no spots", line=2)
    ids = df.index.astype(str)
    if df.index.dtype != object:
        # pandas turns an index of numeric-looking ids into numbers ("007" -> 7) whatever
        # the dtype asked for: read the id column again as text
        raw = pd.read_csv(path, header=None, usecols=[0], dtype=str, keep_default_na=False, encoding="utf-8-sig")[0]
        if len(raw) != len(df) + 1:
            raise FormatError(path, f"cannot read the spot id column ({len(raw) - 1} ids for {len(df)} rows)")
        ids = pd.Index(raw.iloc[1:].to_numpy(dtype=object), dtype=object)
    if (ids == "").any() or pd.isna(df.index).any():
        i = int(np.flatnonzero((ids == "") | pd.isna(df.index))[0])
        raise FormatError(path, "empty spot id", line=i + 2)
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise FormatError(path, "duplicated spot id", line=i + 2, spot=ids[i])
    out = pd.DataFrame(index=pd.Index(ids, name="spot"))
    for src, dst in (("xaxis", "x"), ("yaxis", "y"), ("r", "r")):
        raw = df[src]
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(vals) | (vals < 0)
        if src == "r":
            bad |= vals <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "a positive number" if src == "r" else "a finite, non-negative number"
            raise FormatError(
                path, f"{src} must be {what}, got {raw.iloc[i]!r}", line=i + 2, column=src, spot=ids[i]
            )
        out[dst] = vals
    r = out["r"].to_numpy()
    if np.ptp(r) > 1e-6 * r.max():
        logger.warning(
            "%s: spot radius varies from %.4g to %.4g px; using the median %.4g",
            path, r.min(), r.max(), float(np.median(r)),
        )
    return out


def utf8_error(path: str | Path, what: str) -> FormatError:
    """A :class:`FormatError` naming the line of the first byte of ``path`` that is not UTF-8.

    Used by the text readers when decoding fails; a UTF-16 file (byte-order mark ``FF FE``
    or ``FE FF``, as spreadsheets save "Unicode text") is named as such.
    """
    import codecs

    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return FormatError(path, f"{what} is not valid UTF-8: it is UTF-16 (save it as UTF-8)", line=1)
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        line = 1
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                start = max(0, min(e.start, len(chunk)))
                line += chunk.count(b"\n", 0, start)
                return FormatError(path, f"{what} is not valid UTF-8 ({e.reason})", line=line)
            if not chunk:
                break
            line += chunk.count(b"\n")
    return FormatError(path, f"{what} is not valid UTF-8")


def delimiter_error(path: str | Path, what: str) -> FormatError | None:
    """The error for a file separated by ``;`` (or tabs) instead of commas, else ``None``.

    Spreadsheets with a European locale export "CSV" with ``;`` between fields (and decimal
    commas); pandas then sees one column, or ragged rows.
    """
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            head = fh.readline()
    except OSError:
        return None
    for sep, name in ((";", "semicolons (';')"), ("\t", "tabs")):
        if head.count(sep) and head.count(sep) >= head.count(","):
            return FormatError(
                path,
                f"{what} fields are separated by {name}, not commas (a spreadsheet export "
                "with another locale?): save it as comma-separated values",
                line=1,
            )
    return None


def parser_error(path: str | Path, what: str, e: Exception) -> FormatError:
    """A :class:`FormatError` for a pandas ``ParserError``, with the line it names."""
    hint = delimiter_error(path, what)
    if hint is not None:
        return hint
    import re

    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
    if m:
        return FormatError(
            path, f"record has {m[3]} fields, the header has {m[1]}", line=int(m[2])
        )
    m = re.search(r"line (\d+)", str(e))
    return FormatError(path, f"cannot parse {what}: {e}", line=int(m[1]) if m else None)
