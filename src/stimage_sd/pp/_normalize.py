"""Normalisation and highly variable genes (scanpy), raw counts kept in ``layers["counts"]``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from .._constants import TABLE_KEY
from .._docs import dedent
from .._keys import Key
from .._logging import logger
from ..errors import StimageError
from ._utils import table_to_modify

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["NORMALIZE_KEY", "normalize"]

#: ``uns`` key of the normalisation parameters (:attr:`Key.uns.normalize`).
NORMALIZE_KEY = Key.uns.normalize

#: scanpy's per-gene HVG columns copied into ``var``.
_HVG_COLUMNS = (
    "highly_variable", "highly_variable_rank", "means", "variances", "variances_norm",
    "dispersions", "dispersions_norm", "residual_variances", "highly_variable_nbatches",
)
_HVG_FLAVORS = ("seurat_v3", "seurat", "cell_ranger", "pearson_residuals")


HVGFlavor = Literal["seurat_v3", "seurat", "cell_ranger", "pearson_residuals"]


@dedent
def normalize(
    data: AnnData | SpatialData,
    *,
    method: Literal["log1p", "pearson"] = "log1p",
    target_sum: float | None = None,
    n_top_genes: int | None = 2000,
    hvg_flavor: HVGFlavor | None = None,
    hvg_min_spots: int = 0,
    theta: float = 100.0,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Normalise counts and select highly variable genes.

    Always starts from the raw counts: the first call copies ``X`` to
    ``layers["counts"]``; later calls read ``layers["counts"]``, so normalising twice
    gives the same result.

    Parameters
    ----------
    %(data)s
    method
        ``"log1p"``: :func:`scanpy.pp.normalize_total` then :func:`scanpy.pp.log1p`
        (sparse ``X``, float32). ``"pearson"``: analytic Pearson residuals
        (:func:`scanpy.experimental.pp.normalize_pearson_residuals`, Lause et al.,
        *Genome Biology* 2021); ``X`` becomes dense float32 (n_spots x n_genes x 4 bytes).
        A gene never detected, or a spot without counts, has an expected count of 0 under
        the model and a residual of 0/0; its residuals are defined as 0 (the count equals
        its expectation). Every other residual is scanpy's, computed with the slide's
        totals and scanpy's default clip ``sqrt(n_spots)``.
    target_sum
        Counts per spot after ``normalize_total`` (``None``: the median library size).
    n_top_genes
        Number of highly variable genes; ``None`` skips HVG selection.
    hvg_flavor
        ``"seurat_v3"`` (on raw counts; default for ``"log1p"``), ``"seurat"``,
        ``"cell_ranger"`` (on log data) or ``"pearson_residuals"`` (default for
        ``"pearson"``), computed by :func:`scanpy.pp.highly_variable_genes` /
        :func:`scanpy.experimental.pp.highly_variable_genes`.
    hvg_min_spots
        Only genes detected (count > 0) in at least this many spots can be highly
        variable: selection runs on those genes alone, as after
        ``scanpy.pp.filter_genes(min_cells=hvg_min_spots)``. The default ``0`` selects
        exactly the genes scanpy selects on the same counts; ``3`` is the usual
        single-cell gene filter and changes the selection (with ``seurat_v3`` mostly
        through its loess fit).
    theta
        Overdispersion of the Pearson-residual model.
    %(table_key)s
    %(copy)s

    Returns
    -------
    %(returns_copy)s

    Notes
    -----
    Writes ``layers["counts"]`` (raw counts, unchanged), the normalised ``X``,
    ``var["highly_variable"]`` (+ scanpy's ``highly_variable_rank``, ``means``,
    ``variances``, ...), ``uns["hvg"]`` (flavour; for ``seurat_v3`` the loess ``span``:
    scanpy's 0.3, or 0.5 / 1.0 when that fit is singular on very sparse data, with a
    warning), ``uns["log1p"]`` (log1p),
    ``uns["pearson_residuals_normalization"]`` (pearson; scanpy's) and
    ``uns["stimage_normalize"]`` (method, target_sum, n_top_genes, hvg_flavor,
    hvg_min_spots, theta).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.normalize(sdata, n_top_genes=500)
    >>> hvg = sdata["table"].var["highly_variable"]
    >>> ssd.pp.normalize(sdata, method="pearson")
    """
    import scanpy as sc

    adata = table_to_modify(data, table_key, copy)
    if method not in ("log1p", "pearson"):
        raise ValueError(f"method must be 'log1p' or 'pearson', got {method!r}")
    flavor = hvg_flavor or ("seurat_v3" if method == "log1p" else "pearson_residuals")
    if flavor not in _HVG_FLAVORS:
        raise ValueError(f"hvg_flavor must be one of {_HVG_FLAVORS}, got {flavor!r}")
    if hvg_min_spots < 0:
        raise ValueError(f"hvg_min_spots must be >= 0, got {hvg_min_spots}")

    if Key.layers.counts not in adata.layers:
        adata.layers[Key.layers.counts] = adata.X.copy()
    counts = adata.layers[Key.layers.counts]
    adata.X = counts.astype(np.float32) if sparse.issparse(counts) else np.asarray(counts, dtype=np.float32)
    for key in (Key.uns.log1p, Key.uns.hvg, Key.uns.pearson):
        adata.uns.pop(key, None)
    n_hvg = None if n_top_genes is None else int(min(n_top_genes, adata.n_vars))
    detected = np.asarray((counts > 0).sum(axis=0)).ravel()
    keep = detected >= hvg_min_spots

    if n_hvg is not None and flavor in ("seurat_v3", "pearson_residuals"):
        _select_hvg(adata, flavor, n_hvg, keep, theta)  # on raw counts
    if method == "log1p":
        if target_sum is None:  # scanpy's default, recorded
            lib = np.asarray(counts.sum(axis=1)).ravel()
            target_sum = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
    else:
        adata.X, params = _pearson_residuals(counts, theta)
        adata.uns[Key.uns.pearson] = params
    if n_hvg is not None and flavor in ("seurat", "cell_ranger"):
        _select_hvg(adata, flavor, n_hvg, keep, theta)  # on normalised X
    written = adata.uns[Key.uns.hvg].get("columns", []) if Key.uns.hvg in adata.uns else []
    for col in _HVG_COLUMNS:  # a previous selection's columns that this one did not write
        if col in adata.var and col not in written:
            del adata.var[col]
    adata.uns[Key.uns.normalize] = {
        "method": method,
        "target_sum": float(target_sum) if target_sum is not None else "none",
        "n_top_genes": int(n_hvg) if n_hvg is not None else 0,
        "hvg_flavor": flavor if n_hvg is not None else "none",
        "hvg_min_spots": int(hvg_min_spots),
        "theta": float(theta),
    }
    hv = Key.var.highly_variable
    logger.info(
        "normalized (%s); %s highly variable genes (%s)",
        method, int(adata.var[hv].sum()) if hv in adata.var else 0, flavor,
    )
    return adata if copy else None


def _select_hvg(adata: AnnData, flavor: str, n_hvg: int, keep: np.ndarray, theta: float) -> None:
    """Select highly variable genes with scanpy among the genes in ``keep``, into ``var``."""
    import scanpy as sc

    sub = adata if keep.all() else adata[:, keep]
    n = min(n_hvg, int(keep.sum()))
    if n == 0:
        raise StimageError("no gene is detected in enough spots for highly variable gene selection")
    params: dict = {"flavor": flavor}
    if flavor == "seurat_v3":
        df = None
        for span in (0.3, 0.5, 1.0):  # scanpy's default first
            try:
                df = sc.pp.highly_variable_genes(
                    sub, n_top_genes=n, flavor="seurat_v3", layer=Key.layers.counts, span=span, inplace=False
                )
                params["span"] = span
                break
            except ValueError as e:  # singular loess fit on very sparse data
                logger.warning("seurat_v3 loess failed with span=%.1f (%s); retrying with a wider span", span, e)
        if df is None:
            raise StimageError("seurat_v3 highly variable genes failed; try hvg_flavor='pearson_residuals'")
    elif flavor == "pearson_residuals":
        df = sc.experimental.pp.highly_variable_genes(
            sub.copy() if sub.is_view else sub, n_top_genes=n, flavor="pearson_residuals", theta=theta,
            layer=Key.layers.counts, inplace=False,
        )
    else:
        try:
            df = sc.pp.highly_variable_genes(sub, n_top_genes=n, flavor=flavor, inplace=False)
        except ValueError as e:  # e.g. cell_ranger's mean bins on very few genes
            raise StimageError(f"{flavor} highly variable genes failed on this table ({e}); "
                               "try hvg_flavor='seurat_v3' or 'pearson_residuals'") from e
    names = adata.var_names[keep]
    df = df.reindex(names) if df.index.equals(names) or set(df.index) == set(names) else df.set_axis(names, axis=0)
    params["columns"] = [col for col in _HVG_COLUMNS if col in df]
    for col in params["columns"]:
        values = df[col].to_numpy()
        if values.dtype == bool:
            full = np.zeros(adata.n_vars, dtype=bool)
        else:
            full = np.full(adata.n_vars, np.nan)
        full[keep] = values
        adata.var[col] = full
    adata.uns[Key.uns.hvg] = params


def _pearson_residuals(counts, theta: float) -> tuple[np.ndarray, dict]:
    """Analytic Pearson residuals (scanpy's), 0 where the model's expectation is 0.

    scanpy divides ``x - mu`` by ``sqrt(mu + mu^2 / theta)``, which is 0/0 for every count
    of a gene never detected and of a spot without counts. Residuals are computed by scanpy
    on the other genes and spots (their totals, and so their residuals, are unchanged by
    leaving all-zero rows and columns out; the clip stays scanpy's ``sqrt(n_spots)`` of the
    whole slide) and set to 0 elsewhere.
    """
    import anndata as ad
    import scanpy as sc

    genes = np.asarray((counts != 0).sum(axis=0)).ravel() > 0
    spots = np.asarray((counts != 0).sum(axis=1)).ravel() > 0
    clip = float(np.sqrt(counts.shape[0]))
    out = np.zeros(counts.shape, dtype=np.float32)
    if genes.any() and spots.any():
        sub = counts[spots][:, genes]
        res = sc.experimental.pp.normalize_pearson_residuals(
            ad.AnnData(sub), theta=theta, clip=clip, inplace=False
        )
        out[np.ix_(spots, genes)] = np.asarray(res["X"], dtype=np.float32)
    params = {"theta": float(theta), "clip": clip, "computed_on": "layers['counts']"}
    return out, params
