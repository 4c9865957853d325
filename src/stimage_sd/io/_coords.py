"""Reader of ``<tech>/coord/<slide>_coord.csv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import FormatError
from .._logging import logger

__all__ = ["read_coords"]

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
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as e:
        raise FormatError(path, "empty coordinate file", line=1) from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot parse coordinate file: {e}") from e
    cols = [str(c).strip() for c in df.columns]
    df.columns = cols
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise FormatError(
            path, f"coordinate file lacks column(s) {missing}; header has {cols}", line=1
        )
    if len(df) == 0:
        raise FormatError(path, "coordinate file has no spots", line=2)
    ids = df.index.astype(str)
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
