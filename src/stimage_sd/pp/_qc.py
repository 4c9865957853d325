"""Quality control of spots: scanpy QC metrics and robust (MAD-based) outlier flags.

Thresholds follow the single-cell best-practice recommendation of flagging outliers by
median absolute deviations (MAD) per sample rather than fixed cut-offs (Germain et al.,
*Genome Biology* 2020, ``scater::isOutlier``; Heumos et al., *Nat Rev Genet* 2023): a
spot is flagged when its log total counts or log detected genes lie more than ``nmads``
MADs below the slide's median, or its mitochondrial fraction more than ``nmads_mt`` MADs
above it. Flags are written, spots are not removed (:func:`filter_spots` applies them).
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import TABLE_KEY
from .._docs import dedent
from .._keys import Key
from .._logging import logger
from .._utils import raw_counts
from ._utils import get_table, slide_info, table_to_modify

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["GENE_PATTERNS", "QC_KEY", "filter", "filter_spots", "gene_patterns", "qc"]

#: ``uns`` key of the QC parameters and thresholds (:attr:`Key.uns.qc`).
QC_KEY = Key.uns.qc

#: Species -> (mitochondrial regex, ribosomal regex, case-sensitive?). Human symbols are
#: upper case (``MT-CO1``, ``RPL10A``, ``RPS4X``, ``RPLP0``, ``RPSA``), mouse ``mt-Co1`` /
#: ``Rpl10a``, rat ``Mt-co1`` / ``Rpl10a``. Ribosomal-protein kinases and mitochondrial
#: ribosomal proteins (``RPS6KA1``, ``MRPL12``) do not match.
GENE_PATTERNS: dict[str, tuple[str, str, bool]] = {
    "human": (r"^MT-", r"^RP[SL](\d+[A-Z]?\d*[XYL]?|P[0-2]|A)$", True),
    "mouse": (r"^mt-", r"^Rp[sl](\d+[a-z]?\d*[xyl]?|p[0-2]|a)$", True),
    "rattus norvegicus": (r"^Mt-", r"^Rp[sl](\d+[a-z]?\d*[xyl]?|p[0-2]|a)$", True),
}
#: Used for other or unknown species (and ``human & mouse``): case-insensitive.
_DEFAULT_PATTERNS = (r"^MT-", GENE_PATTERNS["human"][1], False)


def gene_patterns(species: str | None) -> tuple[re.Pattern, re.Pattern]:
    """Compiled (mitochondrial, ribosomal) gene-name patterns for a species.

    Parameters
    ----------
    species
        The release's species text (``"human"``, ``"mouse"``, ``"rattus norvegicus"``,
        ...). Other values, ``"human & mouse"`` and ``None`` match case-insensitively.
    """
    key = (species or "").strip().lower()
    mt, ribo, case = GENE_PATTERNS.get(key, _DEFAULT_PATTERNS)
    flags = 0 if case else re.IGNORECASE
    return re.compile(mt, flags), re.compile(ribo, flags)


def _mad(x: np.ndarray) -> tuple[float, float]:
    med = float(np.median(x))
    return med, float(np.median(np.abs(x - med)))


@dedent
def qc(
    data: AnnData | SpatialData,
    *,
    species: str | None = None,
    mt_pattern: str | None = None,
    ribo_pattern: str | None = None,
    nmads: float = 5.0,
    nmads_mt: float = 3.0,
    min_counts: float | None = None,
    min_genes: float | None = None,
    max_pct_mt: float | None = None,
    layer: str | None = None,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Compute QC metrics and flag low-quality spots (nothing is removed).

    Parameters
    ----------
    %(data)s
    species
        Chooses the gene-name patterns (:data:`GENE_PATTERNS`); default
        ``uns["stimage"]["species"]``.
    mt_pattern, ribo_pattern
        Regular expressions overriding the species' mitochondrial / ribosomal patterns,
        matched against ``var["gene_name"]`` (or the var names).
    nmads
        A spot is flagged when ``log1p(total_counts)`` or ``log1p(n_genes_by_counts)``
        is more than ``nmads`` MADs below the slide's median.
    nmads_mt
        ... or when ``pct_counts_mt`` is more than ``nmads_mt`` MADs above the median.
    min_counts, min_genes, max_pct_mt
        Fixed thresholds overriding the MAD-derived ones.
    layer
        Layer holding raw counts; default ``layers["counts"]`` when present, else ``X``.
    %(table_key)s
    %(copy)s

    Returns
    -------
    %(returns_copy)s

    Notes
    -----
    Writes into the table:

    - ``var["mt"]``, ``var["ribo"]``: gene flags;
    - ``obs["total_counts"]``, ``obs["n_genes_by_counts"]``, ``obs["log1p_total_counts"]``,
      ``obs["log1p_n_genes_by_counts"]``, ``obs["pct_counts_mt"]``,
      ``obs["pct_counts_ribo"]`` (and scanpy's ``total_counts_mt``, ...): scanpy's
      :func:`scanpy.pp.calculate_qc_metrics`; ``var`` gets scanpy's per-gene metrics;
    - ``obs["qc_low_counts"]``, ``obs["qc_low_genes"]``, ``obs["qc_high_mt"]`` and their
      union ``obs["qc_outlier"]`` (bool); spots with no counts are always flagged;
    - ``uns["stimage_qc"]``: thresholds used (``min_counts``, ``min_genes``,
      ``max_pct_mt``, ``None`` where a metric flags nothing), their source (``"mad"`` or
      ``"fixed"``), patterns, gene and flag counts.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.qc(sdata)
    >>> flagged = sdata["table"].obs["qc_outlier"]
    >>> ssd.pp.qc(sdata, min_counts=100, max_pct_mt=20)
    >>> table = ssd.pp.qc(sdata, nmads=3, copy=True)  # sdata is left unchanged
    """
    import scanpy as sc

    adata = table_to_modify(data, table_key, copy)
    info = slide_info(adata)
    species = species if species is not None else info.get("species")
    mt_re, ribo_re = gene_patterns(species)
    if mt_pattern is not None:
        mt_re = re.compile(mt_pattern)
    if ribo_pattern is not None:
        ribo_re = re.compile(ribo_pattern)
    names = (
        adata.var[Key.var.gene_name].astype(str)
        if Key.var.gene_name in adata.var
        else pd.Series(adata.var_names, index=adata.var_names)
    )
    adata.var[Key.var.mt] = np.array([bool(mt_re.search(n)) for n in names], dtype=bool)
    adata.var[Key.var.ribo] = np.array([bool(ribo_re.search(n)) for n in names], dtype=bool)
    n_mt, n_ribo = int(adata.var[Key.var.mt].sum()), int(adata.var[Key.var.ribo].sum())
    if n_mt == 0:
        logger.info("QC: no mitochondrial gene matches %r; pct_counts_mt is 0", mt_re.pattern)

    X = raw_counts(adata, layer)
    if sparse.issparse(X) and X.nnz and not np.all(np.mod(X.data[: min(X.nnz, 100_000)], 1) == 0):
        logger.warning("QC: the counts matrix is not integral; QC metrics expect raw counts")
    layer_used = layer if layer is not None else (Key.layers.counts if Key.layers.counts in adata.layers else None)
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=[Key.var.mt, Key.var.ribo], percent_top=None, log1p=True, inplace=True, layer=layer_used
    )
    obs = adata.obs
    thresholds: dict[str, Any] = {}
    source: dict[str, str] = {}

    def low_flag(col: str, fixed: float | None, name: str) -> np.ndarray:
        values = obs[col].to_numpy(dtype=float)
        if fixed is not None:
            thresholds[name], source[name] = float(fixed), "fixed"
            return values < fixed
        logv = np.log1p(values)
        med, mad = _mad(logv)
        if mad == 0:
            thresholds[name], source[name] = None, "mad"
            return np.zeros(len(values), dtype=bool)
        thr = float(np.expm1(med - nmads * mad))
        thresholds[name], source[name] = thr, "mad"
        return values < thr

    low_counts = low_flag(Key.obs.total_counts, min_counts, "min_counts") | (obs[Key.obs.total_counts].to_numpy() == 0)
    low_genes = low_flag(Key.obs.n_genes_by_counts, min_genes, "min_genes")
    pct = obs[Key.obs.pct_counts_mt].to_numpy(dtype=float)
    if max_pct_mt is not None:
        thresholds["max_pct_mt"], source["max_pct_mt"] = float(max_pct_mt), "fixed"
        high_mt = pct > max_pct_mt
    else:
        med, mad = _mad(pct)
        source["max_pct_mt"] = "mad"
        if mad == 0:
            thresholds["max_pct_mt"] = None
            high_mt = np.zeros(len(pct), dtype=bool)
        else:
            thresholds["max_pct_mt"] = float(med + nmads_mt * mad)
            high_mt = pct > thresholds["max_pct_mt"]
    obs[Key.obs.qc_low_counts] = low_counts
    obs[Key.obs.qc_low_genes] = low_genes
    obs[Key.obs.qc_high_mt] = high_mt
    obs[Key.obs.qc_outlier] = low_counts | low_genes | high_mt
    n_flag = int(obs[Key.obs.qc_outlier].sum())
    adata.uns[Key.uns.qc] = {
        "thresholds": {k: v for k, v in thresholds.items() if v is not None},
        "threshold_source": source,
        "nmads": float(nmads),
        "nmads_mt": float(nmads_mt),
        "species": str(species) if species is not None else "unknown",
        "mt_pattern": mt_re.pattern,
        "ribo_pattern": ribo_re.pattern,
        "n_mt_genes": n_mt,
        "n_ribo_genes": n_ribo,
        "n_flagged": n_flag,
        "n_spots": int(adata.n_obs),
    }
    logger.info(
        "QC: %d of %d spots flagged (thresholds %s)",
        n_flag, adata.n_obs, {k: (round(v, 2) if v is not None else None) for k, v in thresholds.items()},
    )
    return adata if copy else None


@dedent
def filter_spots(
    data: AnnData | SpatialData,
    *,
    key: str = Key.obs.qc_outlier,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Remove the spots flagged by :func:`qc` from the table.

    The subset is taken with AnnData's public API (``adata[keep].copy()``), which makes a
    new table: a :class:`spatialdata.SpatialData` gets it as its table (the ``spots``
    shapes are kept; the table then annotates a subset of them); an
    :class:`anndata.AnnData` cannot be subset in place with that API, so it needs
    ``copy=True``.

    Parameters
    ----------
    %(data)s
    key
        Boolean ``obs`` column; ``True`` rows are removed.
    %(table_key)s
    %(copy)s

    Returns
    -------
    %(returns_copy)s

    Raises
    ------
    KeyError
        If ``obs[key]`` does not exist (run :func:`qc` first).
    ValueError
        If ``data`` is an AnnData and ``copy`` is false.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.qc(sdata)
    >>> kept = ssd.pp.filter_spots(sdata, copy=True)  # a filtered copy of the table
    >>> ssd.pp.filter_spots(sdata)  # sdata["table"] is replaced by the filtered table
    """
    from anndata import AnnData

    if isinstance(data, AnnData) and not copy:
        raise ValueError(
            "an AnnData cannot be subset in place with AnnData's public API: use "
            "adata = stimage_sd.pp.filter_spots(adata, copy=True), or pass the SpatialData"
        )
    adata = get_table(data, table_key)
    if key not in adata.obs:
        raise KeyError(f"obs[{key!r}] not found; run stimage_sd.pp.qc first")
    keep = ~adata.obs[key].to_numpy(dtype=bool)
    n = int((~keep).sum())
    subset = adata[keep].copy()
    logger.info("removed %d flagged spot(s) (obs[%r])", n, key)
    if copy:
        return subset
    data.tables[table_key] = subset
    return None


def filter(
    data: AnnData | SpatialData, *, key: str = Key.obs.qc_outlier, table_key: str = TABLE_KEY
) -> int:
    """Deprecated alias of :func:`filter_spots`; returns the number of spots removed.

    .. deprecated:: 0.1.0
        Use :func:`filter_spots` (``filter`` shadows a builtin). Removed in the next
        release. An :class:`anndata.AnnData` is no longer subset in place: use
        ``adata = filter_spots(adata, copy=True)``.

    Parameters
    ----------
    data
        A :class:`spatialdata.SpatialData` (its table is replaced by the subset).
    key
        Boolean ``obs`` column; ``True`` rows are removed.
    table_key
        Table of the SpatialData.

    Returns
    -------
    The number of spots removed.
    """
    warnings.warn(
        "stimage_sd.pp.filter is deprecated and will be removed in the next release; "
        "use stimage_sd.pp.filter_spots",
        FutureWarning,
        stacklevel=2,
    )
    n_before = get_table(data, table_key).n_obs
    filter_spots(data, key=key, table_key=table_key)
    return n_before - get_table(data, table_key).n_obs
