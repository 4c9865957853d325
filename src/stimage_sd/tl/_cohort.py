"""Spatial domains that mean the same thing on every slide of a cohort.

:func:`cohort_domains`:

1. ``Z``: one PCA of the normalised expression of all slides (batch-aware highly
   variable genes, :func:`stimage_sd.pp.highly_variable_genes`), each gene centred within
   each slide first (``batch_center``): a gene-wise multiplicative batch effect (capture
   efficiency, depth) is an additive shift after ``log1p``, which the centring removes.
   The centring is implicit (a sparse linear operator), so memory stays that of the
   sparse matrix;
2. BANKSY-style features ``[sqrt(1 - λ) Z, sqrt(λ) P^h Z]`` per slide
   (:func:`stimage_sd.tl._domains.neighbourhood_features`): the spatial graph joins spots
   of the same slide only, so no neighbourhood crosses two slides;
3. integration: Harmony on the features with the slide as batch
   (:func:`stimage_sd.pp.integrate`), which removes slide-specific shifts;
4. one joint clustering of all spots (:func:`stimage_sd.tl._domains.cluster_features`),
   so label ``"2"`` is the same domain on every slide.

Clustering each slide alone (:func:`stimage_sd.tl.domains`) finds the domains of each
slide, but its labels are arbitrary per slide: ``"2"`` on one slide has no relation to
``"2"`` on another. :func:`score_cohort` measures both the per-slide agreement with
annotations (ARI) and whether a label means the same annotated domain across slides.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._keys import Key
from .._logging import logger
from ..errors import StimageError
from ..pp._cohort import harmonize
from ..pp._utils import get_table, table_to_modify
from ._domains import DEFAULT_HOPS, cluster_features, neighbourhood_features
from ._score import EXCLUDED_LABELS

__all__ = ["batch_centred_pca", "cohort_domains", "score_cohort", "slide_graph"]


def batch_centred_pca(X, batches: np.ndarray, n_comps: int, *, seed: int = 0) -> np.ndarray:
    """PCA scores of ``X`` after centring every column within each batch.

    The centred matrix is never formed: a :class:`scipy.sparse.linalg.LinearOperator`
    applies ``X - M[batch]`` (``M``: per-batch column means) and
    :func:`scipy.sparse.linalg.svds` (ARPACK, seeded) finds its leading singular vectors.

    Parameters
    ----------
    X
        ``(n, g)`` matrix, sparse or dense.
    batches
        Batch of each row.
    n_comps
        Number of components (``< min(n, g)``).
    seed
        Seed of ARPACK's start vector.

    Returns
    -------
    ``(n, n_comps)`` scores ``U S``, by decreasing singular value, with scanpy's sign
    convention (the largest loading of each component is positive).
    """
    from scipy.sparse.linalg import LinearOperator, svds

    X = sparse.csr_matrix(X, dtype=np.float64) if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
    codes, _ = pd.factorize(np.asarray(batches))
    n, g = X.shape
    counts = np.bincount(codes).astype(np.float64)
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, len(counts)))
    sums = onehot.T @ X
    means = (sums.toarray() if sparse.issparse(sums) else np.asarray(sums)) / counts[:, None]  # (batches, g)

    def matvec(v):
        v = np.asarray(v, dtype=np.float64).reshape(g, -1)
        return np.asarray(X @ v) - (means @ v)[codes]

    def rmatvec(u):
        u = np.asarray(u, dtype=np.float64).reshape(n, -1)
        return np.asarray(X.T @ u) - means.T @ np.asarray(onehot.T @ u)

    op = LinearOperator((n, g), matvec=matvec, rmatvec=rmatvec, matmat=matvec, rmatmat=rmatvec, dtype=np.float64)
    k = int(min(n_comps, min(n, g) - 1))
    v0 = np.random.default_rng(seed).uniform(-1, 1, size=min(n, g))
    u, s, vt = svds(op, k=k, v0=v0, solver="arpack")
    order = np.argsort(-s)
    u, s, vt = u[:, order], s[order], vt[order]
    flip = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    flip[flip == 0] = 1
    return (u * s) * flip


def slide_graph(adata, batch_key: str = "slide", *, key_added: str = "spatial") -> sparse.csr_matrix:
    """Spatial graph of a cohort: each slide's own graph, no edge between two slides.

    Builds :func:`stimage_sd.tl.spatial_graph` per slide (with the slide's technology
    from ``obs["tech"]``) and writes the block-diagonal result to
    ``obsp[f"{key_added}_connectivities"]`` (squidpy's layout with ``library_key``).

    Parameters
    ----------
    adata
        A cohort with ``obsm["spatial"]`` and ``obs[batch_key]``.
    batch_key
        ``obs`` column of the slides.
    key_added
        Prefix of the ``obsp`` key.

    Returns
    -------
    The ``(n, n)`` connectivities.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> cohort = ssd.io.read_cohort("stores", species="human")
    >>> conn = ssd.tl.slide_graph(cohort, "slide")
    """
    from anndata import AnnData

    from ._graph import spatial_graph

    slides = adata.obs[batch_key].astype(str).to_numpy()
    xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
    n = adata.n_obs
    rows, cols = [], []
    for s in pd.unique(slides):
        idx = np.flatnonzero(slides == s)
        sub = AnnData(obs=pd.DataFrame(index=adata.obs_names[idx]))
        sub.obsm[Key.obsm.spatial] = xy[idx]
        if Key.obs.tech in adata.obs:
            sub.uns[Key.uns.stimage] = {"tech": str(adata.obs[Key.obs.tech].iloc[idx[0]])}
        if len(idx) > 1:
            spatial_graph(sub)
            c = sparse.coo_matrix(sub.obsp[Key.obsp.spatial_conn()])
            rows.append(idx[c.row])
            cols.append(idx[c.col])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    conn = sparse.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n, n))
    adata.obsp[f"{key_added}_connectivities"] = conn
    return conn


def cohort_domains(
    data: Any,
    n_domains: int | None = None,
    *,
    batch_key: str = "slide",
    integrate: Literal["harmony"] | None = "harmony",
    batch_center: bool = True,
    resolution: float = 0.5,
    spatial_weight: float = 0.8,
    n_hops: int | None = None,
    n_pcs: int = 30,
    method: Literal["leiden", "kmeans", "gmm"] = "leiden",
    n_neighbors: int = 15,
    theta: float = 2.0,
    seed: int = 0,
    key_added: str = "domain",
    table_key: str = "table",
    copy: bool = False,
) -> Any:
    """Joint spatial domains of a cohort: the same label for the same domain on every slide.

    See the module documentation for the method.

    Parameters
    ----------
    data
        A cohort (:func:`stimage_sd.io.read_cohort`) normalised by
        :func:`stimage_sd.pp.normalize`, ideally with batch-aware highly variable genes
        (:func:`stimage_sd.pp.highly_variable_genes`).
    n_domains
        Number of domains wanted; ``None``: Leiden at ``resolution``.
    batch_key
        ``obs`` column of the slides: spatial neighbourhoods stay within a slide and
        Harmony corrects between them.
    integrate
        ``"harmony"`` (default) or ``None`` (no correction: batch effects then split
        domains by slide).
    batch_center
        Centre each gene within each slide before the PCA (see the module documentation);
        ``False``: one PCA of the pooled data, as :func:`scanpy.pp.pca`.
    resolution, spatial_weight, n_hops, n_pcs, method, n_neighbors, seed
        As in :func:`stimage_sd.tl.domains` (``n_hops`` default per slide technology).
    theta
        Harmony's diversity penalty.
    key_added
        ``obs`` column of the result.
    table_key
        Table of a SpatialData.
    copy
        Work on a copy of the table and return it.

    Returns
    -------
    The table when ``copy``, else ``None``.

    Notes
    -----
    Writes ``obs[key_added]`` (categorical ``"0"``, ``"1"``, ... by decreasing size),
    ``obsm[f"{key_added}_pca"]`` (the PCA; scanpy's own ``X_pca`` is never touched),
    ``obsm[f"X_{key_added}"]`` (the integrated features),
    ``obsp["spatial_connectivities"]`` (per-slide graphs, block diagonal) and
    ``uns[key_added]`` (parameters and the number of domains found).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> cohort = ssd.io.read_cohort("stores", species="human")
    >>> ssd.pp.normalize(cohort, n_top_genes=None)
    >>> ssd.pp.highly_variable_genes(cohort, n_top_genes=100, batch_key="slide")
    >>> ssd.tl.cohort_domains(cohort, n_domains=3, batch_key="slide")
    >>> scores = ssd.tl.score_cohort(cohort)
    """
    import scanpy as sc

    adata = table_to_modify(data, table_key, copy)
    if Key.uns.normalize not in adata.uns and Key.uns.log1p not in adata.uns:
        raise StimageError("tl.cohort_domains needs normalised expression: run stimage_sd.pp.normalize first")
    if batch_key not in adata.obs:
        raise StimageError(f"obs has no column {batch_key!r} (a cohort from stimage_sd.io.read_cohort has 'slide')")
    if Key.obsm.spatial not in adata.obsm:
        raise StimageError("obsm['spatial'] is missing: the cohort needs spot coordinates")
    if integrate not in ("harmony", None):
        raise ValueError(f"integrate must be 'harmony' or None, got {integrate!r}")

    mask = adata.var[Key.var.highly_variable].to_numpy(dtype=bool) if Key.var.highly_variable in adata.var else None
    n_feat = int(mask.sum()) if mask is not None else adata.n_vars
    n_comps = max(2, min(n_pcs, n_feat - 1, adata.n_obs - 1))
    slides = adata.obs[batch_key].astype(str).to_numpy()
    pca_key = f"{key_added}_pca"
    if batch_center:
        z = batch_centred_pca(adata.X if mask is None else adata.X[:, mask], slides, n_comps, seed=seed)
        adata.obsm[pca_key] = z.astype(np.float32)
    else:
        sc.pp.pca(adata, n_comps=n_comps, mask_var=mask, svd_solver="arpack", random_state=seed, key_added=pca_key)
        z = np.asarray(adata.obsm[pca_key], dtype=np.float64)

    conn = slide_graph(adata, batch_key)
    techs = adata.obs[Key.obs.tech].astype(str).to_numpy() if Key.obs.tech in adata.obs else np.full(adata.n_obs, "")
    width = 2 * z.shape[1] if spatial_weight > 0 else z.shape[1]
    feats = np.zeros((adata.n_obs, width), dtype=np.float32)
    hops_used: dict[str, int] = {}
    for s in pd.unique(slides):
        idx = np.flatnonzero(slides == s)
        hops = int(n_hops) if n_hops is not None else DEFAULT_HOPS.get(techs[idx[0]], 2)
        hops_used[s] = hops if spatial_weight > 0 else 0
        adj = conn[idx][:, idx] if spatial_weight > 0 else None
        feats[idx] = neighbourhood_features(z[idx], adj, hops, spatial_weight)
    if integrate == "harmony":
        feats = harmonize(feats, slides, theta=theta, seed=seed)
    rep = f"X_{key_added}"
    adata.obsm[rep] = feats

    labels, info = cluster_features(feats, n_domains, method=method, resolution=resolution,
                                    n_neighbors=n_neighbors, seed=seed)
    adata.obs[key_added] = pd.Categorical(np.asarray(labels), categories=labels.categories)
    params: dict[str, Any] = {
        **info,
        "batch_key": batch_key,
        "integrate": integrate or "none",
        "batch_center": bool(batch_center),
        "spatial_weight": float(spatial_weight),
        "n_hops": hops_used,
        "n_pcs": int(n_comps),
        "n_domains_requested": int(n_domains) if n_domains is not None else 0,
        "seed": int(seed),
        "n_slides": len(hops_used),
    }
    if integrate == "harmony":
        params["theta"] = float(theta)
    adata.uns[key_added] = params
    logger.info("%d joint domains over %d slides (%s, %s)", info["n_domains"], len(hops_used), method, integrate)
    return adata if copy else None


def _majority(ct: pd.DataFrame) -> pd.Series:
    """For each truth label (rows), the predicted label holding most of its spots."""
    return ct.idxmax(axis=1)


def score_cohort(
    data: Any,
    *,
    key: str = "domain",
    truth: str = "annotation",
    batch_key: str = "slide",
    study_key: str = "study",
    exclude=EXCLUDED_LABELS,
    table_key: str = "table",
) -> pd.DataFrame:
    """Per-slide agreement of domains with annotations, and whether labels match across slides.

    Parameters
    ----------
    data
        A cohort after :func:`cohort_domains` (or any per-spot labels in ``obs[key]``).
    key
        ``obs`` column of the domains.
    truth
        ``obs`` column of the annotation.
    batch_key
        ``obs`` column of the slides.
    study_key
        ``obs`` column of the studies (labels are compared across the slides of a study).
    exclude
        Annotation labels (case-insensitive) not scored.
    table_key
        Table of a SpatialData.

    Returns
    -------
    One row per annotated slide, indexed by slide: ``study``, ``n_scored``, ``ari`` and
    ``nmi`` (sklearn, on the slide alone), ``label_match`` (fraction of the slide's
    annotated domains whose majority label is the one they get on the whole study: ``1``
    when a label means the same annotated domain on this slide as on the study's other
    slides) and ``study_ari`` (ARI over all spots of the study, labels taken as shared).
    Also stored in ``uns[f"{key}_cohort_scores"]``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> cohort = ssd.io.read_cohort("stores", species="human")
    >>> ssd.pp.normalize(cohort, n_top_genes=None)
    >>> ssd.tl.cohort_domains(cohort, n_domains=3)
    >>> scores = ssd.tl.score_cohort(cohort)
    >>> list(scores.index)  # the annotated slides
    ['GSE000001_GSM0000001']
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    adata = get_table(data, table_key)
    for col in (key, truth, batch_key):
        if col not in adata.obs:
            raise StimageError(f"obs has no column {col!r}")
    obs = adata.obs
    y = obs[truth].astype(object)
    skip = {str(e).lower() for e in exclude}
    ok = y.notna() & ~y.astype(str).str.strip().str.lower().isin(skip)
    df = pd.DataFrame({
        "slide": obs[batch_key].astype(str).to_numpy(),
        "study": obs[study_key].astype(str).to_numpy() if study_key in obs else "",
        "truth": y.astype(str).to_numpy(),
        "pred": obs[key].astype(str).to_numpy(),
    })[ok.to_numpy()]
    if df.empty:
        raise StimageError(f"no spot has a usable {truth!r} label")
    rows = []
    for study, sd in df.groupby("study", sort=False):
        study_map = _majority(pd.crosstab(sd["truth"], sd["pred"]))
        study_ari = float(adjusted_rand_score(sd["truth"], sd["pred"]))
        for slide, g in sd.groupby("slide", sort=False):
            slide_map = _majority(pd.crosstab(g["truth"], g["pred"]))
            rows.append({
                "slide": slide,
                "study": study,
                "n_scored": len(g),
                "ari": float(adjusted_rand_score(g["truth"], g["pred"])),
                "nmi": float(normalized_mutual_info_score(g["truth"], g["pred"])),
                "label_match": float((slide_map == study_map.reindex(slide_map.index)).mean()),
                "study_ari": study_ari,
            })
    out = pd.DataFrame(rows).set_index("slide")
    adata.uns[f"{key}_cohort_scores"] = {c: out[c].tolist() for c in out.columns} | {"slide": out.index.tolist()}
    return out
