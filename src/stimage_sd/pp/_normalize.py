"""Normalisation and highly variable genes (scanpy), raw counts kept in ``layers["counts"]``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy import sparse

from .._logging import logger
from ..errors import StimageError
from ._utils import get_table

__all__ = ["NORMALIZE_KEY", "normalize"]

#: ``uns`` key of the normalisation parameters.
NORMALIZE_KEY = "stimage_normalize"

#: Genes detected in fewer spots are never highly variable.
_MIN_SPOTS = 3
_HVG_COLUMNS = ("highly_variable", "highly_variable_rank", "means", "variances", "variances_norm", "residual_variances", "highly_variable_nbatches")
_HVG_FLAVORS = ("seurat_v3", "seurat", "cell_ranger", "pearson_residuals")


def normalize(
    data: Any,
    *,
    method: Literal["log1p", "pearson"] = "log1p",
    target_sum: float | None = None,
    n_top_genes: int | None = 2000,
    hvg_flavor: str | None = None,
    theta: float = 100.0,
    table_key: str = "table",
) -> None:
    """Normalise counts and select highly variable genes.

    Always starts from the raw counts: the first call copies ``X`` to
    ``layers["counts"]``; later calls read ``layers["counts"]``, so normalising twice
    gives the same result.

    Parameters
    ----------
    data
        A converted slide (:class:`spatialdata.SpatialData`) or its table.
    method
        ``"log1p"``: :func:`scanpy.pp.normalize_total` then :func:`scanpy.pp.log1p`
        (sparse ``X``, float32). ``"pearson"``: analytic Pearson residuals
        (:func:`scanpy.experimental.pp.normalize_pearson_residuals`, Lause et al.,
        *Genome Biology* 2021); ``X`` becomes dense float32 (n_spots x n_genes x 4 bytes).
    target_sum
        Counts per spot after ``normalize_total`` (``None``: the median library size).
    n_top_genes
        Number of highly variable genes; ``None`` skips HVG selection.
    hvg_flavor
        ``"seurat_v3"`` (on raw counts; default for ``"log1p"``), ``"seurat"``,
        ``"cell_ranger"`` (on log data) or ``"pearson_residuals"`` (default for
        ``"pearson"``).
    theta
        Overdispersion of the Pearson-residual model.
    table_key
        Table of a SpatialData.

    Notes
    -----
    Writes ``layers["counts"]`` (raw counts, unchanged), the normalised ``X``,
    ``var["highly_variable"]`` (+ scanpy's ``highly_variable_rank``, ``means``,
    ``variances``, ...), ``uns["hvg"]``, ``uns["log1p"]`` (log1p) and
    ``uns["stimage_normalize"]`` (method, target_sum, n_top_genes, hvg_flavor, theta).

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

    adata = get_table(data, table_key)
    if method not in ("log1p", "pearson"):
        raise ValueError(f"method must be 'log1p' or 'pearson', got {method!r}")
    flavor = hvg_flavor or ("seurat_v3" if method == "log1p" else "pearson_residuals")
    if flavor not in _HVG_FLAVORS:
        raise ValueError(f"hvg_flavor must be one of {_HVG_FLAVORS}, got {flavor!r}")

    if "counts" not in adata.layers:
        adata.layers["counts"] = adata.X.copy()
    counts = adata.layers["counts"]
    adata.X = counts.astype(np.float32) if sparse.issparse(counts) else np.asarray(counts, dtype=np.float32)
    for key in ("log1p", "hvg", "pearson_residuals_normalization"):
        adata.uns.pop(key, None)
    n_hvg = None if n_top_genes is None else int(min(n_top_genes, adata.n_vars))
    detected = np.asarray((counts > 0).sum(axis=0)).ravel()
    expressed = detected > 0

    def _hvg_on_counts() -> None:
        # only genes detected in a few spots: loess (seurat_v3) fails on all-zero genes
        keep = detected >= _MIN_SPOTS
        sub = adata[:, keep]
        n = min(n_hvg, int(keep.sum()))
        df = None
        if flavor == "seurat_v3":
            for span in (0.3, 0.5, 1.0):
                try:
                    df = sc.pp.highly_variable_genes(
                        sub, n_top_genes=n, flavor="seurat_v3", layer="counts", span=span, inplace=False
                    )
                    break
                except ValueError as e:  # singular loess fit on very sparse data
                    logger.info("seurat_v3 loess failed with span=%.1f (%s); retrying", span, e)
            if df is None:
                raise StimageError("seurat_v3 highly variable genes failed; try hvg_flavor='seurat'")
        else:
            df = sc.experimental.pp.highly_variable_genes(
                sub, n_top_genes=n, flavor="pearson_residuals", theta=theta, layer="counts", inplace=False
            )
        df.index = adata.var_names[keep]
        for col in df.columns:
            values = df[col]
            if col in adata.var.columns and col not in _HVG_COLUMNS:
                continue  # a copy of an existing var column
            if not (values.dtype == bool or np.issubdtype(values.dtype, np.number)):
                continue
            if values.dtype == bool:
                full = np.zeros(adata.n_vars, dtype=bool)
            else:
                full = np.full(adata.n_vars, np.nan)
            full[keep] = values.to_numpy()
            adata.var[col] = full
        adata.uns["hvg"] = {"flavor": flavor}

    if n_hvg is not None and flavor in ("seurat_v3", "pearson_residuals"):
        _hvg_on_counts()
    if method == "log1p":
        if target_sum is None:
            lib = np.asarray(counts.sum(axis=1)).ravel()
            target_sum = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
    else:
        sc.experimental.pp.normalize_pearson_residuals(adata, theta=theta, inplace=True)
        adata.X = np.asarray(adata.X, dtype=np.float32)
    if n_hvg is not None and flavor in ("seurat", "cell_ranger"):
        sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, flavor=flavor, subset=False)
    if "highly_variable" in adata.var:
        # genes never detected cannot be highly variable
        adata.var["highly_variable"] = adata.var["highly_variable"].to_numpy(dtype=bool) & expressed
    adata.uns["stimage_normalize"] = {
        "method": method,
        "target_sum": float(target_sum) if target_sum is not None else "none",
        "n_top_genes": int(n_hvg) if n_hvg is not None else 0,
        "hvg_flavor": flavor if n_hvg is not None else "none",
        "theta": float(theta),
    }
    logger.info(
        "normalized (%s); %s highly variable genes (%s)",
        method, int(adata.var["highly_variable"].sum()) if "highly_variable" in adata.var else 0, flavor,
    )
