"""tl against outside oracles (issue 17, section 3): squidpy, scipy, numpy.

The spatial graph and Moran's I are compared with squidpy called directly, with scipy's
KD-tree and with Moran's formula, on generated slides of the three technologies and on the
real 10x Visium sample (fixtures ``oracle_table``/``real_visium`` in conftest.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.spatial import cKDTree

import stimage_sd as ssd

pytestmark = pytest.mark.slow

SOURCES = ("ST", "Visium", "VisiumHD", "real")
#: Neighbours of the technology's lattice.
GRID_NEIGHS = {"ST": 4, "Visium": 6, "VisiumHD": 4}


# --- spatial graph ----------------------------------------------------------------------------


def _ring_graph(xy: np.ndarray, radius: float) -> sparse.csr_matrix:
    """All pairs closer than ``radius`` (scipy's KD-tree), as a symmetric 0/1 matrix."""
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    n = len(xy)
    m = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return ((m + m.T) > 0).astype(np.float64).tocsr()


def _same_graph(a, b) -> None:
    a, b = sparse.csr_matrix(a), sparse.csr_matrix(b)
    assert a.shape == b.shape and ((a > 0) != (b > 0)).nnz == 0


@pytest.mark.parametrize("source", ["ST", "Visium", "VisiumHD", "real_lattice", "real"])
def test_spatial_graph_matches_squidpy_and_a_kdtree(source, oracle_table, request):
    import anndata as ad
    import squidpy as sq

    if source == "real_lattice":  # all 4,235 in-tissue spots of the real capture area
        _, pos = request.getfixturevalue("real_visium")
        pos = pos[pos["in_tissue"] == 1]
        table = ad.AnnData(sparse.csr_matrix((len(pos), 1), dtype=np.float32), obs=pd.DataFrame(index=pos.index))
        table.obsm["spatial"] = pos[["x", "y"]].to_numpy(dtype=np.float64)
        table.uns["stimage"] = {"tech": "Visium"}
    else:
        table = oracle_table(source)
    ours = ssd.tl.spatial_graph(table, copy=True)
    info = ours.uns["spatial_neighbors"]["stimage"]
    ref = table.copy()
    if source == "real":  # 100 scattered spots of a hex lattice (a sparse one: a 6-NN graph)
        assert info["method"] == "knn" and info["lattice"] == "hex"
        sq.gr.spatial_neighbors_knn(ref, n_neighs=6)
    else:
        k = GRID_NEIGHS.get(source, 6)
        assert info["method"] == "grid" and info["n_neighs"] == k
        sq.gr.spatial_neighbors_grid(ref, n_neighs=k)
        # a lattice's grid neighbours are the spots within 1.2 pitches
        _same_graph(ours.obsp["spatial_connectivities"], _ring_graph(table.obsm["spatial"], 1.2 * info["pitch_px"]))
    _same_graph(ours.obsp["spatial_connectivities"], ref.obsp["spatial_connectivities"])
    np.testing.assert_array_equal(ours.obsp["spatial_distances"].toarray(), ref.obsp["spatial_distances"].toarray())
    assert ours.uns["spatial_neighbors"]["params"] == ref.uns["spatial_neighbors"]["params"]


@pytest.mark.parametrize("method", ["knn", "radius", "delaunay"])
def test_spatial_graph_forced_builders_match_squidpy(method, analysis_tables):
    import squidpy as sq

    table = analysis_tables["Visium"].copy()
    ours = ssd.tl.spatial_graph(table, method=method, n_neighs=8 if method == "knn" else None, copy=True)
    ref = table.copy()
    if method == "knn":
        sq.gr.spatial_neighbors_knn(ref, n_neighs=8)
    elif method == "radius":
        sq.gr.spatial_neighbors_radius(ref, radius=1.5 * ours.uns["spatial_neighbors"]["stimage"]["pitch_px"])
    else:
        sq.gr.spatial_neighbors_delaunay(ref)
    _same_graph(ours.obsp["spatial_connectivities"], ref.obsp["spatial_connectivities"])
    assert ours.uns["spatial_neighbors"]["stimage"]["method"] == method


# --- spatially variable genes ------------------------------------------------------------------


def _moran_numpy(x: np.ndarray, w: sparse.csr_matrix) -> np.ndarray:
    """Moran's I of each column of ``x``, row-standardised weights (Moran 1950; PySAL's ``I``)."""
    deg = np.asarray(w.sum(axis=1)).ravel()
    w = sparse.diags(1.0 / np.where(deg > 0, deg, 1.0)) @ w
    z = x - x.mean(axis=0)
    n, s0 = x.shape[0], w.sum()
    return (n / s0) * np.einsum("ij,ij->j", z, w @ z) / np.einsum("ij,ij->j", z, z)


@pytest.mark.parametrize("source", SOURCES)
def test_svg_matches_squidpy_spatial_autocorr(source, oracle_table):
    import squidpy as sq

    table = oracle_table(source)
    ssd.pp.normalize(table, n_top_genes=None)
    ssd.tl.spatial_graph(table)
    ours = ssd.tl.svg(table, genes="all", copy=True)
    genes = list(ours.uns["moranI"].index)
    assert len(genes) > 5
    ref = sq.gr.spatial_autocorr(table, genes=genes, mode="moran", copy=True, n_jobs=1, show_progress_bar=False)
    ref = ref.reindex(genes)
    np.testing.assert_allclose(ours.uns["moranI"]["I"], ref["I"], rtol=1e-10)
    np.testing.assert_allclose(ours.var.loc[genes, "moranI"], ref["I"], rtol=1e-10)
    np.testing.assert_allclose(ours.var.loc[genes, "moranI_pval"], ref["pval_norm"], rtol=1e-8)
    np.testing.assert_allclose(ours.var.loc[genes, "moranI_fdr"], ref["pval_norm_fdr_bh"], rtol=1e-8)
    # ranks follow I
    assert (np.diff(ours.var.loc[genes, "moranI"].to_numpy()) <= 0).all()
    assert (ours.var.loc[genes, "moranI_rank"].to_numpy() == np.arange(1, len(genes) + 1)).all()
    # Moran's formula in numpy on the same graph
    x = table[:, genes].X
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    np.testing.assert_allclose(
        ours.uns["moranI"]["I"].to_numpy(), _moran_numpy(x.astype(np.float64), table.obsp["spatial_connectivities"]),
        rtol=1e-6, atol=1e-9,
    )


# --- our own deprecations are test errors -------------------------------------------------------


def test_deprecated_third_party_call_from_stimage_sd_is_an_error(analysis_tables):
    """pyproject's filterwarnings turn a FutureWarning attributed to a stimage_sd module into an error.

    A function compiled as a module of the package (``__name__`` ``stimage_sd._probe``) calls
    squidpy's deprecated ``spatial_neighbors`` (squidpy warns with ``stacklevel=2``, i.e. at
    its caller), as ``tl.spatial_graph`` once did.
    """
    import squidpy as sq

    namespace = {"__name__": "stimage_sd._probe", "sq": sq}
    exec(compile("def build(a):\n    sq.gr.spatial_neighbors(a, coord_type='grid', n_neighs=6)\n",
                 "src/stimage_sd/_probe.py", "exec"), namespace)
    with pytest.raises(FutureWarning, match="spatial_neighbors"):
        namespace["build"](analysis_tables["Visium"].copy())
    # the same call from a test module only warns
    with pytest.warns(FutureWarning, match="spatial_neighbors"):
        sq.gr.spatial_neighbors(analysis_tables["Visium"].copy(), coord_type="grid", n_neighs=6)
