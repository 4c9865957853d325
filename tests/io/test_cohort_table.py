"""The cohort table (issue 16): many stores as one AnnData, genes harmonised, bounded memory.

Stores come from the generator (``cohort_stores`` in conftest.py) and the real converter;
every check compares with the stores read back independently by ``spatialdata.read_zarr``
and with ``anndata.concat``.
"""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from scipy import sparse

import stimage_sd as ssd
from stimage_sd.cli import main
from stimage_sd.errors import IncompleteStoreError, StimageError
from stimage_sd.io._transaction import set_marker

pytestmark = pytest.mark.slow


def _store_by_gene(store) -> tuple[sparse.csr_matrix, list[str], sd.SpatialData]:
    """A store's counts with columns summed by gene name (the oracle of 'duplicates=sum')."""
    sdata = sd.read_zarr(store, selection=("shapes", "tables"))
    t = sdata.tables["table"]
    names = t.var["gene_name"].astype(str)
    genes = list(dict.fromkeys(names))
    codes = pd.Index(genes).get_indexer(names)
    agg = sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), len(genes)))
    return sparse.csr_matrix(t.X @ agg), genes, sdata


@pytest.mark.parametrize(
    ("name", "species", "expected"),
    [
        ("Gapdh", "human", "GAPDH"),
        ("c1orf112", "Homo sapiens", "C1orf112"),
        ("MT-ND1", "human", "MT-ND1"),
        ("ENSG00000243984.1", "human", "ENSG00000243984.1"),
        ("MBP", "mouse", "Mbp"),
        ("Mbp", "mouse", "Mbp"),
        ("MT-ND1", "mouse", "mt-Nd1"),
        ("mt-Nd1", "mouse", "mt-Nd1"),
        ("1110008P14RIK", "mouse", "1110008P14Rik"),
        ("ENSMUSG00000000001.4", "Mus musculus", "ENSMUSG00000000001.4"),
        (" Gapdh ", "zebrafish", "Gapdh"),
    ],
)
def test_symbol_case_follows_the_species(name, species, expected):
    assert ssd.io.normalise_symbol(name, species) == expected


def test_duplicates_and_case_variants_share_one_code():
    genes, codes = ssd.io.harmonise_gene_names(["Actb", "MBP", "ACTB", "Mbp", "X"], "human")
    assert genes == ["ACTB", "MBP", "X"]
    assert codes.tolist() == [0, 1, 0, 1, 2]
    genes, codes = ssd.io.harmonise_gene_names(["Actb", "ACTB"], "human", normalise_case=False)
    assert genes == ["Actb", "ACTB"]


def test_cohort_equals_the_stores(cohort_stores):
    stores = cohort_stores["study"]
    cohort = ssd.io.read_cohort(stores)
    assert cohort.obs_names.is_unique
    assert list(cohort.obs["slide"].cat.categories) == [s.name.removesuffix(".zarr") for s in stores]
    offset = 0
    for store in stores:
        X, genes, sdata = _store_by_gene(store)
        t = sdata.tables["table"]
        slide = t.uns["stimage"]["slide"]
        part = cohort[cohort.obs["slide"] == slide]
        n = t.n_obs
        # same spots in the same order, same counts (duplicated names summed), same coordinates
        assert part.n_obs == n and offset == np.flatnonzero(cohort.obs["slide"] == slide)[0]
        assert (part.obs["spot"].to_numpy() == t.obs_names.to_numpy()).all()
        cols = pd.Index(genes).get_indexer(cohort.var_names)
        assert (cols >= 0).all()
        assert (part.X != X[:, cols]).nnz == 0
        np.testing.assert_allclose(part.obsm["spatial"], t.obsm["spatial"])
        # metadata joined from the store
        meta = t.uns["stimage"]
        assert (part.obs["species"] == meta["species"]).all() and (part.obs["tissue"] == meta["tissue"]).all()
        assert (part.obs["tech"] == "Visium").all()
        np.testing.assert_allclose(part.obs["um_per_px"], meta["um_per_px"])
        assert (part.obs["study"] == ssd.hub.study_of(slide)).all()
        got = part.obs["annotation"].astype(object).fillna("<none>").to_numpy()
        assert (got == t.obs["annotation"].astype(object).fillna("<none>").to_numpy()).all()
        np.testing.assert_array_equal(part.obs["total_counts"], np.asarray(t.X.sum(axis=1)).ravel())
        np.testing.assert_array_equal(part.obs["spot_id"], t.obs["spot_id"])
        # link back to the store (squidpy's uns["spatial"] layout)
        link = cohort.uns["spatial"][slide]
        assert link["metadata"]["store"] == str(store.resolve())
        assert link["scalefactors"]["spot_diameter_fullres"] == pytest.approx(2 * meta["spot_radius_px"])
        offset += n
    # slides of one study share their panel: the intersection keeps every harmonised gene
    dup = sdata.tables["table"].uns["stimage"]["duplicate_genes"]["n"]
    assert dup > 0 and cohort.n_vars == sdata.tables["table"].n_vars - dup
    assert (cohort.var["n_slides"] == 3).all() and cohort.varm["measured"].all()


def test_on_disk_and_lazy_give_the_in_memory_table(cohort_stores, tmp_path):
    stores = cohort_stores["study"]
    mem = ssd.io.read_cohort(stores)
    disk = ssd.io.read_cohort(stores, out=tmp_path / "c.zarr")
    lazy = ssd.io.read_cohort(stores, out=tmp_path / "c.zarr", lazy=True, overwrite=True)
    # oracle: anndata.concat of the per-slide tables (genes by name, duplicates summed)
    parts = []
    for store in stores:
        X, genes, _ = _store_by_gene(store)
        parts.append(ad.AnnData(X=X, var=pd.DataFrame(index=genes)))
    ref = ad.concat(parts, join="inner")[:, mem.var_names]
    for got in (mem, disk):
        assert got.shape == ref.shape
        assert (sparse.csr_matrix(got.X) != ref.X).nnz == 0
        assert got.var_names.equals(mem.var_names) and got.obs_names.equals(mem.obs_names)
    pd.testing.assert_frame_equal(disk.obs, mem.obs)
    assert (disk.varm["measured"] == mem.varm["measured"]).all()
    assert list(disk.uns["cohort"]["slides"]) == mem.uns["cohort"]["slides"]
    x = lazy.X.compute() if hasattr(lazy.X, "compute") else lazy.X
    assert (sparse.csr_matrix(x) != ref.X).nnz == 0
    with pytest.raises(StimageError, match="already exists"):
        ssd.io.read_cohort(stores, out=tmp_path / "c.zarr")
    with pytest.raises(StimageError, match="lazy=True needs out"):
        ssd.io.read_cohort(stores, lazy=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_union_and_gene_list(cohort_stores):
    stores = [*cohort_stores["study"], cohort_stores["other"]]
    inter = ssd.io.read_cohort(stores, genes="intersection")
    union = ssd.io.read_cohort(stores, genes="union")
    other = cohort_stores["other"].name.removesuffix(".zarr")
    assert inter.n_vars < union.n_vars
    assert (inter.var["n_slides"] == 4).all()
    j = union.uns["cohort"]["slides"].index(other)
    X, genes, _ = _store_by_gene(cohort_stores["other"])
    part = union[union.obs["slide"] == other]
    measured = union.varm["measured"][:, j]
    assert set(union.var_names[measured]) == set(genes)
    assert sparse.csr_matrix(part.X)[:, ~measured].nnz == 0  # genes the slide did not measure are zeros
    cols = pd.Index(genes).get_indexer(union.var_names[measured])
    assert (sparse.csr_matrix(part.X)[:, measured] != X[:, cols]).nnz == 0
    wanted = [*union.var_names[[5, 0, 3]], "NOT_A_GENE"]
    picked = ssd.io.read_cohort(stores, genes=wanted)
    assert list(picked.var_names) == wanted and picked.var["n_slides"].iloc[-1] == 0
    assert sparse.csr_matrix(picked.X)[:, -1].nnz == 0


def test_filters_species_and_errors(cohort_stores, tmp_path):
    stores = [*cohort_stores["study"], cohort_stores["other"], cohort_stores["mouse"]]
    with pytest.raises(StimageError, match=r"mix species.*allow_mixed_species"):
        ssd.io.read_cohort(stores)
    mixed = ssd.io.read_cohort(stores, genes="union", allow_mixed_species=True)
    assert set(mixed.obs["species"]) == {"human", "mouse"}
    human = ssd.io.read_cohort(stores, species="human")
    assert set(human.obs["species"]) == {"human"} and human.obs["slide"].nunique() == 4
    study = ssd.io.read_cohort(stores, study="Human_Brain_Cohort_01012025")
    assert study.obs["slide"].nunique() == 3
    with pytest.raises(StimageError, match="matches the filters"):
        ssd.io.read_cohort(stores, tissue="liver")
    with pytest.raises(StimageError, match="appears twice"):
        ssd.io.read_cohort([stores[0], shutil.copytree(stores[0], tmp_path / "copy.zarr")])
    broken = shutil.copytree(stores[0], tmp_path / "broken.zarr")
    set_marker(broken, False)
    with pytest.raises(IncompleteStoreError, match=r"broken\.zarr"):
        ssd.io.read_cohort([broken])
    with pytest.raises(StimageError, match="no such store"):
        ssd.io.read_cohort([tmp_path / "missing.zarr"])


def test_cli_cohort(cohort_stores, tmp_path, capsys):
    folder = cohort_stores["study"][0].parent
    out = tmp_path / "brain.zarr"
    assert main(["-q", "cohort", str(folder), str(cohort_stores["other"]), "--species", "human",
                 "--tissue", "brain", "-o", str(out)]) == 0
    back = ad.read_zarr(out)
    assert back.obs["slide"].nunique() == 4 and back.obs_names.is_unique
    assert main(["-q", "cohort", str(folder), "--species", "mouse", "-o", str(tmp_path / "m.zarr")]) == 1
    err = capsys.readouterr().err
    assert "none of the 3 store(s) matches" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_stores_over_http_give_the_same_cohort(cohort_stores):
    """Stores served by a loopback HTTP server (fsspec URLs): same table, no image bytes read."""
    import functools
    import http.server
    import threading

    pytest.importorskip("aiohttp", reason="fsspec's HTTP file system needs aiohttp")
    folder = cohort_stores["study"][0].parent
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet; record the paths instead
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        urls = [f"http://127.0.0.1:{server.server_address[1]}/{s.name}" for s in cohort_stores["study"]]
        remote = ssd.io.read_cohort(urls)
    finally:
        server.shutdown()
        thread.join()
    local = ssd.io.read_cohort(cohort_stores["study"])
    assert (remote.X != local.X).nnz == 0 and remote.obs_names.equals(local.obs_names)
    assert list(remote.obs["store"].cat.categories) == urls
    assert remote.uns["spatial"][remote.obs["slide"].iloc[0]]["metadata"]["store"] == urls[0]
    assert requested and not [p for p in requested if "/images/" in p]  # only the table was read


def test_stores_on_the_hub_give_the_same_cohort(cohort_stores, fake_hub, tmp_path):
    """``hf://`` stores on the loopback fake Hub: the same cohort, and no image chunk fetched."""
    folder = tmp_path / "served"
    for store in cohort_stores["study"]:
        shutil.copytree(store, folder / store.name)
    hub = fake_hub(folder, repo_id="me/stores")
    urls = [ssd.hub.store_url(s.name.removesuffix(".zarr"), "me/stores") for s in cohort_stores["study"]]
    assert all(u.startswith("hf://") for u in urls)
    remote = ssd.io.read_cohort(urls, storage_options=ssd.hub.storage_options())
    local = ssd.io.read_cohort(cohort_stores["study"])
    assert (remote.X != local.X).nnz == 0 and remote.obs_names.equals(local.obs_names)
    pd.testing.assert_frame_equal(remote.obs.drop(columns="store"), local.obs.drop(columns="store"))
    assert list(remote.obs["store"].cat.categories) == urls
    fetched = hub.downloads()
    assert fetched and not [p for p in fetched if "/images/" in p and not p.endswith("zarr.json")]
