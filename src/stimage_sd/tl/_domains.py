"""Spatial domains: expression augmented with its spatial neighbourhood, then clustered.

Method (a BANKSY-style neighbourhood augmentation; Singhal et al., "BANKSY unifies cell
typing and tissue domain segmentation for scalable spatial omics data analysis",
*Nature Genetics* 56, 431–441, 2024):

1. ``Z``: PCA of the normalised expression of highly variable genes
   (``obsm["{key_added}_pca"]``).
2. ``M``: the neighbourhood mean of ``Z``, ``M = P^h Z`` with ``P`` the row-normalised
   spatial graph (:func:`stimage_sd.tl.spatial_graph`) and ``h`` hops (a random-walk
   kernel over roughly ``h`` rings of spots).
3. Features ``[sqrt(1 - λ) Z / ||Z||, sqrt(λ) M / ||M||]``, each block scaled to a total
   variance of 1 first (``||.||``: square root of the block's total variance),
   so that ``λ`` (``spatial_weight``) is exactly the neighbourhood's share of the feature
   variance, as with BANKSY's z-scored blocks. Without this scaling averaging shrinks the
   neighbourhood block (to about a third of the variance at ``λ = 0.8``) and ``λ`` does
   not mean what it says. ``λ = 0`` is plain expression clustering.
4. Clustering: Leiden (Traag et al., *Sci Rep* 2019; igraph implementation) on the kNN
   graph of the features, with a bisection on the resolution when a number of domains is
   requested (as BANKSY does), or KMeans / a tied Gaussian mixture with exactly
   ``n_domains`` components.

The defaults (``λ = 0.8``; when a number of domains is given KMeans, or a tied Gaussian
mixture on VisiumHD bins, Leiden otherwise; 30 PCs; 2 hops on ST/Visium and 5 on VisiumHD
bins) were chosen with ``benchmarks/bench_domains.py`` (weak markers, thin folded layers,
blobs of varied size, sparse ST arrays, HD bins; 6 seeds; results in
``benchmarks/RESULTS.md``): on those layouts the mean ARI is at or above the smoothing
baseline (PCs averaged over the spatial neighbours twice, then KMeans), far above
non-spatial Leiden, at or above banksy-py, and at or above CellCharter or within 0.01 of
it (VisiumHD bins).

Every random step is seeded, so the same input and seed give the same domains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import TABLE_KEY
from .._docs import dedent
from .._keys import Key
from .._logging import logger
from ..errors import StimageError
from ..pp._utils import slide_info, table_to_modify

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["DEFAULT_CLUSTERING", "DEFAULT_HOPS", "DEFAULT_SPATIAL_WEIGHT", "cluster_features", "domains", "neighbourhood_features"]

#: Default ``λ``: share of the feature variance given to the neighbourhood block
#: (chosen with ``benchmarks/bench_domains.py``).
DEFAULT_SPATIAL_WEIGHT = 0.8
#: Default hops of neighbourhood averaging per technology.
DEFAULT_HOPS = {"ST": 2, "Visium": 2, "VisiumHD": 5}
#: Default clustering per technology when a number of domains is given (``method="auto"``):
#: KMeans, except a tied Gaussian mixture on VisiumHD bins (``bench_domains.py``: +0.006
#: ARI on every seed of ``hd_bins``, within 0.004 of CellCharter; on the smaller ST and
#: Visium slides the mixture sometimes merges two domains, which KMeans does not).
DEFAULT_CLUSTERING = {"ST": "kmeans", "Visium": "kmeans", "VisiumHD": "gmm"}
_MAX_BISECTIONS = 30
#: Above this many spots the feature kNN graph is approximate (pynndescent).
_EXACT_KNN_MAX = 30_000


def _row_normalised(adj) -> sparse.csr_matrix:
    adj = sparse.csr_matrix(adj, dtype=np.float64)
    adj = adj - sparse.diags(adj.diagonal())  # neighbours only
    adj.eliminate_zeros()
    adj = ((adj + adj.T) > 0).astype(np.float64)  # symmetric, unweighted
    deg = np.asarray(adj.sum(axis=1)).ravel()
    lonely = deg == 0
    if lonely.any():  # a spot without neighbours is its own neighbourhood
        adj = adj + sparse.diags(lonely.astype(np.float64))
        deg = np.where(lonely, 1.0, deg)
    return sparse.csr_matrix(sparse.diags(1.0 / deg) @ adj)


def neighbourhood_features(z: np.ndarray, adjacency, n_hops: int, spatial_weight: float) -> np.ndarray:
    """``[sqrt(1 - λ) Z / ||Z||, sqrt(λ) M / ||M||]``: own and neighbourhood features, scaled.

    ``M = P^h Z`` is the neighbourhood mean of the features ``Z``. Averaging shrinks
    variance (noise most), so each block is first divided by the square root of its total
    variance (the sum of its column variances); the weights
    then make ``λ`` exactly the neighbourhood block's share of the total feature
    variance, as BANKSY's z-scored blocks do (Singhal et al. 2024). The columns inside a
    block keep their relative variances, so leading principal components keep their
    weight.

    Parameters
    ----------
    z
        ``(n, d)`` per-spot features (PCs).
    adjacency
        ``(n, n)`` spatial graph (any weights; symmetrised, diagonal ignored).
    n_hops
        Averaging steps ``h``.
    spatial_weight
        ``λ`` in ``[0, 1]``: share of the feature variance carried by the neighbourhood
        block (``0``: the own block alone is returned).

    Returns
    -------
    ``(n, 2 d)`` float32 features (``(n, d)`` when ``λ = 0`` or ``h = 0``) with total
    variance 1, of which the last ``d`` columns carry ``λ``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from stimage_sd.tl._domains import neighbourhood_features
    >>> z = np.random.default_rng(0).normal(size=(100, 5))
    >>> ring = sparse.diags([1.0, 1.0], [1, -1], shape=(100, 100))
    >>> f = neighbourhood_features(z, ring, 2, 0.8)
    >>> round(float(f[:, 5:].var(axis=0).sum() / f.var(axis=0).sum()), 3)
    0.8
    """
    if not 0.0 <= spatial_weight <= 1.0:
        raise ValueError(f"spatial_weight must be in [0, 1], got {spatial_weight}")
    z = np.asarray(z, dtype=np.float64)
    z = _unit_block(z)
    if spatial_weight == 0 or n_hops <= 0:
        return z.astype(np.float32)
    P = _row_normalised(adjacency)
    m = z
    for _ in range(int(n_hops)):
        m = P @ m
    m = _unit_block(m)
    return np.hstack([np.sqrt(1.0 - spatial_weight) * z, np.sqrt(spatial_weight) * m]).astype(np.float32)


def _unit_block(x: np.ndarray) -> np.ndarray:
    """Scale a block to a total variance (sum of column variances) of 1; 0 stays 0.

    Not centred: clustering is translation invariant, and callers that stack several
    slides' features (:func:`stimage_sd.tl.cohort_domains`) keep their offsets.
    """
    total = float(x.var(axis=0).sum())
    return x / np.sqrt(total) if total > 0 else x


def _relabel_by_size(labels: np.ndarray) -> pd.Categorical:
    """Name clusters ``"0"``, ``"1"``, ... by decreasing size (ties: first appearance)."""
    uniq, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = {uniq[j]: str(i) for i, j in enumerate(order)}
    cats = [str(i) for i in range(len(uniq))]
    return pd.Categorical([mapping[v] for v in labels], categories=cats)


def _knn_graph(feats: np.ndarray, k: int, seed: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Symmetric (union) unweighted kNN graph of the features, and its distances.

    Exact (scikit-learn) up to :data:`_EXACT_KNN_MAX` spots; beyond, approximate with
    pynndescent (single-threaded and seeded, hence deterministic).
    """
    n = feats.shape[0]
    if n <= _EXACT_KNN_MAX:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k).fit(feats)
        dist, idx = nn.kneighbors()
    else:
        from pynndescent import NNDescent

        idx, dist = NNDescent(feats, n_neighbors=k + 1, random_state=seed, n_jobs=1).neighbor_graph
        idx, dist = idx[:, 1:], dist[:, 1:]  # drop each spot itself
    rows = np.repeat(np.arange(n), idx.shape[1])
    keep = idx.ravel() >= 0
    dist_m = sparse.csr_matrix((dist.ravel()[keep] + 1e-12, (rows[keep], idx.ravel()[keep])), shape=(n, n))
    dist_m = dist_m.maximum(dist_m.T).tocsr()
    conn = dist_m.copy()
    conn.data[:] = 1.0
    return conn.astype(np.float32), dist_m.astype(np.float32)


def _leiden(adata, resolution: float, seed: int, neighbors_key: str) -> np.ndarray:
    import scanpy as sc

    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        neighbors_key=neighbors_key,
        key_added="_stimage_leiden",
        random_state=seed,
    )
    labels = adata.obs.pop("_stimage_leiden").to_numpy()
    adata.uns.pop("_stimage_leiden", None)
    return labels


def _leiden_to_k(adata, n_domains: int, seed: int, neighbors_key: str) -> tuple[np.ndarray, float]:
    """Bisection on the Leiden resolution until exactly ``n_domains`` clusters (or the closest)."""
    lo, hi = 0.0, 1.0
    labels = _leiden(adata, hi, seed, neighbors_key)
    best = (abs(len(np.unique(labels)) - n_domains), hi, labels)
    while len(np.unique(labels)) < n_domains and hi < 64:
        lo, hi = hi, hi * 2
        labels = _leiden(adata, hi, seed, neighbors_key)
        best = min(best, (abs(len(np.unique(labels)) - n_domains), hi, labels), key=lambda b: (b[0], b[1]))
    for _ in range(_MAX_BISECTIONS):
        if best[0] == 0:
            break
        mid = (lo + hi) / 2
        labels = _leiden(adata, mid, seed, neighbors_key)
        k = len(np.unique(labels))
        best = min(best, (abs(k - n_domains), mid, labels), key=lambda b: (b[0], b[1]))
        if k < n_domains:
            lo = mid
        else:
            hi = mid
    if best[0]:
        logger.warning("Leiden: %d domains requested, closest found %d", n_domains, n_domains + best[0])
    return best[2], best[1]


@dedent
def domains(
    data: AnnData | SpatialData,
    n_domains: int | None = None,
    *,
    resolution: float = 0.5,
    spatial_weight: float = DEFAULT_SPATIAL_WEIGHT,
    n_hops: int | None = None,
    n_pcs: int = 30,
    method: Literal["auto", "leiden", "kmeans", "gmm"] = "auto",
    n_neighbors: int = 15,
    seed: int = 0,
    key_added: str = Key.obs.domain,
    graph_key: str = Key.obsp.spatial,
    table_key: str = TABLE_KEY,
    copy: bool = False,
    batch_key: str | None = None,
) -> AnnData | None:
    """Find spatial domains from expression and the spatial graph.

    See the module documentation for the method. Needs normalised expression
    (:func:`stimage_sd.pp.normalize`); builds the spatial graph
    (:func:`stimage_sd.tl.spatial_graph`) when it is missing.

    Parameters
    ----------
    %(data)s
    n_domains
        Number of domains wanted. ``None``: Leiden at ``resolution``.
    resolution
        Leiden resolution when ``n_domains`` is ``None``.
    spatial_weight
        ``λ`` in ``[0, 1]``: share of the feature variance given to the neighbourhood
        (the blocks are scaled so that it is exactly that share); ``0`` clusters
        expression alone (a non-spatial baseline), ``1`` the neighbourhood alone.
        Default 0.8 (see the module documentation for how it was chosen).
    n_hops
        Neighbourhood averaging steps over the spatial graph; default
        :data:`DEFAULT_HOPS` for the slide's technology.
    n_pcs
        Principal components of the highly variable genes.
    method
        ``"auto"`` (default): when ``n_domains`` is given, ``"kmeans"``, or ``"gmm"`` on
        VisiumHD bins (:data:`DEFAULT_CLUSTERING`); else ``"leiden"`` at ``resolution``
        (with ``batch_key``: the default of :func:`stimage_sd.tl.cohort_domains`). ``"leiden"`` (with a resolution search when
        ``n_domains`` is given), ``"kmeans"`` or ``"gmm"`` (a Gaussian mixture with a
        covariance matrix shared by the components, ``covariance_type="tied"``); the
        last two need ``n_domains``.
    n_neighbors
        Neighbours of the expression kNN graph used by Leiden.
    seed
        Random seed (PCA, kNN graph, Leiden, KMeans/GMM).
    key_added
        ``obs`` column of the result; every other key written derives from it.
    %(graph_key)s
    %(table_key)s
    %(copy)s
    batch_key
        For a cohort of slides (:func:`stimage_sd.io.read_cohort`): the ``obs`` column of
        the slides; the domains are then found jointly, with the same label for the same
        domain on every slide (:func:`stimage_sd.tl.cohort_domains`, Harmony integration).

    Returns
    -------
    %(returns_copy)s

    Notes
    -----
    Writes ``obs[key_added]`` (categorical ``"0"``, ``"1"``, ... by decreasing size),
    the PCA as scanpy's :func:`scanpy.pp.pca` with ``key_added="{key_added}_pca"``
    (``obsm``, ``varm`` and ``uns["{key_added}_pca"]``; scanpy's own ``X_pca``, ``PCs``
    and ``uns["pca"]`` are never touched), ``obsm["X_{key_added}"]`` (the clustered
    features), for Leiden ``obsp["{key_added}_knn_connectivities"]``,
    ``obsp["{key_added}_knn_distances"]`` and ``uns["{key_added}_knn"]``, and
    ``uns["{key_added}"]`` (parameters: method, spatial_weight, n_hops, n_pcs,
    feature_scaling, resolution used, n_domains found, seed).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.pp.normalize(sdata)
    >>> ssd.tl.domains(sdata, n_domains=3)
    >>> ssd.tl.domains(sdata, spatial_weight=0.0, key_added="domain_expr")  # non-spatial baseline
    """
    if batch_key is not None:  # a cohort: joint domains across slides
        from ._cohort import cohort_domains

        # method="auto" leaves the choice to cohort_domains (its own default, benchmarked
        # for cohorts separately)
        extra = {} if method == "auto" else {"method": method}
        return cohort_domains(
            data, n_domains, batch_key=batch_key, resolution=resolution, spatial_weight=spatial_weight,
            n_hops=n_hops, n_pcs=n_pcs, n_neighbors=n_neighbors, seed=seed,
            key_added=key_added, table_key=table_key, copy=copy, **extra,
        )
    import scanpy as sc

    adata = table_to_modify(data, table_key, copy)
    if Key.uns.normalize not in adata.uns and Key.uns.log1p not in adata.uns:
        raise StimageError("tl.domains needs normalised expression: run stimage_sd.pp.normalize first")
    if "X_pca" in (Key.obsm.domain_pca(key_added), Key.obsm.domain_features(key_added)):
        raise ValueError(f"key_added={key_added!r} would overwrite scanpy's obsm['X_pca']; choose another key")
    tech = slide_info(adata).get("tech")
    if method == "auto":
        method = DEFAULT_CLUSTERING.get(tech, "kmeans") if n_domains is not None else "leiden"
    if method in ("kmeans", "gmm") and n_domains is None:
        raise ValueError(f"method={method!r} needs n_domains")
    conn_key = Key.obsp.spatial_conn(graph_key)
    if spatial_weight > 0 and conn_key not in adata.obsp:
        from ._graph import spatial_graph

        spatial_graph(adata, key_added=graph_key)
    hops = int(n_hops) if n_hops is not None else DEFAULT_HOPS.get(tech, 2)

    hv = Key.var.highly_variable
    mask = adata.var[hv].to_numpy(dtype=bool) if hv in adata.var else None
    n_feat = int(mask.sum()) if mask is not None else adata.n_vars
    n_comps = max(2, min(n_pcs, n_feat - 1, adata.n_obs - 1))
    pca_key = Key.obsm.domain_pca(key_added)
    sc.pp.pca(adata, n_comps=n_comps, mask_var=mask, svd_solver="arpack", random_state=seed, key_added=pca_key)
    z = adata.obsm[pca_key]
    adj = adata.obsp[conn_key] if spatial_weight > 0 else None
    feats = neighbourhood_features(z, adj, hops, spatial_weight)
    rep = Key.obsm.domain_features(key_added)
    adata.obsm[rep] = feats

    used_resolution: float | None = None
    if method == "leiden":
        nkey = Key.uns.domain_knn(key_added)
        conn, dist = _knn_graph(feats, min(n_neighbors, adata.n_obs - 1), seed)
        adata.obsp[Key.obsp.domain_knn_conn(key_added)] = conn
        adata.obsp[Key.obsp.domain_knn_dist(key_added)] = dist
        adata.uns[nkey] = {
            "connectivities_key": Key.obsp.domain_knn_conn(key_added),
            "distances_key": Key.obsp.domain_knn_dist(key_added),
            "params": {"n_neighbors": int(min(n_neighbors, adata.n_obs - 1)), "method": "knn-union", "use_rep": rep},
        }
        if n_domains is None:
            labels = _leiden(adata, resolution, seed, nkey)
            used_resolution = resolution
        else:
            labels, used_resolution = _leiden_to_k(adata, int(n_domains), seed, nkey)
    else:
        labels = _cluster_points(feats, method, n_domains, seed)
    adata.obs[key_added] = _relabel_by_size(np.asarray(labels))
    found = int(adata.obs[key_added].cat.categories.size)
    params: dict[str, Any] = {
        "method": method,
        "spatial_weight": float(spatial_weight),
        "n_hops": hops if spatial_weight > 0 else 0,
        "n_pcs": int(n_comps),
        "feature_scaling": "block_variance",
        "n_domains_requested": int(n_domains) if n_domains is not None else 0,
        "n_domains": found,
        "seed": int(seed),
        "graph_key": graph_key,
    }
    if used_resolution is not None:
        params["resolution"] = float(used_resolution)
    adata.uns[Key.uns.domain(key_added)] = params
    logger.info("%d spatial domains (%s, λ=%.2f, %d hops)", found, method, spatial_weight, params["n_hops"])
    return adata if copy else None


def cluster_features(
    feats: np.ndarray,
    n_domains: int | None = None,
    *,
    method: Literal["auto", "leiden", "kmeans", "gmm"] = "leiden",
    resolution: float = 0.5,
    n_neighbors: int = 15,
    seed: int = 0,
) -> tuple[pd.Categorical, dict[str, Any]]:
    """Cluster precomputed features exactly as :func:`domains` clusters its own.

    The stable entry point for callers that build the features themselves (the cohort
    domains of :func:`stimage_sd.tl.cohort_domains`).

    Parameters
    ----------
    feats
        ``(n, d)`` features.
    n_domains, method, resolution, n_neighbors, seed
        As in :func:`domains`.

    Returns
    -------
    ``(labels, info)``: categorical labels ``"0"``, ``"1"``, ... by decreasing size, and
    ``{"method", "n_domains", "resolution"?}``.
    """
    from anndata import AnnData

    feats = np.asarray(feats, dtype=np.float32)
    n = feats.shape[0]
    if method == "auto":
        method = "kmeans" if n_domains is not None else "leiden"
    if method in ("kmeans", "gmm") and n_domains is None:
        raise ValueError(f"method={method!r} needs n_domains")
    info: dict[str, Any] = {"method": method}
    if method == "leiden":
        k = min(n_neighbors, n - 1)
        conn, dist = _knn_graph(feats, k, seed)
        tmp = AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)))
        # a scratch table holding only the feature graph, named as tl.domains names it
        ckey, dkey = Key.obsp.domain_knn_conn("knn"), Key.obsp.domain_knn_dist("knn")
        tmp.obsp[ckey], tmp.obsp[dkey] = conn, dist
        nkey = Key.uns.domain_knn("knn")
        tmp.uns[nkey] = {"connectivities_key": ckey, "distances_key": dkey, "params": {"n_neighbors": int(k), "method": "knn-union"}}
        if n_domains is None:
            labels, info["resolution"] = _leiden(tmp, resolution, seed, nkey), float(resolution)
        else:
            labels, used = _leiden_to_k(tmp, int(n_domains), seed, nkey)
            info["resolution"] = float(used)
    else:
        labels = _cluster_points(feats, method, n_domains, seed)
    cats = _relabel_by_size(np.asarray(labels))
    info["n_domains"] = int(cats.categories.size)
    return cats, info


def _cluster_points(feats: np.ndarray, method: str, n_domains: int | None, seed: int) -> np.ndarray:
    """KMeans or a tied-covariance Gaussian mixture on the feature rows (Leiden is graph-based)."""
    if method not in ("kmeans", "gmm"):
        raise ValueError(f"method must be 'leiden', 'kmeans' or 'gmm', got {method!r}")
    if n_domains is None:
        raise ValueError(f"method={method!r} needs n_domains")
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=int(n_domains), n_init=10, random_state=seed).fit_predict(feats)
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=int(n_domains), covariance_type="tied", n_init=3, random_state=seed).fit_predict(feats)
