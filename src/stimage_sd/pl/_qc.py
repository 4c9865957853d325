"""QC figure: distributions of the QC metrics with the thresholds used by :func:`stimage_sd.pp.qc`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import TABLE_KEY
from .._keys import Key
from ..pp._utils import get_table, slide_info

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["qc"]


def qc(
    data: AnnData | SpatialData,
    *,
    save: str | Path | None = None,
    figsize: tuple[float, float] = (10.0, 7.5),
    dpi: int = 110,
    table_key: str = TABLE_KEY,
) -> Any:
    """Plot total counts, detected genes and mitochondrial fraction with the QC thresholds.

    Four panels: histograms of ``log1p`` total counts, ``log1p`` detected genes and
    ``pct_counts_mt`` (dashed lines: thresholds of ``uns["stimage_qc"]``), and detected
    genes against total counts with flagged spots in red; spots are drawn at their
    positions in a fifth, spatial panel (flagged spots in red).

    Parameters
    ----------
    data
        A SpatialData or its table, after :func:`stimage_sd.pp.qc`.
    save
        Write the figure to this file and close it.
    figsize, dpi
        Figure size (inches) and resolution.
    table_key
        Table of a SpatialData.

    Returns
    -------
    The :class:`matplotlib.figure.Figure` (``None`` when ``save`` is given).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.qc(sdata)
    >>> fig = ssd.pl.qc(sdata)
    >>> ssd.pl.qc(sdata, save="qc.png")
    """
    import matplotlib.pyplot as plt

    adata = get_table(data, table_key)
    if Key.obs.total_counts not in adata.obs:
        raise KeyError("no QC metrics: run stimage_sd.pp.qc first")
    obs = adata.obs
    params = adata.uns.get(Key.uns.qc, {})
    thr = dict(params.get("thresholds", {}))
    flag = Key.obs.qc_outlier
    flagged = obs[flag].to_numpy(dtype=bool) if flag in obs else np.zeros(adata.n_obs, bool)

    fig, axes = plt.subplots(2, 3, figsize=figsize, dpi=dpi)
    panels = [
        (Key.obs.total_counts, "log1p total counts", thr.get("min_counts"), True),
        (Key.obs.n_genes_by_counts, "log1p detected genes", thr.get("min_genes"), True),
        (Key.obs.pct_counts_mt, "% mitochondrial counts", thr.get("max_pct_mt"), False),
        (Key.obs.pct_counts_ribo, "% ribosomal counts", None, False),
    ]
    for ax, (col, label, t, log) in zip(axes.flat[:4], panels, strict=True):
        if col not in obs:
            ax.set_axis_off()
            continue
        v = obs[col].to_numpy(dtype=float)
        ax.hist(np.log1p(v) if log else v, bins=50, color="0.35")
        if t is not None:
            ax.axvline(np.log1p(t) if log else t, color="tab:red", ls="--", lw=1.2, label="threshold")
            ax.legend(frameon=False, fontsize=8, loc="upper right")
        ax.set_xlabel(label)
        ax.set_ylabel("spots")
    ax = axes.flat[4]
    ax.scatter(obs[Key.obs.total_counts], obs[Key.obs.n_genes_by_counts], s=3, c=np.where(flagged, "tab:red", "0.4"), rasterized=True)
    ax.set_xscale("symlog")
    ax.set_yscale("symlog")
    ax.set_xlabel("total counts")
    ax.set_ylabel("detected genes")
    ax = axes.flat[5]
    xy = np.asarray(adata.obsm[Key.obsm.spatial])
    order = np.argsort(flagged, kind="stable")  # flagged on top
    ax.scatter(xy[order, 0], xy[order, 1], s=4, c=np.log1p(obs[Key.obs.total_counts].to_numpy())[order], cmap="viridis", rasterized=True)
    ax.scatter(xy[flagged, 0], xy[flagged, 1], s=6, facecolors="none", edgecolors="tab:red", lw=0.6)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title("log1p counts; flagged in red", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    slide = slide_info(adata).get("slide", "")
    fig.suptitle(f"{slide}: {int(flagged.sum())} of {adata.n_obs} spots flagged", fontsize=11)
    fig.tight_layout()
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=dpi)
        plt.close(fig)
        return None
    return fig
