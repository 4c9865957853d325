"""Reader of the dense count matrices ``<tech>/gene_exp/<slide>_count.csv``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import FormatError

__all__ = ["Counts", "read_counts"]


@dataclass
class Counts:
    """A count matrix read from the release.

    Attributes
    ----------
    X
        Spots x genes CSR matrix; ``int32`` when every value is integral, else ``float32``.
    spot_ids
        Spot ids in row order (object array of str).
    genes
        Gene names in column order, verbatim (duplicates kept; object array of str).
    """

    X: sp.csr_matrix
    spot_ids: np.ndarray
    genes: np.ndarray


def read_counts(
    source: str | Path | BinaryIO,
    *,
    spots: Iterable[str] | None = None,
    chunk_rows: int = 512,
    progress: bool | None = None,
) -> Counts:
    """Read a dense count CSV into a sparse matrix, in bounded memory.

    Parameters
    ----------
    source
        Path of ``<slide>_count.csv`` or a binary file object.
    spots
        Spot ids to keep (others are skipped while parsing); ``None`` keeps all.
    chunk_rows
        Rows parsed per block.
    progress
        Show a progress bar (``None``: the global setting).

    Returns
    -------
    :class:`Counts` with rows in file order.

    Raises
    ------
    FormatError
        On ragged rows, empty, non-numeric, non-finite or negative values, naming the
        file, the line and the gene.
    """
    name = str(source) if isinstance(source, str | Path) else getattr(source, "name", "<stream>")
    keep = None if spots is None else set(map(str, spots))
    try:
        reader = pd.read_csv(source, index_col=0, dtype=str, chunksize=chunk_rows, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as e:
        raise FormatError(name, "empty count file", line=1) from e
    blocks: list[sp.csr_matrix] = []
    ids: list[np.ndarray] = []
    genes: np.ndarray | None = None
    integral = True
    line0 = 2
    for chunk in reader:
        if genes is None:
            genes = np.asarray([str(g) for g in chunk.columns], dtype=object)
        n = len(chunk)
        if keep is not None:
            mask = chunk.index.astype(str).isin(keep)
            lines = np.flatnonzero(mask) + line0
            chunk = chunk[mask]
        else:
            lines = np.arange(n) + line0
        line0 += n
        vals = chunk.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(vals) | (vals < 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise FormatError(
                name, f"count must be a finite non-negative number, got {chunk.iat[i, j]!r}",
                line=int(lines[i]), column=str(genes[j]),
            )
        if integral and (vals != np.round(vals)).any():
            integral = False
        blocks.append(sp.csr_matrix(vals))
        ids.append(chunk.index.astype(str).to_numpy(dtype=object))
    if genes is None:
        raise FormatError(name, "count file has a header but no rows", line=2)
    X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(genes)))
    X = X.astype(np.int32 if integral else np.float32)
    return Counts(X=X, spot_ids=np.concatenate(ids) if ids else np.empty(0, dtype=object), genes=genes)
