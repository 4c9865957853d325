"""Expression targets per spot: the release's HVG recipes, our HVG panel, or a gene list.

The two ``stimage-*`` recipes reproduce the release repository's
``code_reproducibility/data_process`` scripts step by step with the same scanpy calls:

``"stimage-hvg128"`` (``02-gene-exp-hvg.py``), per slide:
    counts (genes made unique) → ``filter_cells(min_genes=1)`` → the 128 genes of
    ``scanpy.experimental.pp.highly_variable_genes(n_top_genes=128)`` (analytic Pearson
    residuals), ordered by ``highly_variable_rank`` → ``normalize_total`` (to the median
    total, over those 128 genes only) → ``log1p``.

``"stimage-overlap-hvg100"`` (``03-gene-exp-overlap-hvg.py`` and the overlap steps of
the release's documentation), per group of slides (by default one species and tissue):
    the genes present in every slide of the group (in the first slide's order), all
    spots of the group stacked → ``filter_cells(min_genes=1)`` →
    ``filter_genes(min_cells=1)`` → ``normalize_total`` (median over the whole group) →
    ``log1p`` → ``highly_variable_genes(n_top_genes=100)`` (scanpy's default ``seurat``
    flavour), genes kept in column order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._constants import TABLE_KEY, UNS_KEY
from .._logging import logger
from ..errors import StimageError

__all__ = ["RECIPES", "Targets", "targets"]

#: Target recipes by name: what they compute (see :func:`targets`).
RECIPES: dict[str, str] = {
    "stimage-hvg128": "release: per-slide 128 Pearson-residual HVGs, normalize_total + log1p over them",
    "stimage-overlap-hvg100": "release: genes shared by a tissue's slides, normalize_total + log1p, 100 seurat HVGs",
    "overlap-hvg": "the overlap recipe with n_top genes instead of 100 (the expression benchmark uses 50)",
    "hvg": "per-slide seurat HVGs (n_top, default 128), log1p of counts per 10,000 over all genes",
}
#: Number of genes of the fixed-size recipes.
RECIPE_SIZE = {"stimage-hvg128": 128, "stimage-overlap-hvg100": 100}
#: Above this many matrix cells, the scanpy steps run on the sparse matrix instead of a
#: dense copy (as the release's pandas-read matrix is); see :func:`targets`.
DENSE_LIMIT = 250_000_000


class Targets(Mapping[str, pd.DataFrame]):
    """Expression targets of several slides: ``{slide id: spots x genes DataFrame}``.

    Each frame is indexed by spot id (spots a recipe filters out are absent) and has the
    slide's target genes as columns, in recipe order. Returned by :func:`targets`;
    accepted by :func:`~stimage_sd.ml.export_patches` and
    :class:`~stimage_sd.ml.PatchDataset` as ``genes=``.

    Attributes
    ----------
    recipe
        Recipe name (``"list"`` for a gene list).
    groups
        ``{slide: group}`` for ``"stimage-overlap-hvg100"`` (the slides whose spots were
        normalised together), else empty.
    """

    def __init__(self, recipe: str, frames: Mapping[str, pd.DataFrame], groups: Mapping[str, str] | None = None):
        self.recipe = recipe
        self._frames = dict(frames)
        self.groups = dict(groups or {})
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, slide: str) -> pd.DataFrame:
        try:
            return self._frames[slide]
        except KeyError:
            raise StimageError(f"no targets for slide {slide!r} (slides: {', '.join(self._frames)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def __repr__(self) -> str:
        sizes = sorted({f.shape[1] for f in self._frames.values()})
        return f"Targets({self.recipe!r}, {len(self)} slide(s), genes per slide {sizes})"

    @property
    def size(self) -> int:
        """Target columns of a patch store (the largest per-slide gene count)."""
        return max((f.shape[1] for f in self._frames.values()), default=0)

    def genes(self, slide: str) -> list[str]:
        """The target genes of ``slide``."""
        return [str(g) for g in self[slide].columns]

    def rows(self, slide: str, spot_ids: Sequence[str], width: int | None = None) -> np.ndarray:
        """Targets of ``spot_ids`` as float32 ``(n, width)``; NaN for spots without targets."""
        f = self[slide]
        width = f.shape[1] if width is None else width
        out = np.full((len(spot_ids), width), np.nan, dtype=np.float32)
        pos = f.index.get_indexer(pd.Index(np.asarray(spot_ids, dtype=object)))
        ok = pos >= 0
        if slide not in self._arrays:
            self._arrays[slide] = f.to_numpy(dtype=np.float32)
        out[ok, : f.shape[1]] = self._arrays[slide][pos[ok]]
        return out


def _read_counts(path: Path) -> tuple[str, dict[str, Any], Any, pd.Index, pd.Index]:
    """Slide id, metadata, raw counts (CSR), spot ids and gene names of a converted store."""
    import scipy.sparse as sp

    from ..io import read

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
        sdata = read(path, selection=("tables",))
    if TABLE_KEY not in sdata.tables:
        raise StimageError(f"{path}: no table {TABLE_KEY!r}")
    t = sdata.tables[TABLE_KEY]
    meta = dict(t.uns.get(UNS_KEY, {}))
    X = t.X if sp.issparse(t.X) else sp.csr_matrix(t.X)
    return str(meta.get("slide", path.stem)), meta, X.tocsr(), pd.Index(t.obs_names.astype(str)), pd.Index(t.var_names.astype(str))


def _csv_dtype(X: Any, dtype: str | None) -> Any:
    """The dtype pandas gives a count CSV: int64 for integers, float64 with decimals."""
    if dtype is None:
        return np.int64 if np.issubdtype(X.dtype, np.integer) else np.float64
    if dtype not in ("int64", "float64"):
        raise StimageError(f"dtype must be None, 'int64' or 'float64', got {dtype!r}")
    if dtype == "int64" and not np.issubdtype(X.dtype, np.integer):
        raise StimageError("dtype='int64' needs integer counts; these counts have decimals")
    return np.dtype(dtype).type


def _as_anndata(X: Any, obs_names: pd.Index, var_names: Sequence[str], dtype: str | None = None):
    """An AnnData as ``sc.AnnData(pandas.read_csv(count.csv))`` builds it (dense when it fits).

    The release reads counts with pandas: a dense int64 matrix for integer files, float64
    for files written with decimals. The same dense layout and dtype make scanpy take the
    same code paths (and summation orders).
    """
    import anndata as ad

    kind = _csv_dtype(X, dtype)
    if X.shape[0] * X.shape[1] <= DENSE_LIMIT:
        data: Any = X.toarray().astype(kind)
    else:
        logger.info("%d x %d counts: scanpy steps run on the sparse matrix", *X.shape)
        data = X.astype(kind)
    a = ad.AnnData(X=data, obs=pd.DataFrame(index=obs_names.copy()), var=pd.DataFrame(index=pd.Index(var_names)))
    return a


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence scanpy's expected warnings (views, integer data, zero-count spots)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _stimage_hvg128(path: Path, dtype: str | None = None) -> tuple[str, pd.DataFrame]:
    import scanpy as sc

    slide, _meta, X, obs, var = _read_counts(path)
    a = _as_anndata(X, obs, var, dtype)
    with _quiet():
        a.var_names_make_unique()
        sc.pp.filter_cells(a, min_genes=1)
        n_top = min(128, a.n_vars)
        sc.experimental.pp.highly_variable_genes(a, n_top_genes=n_top)
        rank = a.var["highly_variable_rank"].sort_values().dropna()
        h = a[:, rank.index].copy()
        sc.pp.normalize_total(h)
        sc.pp.log1p(h)
    Xh = h.X.toarray() if hasattr(h.X, "toarray") else np.asarray(h.X)
    return slide, pd.DataFrame(Xh, index=h.obs_names.copy(), columns=list(h.var_names))


def _overlap_group(paths: list[Path], n_top: int = 100, dtype: str | None = None) -> dict[str, pd.DataFrame]:
    import scanpy as sc
    import scipy.sparse as sp

    parts = [_read_counts(p) for p in paths]
    common = parts[0][4]
    for _s, _m, _X, _o, var in parts[1:]:
        common = common.intersection(var, sort=False)
    if not len(common):
        raise StimageError(
            f"slides {', '.join(p[0] for p in parts)} share no gene (gene naming differs between studies); "
            "group them differently"
        )
    blocks, obs, slide_of = [], [], []
    for slide, _m, X, o, var in parts:
        blocks.append(X[:, var.get_indexer(common)])
        obs.append(o)
        slide_of.append(np.full(len(o), slide, dtype=object))
    X = sp.vstack(blocks, format="csr")
    obs_names = pd.Index(np.concatenate([o.to_numpy() for o in obs]))
    slide_col = np.concatenate(slide_of)
    a = _as_anndata(X, obs_names, list(common), dtype)
    a.obs["slide"] = slide_col
    with _quiet():
        sc.pp.filter_cells(a, min_genes=1)
        sc.pp.filter_genes(a, min_cells=1)
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=min(n_top, a.n_vars))
        h = a[:, a.var["highly_variable"].to_numpy()]
        Xh = h.X.toarray() if hasattr(h.X, "toarray") else np.asarray(h.X)
    genes = list(h.var_names)
    out = {}
    s_of = h.obs["slide"].to_numpy()
    for slide, *_ in parts:
        m = s_of == slide
        out[slide] = pd.DataFrame(Xh[m], index=h.obs_names[m].copy(), columns=genes)
    return out


def _group_of(meta: Mapping[str, Any]) -> str:
    return f"{meta.get('species') or 'unknown'}_{meta.get('tissue') or 'unknown'}"


def targets(
    stores: str | Path | Iterable[str | Path] | Mapping[Any, str | Path],
    recipe: str | Sequence[str] = "stimage-hvg128",
    *,
    n_top: int = 128,
    groups: Mapping[str, str] | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
) -> Targets:
    """Expression targets of converted slides, by the release's recipes or ours.

    Parameters
    ----------
    stores
        Converted slides (``<slide>.zarr``): a path, a folder of stores, a list, or a
        ``{slide: path}`` dict.
    recipe
        - ``"stimage-hvg128"``: the release's per-slide targets (``02-gene-exp-hvg.py``):
          ``filter_cells(min_genes=1)``, the 128 highly variable genes of
          ``scanpy.experimental.pp.highly_variable_genes`` (Pearson residuals) ordered by
          rank, ``normalize_total`` + ``log1p`` over those genes. The paper's per-slide
          "HVG" targets, used to fine-tune CLIP/PLIP on single slides.
        - ``"stimage-overlap-hvg100"``: the release's overlap targets
          (``03-gene-exp-overlap-hvg.py``): per group of slides (``groups``; default
          species and tissue, as the release did per tissue), the genes shared by all
          its slides, ``filter_cells(min_genes=1)``, ``filter_genes(min_cells=1)``,
          ``normalize_total`` + ``log1p`` over the group, then the 100
          ``highly_variable_genes`` (seurat flavour) in column order. The paper's
          "overlap-HVG" targets, used to fine-tune across the slides of a tissue
          (e.g. the human brain DLPFC slides). Values depend on which slides are grouped
          (the normalisation median is the group's).
        - ``"overlap-hvg"``: the same with ``n_top`` genes instead of 100 (the
          expression-prediction benchmark uses 50).
        - ``"hvg"``: each slide's ``n_top`` most variable genes (scanpy ``seurat`` flavour
          on log-normalised counts), ``log1p`` of counts per 10,000 over all genes.
        - a list of gene names: those genes, ``log1p`` of counts per 10,000 over all
          genes (NaN columns for genes a slide lacks).
    n_top
        Genes per slide for ``"hvg"``, per group for ``"overlap-hvg"``.
    groups
        ``{slide id: group}`` for the overlap recipes.
    dtype
        For the ``stimage-*`` recipes: the dtype pandas gave the release's count CSV,
        which decides scanpy's arithmetic. ``None``: ``"int64"`` for integral counts (a
        CSV of integers: ``normalize_total`` in float32), ``"float64"`` otherwise. Give
        ``"float64"`` for integral counts written with decimals (``1.0``), where the
        release computed in float64.
    progress
        Show a progress bar (``None``: the global setting).

    Returns
    -------
    :class:`Targets`: ``{slide id: DataFrame}`` (spots x genes, float, indexed by spot
    id; spots a recipe filters out are absent).

    Notes
    -----
    The release reads count CSVs with pandas and runs scanpy on the dense matrix; so do
    we (up to :data:`DENSE_LIMIT` matrix cells; larger inputs run on the sparse matrix,
    where scanpy sums in another order and near-tied genes may rank differently). The
    release's scanpy computes ``normalize_total`` in float32 for integer count files and
    in float64 for files written with decimals (``1.0``); converted stores keep integral
    counts as integers, so give ``dtype="float64"`` for the latter to get the very same
    values (otherwise they agree to float32 precision).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> t = ssd.ml.targets("stores/", recipe="stimage-hvg128")  # doctest: +SKIP
    >>> t["GSE000001_GSM0000001"].shape  # doctest: +SKIP
    (1020, 128)
    """
    from .._logging import track
    from ._source import GenePanel, SlideSource, resolve_stores, slide_header

    paths = resolve_stores(stores)
    if not paths:
        raise StimageError("no slide given")
    headers = [slide_header(p) for p in paths]
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise StimageError(f"recipe must be one of {', '.join(RECIPES)} or a list of genes, got {recipe!r}")
    frames: dict[str, pd.DataFrame] = {}
    if recipe == "stimage-hvg128":
        for p in track(paths, description="targets (stimage-hvg128)", progress=progress):
            slide, df = _stimage_hvg128(p, dtype)
            frames[slide] = df
        return Targets(recipe, frames)
    if recipe in ("stimage-overlap-hvg100", "overlap-hvg"):
        n_genes = 100 if recipe == "stimage-overlap-hvg100" else int(n_top)
        if n_genes < 1:
            raise StimageError("n_top must be at least 1")
        by_group: dict[str, list[Path]] = {}
        slide_group: dict[str, str] = {}
        for p, h in zip(paths, headers, strict=True):
            if groups is not None:
                if h["slide"] not in groups:
                    raise StimageError(f"{p}: slide {h['slide']!r} has no group in groups=")
                g = str(groups[h["slide"]])
            else:
                from ..io._transaction import store_attrs

                g = _group_of(store_attrs(p))
            by_group.setdefault(g, []).append(p)
            slide_group[h["slide"]] = g
        for g, ps in track(list(by_group.items()), description=f"targets ({recipe})", progress=progress):
            logger.info("overlap group %s: %d slide(s)", g, len(ps))
            frames.update(_overlap_group(ps, n_top=n_genes, dtype=dtype))
        return Targets(recipe, {h["slide"]: frames[h["slide"]] for h in headers}, slide_group)
    # ours: per-slide seurat HVGs or a gene list, log1p per 10,000 over all genes
    panel = GenePanel.build("hvg" if recipe == "hvg" else list(recipe), paths, n_hvg=n_top)
    for p in track(paths, description="targets", progress=progress):
        src = SlideSource.open(p)
        names, cols = panel.columns(src)
        vals = src.targets(np.arange(src.n), cols, "log1p")
        keep = [i for i, g in enumerate(names) if g != ""]
        frames[src.slide] = pd.DataFrame(vals[:, keep], index=pd.Index(src.spot_ids.astype(str)), columns=[names[i] for i in keep])
    return Targets("hvg" if recipe == "hvg" else "list", frames)
