"""A lazy, random-access, multi-slide patch dataset (PyTorch-style, torch optional)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StimageError
from ._image import cut_patches, tissue_fraction
from ._patchstore import EDGE, FLAGS, NO_TISSUE, OBS_COLUMNS, is_patch_store, read_patch_attrs
from ._source import GenePanel, SlideSource, make_geometry, resolve_stores, slide_header
from ._split import split_slides

__all__ = ["PatchDataset"]

_OPTION_DEFAULTS: dict[str, Any] = {
    "size_um": 112.0,
    "px": 224,
    "mode": "fixed",
    "genes": "hvg",
    "n_hvg": 128,
    "target": "log1p",
    "resample": "bilinear",
    "pyramid": True,
    "min_tissue": 0.1,
}


class PatchDataset:
    """Patches and expression targets of many slides, read lazily, one spot per item.

    Works over a patch store written by :func:`stimage_sd.ml.export_patches`, or directly
    over converted slides (patches are then cut on the fly with the same geometry as the
    export). It is a map-style dataset: ``len(ds)`` items, ``ds[i]`` random access, and
    ``ds.__getitems__(indices)`` for batches, so it can be handed to
    :class:`torch.utils.data.DataLoader` with any number of workers (each worker opens
    the Zarr arrays itself). Torch is not needed: items are numpy arrays.

    Parameters
    ----------
    source
        A patch store path; or converted slides (a ``<slide>.zarr`` path, a folder of
        them, a list, or a ``{slide: path}`` dict).
    split, splits
        Keep only the slides of split ``split`` (e.g. ``"train"``) of ``splits``: a split
        from :meth:`stimage_sd.hub.Catalog.split` or a file from
        :meth:`~stimage_sd.hub.Catalog.write_split`.
    slides
        Keep only these slide ids (combined with ``split``).
    exclude
        Drop patches with these flags: ``"edge"`` (leaves the image) and, for a patch
        store, ``"no_tissue"``.
    transform, target_transform
        Callables applied to the image and to the target of each item.
    **options
        Over converted slides only: the patch options of
        :func:`~stimage_sd.ml.export_patches` (``size_um``, ``px``, ``mode``, ``genes``
        (including the target recipes and :class:`~stimage_sd.ml.Targets` objects),
        ``n_hvg``, ``target``, ``resample``, ``pyramid``, ``min_tissue``). For a patch
        store they are fixed by the store (see :attr:`params`).

    Notes
    -----
    An item is a dict: ``"image"`` ``(px, px, 3)`` uint8 (or what ``transform``
    returns), ``"target"`` ``(G,)`` float32, ``"slide"`` and ``"spot_id"`` (str),
    ``"label"`` (str, ``""`` when unlabelled), ``"flags"`` (int bit mask, see
    :data:`stimage_sd.ml.FLAGS`) and ``"index"`` (the row in the patch store; over
    slides, the position in the concatenated spot list).

    Per-patch metadata (:attr:`obs`: slide, spot id, label, flags, ...) is held in
    memory, a few tens of bytes per patch; images and targets are read on demand. Over
    converted slides, each slide's counts of the panel genes are held in memory too, and
    the tissue fraction (``no_tissue`` flag) is measured when an item is read.
    """

    def __init__(
        self,
        source: str | Path | Iterable[str | Path] | Mapping[Any, str | Path],
        *,
        split: str | None = None,
        splits: Mapping[str, Sequence[str]] | str | Path | None = None,
        slides: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        transform: Callable[[np.ndarray], Any] | None = None,
        target_transform: Callable[[np.ndarray], Any] | None = None,
        **options: Any,
    ) -> None:
        unknown = set(options) - set(_OPTION_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        bad = set(exclude) - set(FLAGS)
        if bad:
            raise StimageError(f"unknown flag(s) {sorted(bad)} (flags: {', '.join(FLAGS)})")
        keep_slides: set[str] | None = None
        if split is not None:
            if splits is None:
                raise StimageError("split= needs splits= (a catalogue split or a split file)")
            keep_slides = set(split_slides(split, splits))
        if slides is not None:
            keep_slides = set(slides) if keep_slides is None else keep_slides & set(slides)
        self.transform = transform
        self.target_transform = target_transform
        if isinstance(source, str | Path) and is_patch_store(source):
            if options:
                raise StimageError(f"{source} is a patch store: its options are fixed ({', '.join(sorted(options))} given)")
            self._backend: _StoreBackend | _SlidesBackend = _StoreBackend(Path(source), keep_slides)
        else:
            if "no_tissue" in exclude:
                raise StimageError("exclude='no_tissue' needs a patch store (tissue is measured at export)")
            self._backend = _SlidesBackend(resolve_stores(source), {**_OPTION_DEFAULTS, **options}, keep_slides)
        b = self._backend
        mask = np.isin(b.slide_code, b.codes_kept)
        for name in exclude:
            mask &= (b.flags & FLAGS[name]) == 0
        self._rows = np.flatnonzero(mask)
        self._obs: pd.DataFrame | None = None

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        kind = "patch store" if isinstance(self._backend, _StoreBackend) else "slides"
        return f"PatchDataset({len(self)} patches of {len(self.slides)} slide(s), {kind}, px={self.params['px']})"

    @property
    def params(self) -> dict[str, Any]:
        """Patch parameters (size, pixels, mode, gene panel, target, filter, ...)."""
        return dict(self._backend.params)

    @property
    def slides(self) -> list[str]:
        """Slide ids in the dataset."""
        return [self._backend.slide_ids[c] for c in np.unique(self._backend.slide_code[self._rows])]

    @property
    def genes(self) -> list[str] | None:
        """The shared gene panel (``None`` with per-slide HVGs: see :meth:`genes_of`)."""
        return None if self._backend.genes is None else list(self._backend.genes)

    def genes_of(self, slide: str) -> list[str]:
        """The target genes of one slide, in target column order."""
        return list(self._backend.slide_genes(slide))

    @property
    def obs(self) -> pd.DataFrame:
        """Per-item metadata: slide, spot_id, label, row, x, y, flags, tissue and outside fractions.

        Row ``i`` describes item ``i``. Built on first access (then cached).
        """
        if self._obs is None:
            self._obs = self._make_obs()
        return self._obs

    def _make_obs(self) -> pd.DataFrame:
        b, r = self._backend, self._rows
        slide = pd.Categorical.from_codes(b.slide_code[r], categories=list(b.slide_ids))
        df = pd.DataFrame(
            {
                "slide": slide,
                "spot_id": np.asarray(b.spot_id[r], dtype=object),
                "label": np.asarray(b.label[r], dtype=object),
                "row": b.row[r],
                "x": b.x[r],
                "y": b.y[r],
                "flags": b.flags[r],
                "tissue_fraction": b.tissue[r],
                "outside_fraction": b.outside[r],
            }
        )
        df.index = pd.RangeIndex(len(df))
        return df

    # ------------------------------------------------------------------ items
    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        return self.__getitems__([int(i) % len(self)])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items ``indices`` at once (one batched read); used by DataLoader when present."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} items")
        rows = self._rows[idx]
        images, targets, flags = self._backend.get(rows)
        b = self._backend
        out = []
        for k, j in enumerate(rows):
            img, tgt = images[k], targets[k]
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                tgt = self.target_transform(tgt)
            out.append(
                {
                    "image": img,
                    "target": tgt,
                    "slide": b.slide_ids[b.slide_code[j]],
                    "spot_id": str(b.spot_id[j]),
                    "label": str(b.label[j]),
                    "flags": int(flags[k]),
                    "index": int(j),
                }
            )
        return out


class _StoreBackend:
    """Items of a patch store; Zarr arrays are opened per process, on first use."""

    def __init__(self, path: Path, keep_slides: set[str] | None):
        import zarr

        self.path = path
        attrs = read_patch_attrs(path) or {}
        self.params = dict(attrs.get("params", {}))
        self.records = list(attrs.get("slides", []))
        n = int(attrs.get("n", 0))
        g = zarr.open_group(str(path), mode="r")
        obs = {k: g[f"obs/{k}"][:n] for k in OBS_COLUMNS}
        self.slide_code = obs["slide"].astype(np.int32)
        self.spot_id, self.label = obs["spot_id"], obs["label"]
        self.row, self.x, self.y = obs["row"], obs["x"], obs["y"]
        self.flags = obs["flags"].astype(np.uint8)
        self.tissue, self.outside = obs["tissue_fraction"], obs["outside_fraction"]
        self.slide_ids = [r["slide"] for r in self.records]
        self.genes = [str(s) for s in g["genes"][:]] if "genes" in g else None
        self.codes_kept = [
            i for i, s in enumerate(self.slide_ids) if keep_slides is None or s in keep_slides
        ]
        self._arrays: tuple[int, Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def slide_genes(self, slide: str) -> list[str]:
        for r in self.records:
            if r["slide"] == slide:
                return list(r.get("genes") or self.genes or [])
        raise StimageError(f"slide {slide!r} is not in {self.path}")

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None or self._arrays[0] != os.getpid():
            import zarr

            g = zarr.open_group(str(self.path), mode="r")
            self._arrays = (os.getpid(), g["patches"], g["targets"])
        return self._arrays[1], self._arrays[2]

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        patches, targets = self._open()
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        if len(srt) == 1:
            imgs = patches[int(srt[0])][None]
            tg = targets[int(srt[0])][None]
        else:
            imgs = patches.get_orthogonal_selection((srt,))
            tg = targets.get_orthogonal_selection((srt,))
        return imgs[inv], tg[inv], self.flags[rows]


class _SlidesBackend:
    """Items cut on the fly from converted slides."""

    def __init__(self, paths: list[Path], options: dict[str, Any], keep_slides: set[str] | None):
        from ._export import check_genes_target, check_options

        check_genes_target(options["genes"], options["target"])
        check_options(
            size_um=options["size_um"], px=options["px"], mode=options["mode"], target=options["target"],
            resample=options["resample"], edge="pad", min_tissue=options["min_tissue"],
        )
        headers = [slide_header(p) for p in paths]
        chosen = [(p, h) for p, h in zip(paths, headers, strict=True) if keep_slides is None or h["slide"] in keep_slides]
        if not chosen:
            raise StimageError("no slide left after the split/slide selection")
        from ._export import _panel_kind

        self.params = {k: options[k] for k in _OPTION_DEFAULTS}
        self.params["genes"] = _panel_kind(options["genes"])
        if options["mode"] == "native":
            self.params["size_um"] = None
        panel = GenePanel.build(options["genes"], [p for p, _ in chosen], n_hvg=options["n_hvg"])
        self._panel = panel
        self._spot_ids: list[np.ndarray] = []
        self.genes = panel.genes
        self.slide_ids: list[str] = []
        self._genes: dict[str, list[str]] = {}
        self._geoms, self._X, self._lib = [], [], []
        codes, spot, label, row, xs, ys, outside = [], [], [], [], [], [], []
        for code, (p, _h) in enumerate(chosen):
            src = SlideSource.open(p)
            geom = make_geometry(
                src, mode=options["mode"], size_um=options["size_um"], px=options["px"],
                resample=options["resample"], pyramid=options["pyramid"],
            )
            names, cols = panel.columns(src)
            self.slide_ids.append(src.slide)
            self._genes[src.slide] = names
            self._geoms.append(geom)
            # keep only the panel's columns (and the library sizes) in memory
            ok = cols >= 0
            sub = src.X[:, np.where(ok, cols, 0)].tocsr()
            if not ok.all():
                sub = sub.multiply(ok[None, :].astype(sub.dtype)).tocsr()
            self._X.append((sub, ok))
            self._lib.append(src.libsize)
            self._spot_ids.append(src.spot_ids)
            n = src.n
            codes.append(np.full(n, code, dtype=np.int32))
            spot.append(src.spot_ids.astype(str))
            label.append(src.labels if src.labels is not None else np.full(n, "", dtype=object))
            row.append(np.arange(n, dtype=np.int64))
            xs.append(src.xy[:, 0])
            ys.append(src.xy[:, 1])
            outside.append(geom.outside)
        self.slide_code = np.concatenate(codes)
        self.spot_id = np.concatenate(spot).astype(object)
        self.label = np.concatenate(label).astype(str).astype(object)
        self.row = np.concatenate(row)
        self.x, self.y = np.concatenate(xs), np.concatenate(ys)
        self.outside = np.concatenate(outside).astype(np.float32)
        self.flags = np.where(self.outside > 1e-9, EDGE, 0).astype(np.uint8)
        self.tissue = np.full(len(self.row), np.nan, dtype=np.float32)
        self.codes_kept = list(range(len(self.slide_ids)))

    def slide_genes(self, slide: str) -> list[str]:
        if slide not in self._genes:
            raise StimageError(f"slide {slide!r} is not in the dataset")
        return self._genes[slide]

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ._source import TARGET_SUM

        px = self.params["px"]
        images = np.empty((len(rows), px, px, 3), dtype=np.uint8)
        targets = None
        for code in np.unique(self.slide_code[rows]):
            sel = np.flatnonzero(self.slide_code[rows] == code)
            r = self.row[rows[sel]]
            images[sel] = cut_patches(self._geoms[code], r)
            if self._panel.values is not None:
                t = self._panel.values.rows(self.slide_ids[code], self._spot_ids[code][r], width=self._panel.size)
                if targets is None:
                    targets = np.empty((len(rows), t.shape[1]), dtype=np.float32)
                targets[sel] = t
                continue
            sub, ok = self._X[code]
            t = sub[r].toarray().astype(np.float32)
            if self.params["target"] == "log1p":
                lib = self._lib[code][r]
                scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0).astype(np.float32)
                t *= scale[:, None]
                np.log1p(t, out=t)
            t[:, ~ok] = np.nan
            if targets is None:
                targets = np.empty((len(rows), t.shape[1]), dtype=np.float32)
            targets[sel] = t
        tissue = tissue_fraction(images)
        flags = self.flags[rows] | np.where(tissue < self.params["min_tissue"], NO_TISSUE, 0).astype(np.uint8)
        if targets is None:
            targets = np.empty((0, 0), dtype=np.float32)
        return images, targets, flags
