"""Agreement of spatial domains with the slide's annotation (ARI, NMI)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import TABLE_KEY
from .._keys import Key
from .._logging import logger
from ..pp._utils import get_table

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["EXCLUDED_LABELS", "score_domains"]

#: Labels dropped before scoring, compared case-insensitively, as the dataset's authors
#: do (empty, NaN, ``undetermined`` and ``Exclude``).
EXCLUDED_LABELS = ("", "nan", "na", "none", "undetermined", "exclude")


def score_domains(
    data: AnnData | SpatialData,
    *,
    key: str = Key.obs.domain,
    truth: str = Key.obs.annotation,
    exclude: Iterable[str] = EXCLUDED_LABELS,
    table_key: str = TABLE_KEY,
) -> dict[str, Any] | None:
    """Compare domains with the slide's annotation.

    Parameters
    ----------
    data
        A SpatialData or its table, after :func:`stimage_sd.tl.domains`.
    key
        ``obs`` column of the domains.
    truth
        ``obs`` column of the reference labels.
    exclude
        Labels (case-insensitive) whose spots are not scored; missing labels are never
        scored.
    table_key
        Table of a SpatialData.

    Returns
    -------
    ``{"ari", "nmi", "n_scored", "n_excluded", "n_labels"}``, also stored in
    ``uns["{key}_scores"]``; ``None`` (with a log message) when the slide has no
    annotation.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.normalize(sdata)
    >>> ssd.tl.domains(sdata, n_domains=3)
    >>> scores = ssd.tl.score_domains(sdata, key="domain", truth="annotation")
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    adata = get_table(data, table_key)
    if key not in adata.obs:
        raise KeyError(f"obs[{key!r}] not found; run stimage_sd.tl.domains first")
    if truth not in adata.obs:
        logger.info("no annotation (obs[%r]) on this slide: domain scoring skipped", truth)
        return None
    labels = adata.obs[truth]
    text = labels.astype(object).where(labels.notna(), "").astype(str).str.strip().str.lower()
    skip = {str(e).strip().lower() for e in exclude}
    keep = (~text.isin(skip)).to_numpy() & labels.notna().to_numpy()
    if keep.sum() == 0:
        logger.info("no usable annotation labels on this slide: domain scoring skipped")
        return None
    y_true = pd.Series(labels.to_numpy()[keep]).astype(str).to_numpy()
    y_pred = adata.obs[key].to_numpy()[keep].astype(str)
    scores = {
        "ari": float(adjusted_rand_score(y_true, y_pred)),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "n_scored": int(keep.sum()),
        "n_excluded": int((~keep).sum()),
        "n_labels": int(np.unique(y_true).size),
    }
    adata.uns[Key.uns.domain_scores(key)] = scores
    logger.info("domains vs %s: ARI %.3f, NMI %.3f (%d spots)", truth, scores["ari"], scores["nmi"], scores["n_scored"])
    return scores
