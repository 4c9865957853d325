"""Per-slide analysis (issue 6): QC, normalisation, spatial graph, domains, SVGs, figures.

Slides come from the generator (``analysis_slides`` in conftest.py), one per technology,
with known domains and marker genes; they are converted with the real converter and
read back from their Zarr stores.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import stimage_sd as ssd
from stimage_sd.errors import IncompleteStoreError, StimageError
from stimage_sd.io import read
from stimage_sd.io._transaction import (
    PENDING_KEY,
    TMP_TAG,
    TRASH_TAG,
    _update_root_attrs,
    _write_table_store,
    temp_sibling,
)

TECHS = ("Visium", "ST", "VisiumHD")


@pytest.fixture(scope="module")
def analysed(analysis_slides):
    """tech -> (truth, sdata after run_pipeline, summary); plus a non-spatial Leiden run."""
    out = {}
    for tech, (truth, store) in analysis_slides.items():
        sdata = read(store)
        summary = ssd.tl.run_pipeline(sdata, n_domains=truth.spec.n_domains, seed=0)
        ssd.tl.domains(sdata, truth.spec.n_domains, spatial_weight=0.0, key_added="domain_expr", seed=0)
        out[tech] = (truth, sdata, summary)
    return out


def _truth(truth, adata) -> np.ndarray:
    t = truth.domains.reindex(adata.obs_names)
    assert t.notna().all()
    return t.to_numpy()


def _png_variance(path) -> float:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0
    return float(np.asarray(Image.open(path).convert("L"), dtype=float).std())


# --- domains and spatially variable genes ----------------------------------------------


@pytest.mark.parametrize("tech", TECHS)
def test_domains_recover_generated_domains(analysed, tech):
    truth, sdata, summary = analysed[tech]
    adata = sdata["table"]
    y = _truth(truth, adata)
    ari_spatial = adjusted_rand_score(y, adata.obs["domain"])
    ari_expr = adjusted_rand_score(y, adata.obs["domain_expr"])
    assert adata.obs["domain"].cat.categories.size == truth.spec.n_domains
    assert ari_spatial >= 0.8, (tech, ari_spatial)
    # the same Leiden clustering on expression alone does worse
    assert ari_expr < ari_spatial - 0.05, (tech, ari_expr, ari_spatial)
    params = adata.uns["domain"]
    # "auto" with a number of domains: KMeans, a tied Gaussian mixture on VisiumHD bins
    assert params["method"] == ("gmm" if tech == "VisiumHD" else "kmeans")
    assert params["spatial_weight"] == 0.8 and params["n_hops"] > 0
    assert adata.uns["domain_expr"]["n_hops"] == 0
    assert adata.obsm["X_domain"].shape == (adata.n_obs, 2 * params["n_pcs"])
    assert summary["n_domains"] == truth.spec.n_domains


@pytest.mark.parametrize("tech", TECHS)
def test_svg_ranks_marker_genes_on_top(analysed, tech):
    truth, sdata, summary = analysed[tech]
    adata = sdata["table"]
    top = ssd.tl.top_svg(sdata, 20)
    markers = {g for genes in truth.markers.values() for g in genes}
    assert len(top) == 20
    assert len(set(top) & markers) >= 15, (tech, top)
    for domain, genes in truth.markers.items():
        assert set(genes) & set(top), (tech, domain, genes, top)
    # stored where scverse tools look, consistent with each other
    assert {"I", "pval_norm"} <= set(adata.uns["moranI"].columns)
    assert adata.var.loc[top[0], "moranI_rank"] == 1
    assert adata.var.loc[top[0], "moranI"] == adata.var["moranI"].max()
    assert summary["top_svg"] == top[:10]
    assert adata.uns["moranI_params"]["n_tested"] == adata.var["moranI"].notna().sum()


def test_domains_are_deterministic_and_other_clusterers(analysed):
    truth, sdata, _ = analysed["Visium"]
    adata = sdata["table"].copy()
    k = truth.spec.n_domains
    ssd.tl.domains(adata, k, seed=0, key_added="again")
    assert (adata.obs["again"] == sdata["table"].obs["domain"]).all()
    ssd.tl.domains(adata, k, method="kmeans", key_added="km")
    assert adjusted_rand_score(_truth(truth, adata), adata.obs["km"]) >= 0.8
    ssd.tl.domains(adata, resolution=0.3, key_added="res")
    assert adata.uns["res"]["resolution"] == 0.3 and adata.uns["res"]["n_domains_requested"] == 0
    with pytest.raises(ValueError, match="n_domains"):
        ssd.tl.domains(adata, method="gmm")


def test_score_domains_against_annotation(analysed, caplog):
    _, sdata, summary = analysed["Visium"]
    adata = sdata["table"]
    labels = adata.obs["annotation"].astype(object)
    dropped = labels.isna() | labels.astype(str).str.lower().isin(["", "undetermined", "exclude"])
    assert dropped.sum() > 0  # the generator writes empty / undetermined / Exclude labels
    keep = ~dropped.to_numpy()
    scores = ssd.tl.score_domains(sdata)
    assert scores["n_scored"] == keep.sum() and scores["n_excluded"] == dropped.sum()
    y, p = labels[keep].astype(str), adata.obs["domain"][keep].astype(str)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y, p))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y, p))
    assert scores["ari"] >= 0.8 and summary["ari"] == pytest.approx(scores["ari"])
    assert adata.uns["domain_scores"]["ari"] == scores["ari"]
    # a slide without annotation: a message, not an error
    _, hd, hd_summary = analysed["VisiumHD"]
    assert "annotation" not in hd["table"].obs
    with caplog.at_level(logging.INFO, logger="stimage_sd"):
        assert ssd.tl.score_domains(hd) is None
    assert "no annotation" in caplog.text
    assert hd_summary["ari"] is None


# --- QC and normalisation ---------------------------------------------------------------


def test_qc_metrics_species_aware(analysed):
    for tech, n_mt in (("Visium", 13), ("VisiumHD", 13)):
        _, sdata, _ = analysed[tech]
        adata = sdata["table"]
        for col in (
            "total_counts", "n_genes_by_counts", "log1p_total_counts", "pct_counts_mt", "pct_counts_ribo",
            "qc_low_counts", "qc_low_genes", "qc_high_mt", "qc_outlier",
        ):
            assert col in adata.obs, col
        names = adata.var["gene_name"].astype(str)
        prefix = "MT-" if tech == "Visium" else "mt-"  # human vs mouse symbols
        assert adata.var["mt"].sum() == n_mt == names.str.startswith(prefix).sum()
        ribo = names[adata.var["ribo"].to_numpy()]
        assert len(ribo) >= 10 and ribo.str.upper().str.match(r"^RP[SL]").all()
        assert adata.obs["pct_counts_mt"].gt(0).mean() > 0.5
        counts = adata.layers["counts"]
        np.testing.assert_allclose(adata.obs["total_counts"], np.asarray(counts.sum(axis=1)).ravel())
        qc = adata.uns["stimage_qc"]
        assert set(qc["thresholds"]) <= {"min_counts", "min_genes", "max_pct_mt"}
        assert qc["threshold_source"]["min_counts"] == "mad"
        flags = adata.obs[["qc_low_counts", "qc_low_genes", "qc_high_mt"]].any(axis=1)
        assert (flags == adata.obs["qc_outlier"]).all()
        assert qc["n_flagged"] == adata.obs["qc_outlier"].sum() < 0.2 * adata.n_obs
        if "min_counts" in qc["thresholds"]:
            low = adata.obs["total_counts"] < qc["thresholds"]["min_counts"]
            assert (low <= adata.obs["qc_low_counts"]).all()


def test_qc_fixed_thresholds_and_filter(analysis_slides):
    _, store = analysis_slides["ST"]
    sdata = read(store)
    adata = sdata["table"]
    median = float(np.median(np.asarray(adata.X.sum(axis=1)).ravel()))
    ssd.pp.qc(sdata, min_counts=median, max_pct_mt=100.0)
    low = adata.obs["total_counts"] < median
    assert (adata.obs["qc_low_counts"] == low).all()
    assert adata.uns["stimage_qc"]["threshold_source"]["min_counts"] == "fixed"
    n_before = sdata["table"].n_obs
    flagged = int(adata.obs["qc_outlier"].sum())
    assert flagged > 0
    kept = ssd.pp.filter_spots(sdata, copy=True)  # a copy: sdata keeps every spot
    assert sdata["table"].n_obs == n_before and kept.n_obs == n_before - flagged
    assert ssd.pp.filter_spots(sdata) is None
    assert sdata["table"].n_obs == n_before - flagged
    assert not sdata["table"].obs["qc_outlier"].any()
    assert (sdata["table"].obs_names == kept.obs_names).all()
    # an AnnData cannot be subset in place with AnnData's public API: copy=True
    table = read(store)["table"]
    ssd.pp.qc(table, min_genes=1e9)
    with pytest.raises(ValueError, match="copy=True"):
        ssd.pp.filter_spots(table)
    assert table.n_obs == n_before
    assert ssd.pp.filter_spots(table, copy=True).n_obs == 0


def test_normalize_keeps_counts_and_is_repeatable(analysed, analysis_slides):
    _, sdata, _ = analysed["Visium"]
    adata = sdata["table"]
    raw = read(analysis_slides["Visium"][1])["table"].X
    counts = adata.layers["counts"]
    assert sparse.issparse(counts) and counts.dtype == raw.dtype
    assert (counts != raw).nnz == 0
    # log1p of counts scaled to the median library size
    target = adata.uns["stimage_normalize"]["target_sum"]
    np.testing.assert_allclose(np.expm1(adata.X.toarray()).sum(axis=1), target, rtol=1e-4)
    assert 300 < adata.var["highly_variable"].sum() <= min(2000, adata.n_vars)
    assert adata.uns["stimage_normalize"]["hvg_flavor"] == "seurat_v3"
    again = adata.copy()
    ssd.pp.normalize(again)
    assert (again.X != adata.X).nnz == 0
    assert (again.var["highly_variable"] == adata.var["highly_variable"]).all()


def test_pearson_residuals_and_other_hvg_flavours(analysis_slides):
    _, store = analysis_slides["ST"]
    adata = read(store)["table"]
    raw = adata.X.copy()
    ssd.pp.normalize(adata, method="pearson", n_top_genes=300)
    assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.float32 and adata.X.shape == raw.shape
    assert (adata.layers["counts"] != raw).nnz == 0
    assert adata.var["highly_variable"].sum() == 300
    assert adata.uns["stimage_normalize"]["hvg_flavor"] == "pearson_residuals"
    ssd.pp.normalize(adata, hvg_flavor="seurat", n_top_genes=200)
    assert sparse.issparse(adata.X) and adata.var["highly_variable"].sum() == 200
    with pytest.raises(ValueError, match="method"):
        ssd.pp.normalize(adata, method="sctransform")


# --- spatial graph ----------------------------------------------------------------------


@pytest.mark.parametrize(("tech", "lattice", "k"), [("Visium", "hex", 6), ("ST", "square", 4), ("VisiumHD", "square", 4)])
def test_spatial_graph_is_technology_aware(analysed, tech, lattice, k):
    _, sdata, _ = analysed[tech]
    adata = sdata["table"]
    info = adata.uns["spatial_neighbors"]["stimage"]
    assert (info["method"], info["lattice"], info["n_neighs"]) == ("grid", lattice, k)
    degree = np.asarray((adata.obsp["spatial_connectivities"] > 0).sum(axis=1)).ravel()
    assert np.median(degree) == k and degree.max() == k
    assert adata.uns["spatial_neighbors"]["params"]["coord_type"] == "grid"


def test_spatial_graph_falls_back_on_irregular_layouts(analysis_slides):
    import anndata as ad

    _, store = analysis_slides["Visium"]
    adata = read(store)["table"]
    pitch = ssd.tl.detect_lattice(adata.obsm["spatial"])["pitch"]
    rng = np.random.default_rng(0)
    adata.obsm["spatial"] = adata.obsm["spatial"] + rng.normal(0, 0.25 * pitch, size=adata.obsm["spatial"].shape)
    ssd.tl.spatial_graph(adata)
    info = adata.uns["spatial_neighbors"]["stimage"]
    assert info["method"] == "knn" and info["lattice"] == "irregular"
    assert adata.uns["spatial_neighbors"]["params"]["coord_type"] == "generic"
    ssd.tl.spatial_graph(adata, method="radius")
    assert adata.uns["spatial_neighbors"]["stimage"]["method"] == "radius"
    # a staggered (hexagonal) ST layout gets 6 neighbours, whatever the technology says
    rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    xy = np.c_[(cols + 0.5 * (rows % 2)).ravel() * 100.0, rows.ravel() * 100.0 * np.sqrt(3) / 2]
    hexst = ad.AnnData(np.zeros((len(xy), 1), np.float32), obsm={"spatial": xy}, uns={"stimage": {"tech": "ST"}})
    ssd.tl.spatial_graph(hexst)
    assert hexst.uns["spatial_neighbors"]["stimage"]["n_neighs"] == 6


@pytest.mark.parametrize(("dropout", "method"), [(0.05, "grid"), (0.3, "knn")])
def test_spatial_graph_on_an_st_array_with_holes(dropout, method):
    """A square ST array missing 30 % of its spots is still a lattice, but not a filled one.

    On the grid graph a spot next to a hole would average over 2-3 neighbours (mean degree
    ~2.8 of 4); the k-NN graph reaches across the holes. A few holes (QC) keep the grid.
    """
    import anndata as ad
    import squidpy as sq

    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(33), np.arange(35), indexing="ij")
    xy = np.c_[cols.ravel() * 200.0, rows.ravel() * 200.0] + rng.normal(0, 3, size=(rows.size, 2))
    xy = xy[rng.random(len(xy)) >= dropout]
    lat = ssd.tl.detect_lattice(xy)
    assert lat["lattice"] == "square" and lat["regular_fraction"] > 0.95  # nearly every spot has a neighbour
    assert (lat["filled_fraction"] >= 0.8) == (method == "grid") and lat["dense"] == (method == "grid")
    st = ad.AnnData(np.zeros((len(xy), 1), np.float32), obsm={"spatial": xy}, uns={"stimage": {"tech": "ST"}})
    ssd.tl.spatial_graph(st)
    info = st.uns["spatial_neighbors"]["stimage"]
    assert (info["method"], info["n_neighs"]) == (method, 4)
    ref = st.copy()
    (sq.gr.spatial_neighbors_grid if method == "grid" else sq.gr.spatial_neighbors_knn)(ref, n_neighs=4)
    assert (st.obsp["spatial_connectivities"] != ref.obsp["spatial_connectivities"]).nnz == 0
    degree = np.asarray((st.obsp["spatial_connectivities"] > 0).sum(axis=1)).ravel()
    assert degree.min() >= (1 if method == "grid" else 4)


# --- figures and legacy AnnData -----------------------------------------------------------


@pytest.mark.slow
def test_pl_spatial_over_the_image_in_both_coordinate_systems(analysed, tmp_path):
    import matplotlib.pyplot as plt

    _, sdata, _ = analysed["Visium"]
    um = sdata["table"].uns["stimage"]["um_per_px"]
    out_px, out_um = tmp_path / "domains_px.png", tmp_path / "gene_um.png"
    ssd.pl.spatial(sdata, "domain", save=out_px)
    gene = ssd.tl.top_svg(sdata, 1)[0]
    ssd.pl.spatial(sdata, gene, coordinate_system="micron", save=out_um)
    assert _png_variance(out_px) > 10 and _png_variance(out_um) > 10
    # axes are in pixels or µm
    ax = ssd.pl.spatial(sdata, "total_counts", image=False)
    ax_um = ssd.pl.spatial(sdata, "total_counts", coordinate_system="micron", image=False)
    assert ax_um.get_xlim()[1] == pytest.approx(ax.get_xlim()[1] * um, rel=0.02)
    assert any(type(a).__name__ == "ScaleBar" for a in ax.artists)
    plt.close("all")
    with pytest.raises(KeyError):
        ssd.pl.spatial(sdata, "no_such_column")
    with pytest.raises(StimageError, match="coordinate system"):
        ssd.pl.spatial(sdata, "domain", coordinate_system="nope")


def test_pl_qc_and_hd_squares(analysed, tmp_path):
    _, sdata, _ = analysed["VisiumHD"]
    out = tmp_path / "qc.png"
    ssd.pl.qc(sdata, save=out)
    assert _png_variance(out) > 10
    out = tmp_path / "hd.png"
    ssd.pl.spatial(sdata, "domain", save=out)
    assert _png_variance(out) > 10


def test_legacy_anndata_works_with_squidpy(analysed, tmp_path):
    import matplotlib.pyplot as plt
    import squidpy as sq

    _, sdata, _ = analysed["Visium"]
    adata = ssd.io.to_legacy_anndata(sdata)
    lib = sdata["table"].uns["stimage"]["slide"]
    assert list(adata.uns["spatial"]) == [lib]
    assert adata.uns["spatial"][lib]["images"]["hires"].shape[2] == 3
    assert adata.n_obs == sdata["table"].n_obs and (adata.obs_names == sdata["table"].obs_names).all()
    sq.pl.spatial_scatter(adata, color="domain", library_id=lib)
    out = tmp_path / "legacy.png"
    plt.gcf().savefig(out)
    plt.close("all")
    assert _png_variance(out) > 10
    micron = ssd.io.to_legacy_anndata(sdata, coordinate_system="micron", include_images=False)
    um = sdata["table"].uns["stimage"]["um_per_px"]
    np.testing.assert_allclose(micron.obsm["spatial"], sdata["table"].obsm["spatial"] * um, rtol=1e-6)


# --- crash-safe table replacement -----------------------------------------------------------


def _tables_equal(a, b) -> None:
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.X != b.X).nnz == 0


@pytest.fixture
def store_copy(analysis_slides, tmp_path):
    _, store = analysis_slides["ST"]
    dst = tmp_path / store.name
    shutil.copytree(store, dst)
    return dst


def test_replace_table_writes_results_back(store_copy):
    sdata = read(store_copy)
    ssd.pp.qc(sdata)
    ssd.io.replace_table(store_copy, sdata["table"])
    assert ssd.io.is_complete(store_copy)
    back = read(store_copy)["table"]
    assert "qc_outlier" in back.obs and back.uns["stimage_qc"]["n_spots"] == back.n_obs
    assert not list(store_copy.parent.glob(f".{store_copy.name}.*"))  # no leftovers
    # consolidated metadata describes the new table
    import zarr

    group = zarr.open_group(str(store_copy), mode="r")
    assert "tables/table/obs/qc_outlier" in group.metadata.consolidated_metadata.flattened_metadata


@pytest.mark.slow
def test_interrupted_replacement_is_detected_and_recovered(store_copy):
    """Reproduce the store at each point where a SIGKILL can stop replace_table."""
    import spatialdata as sd

    old = read(store_copy)["table"]
    new = old.copy()
    new.obs["marker_column"] = np.arange(new.n_obs)
    element = store_copy / "tables" / "table"

    def journal():
        tmp, trash = temp_sibling(store_copy, TMP_TAG, "table"), temp_sibling(store_copy, TRASH_TAG, "table")
        _write_table_store(new, tmp, "table")
        _update_root_attrs(
            store_copy, {"complete": False, PENDING_KEY: {"table": "table", "tmp": tmp.name, "trash": trash.name}}
        )
        return tmp, trash

    # 1. killed while writing the new table: the store is untouched and complete
    _write_table_store(new, temp_sibling(store_copy, TMP_TAG, "table"), "table")
    assert ssd.io.is_complete(store_copy)
    _tables_equal(read(store_copy)["table"], old)
    assert ssd.io.recover_store(store_copy) == "ok"
    assert not list(store_copy.parent.glob(f".{store_copy.name}.*"))

    # 2. killed between the two renames: incomplete, then rolled forward to the new table
    tmp, trash = journal()
    os.replace(element, trash)
    assert not ssd.io.is_complete(store_copy)
    with pytest.raises(IncompleteStoreError):
        read(store_copy)
    assert ssd.io.recover_store(store_copy) == "rolled_forward"
    assert ssd.io.is_complete(store_copy)
    assert "marker_column" in read(store_copy)["table"].obs
    assert not list(store_copy.parent.glob(f".{store_copy.name}.*"))

    # 3. new table lost too (e.g. its sibling deleted): the previous table comes back
    new.obs = new.obs.drop(columns="marker_column")
    new.obs["other"] = 1
    previous = read(store_copy)["table"]
    tmp, trash = journal()
    os.replace(element, trash)
    shutil.rmtree(tmp)
    assert ssd.io.recover_store(store_copy) == "rolled_back"
    _tables_equal(read(store_copy)["table"], previous)

    # 4. killed after the swap, before the marker: finished
    tmp, trash = journal()
    os.replace(element, trash)
    os.replace(tmp / "tables" / "table", element)
    assert not ssd.io.is_complete(store_copy)
    assert ssd.io.recover_store(store_copy) == "finished"
    assert "other" in sd.read_zarr(store_copy)["table"].obs
    assert ssd.io.is_complete(store_copy)


@pytest.mark.parametrize("batch", [False, True])
def test_convert_finishes_an_interrupted_table_swap(sample_root, sample_stores, tmp_path, batch):
    """`convert` over a store whose `analyze` was killed mid-swap keeps the analysis."""
    slide, store = next(iter(sample_stores.items()))
    out = tmp_path / "out"
    out.mkdir()
    dest = out / store.name
    shutil.copytree(store, dest)
    new = read(dest)["table"]
    new.obs["analysis_result"] = np.arange(new.n_obs)
    tmp, trash = temp_sibling(dest, TMP_TAG, "table"), temp_sibling(dest, TRASH_TAG, "table")
    _write_table_store(new, tmp, "table")
    _update_root_attrs(dest, {"complete": False, PENDING_KEY: {"table": "table", "tmp": tmp.name, "trash": trash.name}})
    os.replace(dest / "tables" / "table", trash)  # killed between the two renames
    assert not ssd.io.is_complete(dest)

    if batch:
        results = ssd.batch.convert_many(sample_root, out, [slide], workers=0, progress=False)
        assert [r.status for r in results] == ["skipped"]
    else:
        assert ssd.io.convert_slide(sample_root, slide, out) == dest
    assert ssd.io.is_complete(dest)
    np.testing.assert_array_equal(read(dest)["table"].obs["analysis_result"], np.arange(new.n_obs))
    assert not list(out.glob(f".{dest.name}.*"))
