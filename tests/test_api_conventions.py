"""scverse API conventions of pp/tl (issue 14): signatures, copy, key registry, docs, aliases."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stimage_sd as ssd
from stimage_sd._constants import TABLE_KEY
from stimage_sd._keys import Key
from stimage_sd.io import read

SRC = Path(ssd.__file__).resolve().parent

#: Functions that modify a table: ``data`` first, ``table_key``, ``copy`` -> None | AnnData.
MODIFIERS = {
    "qc": ssd.pp.qc,
    "normalize": ssd.pp.normalize,
    "filter_spots": ssd.pp.filter_spots,
    "spatial_graph": ssd.tl.spatial_graph,
    "domains": ssd.tl.domains,
    "svg": ssd.tl.svg,
}


@pytest.mark.parametrize("name", sorted(MODIFIERS))
def test_signature_follows_scverse(name):
    fn = MODIFIERS[name]
    params = inspect.signature(fn).parameters
    first = next(iter(params.values()))
    assert first.name == "data" and first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert first.annotation == "AnnData | SpatialData"
    assert params["table_key"].default == TABLE_KEY
    assert params["copy"].default is False and params["copy"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(fn).return_annotation == "AnnData | None"
    assert "Any" not in str(inspect.signature(fn))
    doc = fn.__doc__
    assert "%(" not in doc  # every shared fragment was substituted
    for section in ("Parameters", "Returns", "Examples"):
        assert f"    {section}\n" in doc, (name, section)
    for p in ("data", "table_key", "copy"):
        assert f"\n    {p}\n" in doc, (name, p)


def test_svg_and_domains_take_key_added():
    for fn in (ssd.tl.svg, ssd.tl.domains, ssd.tl.spatial_graph):
        assert "key_added" in inspect.signature(fn).parameters


def _snapshot(adata) -> dict:
    return {
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": sorted(adata.uns),
        "obsm": sorted(adata.obsm),
        "obsp": sorted(adata.obsp),
        "layers": sorted(adata.layers),
        "X": adata.X.copy(),
    }


def _assert_unchanged(adata, snap) -> None:
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert sorted(adata.uns) == snap["uns"]
    assert sorted(adata.obsm) == snap["obsm"] and sorted(adata.obsp) == snap["obsp"]
    assert sorted(adata.layers) == snap["layers"]
    assert (adata.X != snap["X"]).nnz == 0


@pytest.fixture(scope="module")
def st_store(analysis_slides):
    return analysis_slides["ST"][1]


def test_copy_returns_a_table_and_leaves_data_unchanged(st_store):
    sdata = read(st_store)
    snap = _snapshot(sdata["table"])
    steps = [
        ("qc", {}, lambda t: "qc_outlier" in t.obs and Key.uns.qc in t.uns),
        ("normalize", {"n_top_genes": 300}, lambda t: Key.layers.counts in t.layers),
        ("spatial_graph", {}, lambda t: "spatial_connectivities" in t.obsp),
        ("domains", {"n_domains": 4}, lambda t: "domain" in t.obs and "domain_pca" in t.obsm),
        ("svg", {}, lambda t: "moranI" in t.uns and "moranI_rank" in t.var),
    ]
    # each step on a copy leaves the SpatialData as it was
    table = None
    for name, kwargs, wrote in steps:
        src = sdata if table is None else table
        before = _snapshot(src) if table is not None else None
        out = MODIFIERS[name](src, copy=True, **kwargs)
        assert isinstance(out, type(sdata["table"])) and out is not sdata["table"] and wrote(out), name
        _assert_unchanged(sdata["table"], snap)
        if before is not None:
            _assert_unchanged(table, before)
        table = out
    # without copy: None, and the same results written into data
    for name, kwargs, wrote in steps:
        assert MODIFIERS[name](sdata, **kwargs) is None
        assert wrote(sdata["table"]), name
    pd.testing.assert_series_equal(sdata["table"].obs["domain"], table.obs["domain"])
    pd.testing.assert_frame_equal(sdata["table"].uns["moranI"], table.uns["moranI"])


def test_domains_never_overwrite_scanpy_pca(st_store):
    import scanpy as sc

    adata = read(st_store)["table"]
    ssd.pp.normalize(adata, n_top_genes=300)
    sc.pp.pca(adata, n_comps=5)  # the user's own PCA
    own = {"obsm": adata.obsm["X_pca"].copy(), "varm": adata.varm["PCs"].copy(),
           "uns": adata.uns["pca"]["variance"].copy()}
    ssd.tl.domains(adata, 4, n_pcs=12)
    ssd.tl.domains(adata, 4, n_pcs=8, spatial_weight=0.0, key_added="expr", method="leiden")
    np.testing.assert_array_equal(adata.obsm["X_pca"], own["obsm"])
    np.testing.assert_array_equal(adata.varm["PCs"], own["varm"])
    np.testing.assert_array_equal(adata.uns["pca"]["variance"], own["uns"])
    # each run's PCA under keys derived from key_added (scanpy's key_added convention)
    for key, n in (("domain", 12), ("expr", 8)):
        assert adata.obsm[f"{key}_pca"].shape == (adata.n_obs, n)
        assert adata.varm[f"{key}_pca"].shape == (adata.n_vars, n)
        assert adata.uns[f"{key}_pca"]["variance"].shape == (n,)
        assert key in adata.uns
    # Leiden's kNN graph is keyed by key_added too (KMeans, the default with n_domains, builds none)
    assert "expr_knn_connectivities" in adata.obsp and "domain_knn_connectivities" not in adata.obsp
    # the domains' PCA is scanpy's PCA of the same genes
    ref = adata.copy()
    sc.pp.pca(ref, n_comps=12, mask_var="highly_variable", svd_solver="arpack", random_state=0)
    np.testing.assert_allclose(np.abs(adata.obsm["domain_pca"]), np.abs(ref.obsm["X_pca"]), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="X_pca"):
        ssd.tl.domains(adata, 4, key_added="pca")
    np.testing.assert_array_equal(adata.obsm["X_pca"], own["obsm"])


def test_svg_key_added_keeps_runs_apart(st_store):
    adata = read(st_store)["table"]
    ssd.pp.normalize(adata, n_top_genes=300)
    ssd.tl.svg(adata)
    ssd.tl.svg(adata, genes="all", key_added="moranI_all")
    hv, tested_all = adata.uns["moranI_params"]["n_tested"], adata.uns["moranI_all_params"]["n_tested"]
    assert hv < tested_all == adata.var["moranI_all"].notna().sum()
    assert adata.var["moranI"].notna().sum() == hv
    assert ssd.tl.top_svg(adata, 5, key="moranI_all") == list(adata.uns["moranI_all"].index[:5])
    with pytest.raises(KeyError, match="nope"):
        ssd.tl.top_svg(adata, key="nope")


def test_deprecated_filter_alias(st_store):
    sdata = read(st_store)
    ssd.pp.qc(sdata, min_counts=float(np.median(np.asarray(sdata["table"].X.sum(axis=1)))))
    n_before = sdata["table"].n_obs
    expected = ssd.pp.filter_spots(sdata, copy=True)
    with pytest.warns(FutureWarning, match="filter_spots"):
        removed = ssd.pp.filter(sdata)
    assert removed == n_before - expected.n_obs > 0
    assert (sdata["table"].obs_names == expected.obs_names).all()


def test_run_pipeline_filter_needs_a_spatialdata(st_store):
    adata = read(st_store)["table"]
    with pytest.raises(ValueError, match="SpatialData"):
        ssd.tl.run_pipeline(adata, filter_spots=True)
    assert "qc_outlier" not in adata.obs


# --- one key registry: pp/tl/pl name table keys only through stimage_sd._keys.Key -------------

_ATTRS = {"obs", "var", "uns", "obsm", "varm", "obsp", "layers"}


def _literal_keys(path: Path) -> list[str]:
    """``x.obs["literal"]`` subscripts and ``"literal" in x.obs`` tests in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in _ATTRS
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.append(f"{path.name}:{node.lineno} .{node.value.attr}[{node.slice.value!r}]")
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
            and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
            and any(isinstance(c, ast.Attribute) and c.attr in _ATTRS for c in node.comparators)
        ):
            found.append(f"{path.name}:{node.lineno} {node.left.value!r} in .{node.comparators[0].attr}")
    return found


@pytest.mark.parametrize("package", ["pp", "tl", "pl"])
def test_table_keys_come_from_the_registry(package):
    offenders = []
    for path in sorted((SRC / package).glob("*.py")):
        offenders += _literal_keys(path)
    assert not offenders, offenders


def test_key_registry_names_what_the_pipeline_writes(analysis_slides):
    """Every obs/var/uns/obsm/obsp/layers key the pipeline adds is in Key, or scanpy/squidpy's."""
    sdata = read(analysis_slides["Visium"][1])
    before = {a: set(getattr(sdata["table"], a).keys()) for a in _ATTRS}
    ssd.tl.run_pipeline(sdata, n_domains=5)
    t = sdata["table"]
    registered = set()
    for cls in (Key.obs, Key.var, Key.uns, Key.obsm, Key.varm, Key.obsp, Key.layers):
        for name, value in vars(cls).items():
            if name.startswith("_"):
                continue
            if isinstance(value, str):
                registered.add(value)
            elif isinstance(value, staticmethod):
                for k in ("domain", "moranI", "spatial"):
                    registered.add(value.__func__(k))
    # scanpy's calculate_qc_metrics / highly_variable_genes / log1p columns, named by scanpy
    scanpy_names = {
        "n_genes_by_counts", "log1p_n_genes_by_counts", "total_counts", "log1p_total_counts",
        "total_counts_mt", "log1p_total_counts_mt", "pct_counts_mt", "total_counts_ribo",
        "log1p_total_counts_ribo", "pct_counts_ribo", "n_cells_by_counts", "mean_counts",
        "log1p_mean_counts", "pct_dropout_by_counts", "highly_variable_rank", "means",
        "variances", "variances_norm",
    }
    new = {a: set(getattr(t, a).keys()) - before[a] for a in _ATTRS}
    unknown = {a: sorted(v - registered - scanpy_names) for a, v in new.items() if v - registered - scanpy_names}
    assert not unknown, unknown
