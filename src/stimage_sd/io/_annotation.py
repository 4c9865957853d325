"""Reader of ``annotation/<slide>_anno.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._logging import logger
from ..errors import FormatError

__all__ = ["UNLABELED", "read_annotation"]

#: Conflicting labels recorded in ``uns["stimage"]["annotation"]["conflicts"]`` at most.
MAX_CONFLICTS_RECORDED = 1000

#: Labels the dataset authors drop before evaluation (compared case-insensitively).
UNLABELED = frozenset({"", "nan", "na", "undetermined", "exclude"})


def read_annotation(path: str | Path) -> tuple[pd.Series, str]:
    """Read a pathologist annotation file.

    The file has two columns: the spot id, then a label column whose name varies by study
    (``V2``, ``TLS_2_cat``, ...). Labels are kept verbatim (vocabularies are the source
    studies' own); duplicated spot ids keep their first label, as the dataset authors do.
    A spot id given two *different* labels is a conflict: a warning is logged and
    :func:`~stimage_sd.io.read_slide` records them in ``uns["stimage"]["annotation"]["conflicts"]``).

    Parameters
    ----------
    path
        Path of ``<slide>_anno.csv``.

    Returns
    -------
    The labels as a string Series indexed by spot id (missing labels ``<NA>``), and the
    name of the label column in the file.

    Raises
    ------
    FormatError
        If the file does not have at least two columns or is empty.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "GSE000001_GSM0000001")
    >>> labels, column = ssd.io.read_annotation(files.annotation)
    >>> column
    'TLS_2_cat'
    """
    labels, column, _ = _read_annotation(path)
    return labels, column


def _read_annotation(path: str | Path) -> tuple[pd.Series, str, dict | None]:
    """:func:`read_annotation`, plus the conflicting labels (``None`` when there are none).

    The conflicts are one entry per dropped row whose label differs from the kept (first)
    one: columns ``spot``, ``kept``, ``dropped`` (a missing label is ``""``) and ``line``
    (of the dropped row; the header is line 1), at most :data:`MAX_CONFLICTS_RECORDED`
    entries; ``n`` counts the spots with a conflict.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except pd.errors.EmptyDataError as e:
        raise FormatError(path, "empty annotation file", line=1) from e
    except UnicodeDecodeError as e:
        from ._coords import utf8_error

        raise utf8_error(path, "annotation file") from e
    except pd.errors.ParserError as e:
        from ._coords import parser_error

        raise parser_error(path, "annotation file", e) from e
    if df.shape[1] < 2:
        from ._coords import delimiter_error

        hint = delimiter_error(path, "annotation file")
        if hint is not None:
            raise hint
        raise FormatError(path, f"annotation file needs a spot id and a label column, header has {list(df.columns)}", line=1)
    spot_col, label_col = df.columns[0], df.columns[1]
    ids = df[spot_col].astype(str)
    dup = ids.duplicated()
    conflicts = None
    if dup.any():
        logger.warning("%s: %d duplicated spot id(s) dropped (first label kept)", path, int(dup.sum()))
        stripped = df[label_col].astype("string").str.strip().fillna("")  # as the labels kept below
        conflicts = _conflicts(ids, stripped.astype(str))
        if conflicts is not None:
            show = ", ".join(
                f"{s!r}: {k!r} kept, {d!r} dropped (line {ln})"
                for s, k, d, ln in list(zip(conflicts["spot"], conflicts["kept"], conflicts["dropped"],
                                            conflicts["line"], strict=True))[:3]
            )
            logger.warning(
                "%s: %d spot(s) have conflicting labels, the first label is kept: %s%s "
                "(recorded in uns['stimage']['annotation']['conflicts'])",
                path, conflicts["n"], show, ", ..." if len(conflicts["spot"]) > 3 else "",
            )
    # spaces around a label (a spreadsheet's padding) are not part of it; blank is missing
    labels = pd.Series(df[label_col].to_numpy(), index=pd.Index(ids, name="spot"), dtype="string").str.strip()
    labels = labels.mask(labels == "")
    labels = labels[~dup.to_numpy()]
    return labels, str(label_col), conflicts


def _conflicts(ids: pd.Series, labels: pd.Series) -> dict | None:
    first = labels.groupby(ids.to_numpy(), sort=False).transform("first")
    bad = ids.duplicated().to_numpy() & (labels.to_numpy() != first.to_numpy())
    if not bad.any():
        return None
    rows = pd.DataFrame({"spot": ids[bad], "kept": first[bad], "dropped": labels[bad],
                         "line": ids.index[bad] + 2}).drop_duplicates(["spot", "dropped"])
    n = int(rows["spot"].nunique())
    rows = rows.iloc[:MAX_CONFLICTS_RECORDED]
    return {
        "n": n,
        "spot": rows["spot"].tolist(),
        "kept": rows["kept"].tolist(),
        "dropped": rows["dropped"].tolist(),
        "line": [int(v) for v in rows["line"]],
    }
