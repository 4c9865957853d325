"""Reader of ``annotation/<slide>_anno.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._logging import logger
from ..errors import FormatError

__all__ = ["UNLABELED", "read_annotation"]

#: Labels the dataset authors drop before evaluation (compared case-insensitively).
UNLABELED = frozenset({"", "nan", "na", "undetermined", "exclude"})


def read_annotation(path: str | Path) -> tuple[pd.Series, str]:
    """Read a pathologist annotation file.

    The file has two columns: the spot id, then a label column whose name varies by study
    (``V2``, ``TLS_2_cat``, ...). Labels are kept verbatim (vocabularies are the source
    studies' own); duplicated spot ids keep their first label, as the dataset authors do.

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
    if dup.any():
        logger.warning("%s: %d duplicated spot id(s) dropped (first label kept)", path, int(dup.sum()))
    # spaces around a label (a spreadsheet's padding) are not part of it; blank is missing
    labels = pd.Series(df[label_col].to_numpy(), index=pd.Index(ids, name="spot"), dtype="string").str.strip()
    labels = labels.mask(labels == "")
    labels = labels[~dup.to_numpy()]
    return labels, str(label_col)
