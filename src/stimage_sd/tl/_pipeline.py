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

# --- preconditions of the steps (issue 15) -------------------------------------------------
#: Fewest spots for highly variable genes, the spatial graph, domains and spatially variable
#: genes: below it these steps are skipped (recorded in ``uns["stimage_analysis"]["skipped"]``)
#: instead of failing in scikit-learn or crashing in native code (1-2 spots crashed the
#: seurat_v3 HVG loess).
MIN_SPOTS = 10
#: Fewest genes detected (non-zero somewhere) for those steps.
MIN_GENES = 2


def _preconditions(adata: Any, n_domains: int | None) -> dict[str, str]:
    """Steps that cannot run on this table, with the reason (empty when all can)."""
    import numpy as np

    n_spots = int(adata.n_obs)
    from .._utils import raw_counts

    counts = raw_counts(adata)
    n_genes = int((np.asarray((counts != 0).sum(axis=0)).ravel() > 0).sum()) if n_spots else 0
    reason = None
    if n_spots < MIN_SPOTS:
        reason = f"{n_spots} spot(s), fewer than the {MIN_SPOTS} needed"
    elif n_genes < MIN_GENES:
        reason = f"{n_genes} gene(s) detected, fewer than the {MIN_GENES} needed"
    elif n_domains is not None and int(n_domains) > n_spots:
        reason = f"{n_domains} domains requested for {n_spots} spots"
    if reason is None:
        return {}
    return {"hvg": reason, "spatial_graph": reason, "domains": reason, "svg": reason, "score_domains": reason}
# -------------------------------------------------------------------------------------------


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
    genes), ``skipped`` (step -> reason: with fewer than :data:`MIN_SPOTS` spots, fewer
    than :data:`MIN_GENES` detected genes or more domains than spots, highly variable
    genes, the spatial graph, domains, spatially variable genes and scoring are skipped, and
    recorded in ``uns["stimage_analysis"]["skipped"]``) and ``seconds`` per step. The parameters are stored in
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
    skipped = _preconditions(adata, n_domains)  # issue 15: skip, with the reason, never crash
    if skipped and Key.obs.domain in adata.obs:  # no stale domains of an earlier run
        del adata.obs[Key.obs.domain]
    step("normalize", normalize, adata, method=normalize_method,
         n_top_genes=None if "hvg" in skipped else n_top_genes)
    if "spatial_graph" not in skipped:
        step("spatial_graph", spatial_graph, adata)
        step(
            "domains", domains, adata, n_domains,
            resolution=resolution, spatial_weight=spatial_weight, n_hops=n_hops, seed=seed,
        )
        step("svg", svg, adata, genes=svg_genes, seed=seed)
    scores = step("score", score_domains, adata) if "score_domains" not in skipped else None
    if skipped:
        from .._logging import logger

        logger.warning("%s: %s skipped: %s", slide_info(adata).get("slide", "table"),
                       ", ".join(skipped), next(iter(skipped.values())))
    info = slide_info(adata)
    adata.uns[ANALYSIS_KEY] = {
        "stimage_sd_version": __version__,
        "steps": ["qc", *(["filter"] if filter_spots else []), "normalize",
                  *([] if skipped else ["spatial_graph", "domains", "svg"]),
                  *(["score_domains"] if scores else [])],
        "skipped": dict(skipped),
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
        "n_domains": int(adata.obs[Key.obs.domain].cat.categories.size) if Key.obs.domain in adata.obs else 0,
        "ari": scores["ari"] if scores else None,
        "nmi": scores["nmi"] if scores else None,
        "top_svg": top_svg(adata, 10) if "svg" not in skipped else [],
        "skipped": dict(skipped),
        "seconds": seconds,
    }
