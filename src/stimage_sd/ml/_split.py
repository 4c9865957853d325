"""Train/validation/test splits of slides, from a catalogue split or a split file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..errors import FormatError, StimageError

__all__ = ["load_split", "split_slides"]


def load_split(splits: Mapping[str, Sequence[str]] | str | Path) -> dict[str, list[str]]:
    """A split as ``{split name: [slide ids]}``.

    Parameters
    ----------
    splits
        A split from :meth:`stimage_sd.hub.Catalog.split`, or a file written by
        :meth:`stimage_sd.hub.Catalog.write_split`: JSON (``{"splits": {name: [ids]}}`` or
        ``{name: [ids]}``) or CSV/TSV with columns ``slide`` and ``split``.

    Raises
    ------
    FormatError
        If the file is not a split; :class:`StimageError` if a slide is in two splits.
    """
    if isinstance(splits, Mapping):
        out = {str(k): [str(s) for s in v] for k, v in splits.items()}
    else:
        path = Path(splits)
        if not path.is_file():
            raise StimageError(f"{path}: no such split file")
        if path.suffix.lower() == ".json":
            try:
                payload = json.loads(path.read_text())
            except ValueError as e:
                raise FormatError(path, f"not JSON ({e})") from None
            body = payload.get("splits", payload) if isinstance(payload, dict) else None
            if not isinstance(body, dict) or not all(isinstance(v, list) for v in body.values()):
                raise FormatError(path, 'expected {"splits": {name: [slide ids]}}')
            out = {str(k): [str(s) for s in v] for k, v in body.items()}
        else:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
            missing = {"slide", "split"} - set(table.columns)
            if missing:
                raise FormatError(path, f"missing column(s) {sorted(missing)} (expected slide,split,...)", line=1)
            out = {}
            for slide, name in zip(table["slide"], table["split"], strict=True):
                out.setdefault(name, []).append(slide)
    seen: dict[str, str] = {}
    for name, ids in out.items():
        for s in ids:
            if s in seen and seen[s] != name:
                raise StimageError(f"slide {s!r} is in two splits ({seen[s]!r} and {name!r})")
            seen[s] = name
    return out


def split_slides(split: str, splits: Mapping[str, Sequence[str]] | str | Path) -> list[str]:
    """The slide ids of one split.

    Parameters
    ----------
    split
        Split name, e.g. ``"train"``, ``"val"`` or ``"test"``.
    splits
        A mapping of split name to slide ids (as returned by
        :meth:`stimage_sd.hub.Catalog.split`) or a split file written by
        :meth:`stimage_sd.hub.Catalog.write_split` (JSON, CSV or TSV).

    Returns
    -------
    The slide ids of ``split``, in file order.

    Raises
    ------
    StimageError
        If there is no such split.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.ml.split_slides("train", {"train": ["a", "b"], "test": ["c"]})
    ['a', 'b']
    """
    table = load_split(splits)
    if split not in table:
        raise StimageError(f"no split {split!r} (splits: {', '.join(table)})")
    return table[split]
