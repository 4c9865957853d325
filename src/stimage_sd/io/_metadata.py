"""Reader of the release's metadata table (``meta/meta_all_gene*.csv``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from ..errors import FormatError, StimageError
from ._coords import utf8_error
from ._ids import validate_slide_id

__all__ = ["METADATA_COLUMNS", "read_metadata"]

METADATA_COLUMNS = (
    "slide",
    "species",
    "tissue",
    "pmid",
    "title",
    "abstract",
    "keywords",
    "involve_cancer",
    "tech",
    "spot_num",
    "gene_num",
)
_STR_COLUMNS = ("species", "tissue", "pmid", "title", "abstract", "keywords", "tech")


def _sniff_delimiter(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            head = fh.readline()
    except UnicodeDecodeError as e:
        raise utf8_error(path, "metadata table") from e
    if not head.strip():
        raise FormatError(path, "empty metadata table (no header)", line=1)
    return "\t" if head.count("\t") > head.count(",") else ","


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read the metadata table, whatever its delimiter.

    The current release is comma-separated with every field quoted and abstracts that
    span several lines; an older one was tab-separated. The delimiter is detected from the
    header.

    Parameters
    ----------
    path
        Path of ``meta_all_gene*.csv``.

    Returns
    -------
    One row per slide, indexed by slide id (``index.name == "slide"``), with typed columns:
    ``involve_cancer`` boolean, ``spot_num``/``gene_num`` integers, text columns as
    pandas strings with missing values as ``<NA>``; ``pmid`` stays a string (it may hold
    several comma-separated ids).

    Raises
    ------
    FormatError
        If a required column is missing, a slide id is duplicated or unsafe as a file
        name (see :func:`~stimage_sd.io.validate_slide_id`), or a typed field does
        not parse; the message names the file, the line and the field.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> meta = ssd.io.read_metadata(ssd.io.find_metadata(root))
    >>> meta.loc["GSE000001_GSM0000001", "tech"]
    'Visium'
    """
    path = Path(path)
    sep = _sniff_delimiter(path)
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_MINIMAL,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as e:
        raise utf8_error(path, "metadata table") from e
    except pd.errors.ParserError as e:
        from ._coords import parser_error

        raise parser_error(path, "metadata table", e) from e
    df.columns = [str(c).strip() for c in df.columns]  # padding of a hand-edited header
    missing = [c for c in METADATA_COLUMNS if c not in df.columns]
    if missing and len(df.columns) == 1 and ";" in df.columns[0]:
        from ._coords import delimiter_error

        hint = delimiter_error(path, "metadata table")
        if hint is not None:
            raise hint
    if missing:
        raise FormatError(path, f"metadata table lacks column(s) {missing}", line=1)
    # physical line of each record (records may span lines), for error messages
    lines = _record_lines(path, sep, len(df))

    if df["slide"].isna().any():
        i = int(df.index[df["slide"].isna()][0])
        raise FormatError(path, "empty slide id", line=lines[i], column="slide")
    dup = df["slide"].duplicated()
    if dup.any():
        i = int(df.index[dup][0])
        raise FormatError(path, f"duplicate slide id {df['slide'][i]!r}", line=lines[i], column="slide")
    # ids become file names: refuse unsafe ones (``../x``, ``a/b``, NUL, only dots) here
    for i, s in enumerate(df["slide"]):
        try:
            validate_slide_id(s)
        except StimageError as e:
            raise FormatError(path, str(e), line=lines[i], column="slide") from None

    index = pd.Index(df["slide"].astype(str), name="slide")
    out = pd.DataFrame(index=index)
    for c in _STR_COLUMNS:
        out[c] = pd.Series(df[c].to_numpy(), dtype="string").str.strip().array
    flag = df["involve_cancer"].str.strip().str.lower()
    bad = ~flag.isin(["true", "false"]) & flag.notna()
    if bad.any():
        i = int(df.index[bad][0])
        raise FormatError(
            path, f"involve_cancer must be True or False, got {df['involve_cancer'][i]!r}",
            line=lines[i], column="involve_cancer",
        )
    out["involve_cancer"] = pd.array(flag.map({"true": True, "false": False}).to_numpy(), dtype="boolean")
    for c in ("spot_num", "gene_num"):
        num = pd.to_numeric(df[c], errors="coerce")
        # empty fields stay <NA>; only non-numbers and fractions are errors
        bad = (num.isna() & df[c].notna()) | (num.notna() & ((num % 1) != 0))
        if bad.any():
            i = int(df.index[bad][0])
            raise FormatError(path, f"{c} must be an integer, got {df[c][i]!r}", line=lines[i], column=c)
        out[c] = pd.array(num.to_numpy(), dtype="Int64")
    extra = [c for c in df.columns if c not in METADATA_COLUMNS]
    for c in extra:
        out[c] = df[c].to_numpy()
    return out


def _record_lines(path: Path, sep: str, n: int) -> list[int]:
    """1-based physical line on which each data record starts.

    Also checks the records: one that the CSV module cannot parse, or whose number of
    fields differs from the header's (a ragged row, which pandas would silently shift into
    the index or fill with missing values), raises :class:`FormatError` naming its line.
    """
    starts: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        text = fh.read()
    # universal newlines: lone CR line ends (classic Mac OS) count as lines, as for pandas
    reader = csv.reader(io.StringIO(text, newline=None), delimiter=sep)
    try:
        header = next(reader, [])
        line = reader.line_num
        for row in reader:
            if row:  # blank lines are skipped, as pandas does
                if len(row) != len(header):
                    raise FormatError(
                        path, f"record has {len(row)} fields, the header has {len(header)}", line=line + 1
                    )
                starts.append(line + 1)
            line = reader.line_num
    except csv.Error as e:
        raise FormatError(path, f"malformed record: {e}", line=reader.line_num) from e
    starts += [0] * (n - len(starts))
    return starts
