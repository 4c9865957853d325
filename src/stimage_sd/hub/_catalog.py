"""The slide catalogue: the release's metadata table with filters, summaries and splits.

:class:`Catalog` wraps ``meta/meta_all_gene*.csv`` (read by
:func:`~stimage_sd.io.read_metadata`, whatever its delimiter) and adds derived columns:

``study``
    The GEO series for GEO ids (``GSE144239_GSM4284316`` -> ``GSE144239``), else the
    first four ``_``-separated fields, ``Species_Tissue_Author_MMDDYYYY``
    (``Human_Heart_Asp_12122019_ST_ST_Sample_4.5-5PCW_1`` -> ``Human_Heart_Asp_12122019``).
``annotated``
    Whether an ``annotation/<slide>_anno.csv`` exists in the repository (hub) or in the
    root (``<NA>`` when unknown, e.g. for a bare metadata file).
``size_image``, ``size_coord``, ``size_counts``, ``size_annotation``, ``size_total``
    File sizes in bytes when known (hub listing, or files in a local root); a slide
    without annotation has ``size_annotation`` 0.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._constants import TECHS
from .._logging import logger, progress_enabled
from ..errors import StimageError
from ..io._ids import study_of
from ..io._layout import find_metadata, validate_slide_id
from ..io._metadata import read_metadata
from ._client import (
    REPO_ID,
    REPO_TYPE,
    cache_dir_of,
    endpoint_url,
    hub_errors,
    is_offline,
    silent_tqdm,
    slide_not_found,
)
from ._download import PARTS, Listing, RemoteFile, list_release, repo_path

__all__ = ["Catalog", "study_of"]

_SIZE_COLUMNS = tuple(f"size_{p}" for p in PARTS)
_SPLIT_NAMES = {2: ("train", "test"), 3: ("train", "val", "test")}
_TEXT_COLUMNS = ("title", "abstract", "keywords")


class Catalog:
    """The STimage-1K4M slide catalogue.

    Build one with :meth:`load` (dispatching on the source), :meth:`from_root`,
    :meth:`from_path` or :meth:`from_hub`. A catalogue is immutable: :meth:`filter` and
    :meth:`select` return new catalogues. ``len(cat)`` is the number of slides,
    iterating yields slide ids, ``slide in cat`` tests membership.

    Parameters
    ----------
    table
        One row per slide, indexed by slide id, as :func:`~stimage_sd.io.read_metadata`
        returns it, plus the derived columns (added when missing).
    source
        Where the table came from (for messages).
    root
        Local dataset root, when the catalogue describes one.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> cat = ssd.hub.Catalog.from_root(root)
    >>> visium = cat.filter(tech="Visium", annotated=True)
    >>> splits = cat.split(by="study", seed=0)
    """

    def __init__(
        self,
        table: pd.DataFrame,
        *,
        source: str = "",
        root: str | Path | None = None,
        _universe: pd.DataFrame | None = None,
    ) -> None:
        for s in table.index:
            validate_slide_id(s)
        table = table.copy()
        if "study" not in table.columns:
            table["study"] = pd.array([study_of(s) for s in table.index], dtype="string")
        if "annotated" not in table.columns:
            table["annotated"] = pd.array([pd.NA] * len(table), dtype="boolean")
        for c in _SIZE_COLUMNS:
            if c not in table.columns:
                table[c] = pd.array([pd.NA] * len(table), dtype="Int64")
        if "size_total" not in table.columns:
            table["size_total"] = table[list(_SIZE_COLUMNS)].sum(axis=1, skipna=False).astype("Int64")
        self._table = table
        self.source = source
        self.root = Path(root) if root is not None else None
        # the unfiltered catalogue: to validate filter values and suggest close matches
        self._universe = table if _universe is None else _universe

    # ------------------------------------------------------------------ constructors
    @classmethod
    def load(cls, source: str | Path | None = None, **kwargs: Any) -> Catalog:
        """Load a catalogue from a dataset root, a metadata file or the hub.

        Parameters
        ----------
        source
            A folder (dataset root, :meth:`from_root`), a file (:meth:`from_path`), or
            ``None``/``"hub"``/``"hf://<repo_id>"`` (:meth:`from_hub`).
        **kwargs
            Passed on to the constructor chosen.

        """
        if source is None or str(source) == "hub":
            return cls.from_hub(**kwargs)
        text = str(source)
        if text.startswith("hf://"):
            return cls.from_hub(repo_id=text[len("hf://") :].strip("/") or REPO_ID, **kwargs)
        path = Path(source).expanduser()
        if path.is_dir():
            return cls.from_root(path, **kwargs)
        if path.is_file():
            return cls.from_path(path, **kwargs)
        raise StimageError(f"catalogue source {text!r} is neither a folder, a file nor 'hub'")

    @classmethod
    def from_path(cls, path: str | Path) -> Catalog:
        """A catalogue from a bare metadata file (``annotated`` and sizes unknown).

        Parameters
        ----------
        path
            ``meta_all_gene*.csv`` (comma- or tab-separated).

        """
        table = read_metadata(path)
        return cls(table, source=str(path))

    @classmethod
    def from_root(cls, root: str | Path) -> Catalog:
        """A catalogue of a local dataset root in the release layout.

        ``annotated`` and the sizes come from the files in ``root``, completed by the
        repository listing that :func:`~stimage_sd.hub.download` saves there (so a root
        holding only some parts still knows which slides are annotated).

        Parameters
        ----------
        root
            Dataset root with ``meta/meta_all_gene*.csv``.

        """
        root = Path(root).expanduser()
        meta = find_metadata(root)
        if meta is None:
            raise StimageError(f"{root}: no metadata table (meta/meta_all_gene*.csv) in this dataset root")
        table = read_metadata(meta)
        listing = Listing.load(root)
        annotated, sizes = _local_files(root, table)
        if listing is not None:
            l_anno, l_sizes = _listing_files(listing, table)
            annotated = annotated | l_anno
            sizes = sizes.fillna(l_sizes)
        table = table.assign(annotated=pd.array(annotated.to_numpy(), dtype="boolean"))
        for c in _SIZE_COLUMNS:
            table[c] = pd.array(sizes[c].to_numpy(), dtype="Int64")
        return cls(table, source=str(root), root=root)

    @classmethod
    def from_hub(
        cls,
        repo_id: str = REPO_ID,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        endpoint: str | None = None,
        token: str | bool | None = None,
        offline: bool | None = None,
    ) -> Catalog:
        """The catalogue of the Hugging Face repository.

        The metadata table is fetched once with ``huggingface_hub`` and cached
        (``cache_dir``); the repository listing gives ``annotated`` and file sizes. Offline
        (``offline=True`` or ``HF_HUB_OFFLINE``) the cached copy is used.

        Parameters
        ----------
        repo_id
            Dataset repository (default :data:`~stimage_sd.hub.REPO_ID`).
        revision
            Branch, tag or commit (default: the main branch).
        cache_dir
            ``huggingface_hub`` cache folder; ``None``: ``HF_HUB_CACHE`` or ``HF_HOME/hub``
            if set, else the client's default.
        endpoint
            Hub URL; ``None`` reads ``HF_ENDPOINT``.
        token
            Access token; ``None`` lets ``huggingface_hub`` find one. Never logged.
        offline
            Use the cache only; ``None`` reads ``HF_HUB_OFFLINE``.

        """
        from huggingface_hub import get_cached_repo_tree, snapshot_download
        from huggingface_hub.errors import CachedRepoTreeNotFoundError

        endpoint = endpoint_url(endpoint)
        offline = is_offline(offline)
        cache_dir = cache_dir_of(cache_dir)
        with hub_errors(repo_id, endpoint):
            folder = snapshot_download(
                repo_id,
                repo_type=REPO_TYPE,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=["meta/meta_all_gene*.csv"],
                endpoint=endpoint,
                token=token,
                local_files_only=offline,
                library_name="stimage_sd",
                **({} if progress_enabled(None) else {"tqdm_class": silent_tqdm()}),
            )
        meta = find_metadata(folder)
        if meta is None:
            raise StimageError(f"{repo_id}: the repository has no meta/meta_all_gene*.csv")
        table = read_metadata(meta)
        listing: Listing | None = None
        try:
            tree = get_cached_repo_tree(repo_id, repo_type=REPO_TYPE, revision=revision, cache_dir=cache_dir)
            listing = Listing(
                repo_id=repo_id,
                commit=None,
                files={f.path: RemoteFile(path=f.path, size=int(f.size), blob_id=f.blob_id) for f in tree},
            )
        except CachedRepoTreeNotFoundError:
            if not offline:
                listing = list_release(repo_id, revision=revision, endpoint=endpoint, token=token)
        if listing is None:
            logger.warning("%s: no cached file listing; 'annotated' and file sizes are unknown", repo_id)
        else:
            anno, sizes = _listing_files(listing, table)
            table = table.assign(annotated=pd.array(anno.to_numpy(), dtype="boolean"))
            for c in _SIZE_COLUMNS:
                table[c] = pd.array(sizes[c].to_numpy(), dtype="Int64")
        return cls(table, source=f"hf://{repo_id}")

    # ------------------------------------------------------------------ container protocol
    @property
    def table(self) -> pd.DataFrame:
        """The catalogue as a DataFrame (index ``slide``); treat it as read-only."""
        return self._table

    @property
    def slides(self) -> list[str]:
        """Slide ids, in catalogue order."""
        return list(self._table.index)

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[str]:
        return iter(self.slides)

    def __contains__(self, slide: object) -> bool:
        return slide in self._table.index

    def __repr__(self) -> str:
        return f"Catalog({len(self)} slides, {self._table['study'].nunique()} studies, source={self.source!r})"

    def _derive(self, table: pd.DataFrame) -> Catalog:
        return Catalog(table, source=self.source, root=self.root, _universe=self._universe)

    # ------------------------------------------------------------------ selection
    def select(self, slides: Iterable[str] | str) -> Catalog:
        """The catalogue restricted to the given slide ids (in the order given).

        Raises
        ------
        SlideNotFoundError
            If an id is not in the catalogue; the message lists close matches.

        """
        ids = [slides] if isinstance(slides, str) else list(slides)
        ids = list(dict.fromkeys(ids))
        missing = [s for s in ids if s not in self._table.index]
        if missing:
            raise slide_not_found(missing, self._universe.index, f"the catalogue ({self.source})")
        return self._derive(self._table.loc[ids])

    def filter(
        self,
        *,
        species: str | Sequence[str] | None = None,
        tissue: str | Sequence[str] | None = None,
        tech: str | Sequence[str] | None = None,
        cancer: bool | None = None,
        min_spots: int | None = None,
        max_spots: int | None = None,
        annotated: bool | None = None,
        study: str | Sequence[str] | None = None,
        text: str | Sequence[str] | None = None,
        slides: str | Sequence[str] | None = None,
        min_um_per_px: float | None = None,
        max_um_per_px: float | None = None,
    ) -> Catalog:
        """Slides matching every given criterion (``None`` = no constraint).

        Parameters
        ----------
        species, tissue, study
            Value or values to keep (any of them), compared case-insensitively with the
            whole field (``"human"``, ``"brain"``, ``"GSE144239"``).
        tech
            ``"ST"``, ``"Visium"`` and/or ``"VisiumHD"`` (case-insensitive).
        cancer
            Keep slides whose ``involve_cancer`` is this.
        min_spots, max_spots
            Inclusive bounds on ``spot_num``.
        annotated
            Keep slides that have (``True``) or lack (``False``) an annotation file.
        text
            Case-insensitive substring(s) of title, abstract or keywords; with several,
            every one must occur.
        slides
            Slide id or ids to keep (close matches suggested for unknown ones).
        min_um_per_px, max_um_per_px
            Inclusive bounds on the estimated pixel size (needs the ``um_per_px`` column:
            :meth:`with_resolution`); slides without an estimate are dropped.

        Raises
        ------
        StimageError
            If a value occurs nowhere in the catalogue (the message suggests close
            matches), or ``annotated`` is asked for when it is unknown.

        """
        t = self._table
        keep = pd.Series(True, index=t.index)
        for col, value in (("species", species), ("tissue", tissue), ("study", study), ("tech", tech)):
            if value is None:
                continue
            wanted = _as_list(value)
            if col == "tech":
                lower = {x.lower(): x for x in TECHS}
                bad = [v for v in wanted if v.lower() not in lower]
                if bad:
                    raise StimageError(f"unknown tech {bad} (expected some of {', '.join(TECHS)})")
            known = self._universe[col].dropna().astype(str)
            known_lower = set(known.str.lower())
            bad = [v for v in wanted if v.lower() not in known_lower]
            if bad and col != "tech":
                hints = []
                for v in bad:
                    close = difflib.get_close_matches(v.lower(), sorted(known_lower), n=5, cutoff=0.6)
                    hints.append(f"{v!r}" + (f" (close: {', '.join(close)})" if close else ""))
                raise StimageError(f"no slide has {col} {'; '.join(hints)}")
            values = {v.lower() for v in wanted}
            keep &= t[col].str.lower().isin(values).fillna(False).astype(bool)
        if cancer is not None:
            keep &= (t["involve_cancer"] == bool(cancer)).fillna(False).astype(bool)
        if min_spots is not None:
            keep &= (t["spot_num"] >= int(min_spots)).fillna(False).astype(bool)
        if max_spots is not None:
            keep &= (t["spot_num"] <= int(max_spots)).fillna(False).astype(bool)
        if annotated is not None:
            if t["annotated"].isna().any():
                raise StimageError(
                    f"annotation status is unknown for this catalogue ({self.source}); load it from a "
                    "dataset root or from the hub to filter on it"
                )
            keep &= (t["annotated"] == bool(annotated)).fillna(False).astype(bool)
        if text is not None:
            blob = t[list(_TEXT_COLUMNS)].fillna("").astype(str).agg(" ".join, axis=1).str.lower()
            for term in _as_list(text):
                keep &= blob.str.contains(term.lower(), regex=False)
        if min_um_per_px is not None or max_um_per_px is not None:
            if "um_per_px" not in t.columns:
                raise StimageError(
                    "filtering by µm per pixel needs the resolution index: call Catalog.with_resolution() "
                    "first (command line: --resolution)"
                )
            um = t["um_per_px"].astype("float64")
            if min_um_per_px is not None:
                keep &= (um >= float(min_um_per_px)).fillna(False).astype(bool)
            if max_um_per_px is not None:
                keep &= (um <= float(max_um_per_px)).fillna(False).astype(bool)
        out = t[keep.to_numpy()]
        if slides is not None:
            ids = _as_list(slides)
            missing = [s for s in ids if s not in self._universe.index]
            if missing:
                raise slide_not_found(missing, self._universe.index, f"the catalogue ({self.source})")
            out = out[out.index.isin(ids)]
        return self._derive(out)

    # ------------------------------------------------------------------ resolution
    def with_resolution(
        self,
        *,
        root: str | Path | None = None,
        images: bool = True,
        refresh: bool = False,
        revision: str | None = None,
        endpoint: str | None = None,
        token: str | bool | None = None,
        offline: bool | None = None,
        progress: bool | None = None,
    ) -> Catalog:
        """The catalogue with each slide's resolution: µm/px, spot pitch, field of view, magnification.

        The pixel size is estimated (:func:`stimage_sd.io.estimate_pixel_size`) from the
        coordinate file alone. For a hub catalogue only the coordinate files are fetched
        (through :func:`~stimage_sd.hub.download`: resumable, checked, kept in ``root``);
        image sizes come from a ranged read of each image's header, never the whole
        image. For a local root, its files are read. Results are cached in
        ``<root>/.stimage_sd/resolution.json`` and recomputed only for changed files.

        Added columns: ``um_per_px``, ``scale_method`` (``"pitch"`` or ``"radius"``),
        ``spot_pitch_px``, ``image_width``, ``image_height``, ``image_format``,
        ``fov_width_mm``, ``fov_height_mm`` and ``magnification``
        (``10 / um_per_px``: 0.25 µm/px ≈ 40x, 0.5 µm/px ≈ 20x).

        Parameters
        ----------
        root
            Hub catalogue: folder for the coordinate files and the cache (default: under
            the Hugging Face cache, ``<HF_HUB_CACHE>/stimage_sd/datasets--<repo>``).
            Ignored for a local catalogue (its own root is used).
        images
            Also read image headers (sizes, field of view).
        refresh
            Ignore the cache.
        revision, endpoint, token, offline
            Hub access, as in :func:`~stimage_sd.hub.download`. Offline, cached values and
            coordinate files already in ``root`` are used.
        progress
            Progress bar (``None``: the global setting).

        Returns
        -------
        A new :class:`Catalog` with the columns above (``NaN``/``<NA>`` where unknown).

        Examples
        --------
        >>> import stimage_sd as ssd
        >>> cat = ssd.hub.Catalog.from_root(ssd.datasets.sample("stimage_sample")).with_resolution()
        >>> cat.filter(max_um_per_px=1.0).table[["um_per_px", "magnification"]]  # doctest: +SKIP
        """
        from ._resolution import RESOLUTION_COLUMNS, resolution_index

        res = resolution_index(
            self, root=root, images=images, refresh=refresh, revision=revision, endpoint=endpoint,
            token=token, offline=offline, progress=progress,
        )
        table = self._table.drop(columns=[c for c in RESOLUTION_COLUMNS if c in self._table.columns])
        table = table.join(res[list(RESOLUTION_COLUMNS)])
        return self._derive(table)

    # ------------------------------------------------------------------ summaries
    def counts(self, by: str = "tech") -> pd.DataFrame:
        """Slides, spots, studies, annotated slides and bytes per value of a column.

        Parameters
        ----------
        by
            Column to group by (``"tech"``, ``"species"``, ``"tissue"``, ``"study"``, ...).

        """
        t = self._table
        if by not in t.columns:
            raise StimageError(f"unknown column {by!r} (columns: {', '.join(t.columns)})")
        g = t.groupby(t[by].astype(object).fillna("<NA>"), sort=True)
        out = pd.DataFrame(
            {
                "slides": g.size(),
                "spots": g["spot_num"].sum(min_count=1).astype("Int64"),
                "studies": g["study"].nunique(),
                "annotated": g["annotated"].sum(min_count=1).astype("Int64")
                if t["annotated"].notna().all()
                else pd.array([pd.NA] * g.ngroups, dtype="Int64"),
                "bytes": g["size_total"].sum(min_count=1).astype("Int64")
                if t["size_total"].notna().all()
                else pd.array([pd.NA] * g.ngroups, dtype="Int64"),
            }
        )
        out.index.name = by
        return out.sort_values(["slides", by], ascending=[False, True], kind="stable") if len(out) else out

    def summary(self) -> dict[str, Any]:
        """Totals and per-tech/species/tissue counts.

        Returns
        -------
        A dict with ``slides``, ``spots``, ``studies``, ``annotated`` (``None`` when
        unknown), ``bytes`` (sum of known sizes: what a download of these slides moves;
        ``None`` when no size is known),
        ``bytes_unknown`` (slides whose size is unknown), and DataFrames ``by_tech``,
        ``by_species``, ``by_tissue`` (see :meth:`counts`).

        """
        t = self._table
        known_anno = t["annotated"].notna().all()
        return {
            "slides": len(t),
            "spots": int(t["spot_num"].sum()),
            "studies": int(t["study"].nunique()),
            "annotated": int(t["annotated"].sum()) if known_anno else None,
            "bytes": int(t["size_total"].sum()) if t["size_total"].notna().any() else None,
            "bytes_unknown": int(t["size_total"].isna().sum()),
            "by_tech": self.counts("tech"),
            "by_species": self.counts("species"),
            "by_tissue": self.counts("tissue"),
        }

    # ------------------------------------------------------------------ splits
    def split(
        self,
        by: str = "study",
        fractions: Sequence[float] | Mapping[str, float] = (0.8, 0.1, 0.1),
        *,
        seed: int = 0,
        stratify: str | None = None,
        weight: str = "slides",
        names: Sequence[str] | None = None,
    ) -> dict[str, list[str]]:
        """Split the slides into train/val/test without any group on two sides.

        Every slide of one group (one value of ``by``) lands in the same split. Groups are
        shuffled with ``seed`` and dealt greedily to the split furthest below its target;
        of 64 such deals (all drawn from ``seed``) the one closest to the targets is kept,
        so the result is deterministic for a seed and differs between seeds.

        Parameters
        ----------
        by
            Grouping column: ``"study"`` (default; GEO series or
            ``Species_Tissue_Author_Date``), ``"tissue"`` (as the dataset card suggests),
            ``"species"``, ``"pmid"``, ``"slide"`` (no grouping) or any other column.
            Slides with a missing value form a group each.
        fractions
            Target fractions, e.g. ``(0.8, 0.1, 0.1)`` (named train/val/test) or
            ``(0.8, 0.2)`` (train/test), or a mapping ``{name: fraction}``; they must sum
            to 1.
        seed
            Random seed.
        stratify
            Column to balance across splits (e.g. ``"tech"``): groups are split separately
            within each value (a group counts under its most common value).
        weight
            What the fractions measure: ``"slides"`` or ``"spots"``.
        names
            Split names (default ``train``/``val``/``test`` or ``train``/``test``).

        Returns
        -------
        ``{split name: [slide ids in catalogue order]}``.

        """
        names, targets = _fractions(fractions, names)
        t = self._table
        if by == "slide":
            group = pd.Series(t.index, index=t.index, dtype=object)
        elif by in t.columns:
            group = t[by].astype(object)
            na = group.isna()
            group = group.where(~na, pd.Series([f"<NA>:{s}" for s in t.index], index=t.index))
        else:
            raise StimageError(f"cannot split by {by!r}: no such column (columns: {', '.join(t.columns)})")
        group = group.astype(str)
        if weight == "slides":
            w = pd.Series(1.0, index=t.index)
        elif weight == "spots":
            w = t["spot_num"].astype("float64").fillna(0.0)
        else:
            raise StimageError(f"weight must be 'slides' or 'spots', got {weight!r}")
        gw = w.groupby(group, sort=True).sum()
        if stratify is None:
            strata = pd.Series("", index=gw.index)
        else:
            if stratify not in t.columns:
                raise StimageError(f"cannot stratify by {stratify!r}: no such column")
            sv = t[stratify].astype(object).fillna("<NA>").astype(str)
            strata = (
                pd.DataFrame({"g": group, "s": sv})
                .groupby("g", sort=True)["s"]
                .agg(lambda x: sorted(x.value_counts().loc[lambda c: c == c.max()].index)[0])
            )
        rng = np.random.default_rng(seed)
        assign: dict[str, int] = {}
        for stratum in sorted(strata.unique()):
            gs = strata.index[strata == stratum]
            assign.update(_deal(gw.loc[gs], targets, rng))
        split_of = group.map(assign)
        return {name: list(t.index[(split_of == i).to_numpy()]) for i, name in enumerate(names)}

    def write_split(
        self,
        path: str | Path,
        splits: Mapping[str, Sequence[str]] | None = None,
        *,
        by: str = "study",
        **kwargs: Any,
    ) -> Path:
        """Write a split to a file: CSV/TSV (``slide,split,<by>,tech``) or JSON.

        Parameters
        ----------
        path
            ``.csv``, ``.tsv`` or ``.json`` (``{"split": [...], ...}`` plus the settings).
        splits
            A split from :meth:`split`; ``None`` computes one with ``by`` and ``kwargs``.
        by, **kwargs
            Passed to :meth:`split` (``by`` also names the group column written).

        """
        path = Path(path)
        if splits is None:
            splits = self.split(by=by, **kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix.lower() == ".json":
            payload = {"by": by, **{k: v for k, v in kwargs.items() if k != "names"}, "splits": dict(splits)}
            if "fractions" in payload and not isinstance(payload["fractions"], Mapping):
                payload["fractions"] = list(payload["fractions"])
            tmp.write_text(json.dumps(payload, indent=1))
        else:
            t = self._table
            rows = []
            for name, ids in splits.items():
                for s in ids:
                    known = s in t.index
                    group = s if by == "slide" else (t.at[s, by] if known and by in t.columns else None)
                    tech = t.at[s, "tech"] if known else None
                    rows.append({"slide": s, "split": name, by: group, "tech": tech})
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            pd.DataFrame(rows).to_csv(tmp, sep=sep, index=False)
        tmp.replace(path)
        return path


# ---------------------------------------------------------------------- helpers
def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _listing_files(listing: Listing, table: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Annotated flags and part sizes of the catalogue's slides from a repository listing."""
    idx = listing.index()
    anno = pd.Series([s in idx and "annotation" in idx[s] for s in table.index], index=table.index)
    sizes = pd.DataFrame(index=table.index, columns=list(_SIZE_COLUMNS), dtype="float64")
    for s in table.index:
        entry = idx.get(s)
        if entry is None:
            continue
        for part in PARTS:
            p = entry.get(part)
            if p is not None:
                sizes.at[s, f"size_{part}"] = listing.files[p].size
        if "annotation" not in entry:
            sizes.at[s, "size_annotation"] = 0
    return anno, sizes


def _local_files(root: Path, table: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Annotated flags and part sizes of the catalogue's slides from files in ``root``."""
    anno_dir = root / "annotation"
    annos = {p.name[: -len("_anno.csv")] for p in anno_dir.glob("*_anno.csv")} if anno_dir.is_dir() else set()
    anno = pd.Series([s in annos for s in table.index], index=table.index)
    sizes = pd.DataFrame(index=table.index, columns=list(_SIZE_COLUMNS), dtype="float64")
    for s, tech in zip(table.index, table["tech"], strict=True):
        if pd.isna(tech):
            continue
        for part in PARTS:
            p = root / repo_path(s, str(tech), part)
            try:
                sizes.at[s, f"size_{part}"] = p.stat().st_size
            except OSError:
                if part == "annotation" and s not in annos:
                    sizes.at[s, "size_annotation"] = 0
    return anno, sizes


def _fractions(
    fractions: Sequence[float] | Mapping[str, float], names: Sequence[str] | None
) -> tuple[list[str], np.ndarray]:
    if isinstance(fractions, Mapping):
        names = list(fractions)
        values = [float(v) for v in fractions.values()]
    else:
        values = [float(v) for v in fractions]
        if names is None:
            names = _SPLIT_NAMES.get(len(values)) or [f"split{i}" for i in range(len(values))]
        names = list(names)
    if len(names) != len(values) or len(set(names)) != len(names):
        raise StimageError(f"need one distinct name per fraction, got names {names} for fractions {values}")
    arr = np.asarray(values, dtype=float)
    if len(arr) < 1 or (arr < 0).any() or not np.isclose(arr.sum(), 1.0, atol=1e-6):
        raise StimageError(f"fractions must be non-negative and sum to 1, got {values}")
    return names, arr


def _deal(weights: pd.Series, targets: np.ndarray, rng: np.random.Generator, trials: int = 64) -> dict[str, int]:
    """Assign groups (weights indexed by group) to splits; best of ``trials`` random greedy deals."""
    groups = list(weights.index)
    w = weights.to_numpy(dtype=float)
    total = w.sum()
    goal = targets * total
    n_nonzero = int((targets > 0).sum())
    best, best_cost = None, np.inf
    for _ in range(trials):
        order = rng.permutation(len(groups))
        load = np.zeros(len(targets))
        out = np.empty(len(groups), dtype=int)
        for i in order:
            deficit = np.where(targets > 0, goal - load, -np.inf)
            k = int(np.argmax(deficit))
            out[i] = k
            load[k] += w[i]
        cost = float((((load - goal) / max(total, 1e-12)) ** 2).sum())
        empty = int(((load == 0) & (targets > 0)).sum())
        if len(groups) >= n_nonzero:
            cost += empty  # a split left empty is worse than any imbalance
        if cost < best_cost:
            best, best_cost = out.copy(), cost
    assert best is not None or not groups
    return {g: int(best[j]) for j, g in enumerate(groups)} if groups else {}
