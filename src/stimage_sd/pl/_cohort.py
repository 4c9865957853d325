"""Joint domains of a study: every slide side by side, one colour per label, with the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._keys import Key
from ..errors import StimageError
from ..pp._utils import get_table
from ._spatial import _close

__all__ = ["cohort_domains"]


def _palette(categories: list[str]) -> dict[str, Any]:
    import matplotlib as mpl

    cmap = mpl.colormaps["tab20" if len(categories) > 10 else "tab10"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def _scatter(ax, xy: np.ndarray, values: pd.Series, palette: dict[str, Any], size: float) -> None:
    vals = values.astype(object)
    missing = vals.isna().to_numpy()
    if missing.any():
        ax.scatter(xy[missing, 0], xy[missing, 1], s=size, c="lightgrey", linewidths=0)
    for cat, color in palette.items():
        sel = (vals.astype(str) == cat).to_numpy() & ~missing
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=color, linewidths=0, label=cat)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])


def cohort_domains(
    data: Any,
    *,
    key: str = "domain",
    truth: str | None = "annotation",
    batch_key: str = "slide",
    study: str | None = None,
    study_key: str = "study",
    scores: pd.DataFrame | None = None,
    spot_size: float | None = None,
    panel_size: float = 3.0,
    dpi: int = 100,
    save: str | Path | None = None,
    table_key: str = "table",
) -> Any:
    """Joint domains of the slides of one study, with the annotation and per-slide scores.

    One column per slide: the annotation (top row, when ``truth`` is given) and the
    domains (bottom row), in the same colours on every slide (a label has one colour
    everywhere); the last panel plots per-slide ARI and label match
    (:func:`stimage_sd.tl.score_cohort`).

    Parameters
    ----------
    data
        A cohort after :func:`stimage_sd.tl.cohort_domains` (or any labels in ``obs[key]``).
    key
        ``obs`` column of the domains.
    truth
        ``obs`` column of the annotation; ``None``: domains only.
    batch_key
        ``obs`` column of the slides.
    study
        The study to draw; ``None`` when the cohort holds a single study.
    study_key
        ``obs`` column of the studies.
    scores
        Output of :func:`stimage_sd.tl.score_cohort`; computed when ``None`` and ``truth``
        is given.
    spot_size
        Marker size (points²); default from the number of spots.
    panel_size, dpi
        Size of one panel (inches) and resolution.
    save
        Write the figure to this file and close it.
    table_key
        Table of a SpatialData.

    Returns
    -------
    The :class:`matplotlib.figure.Figure` (``None`` when ``save`` is given).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> cohort = ssd.io.read_cohort("stores", species="human")
    >>> ssd.pp.normalize(cohort, n_top_genes=None)
    >>> ssd.tl.cohort_domains(cohort, n_domains=3)
    >>> fig = ssd.pl.cohort_domains(cohort, study="GSE000001")
    """
    import matplotlib.pyplot as plt

    from ..tl._cohort import score_cohort

    adata = get_table(data, table_key)
    for col in [key, batch_key] + ([truth] if truth else []):
        if col not in adata.obs:
            raise StimageError(f"obs has no column {col!r}")
    obs = adata.obs
    if study_key in obs:
        studies = list(pd.unique(obs[study_key].astype(str)))
        if study is None:
            if len(studies) > 1:
                raise StimageError(f"the cohort holds {len(studies)} studies: pass study= (one of {studies[:5]})")
            study = studies[0]
        sel = (obs[study_key].astype(str) == study).to_numpy()
        if not sel.any():
            raise StimageError(f"no slide of study {study!r} (studies: {studies[:5]})")
    else:
        sel = np.ones(adata.n_obs, dtype=bool)
    sub_obs = obs[sel]
    xy = np.asarray(adata.obsm[Key.obsm.spatial])[sel]
    slides = list(pd.unique(sub_obs[batch_key].astype(str)))
    if scores is None and truth is not None:
        scores = score_cohort(adata, key=key, truth=truth, batch_key=batch_key, study_key=study_key, table_key=table_key)
    dom_cats = [str(c) for c in (obs[key].cat.categories if hasattr(obs[key], "cat") else sorted(obs[key].astype(str).unique()))]
    dom_pal = _palette(dom_cats)
    rows = 2 if truth else 1
    if truth:
        t = sub_obs[truth].dropna().astype(str)
        truth_pal = _palette(sorted(t.unique()))
    ncols = len(slides) + (1 if scores is not None else 0)
    fig, axes = plt.subplots(rows, ncols, figsize=(panel_size * ncols, panel_size * rows), dpi=dpi, squeeze=False)
    for j, s in enumerate(slides):
        m = (sub_obs[batch_key].astype(str) == s).to_numpy()
        size = spot_size if spot_size is not None else float(np.clip(6000.0 / max(m.sum(), 1), 0.5, 30))
        r = 0
        if truth:
            _scatter(axes[0, j], xy[m], sub_obs[truth][m], truth_pal, size)
            axes[0, j].set_title(f"{s}\n{truth}", fontsize=8)
            r = 1
        _scatter(axes[r, j], xy[m], sub_obs[key][m], dom_pal, size)
        label = key
        if scores is not None and s in scores.index:
            label += f"  ARI {scores.loc[s, 'ari']:.2f}"
        axes[r, j].set_title(label if truth else f"{s}\n{label}", fontsize=8)
    if truth:
        axes[0, len(slides) - 1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes[rows - 1, len(slides) - 1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=key)
    if scores is not None:
        ax = axes[rows - 1, -1]
        sc_ = scores.reindex([s for s in slides if s in scores.index])
        pos = np.arange(len(sc_))
        ax.bar(pos - 0.2, sc_["ari"], width=0.4, label="ARI")
        ax.bar(pos + 0.2, sc_["label_match"], width=0.4, label="label match")
        ax.set_xticks(pos, [str(i + 1) for i in pos])
        ax.set_xlabel("slide")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=6)
        ax.set_title(f"{study}" if study else "scores", fontsize=8)
        if rows == 2:
            axes[0, -1].axis("off")
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, bbox_inches="tight")
        _close(fig)
        return None
    return fig
