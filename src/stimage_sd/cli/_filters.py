"""Catalogue filter options shared by ``catalog``, ``split``, ``download`` and ``convert``.

Decorate a typer command with :func:`filter_options`; it adds ``--species``, ``--tissue``,
``--tech``, ``--cancer/--no-cancer``, ``--min-spots``, ``--max-spots``,
``--annotated/--not-annotated``, ``--study``, ``--text``, ``--min-um-per-px``,
``--max-um-per-px``, ``--slide`` and ``--slides-file``/``--split`` to the command and hands the command one
:class:`CatalogFilter` in its ``filters`` parameter::

    @app.command()
    @filter_options
    def convert(root: Path, out: Path, filters: CatalogFilter) -> None:
        ids = filters.apply(Catalog.from_root(root)).slides

Options the command already declares itself (same parameter name) are not added again.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import StimageError

__all__ = ["CatalogFilter", "filter_options", "parse_bytes", "read_slide_list"]

_PANEL = "Slide selection"


@dataclass
class CatalogFilter:
    """Filter values gathered from the command line (``None``/empty = no constraint)."""

    species: list[str] | None = None
    tissue: list[str] | None = None
    tech: list[str] | None = None
    cancer: bool | None = None
    min_spots: int | None = None
    max_spots: int | None = None
    annotated: bool | None = None
    study: list[str] | None = None
    text: list[str] | None = None
    min_um_per_px: float | None = None
    max_um_per_px: float | None = None
    slide: list[str] | None = None
    slides_file: Path | None = None
    split: str | None = None

    def slide_ids(self, known: Iterable[str] | None = None) -> list[str] | None:
        """Slide ids named with ``--slide`` and ``--slides-file`` (``None`` if neither).

        A ``--slide`` value that is exactly a ``known`` slide id is taken verbatim (ids may
        hold commas and spaces); other values are split at commas and stripped.
        """
        ids: list[str] = []
        if self.slide:
            ids += slide_args(self.slide, known)
        if self.slides_file is not None:
            ids += read_slide_list(self.slides_file, split=self.split)
        elif self.split is not None:
            raise StimageError("--split needs --slides-file (a split written by 'stimage-sd split')")
        return list(dict.fromkeys(ids)) if (self.slide or self.slides_file is not None) else None

    def catalogue_kwargs(self) -> dict[str, Any]:
        """The :meth:`Catalog.filter <stimage_sd.hub.Catalog.filter>` arguments other than ``slides``."""
        out: dict[str, Any] = {}
        for name in ("species", "tissue", "tech", "study", "text"):
            v = getattr(self, name)
            if v:
                out[name] = v if name == "text" else _split_commas(v)
        for name in ("cancer", "min_spots", "max_spots", "annotated", "min_um_per_px", "max_um_per_px"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out

    @property
    def needs_catalogue(self) -> bool:
        """Whether a filter other than explicit slide ids is set."""
        return bool(self.catalogue_kwargs())

    @property
    def active(self) -> bool:
        """Whether any selection is set."""
        return self.needs_catalogue or self.slide_ids() is not None

    @property
    def needs_resolution(self) -> bool:
        """Whether a µm-per-pixel bound is set (the resolution index is needed)."""
        return self.min_um_per_px is not None or self.max_um_per_px is not None

    def apply(self, catalog):
        """Filter a :class:`~stimage_sd.hub.Catalog`; returns the filtered catalogue.

        µm-per-pixel bounds are applied last, after the resolution index was computed (or
        read from its cache) for the slides the other filters kept only.
        """
        kwargs = self.catalogue_kwargs()
        um = {k: kwargs.pop(k) for k in ("min_um_per_px", "max_um_per_px") if k in kwargs}
        cat = catalog.filter(slides=self.slide_ids(known=catalog.slides), **kwargs)
        if um:
            if "um_per_px" not in cat.table.columns:
                cat = cat.with_resolution()
            cat = cat.filter(**um)
        return cat


def slide_args(values: list[str], known: Iterable[str] | None = None) -> list[str]:
    """``--slide`` values to slide ids.

    A value that is exactly a known id is kept verbatim (release ids may end with a space
    or hold a comma); others are split at commas and stripped.
    """
    known = set(known) if known is not None else set()
    out: list[str] = []
    for v in values:
        out += [v] if v in known else _split_commas([v])
    return out


def _split_commas(values: list[str]) -> list[str]:
    """``--tech ST,Visium --tech VisiumHD`` -> ``[ST, Visium, VisiumHD]`` (ids may not contain commas)."""
    out: list[str] = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def read_slide_list(path: str | Path, split: str | None = None) -> list[str]:
    """Slide ids from a file: one per line, a CSV/TSV with a ``slide`` column, or a split JSON.

    Parameters
    ----------
    path
        Text file (``#`` starts a comment), CSV/TSV written by ``stimage-sd split``
        (columns ``slide``, ``split``, ...), or its JSON form.
    split
        Keep only the slides of this split (CSV/TSV with a ``split`` column, or JSON).

    """
    path = Path(path)
    if not path.is_file():
        raise StimageError(f"slide list {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        splits = data.get("splits", data) if isinstance(data, dict) else {"": data}
        if split is None:
            return [s for ids in splits.values() for s in ids]
        if split not in splits:
            raise StimageError(f"{path}: no split {split!r} (splits: {', '.join(splits)})")
        return list(splits[split])
    first = text.splitlines()[0] if text.strip() else ""
    sep = "\t" if "\t" in first else ","
    header = [h.strip().strip('"') for h in first.split(sep)]
    if "slide" in header:
        import pandas as pd

        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        if split is not None:
            if "split" not in df.columns:
                raise StimageError(f"{path}: no 'split' column to select {split!r} from")
            names = sorted(set(df["split"]))
            df = df[df["split"] == split]
            if df.empty:
                raise StimageError(f"{path}: no slide in split {split!r} (splits: {', '.join(names)})")
        return [s for s in df["slide"] if s]
    if split is not None:
        raise StimageError(f"{path}: a plain list of ids has no splits")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """``"10GiB"``, ``"500MB"``, ``"1.5g"``, ``"123"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m[2].lower() not in _UNITS:
        raise StimageError(f"not a byte size: {text!r} (examples: 500MB, 10GiB, 1234567)")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def _options() -> dict[str, tuple[Any, Any]]:
    """Parameter name -> (annotation, default) of every filter option."""
    opt = functools.partial(typer.Option, rich_help_panel=_PANEL)
    return {
        "species": (Annotated[list[str] | None, opt("--species", help="Species to keep, e.g. human, mouse (repeatable or comma-separated).")], None),
        "tissue": (Annotated[list[str] | None, opt("--tissue", help="Tissue to keep, e.g. brain, breast (repeatable or comma-separated).")], None),
        "tech": (Annotated[list[str] | None, opt("--tech", "-t", help="Technology to keep: ST, Visium, VisiumHD (repeatable or comma-separated).")], None),
        "cancer": (Annotated[bool | None, opt("--cancer/--no-cancer", help="Only slides that involve cancer / that do not.")], None),
        "min_spots": (Annotated[int | None, opt("--min-spots", help="Keep slides with at least this many spots.")], None),
        "max_spots": (Annotated[int | None, opt("--max-spots", help="Keep slides with at most this many spots.")], None),
        "annotated": (Annotated[bool | None, opt("--annotated/--not-annotated", help="Only slides with / without pathologist annotation.")], None),
        "study": (Annotated[list[str] | None, opt("--study", help="Study to keep: GEO series (GSE144239) or Species_Tissue_Author_Date (repeatable).")], None),
        "text": (Annotated[list[str] | None, opt("--text", help="Case-insensitive text that title, abstract or keywords must contain (repeatable: all must match).")], None),
        "min_um_per_px": (Annotated[float | None, opt("--min-um-per-px", help="Keep slides with at least this many µm per pixel (estimated from the coordinate files; see 'catalog --resolution').")], None),
        "max_um_per_px": (Annotated[float | None, opt("--max-um-per-px", help="Keep slides with at most this many µm per pixel, e.g. 0.5 for 20x or finer.")], None),
        "slide": (Annotated[list[str] | None, opt("--slide", "-s", help="Slide id, verbatim (repeatable or comma-separated).")], None),
        "slides_file": (Annotated[Path | None, opt("--slides-file", help="File of slide ids: one per line, or a split file from 'stimage-sd split'.")], None),
        "split": (Annotated[str | None, opt("--split", help="With --slides-file: only the slides of this split (train, val, test).")], None),
    }


_NAMES = tuple(f.name for f in fields(CatalogFilter))


def filter_options(func):
    """Add the catalogue filter options to a typer command.

    The decorated function must have a ``filters`` parameter; it receives a
    :class:`CatalogFilter`. Filter options whose name the function already declares
    (e.g. its own ``slide``) are left to the function and passed to it as usual; their
    values are copied into ``filters`` too.
    """
    sig = inspect.signature(func, eval_str=True)
    if "filters" not in sig.parameters:
        raise TypeError(f"{func.__name__} needs a 'filters' parameter to use @filter_options")
    own = set(sig.parameters) - {"filters"}
    added = {n: v for n, v in _options().items() if n not in own}
    params = [p for p in sig.parameters.values() if p.name != "filters"]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
        for name, (ann, default) in added.items()
    ]
    # typer requires keyword-only parameters after positional ones: keep order, make all keyword
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

    @functools.wraps(func)
    def wrapper(**kwargs):
        values = {n: kwargs.pop(n) for n in list(kwargs) if n in added}
        for n in _NAMES:
            if n in own and n not in values:
                values[n] = kwargs.get(n)
        kwargs["filters"] = CatalogFilter(**{n: values.get(n) for n in _NAMES})
        return func(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    annotations = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    if sig.return_annotation is not inspect.Signature.empty:
        annotations["return"] = sig.return_annotation
    wrapper.__annotations__ = annotations
    return wrapper
