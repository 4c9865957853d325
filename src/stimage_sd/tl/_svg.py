"""Spatially variable genes by Moran's I (squidpy :func:`squidpy.gr.spatial_autocorr`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._constants import TABLE_KEY
from .._docs import dedent
from .._keys import Key
from .._logging import logger
from .._utils import raw_counts
from ..pp._utils import get_table, table_to_modify

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["SVG_KEY", "svg", "top_svg"]

#: Default ``key_added`` of :func:`svg`: squidpy's own ``uns`` key (:attr:`Key.uns.moranI`).
SVG_KEY = Key.uns.moranI
#: A gene is tested only when detected in at least this fraction of spots (and 3 spots).
_MIN_FRACTION = 0.01


@dedent
def svg(
    data: AnnData | SpatialData,
    *,
    genes: Sequence[str] | str | None = None,
    n_perms: int | None = None,
    seed: int = 0,
    graph_key: str = Key.obsp.spatial,
    layer: str | None = None,
    key_added: str = SVG_KEY,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Rank genes by spatial autocorrelation (Moran's I) over the spatial graph.

    Parameters
    ----------
    %(data)s
        Normalised (:func:`stimage_sd.pp.normalize`).
    genes
        Genes to test. ``None``: the highly variable genes when ``var["highly_variable"]``
        exists, else every gene detected in at least 1 % of spots; ``"all"``: every gene
        detected in at least 1 % of spots.
    n_perms
        Permutations for an empirical p-value (``None``: analytic p-values only).
    seed
        Seed of the permutations.
    %(graph_key)s
    layer
        Expression layer (default ``X``, the normalised values).
    key_added
        Key of the results; default ``"moranI"``, squidpy's own key.
    %(table_key)s
    %(copy)s

    Returns
    -------
    %(returns_copy)s

    Notes
    -----
    Writes ``uns[key_added]`` (squidpy's table, sorted by ``I``: ``I``, ``pval_norm``,
    ``var_norm``, ``pval_norm_fdr_bh``, ...), ``var[key_added]`` (Moran's I),
    ``var["{key_added}_pval"]``, ``var["{key_added}_fdr"]`` (Benjamini–Hochberg) and
    ``var["{key_added}_rank"]`` (1 = most spatially variable; NaN for genes not tested),
    and ``uns["{key_added}_params"]`` (parameters, number of genes tested).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.normalize(sdata)
    >>> ssd.tl.svg(sdata)
    >>> moran = sdata["table"].uns["moranI"]
    >>> ssd.tl.svg(sdata, genes="all", key_added="moranI_all")  # every detected gene
    """
    import squidpy as sq

    adata = table_to_modify(data, table_key, copy)
    conn = Key.obsp.spatial_conn(graph_key)
    if conn not in adata.obsp:
        from ._graph import spatial_graph

        spatial_graph(adata, key_added=graph_key)
    detected = np.asarray((raw_counts(adata) > 0).sum(axis=0)).ravel()
    enough = detected >= max(3, _MIN_FRACTION * adata.n_obs)
    if genes is None and Key.var.highly_variable in adata.var:
        selected = adata.var_names[adata.var[Key.var.highly_variable].to_numpy(dtype=bool) & enough]
        source = "highly_variable"
    elif genes is None or (isinstance(genes, str) and genes == "all"):
        selected = adata.var_names[enough]
        source = "detected"
    else:
        genes = [genes] if isinstance(genes, str) else list(genes)
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise KeyError(f"genes not in var_names: {missing[:5]}")
        selected = pd.Index(genes)
        source = "given"
    if len(selected) == 0:
        raise ValueError("no gene to test")
    df = sq.gr.spatial_autocorr(
        adata,
        connectivity_key=conn,
        genes=list(selected),
        mode="moran",
        n_perms=n_perms,
        seed=seed,
        layer=layer,
        copy=True,
        n_jobs=1,
        show_progress_bar=False,
    )
    # stable order: by I, then by name for ties
    df = df.assign(_name=df.index).sort_values(["I", "_name"], ascending=[False, True]).drop(columns="_name")
    df.index = df.index.astype(str)
    adata.uns[Key.uns.svg(key_added)] = df
    full = lambda col: df[col].reindex(adata.var_names).to_numpy(dtype=np.float64)  # noqa: E731
    adata.var[Key.var.svg(key_added)] = full("I")
    adata.var[Key.var.svg_pval(key_added)] = full("pval_norm")
    adata.var[Key.var.svg_fdr(key_added)] = full("pval_norm_fdr_bh") if "pval_norm_fdr_bh" in df else np.nan
    rank = pd.Series(np.arange(1, len(df) + 1, dtype=np.float64), index=df.index)
    adata.var[Key.var.svg_rank(key_added)] = rank.reindex(adata.var_names).to_numpy()
    adata.uns[Key.uns.svg_params(key_added)] = {
        "genes": source,
        "n_tested": len(df),
        "n_perms": int(n_perms) if n_perms is not None else 0,
        "seed": int(seed),
        "graph_key": graph_key,
    }
    logger.info("Moran's I for %d genes; top: %s", len(df), ", ".join(df.index[:5]))
    return adata if copy else None


def top_svg(
    data: AnnData | SpatialData,
    n: int = 20,
    *,
    max_fdr: float | None = None,
    key: str = SVG_KEY,
    table_key: str = TABLE_KEY,
) -> list[str]:
    """The ``n`` most spatially variable genes found by :func:`svg`.

    Parameters
    ----------
    data
        A SpatialData or its table, after :func:`svg`.
    n
        How many genes.
    max_fdr
        Keep only genes whose Benjamini–Hochberg FDR is at most this.
    key
        ``key_added`` of :func:`svg`.
    table_key
        Table of a SpatialData.

    Returns
    -------
    Gene names (``var_names``), most spatially variable first.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.normalize(sdata)
    >>> ssd.tl.svg(sdata)
    >>> genes = ssd.tl.top_svg(sdata, n=10, max_fdr=0.05)
    """
    adata = get_table(data, table_key)
    if Key.uns.svg(key) not in adata.uns:
        raise KeyError(f"no Moran's I results in uns[{key!r}]: run stimage_sd.tl.svg first")
    df = adata.uns[Key.uns.svg(key)]
    if max_fdr is not None and "pval_norm_fdr_bh" in df:
        df = df[df["pval_norm_fdr_bh"] <= max_fdr]
    return [str(g) for g in df.index[:n]]
