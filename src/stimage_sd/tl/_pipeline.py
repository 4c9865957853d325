"""The per-slide workflow in one call: QC → normalise → graph → domains → SVG (→ score)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._constants import TABLE_KEY
from .._keys import Key
from ..pp._utils import get_table, slide_info

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["ANALYSIS_KEY", "run_pipeline"]

#: ``uns`` key recording the pipeline's parameters (:attr:`Key.uns.analysis`).
ANALYSIS_KEY = Key.uns.analysis


def run_pipeline(
    data: AnnData | SpatialData,
    *,
    n_domains: int | None = None,
    seed: int = 0,
    normalize_method: Literal["log1p", "pearson"] = "log1p",
    n_top_genes: int = 2000,
    spatial_weight: float = 0.8,
    n_hops: int | None = None,
    resolution: float = 0.5,
    svg_genes: Sequence[str] | str | None = None,
    filter_spots: bool = False,
    qc_kwargs: dict[str, Any] | None = None,
    table_key: str = TABLE_KEY,
) -> dict[str, Any]:
    """Run the standard per-slide analysis with technology-aware defaults.

    Steps: :func:`stimage_sd.pp.qc` (flags only), optionally :func:`stimage_sd.pp.filter_spots`,
    :func:`stimage_sd.pp.normalize`, :func:`stimage_sd.tl.spatial_graph`,
    :func:`stimage_sd.tl.domains`, :func:`stimage_sd.tl.svg`, and
    :func:`stimage_sd.tl.score_domains` when the slide is annotated. Running it again on
    its own output gives the same results (it restarts from ``layers["counts"]``).

    Parameters
    ----------
    data
        A converted slide (:class:`spatialdata.SpatialData`) or its table; modified in
        place.
    n_domains
        Number of spatial domains (``None``: Leiden at ``resolution``).
    seed
        Random seed of every step.
    normalize_method
        ``"log1p"`` or ``"pearson"``.
    n_top_genes
        Highly variable genes.
    spatial_weight, n_hops, resolution
        See :func:`stimage_sd.tl.domains`.
    svg_genes
        Genes tested for spatial variability (see :func:`stimage_sd.tl.svg`).
    filter_spots
        Remove spots flagged by QC before the analysis (default: keep them, flagged);
        needs a SpatialData, whose table is then replaced by the filtered one.
    qc_kwargs
        Extra arguments of :func:`stimage_sd.pp.qc`.
    table_key
        Table of a SpatialData.

    Returns
    -------
    A summary: ``slide``, ``tech``, ``n_spots``, ``n_genes``, ``n_flagged``,
    ``n_domains``, ``ari`` and ``nmi`` (``None`` without annotation), ``top_svg`` (10
    genes) and ``seconds`` per step. The parameters are stored in
    ``uns["stimage_analysis"]``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> summary = ssd.tl.run_pipeline(sdata, n_domains=3, seed=0)
    >>> summary["ari"], summary["top_svg"][:3]  # doctest: +SKIP
    """
    from .. import __version__
    from ..pp._normalize import normalize
    from ..pp._qc import filter_spots as filter_flagged
    from ..pp._qc import qc
    from ._domains import domains
    from ._graph import spatial_graph
    from ._score import score_domains
    from ._svg import svg, top_svg

    seconds: dict[str, float] = {}

    def step(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 3)
        return out

    from anndata import AnnData as _AnnData

    if filter_spots and isinstance(data, _AnnData):
        raise ValueError("filter_spots=True needs a SpatialData (an AnnData cannot be subset in place)")
    step("qc", qc, data, table_key=table_key, **(qc_kwargs or {}))
    n_removed = 0
    if filter_spots:
        n_before = get_table(data, table_key).n_obs
        step("filter", filter_flagged, data, table_key=table_key)
        n_removed = n_before - get_table(data, table_key).n_obs
    adata = get_table(data, table_key)
    step("normalize", normalize, adata, method=normalize_method, n_top_genes=n_top_genes)
    step("spatial_graph", spatial_graph, adata)
    step(
        "domains", domains, adata, n_domains,
        resolution=resolution, spatial_weight=spatial_weight, n_hops=n_hops, seed=seed,
    )
    step("svg", svg, adata, genes=svg_genes, seed=seed)
    scores = step("score", score_domains, adata)
    info = slide_info(adata)
    adata.uns[ANALYSIS_KEY] = {
        "stimage_sd_version": __version__,
        "steps": ["qc", *(["filter"] if filter_spots else []), "normalize", "spatial_graph", "domains", "svg",
                  *(["score_domains"] if scores else [])],
        "n_domains": int(n_domains) if n_domains is not None else 0,
        "seed": int(seed),
        "normalize_method": normalize_method,
        "n_top_genes": int(n_top_genes),
        "spatial_weight": float(spatial_weight),
        "resolution": float(resolution),
        "filter_spots": bool(filter_spots),
    }
    return {
        "slide": info.get("slide", ""),
        "tech": info.get("tech", ""),
        "n_spots": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_flagged": int(adata.obs[Key.obs.qc_outlier].sum()) + int(n_removed or 0),
        "n_removed": int(n_removed or 0),
        "n_domains": int(adata.obs[Key.obs.domain].cat.categories.size),
        "ari": scores["ari"] if scores else None,
        "nmi": scores["nmi"] if scores else None,
        "top_svg": top_svg(adata, 10),
        "seconds": seconds,
    }
