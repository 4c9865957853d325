"""The release's target recipes, value for value.

The oracles re-implement the few pandas/scanpy steps of the release repository's
``code_reproducibility/data_process/02-gene-exp-hvg.py`` and
``03-gene-exp-overlap-hvg.py`` (plus the overlap-gene steps of its documentation) on
the sample release's own count CSVs, and compare with :func:`stimage_sd.ml.targets`
computed from the converted stores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stimage_sd.ml import PatchDataset, export_patches, targets

pytestmark = pytest.mark.slow

GEO = "GSE000001_GSM0000001"  # counts written as 0.0, 1.0 ... (pandas: float64)
ST = "Human_Breast_Synth_10142021_ST_A1"  # integer counts (pandas: int64)
MOUSE = "Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm"
HD = "Mouse_Brain_Synth_03292024_VIsiumHD"


def _csv(root: Path, slide: str) -> Path:
    return next(root.glob(f"*/gene_exp/{slide}_count.csv"))


def _release_hvg128(csv: Path) -> pd.DataFrame:
    """02-gene-exp-hvg.py, with gene names kept as columns."""
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sc.AnnData(pd.read_csv(csv, sep=",", index_col=0))
        adata.var_names_make_unique()
        sc.pp.filter_cells(adata, min_genes=1)
        sc.experimental.pp.highly_variable_genes(adata, n_top_genes=128)
        adata.var_names_make_unique()
        hvg_list = adata.var["highly_variable_rank"].sort_values().dropna()
        adata_hvg = adata[:, hvg_list.index]
        sc.pp.normalize_total(adata_hvg)
        sc.pp.log1p(adata_hvg)
    return pd.DataFrame(adata_hvg.X, index=adata_hvg.obs.index, columns=list(hvg_list.index))


def _release_overlap(csvs: list[Path]) -> pd.DataFrame:
    """The overlap-HVG steps: shared genes, concatenated rows, then 03-gene-exp-overlap-hvg.py."""
    import scanpy as sc

    overlap = None
    for f in csvs:
        cols = pd.read_csv(f, sep=",", nrows=1, index_col=0).columns
        overlap = cols if overlap is None else overlap.intersection(cols)
    lines = []
    for f in csvs:  # each slide's columns of the shared genes, then `tail -n +2` into one file
        lines.extend(pd.read_csv(f, sep=",", index_col=0).loc[:, overlap].to_csv(sep=",").splitlines()[1:])
    import io

    data = pd.read_csv(io.StringIO("\n".join(lines) + "\n"), sep=",", index_col=0, header=None)
    data.columns = ["gene" + str(i) for i in range(data.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sc.AnnData(data)
        sc.pp.filter_cells(adata, min_genes=1)
        sc.pp.filter_genes(adata, min_cells=1)
        sc.pp.normalize_total(adata)
        sc.pp.log1p(adata)
        sc.pp.highly_variable_genes(adata, n_top_genes=100)
        adata_hvg = adata[:, adata.var.highly_variable]
    names = {f"gene{i}": g for i, g in enumerate(overlap)}
    return pd.DataFrame(adata_hvg.X, index=adata_hvg.obs.index, columns=[names[c] for c in adata_hvg.var_names])


def test_stimage_hvg128_equals_the_release_script_on_an_integer_count_file(sample_root, sample_stores):
    ours = targets(sample_stores[ST], "stimage-hvg128")[ST]
    ref = _release_hvg128(_csv(sample_root, ST))
    assert list(ours.columns) == list(ref.columns)  # same genes, same rank order
    assert set(ours.index) == set(ref.index)  # same spots kept by filter_cells
    np.testing.assert_array_equal(ours.loc[ref.index].to_numpy(), ref.to_numpy())
    assert ours.shape[1] == 128


@pytest.mark.parametrize("slide", [GEO, MOUSE])
def test_stimage_hvg128_equals_the_release_script_on_decimal_count_files(sample_root, sample_stores, slide):
    ref = _release_hvg128(_csv(sample_root, slide))
    assert ref.to_numpy().dtype == np.float64  # pandas read "1.0": scanpy worked in float64
    exact = targets(sample_stores[slide], "stimage-hvg128", dtype="float64")[slide]
    assert list(exact.columns) == list(ref.columns)
    np.testing.assert_array_equal(exact.loc[ref.index].to_numpy(), ref.to_numpy())
    # default (integral counts taken as an integer CSV): same genes, float32 arithmetic
    default = targets(sample_stores[slide], "stimage-hvg128")[slide]
    assert list(default.columns) == list(ref.columns)
    np.testing.assert_allclose(default.loc[ref.index].to_numpy(), ref.to_numpy(), rtol=1e-6, atol=1e-6)


def test_stimage_overlap_hvg100_equals_the_release_steps_per_tissue(sample_root, sample_stores):
    # human breast: the GEO (decimals) and ST slides; mouse brain: Visium and VisiumHD
    t = targets(sample_stores, "stimage-overlap-hvg100", dtype="float64")
    assert t.groups[GEO] == t.groups[ST] == "human_breast"
    assert t.groups[MOUSE] == t.groups[HD] == "mouse_brain"
    order = list(sample_stores)  # stores are processed in the order given
    for group in ("human_breast", "mouse_brain"):
        slides = [s for s in order if t.groups[s] == group]
        ref = _release_overlap([_csv(sample_root, s) for s in slides])
        ours = pd.concat([t[s] for s in slides])
        assert list(ours.columns) == list(ref.columns) and len(ref.columns) == 100
        # spots in store order (the release: count-file order); every value the same
        assert sorted(ours.index) == sorted(ref.index)
        np.testing.assert_array_equal(ours.loc[ref.index].to_numpy(), ref.to_numpy())
        # one shared panel per group
        assert all(t.genes(s) == list(ref.columns) for s in slides)


def test_hvg_and_gene_list_recipes(sample_stores):
    import anndata as ad
    import scanpy as sc

    import stimage_sd as ssd

    table = ssd.io.read(sample_stores[ST], selection=("tables",))["table"]
    genes = list(table.var_names[:5])
    t = targets(sample_stores[ST], genes)
    a = ad.AnnData(table.X.astype(np.float32), obs=table.obs[[]], var=table.var[[]])
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    ref = a[:, genes].X.toarray()
    np.testing.assert_allclose(t[ST].loc[table.obs_names].to_numpy(), ref, rtol=1e-6, atol=1e-6)
    h = targets(sample_stores[ST], "hvg", n_top=20)
    assert h.recipe == "hvg" and h[ST].shape == (table.n_obs, 20)


def test_export_and_dataset_take_a_recipe(sample_root, sample_stores, tmp_path):
    two = {s: sample_stores[s] for s in (GEO, ST)}
    out = export_patches(two, tmp_path / "p.zarr", size_um=112, px=16, genes="stimage-hvg128", progress=False)
    ds = PatchDataset(out)
    assert ds.params["genes"] == "stimage-hvg128"
    ref = _release_hvg128(_csv(sample_root, ST))
    assert ds.genes_of(ST) == list(ref.columns)
    obs = ds.obs
    rows = np.flatnonzero((obs["slide"] == ST).to_numpy())
    items = ds.__getitems__(rows.tolist())
    got = pd.DataFrame(np.stack([i["target"] for i in items]), index=[i["spot_id"] for i in items])
    np.testing.assert_array_equal(got.loc[ref.index].to_numpy(), ref.to_numpy().astype(np.float32))
    # spots the recipe filters out (no counts) have NaN targets
    dropped = sorted(set(got.index) - set(ref.index))
    assert all(np.isnan(got.loc[s]).all() for s in dropped)
    # the same over the slides directly, and with a precomputed Targets object
    t = targets(two, "stimage-overlap-hvg100")
    direct = PatchDataset(two, size_um=112, px=16, genes=t)
    assert direct.params["genes"] == "stimage-overlap-hvg100"
    it = direct[0]
    row = t[it["slide"]].loc[it["spot_id"]].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(it["target"], row)
    # an export with a Targets object resumes with the same values
    out2 = export_patches(two, tmp_path / "o.zarr", size_um=112, px=16, genes=t, progress=False)
    ds2 = PatchDataset(out2)
    j = int(np.flatnonzero((ds2.obs["spot_id"] == it["spot_id"]).to_numpy())[0])
    np.testing.assert_array_equal(ds2[j]["target"], row)


def test_bad_recipe_is_refused(sample_stores):
    from stimage_sd.errors import StimageError

    with pytest.raises(StimageError, match="recipe must be one of"):
        targets(sample_stores[ST], "hvg256")
    with pytest.raises(StimageError, match="dtype"):
        targets(sample_stores[ST], "stimage-hvg128", dtype="float16")
