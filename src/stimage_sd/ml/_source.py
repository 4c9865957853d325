"""One converted slide as a source of patches and expression targets; gene panels."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._constants import TABLE_KEY, UNS_KEY
from .._logging import logger
from ..errors import StimageError
from ..io._store import resolve_stores
from ._image import PatchGeometry, SlideImage

__all__ = [
    "GenePanel",
    "SlideSource",
    "patch_boxes",
    "resolve_stores",
    "slide_header",
]

TARGETS = ("log1p", "counts")
MODES = ("fixed", "native")
#: ``normalize_total`` target of the ``log1p`` targets (counts per 10,000, scanpy's default).
TARGET_SUM = 1e4




def slide_header(path: Path) -> dict[str, Any]:
    """Cheap facts about a converted store (slide id, tech, spots, µm/px) without reading it.

    Raises
    ------
    StimageError
        If ``path`` is not a complete converted store.
    """
    from ..io._remote import is_url, remote_attrs
    from ..io._transaction import MARKER, store_attrs

    if is_url(path):
        a = remote_attrs(str(path))
    elif not Path(path).is_dir():
        raise StimageError(f"{path}: no such store")
    else:
        a = store_attrs(path)
    if not a.get(MARKER, False):
        raise StimageError(f"{path}: not a complete converted slide (no completion marker); convert it again")
    if "slide" not in a:
        raise StimageError(f"{path}: store has no 'stimage' slide metadata")
    return {
        "slide": str(a["slide"]),
        "tech": str(a.get("tech", "")),
        "n_spots": int(a.get("n_spots", 0)),
        "um_per_px": _as_float(a.get("um_per_px")),
        "spot_radius_px": _as_float(a.get("spot_radius_px")),
    }


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class SlideSource:
    """The parts of a converted slide that patches and targets are made from.

    Attributes
    ----------
    store, slide, tech
        Store path, slide id and technology.
    um_per_px, radius_px
        The store's pixel-size estimate and spot radius ``r`` (pixels).
    spot_ids
        Spot ids in table order.
    xy
        ``(n, 2)`` pixel centres ``[x, y]`` (``obsm["spatial"]``).
    labels
        Annotation label per spot (``""`` when unlabelled), or ``None`` if the slide has none.
    X
        Raw counts, CSR ``(n, genes)``.
    var_names
        Unique gene names of the table.
    image
        The slide's :class:`~stimage_sd.ml._image.SlideImage`.
    """

    store: Path | str
    slide: str
    tech: str
    um_per_px: float
    radius_px: float
    spot_ids: np.ndarray
    xy: np.ndarray
    labels: np.ndarray | None
    X: Any
    var_names: pd.Index
    image: SlideImage
    _libsize: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> SlideSource:
        """Read the table of a converted slide (the image stays on disk)."""
        import scipy.sparse as sp

        from ..io._remote import is_url
        from ..io._store import read

        path = str(path) if is_url(path) else Path(path)
        with warnings.catch_warnings():
            # only the table is read: its "spots" region is deliberately left out
            warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
            sdata = read(path, selection=("tables",))
        if TABLE_KEY not in sdata.tables:
            raise StimageError(f"{path}: no table {TABLE_KEY!r}")
        t = sdata.tables[TABLE_KEY]
        meta = dict(t.uns.get(UNS_KEY, {}))
        labels = None
        if "annotation" in t.obs.columns:
            col = t.obs["annotation"]
            labels = np.asarray(col.astype(object).where(col.notna(), "").astype(str))
        X = t.X
        X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
        return cls(
            store=path,
            slide=str(meta.get("slide", Path(str(path)).stem)),
            tech=str(meta.get("tech", "")),
            um_per_px=_as_float(meta.get("um_per_px")),
            radius_px=_as_float(meta.get("spot_radius_px")),
            spot_ids=np.asarray(t.obs_names.astype(str)),
            xy=np.asarray(t.obsm["spatial"], dtype=np.float64),
            labels=labels,
            X=X,
            var_names=pd.Index(t.var_names.astype(str)),
            image=SlideImage(path),
        )

    @property
    def n(self) -> int:
        """Number of spots."""
        return len(self.spot_ids)

    @property
    def libsize(self) -> np.ndarray:
        """Total counts per spot."""
        if self._libsize is None:
            self._libsize = np.asarray(self.X.sum(axis=1), dtype=np.float64).ravel()
        return self._libsize

    def targets(self, rows: np.ndarray, cols: np.ndarray, kind: str) -> np.ndarray:
        """Expression targets ``(len(rows), len(cols))`` float32; ``NaN`` where ``cols == -1``.

        ``kind="log1p"``: ``log1p(counts / total * 1e4)`` with the total over *all* genes
        of the spot (scanpy's ``normalize_total`` + ``log1p``); ``"counts"``: raw counts.
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        out = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
        ok = cols >= 0
        if not len(rows) or not ok.any():
            return out
        sub = self.X[rows][:, cols[ok]].toarray().astype(np.float32)
        if kind == "log1p":
            lib = self.libsize[rows]
            scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib), where=lib > 0).astype(np.float32)
            sub *= scale[:, None]
            np.log1p(sub, out=sub)
        out[:, ok] = sub
        return out


def patch_boxes(src: SlideSource, *, mode: str, size_um: float | None, px: int) -> tuple[np.ndarray, float]:
    """Level-0 boxes ``(n, 4)`` (``x0, y0, x1, y1``) of a slide's patches and their side.

    ``mode="fixed"``: a square of ``size_um`` µm centred on the spot (side
    ``size_um / um_per_px`` pixels). When that side equals ``px`` (no resampling), the box
    snaps to the pixel grid: ``x0 = floor(x - px/2 + 0.5)``.
    ``mode="native"``: the release's crop, ``PIL.Image.crop((x-r, y-r, x+r, y+r))``,
    i.e. every bound rounded to the nearest integer (half to even, like Python's ``round``).
    """
    x, y = src.xy[:, 0], src.xy[:, 1]
    if mode == "native":
        r = src.radius_px
        if not (r > 0):
            raise StimageError(f"{src.store}: no spot radius recorded; cannot make native crops")
        boxes = np.stack([np.round(x - r), np.round(y - r), np.round(x + r), np.round(y + r)], axis=1)
        return boxes, 2 * r
    if not (src.um_per_px > 0):
        raise StimageError(
            f"{src.store}: slide {src.slide!r} has no pixel-size estimate; fixed-scale patches "
            "need one (use mode='native' for the release's 2r crops)"
        )
    side = float(size_um) / src.um_per_px
    if abs(side / px - 1.0) < 1e-6:
        x0 = np.floor(x - px / 2 + 0.5)
        y0 = np.floor(y - px / 2 + 0.5)
        return np.stack([x0, y0, x0 + px, y0 + px], axis=1), float(px)
    h = side / 2
    return np.stack([x - h, y - h, x + h, y + h], axis=1), side


def make_geometry(src: SlideSource, *, mode: str, size_um: float | None, px: int, resample: str, pyramid: bool) -> PatchGeometry:
    """The :class:`PatchGeometry` of a slide's patches."""
    boxes, _ = patch_boxes(src, mode=mode, size_um=size_um, px=px)
    return PatchGeometry(boxes, px, src.image, resample=resample, pyramid=pyramid)


# ---------------------------------------------------------------------- gene panels
@dataclass
class GenePanel:
    """Which genes become the expression target.

    Attributes
    ----------
    kind
        ``"intersection"`` (genes common to the slides, in the first slide's order),
        ``"list"`` (a user list), ``"hvg"`` (each slide's own highly variable genes), or a
        recipe of :func:`stimage_sd.ml.targets` whose values are precomputed
        (``"stimage-hvg128"``, ``"stimage-overlap-hvg100"``; also a :class:`Targets`
        object of any recipe).
    genes
        The shared panel (``None`` for per-slide panels).
    n_hvg
        Genes per slide for ``"hvg"``.
    values
        Precomputed targets (recipes): per slide, spots x genes.
    """

    kind: str
    genes: list[str] | None
    n_hvg: int = 128
    values: Any = None

    @property
    def per_slide(self) -> bool:
        """Whether each slide has its own gene list (recorded per slide in a patch store)."""
        return self.kind == "hvg" or self.values is not None

    @property
    def size(self) -> int:
        """Number of target columns."""
        if self.values is not None:
            return int(self.values.size)
        return self.n_hvg if self.kind == "hvg" else len(self.genes or [])

    @classmethod
    def build(cls, genes: Any, paths: Sequence[Path], n_hvg: int = 128) -> GenePanel:
        """Build a panel for the slides at ``paths``.

        Parameters
        ----------
        genes
            ``"intersection"``, ``"hvg"``, ``"stimage-hvg128"``,
            ``"stimage-overlap-hvg100"``, a :class:`~stimage_sd.ml.Targets` object, or a
            list of gene names (matched against the tables' unique gene names).
        paths
            Converted stores (only their gene names are read, except for recipes).
        n_hvg
            Genes per slide for ``"hvg"``.
        """
        from ._targets import RECIPE_SIZE, Targets, targets

        if isinstance(genes, Targets):
            return cls(genes.recipe, None, values=genes)
        if isinstance(genes, str):
            if genes in RECIPE_SIZE:
                return cls(genes, None, values=targets(paths, genes))
            if genes == "hvg":
                if n_hvg < 1:
                    raise StimageError("n_hvg must be at least 1")
                return cls("hvg", None, int(n_hvg))
            if genes != "intersection":
                raise StimageError(
                    "genes must be 'intersection', 'hvg', 'stimage-hvg128', 'stimage-overlap-hvg100', "
                    f"a Targets object or a list of gene names, got {genes!r}"
                )
            common: list[str] | None = None
            for p in paths:
                names = read_var_names(p)
                if common is None:
                    common = list(names)
                else:
                    keep = set(names)
                    common = [g for g in common if g in keep]
            if not common:
                raise StimageError(
                    "the chosen slides have no gene in common (gene naming differs between studies: "
                    "symbols vs Ensembl ids); give a gene list or use genes='hvg'"
                )
            return cls("intersection", common)
        panel = [str(g) for g in genes]
        if not panel:
            raise StimageError("the gene list is empty")
        if len(set(panel)) != len(panel):
            raise StimageError("the gene list has duplicates")
        return cls("list", panel)

    def columns(self, src: SlideSource) -> tuple[list[str], np.ndarray]:
        """The slide's panel genes and their column indices in its table (``-1``: absent)."""
        if self.values is not None:
            if src.slide not in self.values:
                raise StimageError(f"{src.store}: the given targets have no slide {src.slide!r}")
            genes = self.values.genes(src.slide)
        elif self.kind == "hvg":
            genes = highly_variable_genes(src, self.n_hvg)
        else:
            genes = list(self.genes or [])
        if self.per_slide and len(genes) < self.size:  # a slide with fewer genes
            genes = genes + [""] * (self.size - len(genes))
        cols = src.var_names.get_indexer(genes).astype(np.int64)
        cols[[g == "" for g in genes]] = -1
        missing = int((cols < 0).sum()) - sum(g == "" for g in genes)
        if missing and self.values is None:
            logger.warning(
                "%s: %d of %d panel genes are absent from the slide; their targets are NaN",
                src.slide, missing, len(genes),
            )
        return genes, cols

    def targets(self, src: SlideSource, rows: np.ndarray, cols: np.ndarray, kind: str) -> np.ndarray:
        """Targets of spots ``rows`` of ``src``: precomputed recipe values, else from counts."""
        if self.values is not None:
            return self.values.rows(src.slide, src.spot_ids[np.asarray(rows, dtype=np.int64)], width=self.size)
        return src.targets(rows, cols, kind)


def read_var_names(path: Path) -> pd.Index:
    """Unique gene names of a converted store's table (reads only ``var``)."""
    import zarr
    from anndata.io import read_elem

    from ..io._remote import is_url, open_group

    try:
        if is_url(path):
            var = read_elem(open_group(str(path), path=f"tables/{TABLE_KEY}/var"))
        else:
            var = read_elem(zarr.open_group(str(Path(path) / "tables" / TABLE_KEY / "var"), mode="r"))
    except Exception as e:
        raise StimageError(f"{path}: cannot read the table's gene names ({e})") from None
    return pd.Index(var.index.astype(str))


def highly_variable_genes(src: SlideSource, n: int) -> list[str]:
    """The slide's ``n`` most variable genes (scanpy ``flavor="seurat"`` on log-normalised counts).

    Ordered by normalised dispersion, highest first (ties by table order). Slides with
    fewer genes return all of them.
    """
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=src.X.astype(np.float32), var=pd.DataFrame(index=src.var_names.copy()))
    n = min(int(n), a.n_vars)
    with warnings.catch_warnings():
        # spots without counts and genes without dispersion are expected in sparse slides
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.normalize_total(a, target_sum=TARGET_SUM)
        sc.pp.log1p(a)
        try:
            sc.pp.highly_variable_genes(a, n_top_genes=n, flavor="seurat")
            disp = a.var["dispersions_norm"].to_numpy(dtype=np.float64)
        except (ValueError, IndexError):  # too few spots/genes for binning
            disp = np.asarray(a.X.power(2).mean(axis=0) - np.square(a.X.mean(axis=0))).ravel()
    disp = np.nan_to_num(disp, nan=-np.inf)
    order = np.argsort(-disp, kind="stable")[:n]
    return [str(g) for g in a.var_names[order]]
