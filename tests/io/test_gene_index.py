"""The gene index (``gene_index/<table>``) and :func:`stimage_sd.io.read_genes`.

Oracle: the table's raw counts as :func:`spatialdata.read_zarr` reads them from the same store
(``X``, or ``layers["counts"]`` after normalisation), columns picked by gene name. Remote
reads and their byte counts: ``tests/io/test_remote.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import spatialdata as sd

import stimage_sd as ssd
from stimage_sd.errors import StimageError
from stimage_sd.io._gene_index import GENE_INDEX

SLIDE = "GSE000001_GSM0000001"


@pytest.fixture
def store(sample_stores, tmp_path) -> Path:
    """A writable copy of the converted Visium sample slide."""
    return Path(shutil.copytree(sample_stores[SLIDE], tmp_path / f"{SLIDE}.zarr"))


@pytest.fixture
def stimage_log(caplog):
    """Capture the library's log records (the package logger does not propagate by default)."""
    log = logging.getLogger("stimage_sd")
    saved = log.propagate
    log.propagate = True
    caplog.set_level(logging.INFO, logger="stimage_sd")
    yield caplog
    log.propagate = saved


def _table(path: Path):
    return sd.read_zarr(path).tables["table"]


def _raw(table):
    return table.layers["counts"] if "counts" in table.layers else table.X


def _assert_genes(got, table, genes) -> None:
    cols = table.var_names.get_indexer(genes)
    want = _raw(table)[:, cols]
    assert got.shape == (table.n_obs, len(genes))
    assert sp.issparse(got.X) and got.X.format == "csr" and got.X.dtype == want.dtype
    assert (got.X != want).nnz == 0
    assert got.obs.equals(table.obs)
    assert got.var.equals(table.var.loc[genes])


def _index_files(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in (path / GENE_INDEX).rglob("*") if p.is_file()}


def test_read_genes_equals_the_table(store):
    table = _table(store)
    genes = [str(table.var_names[k]) for k in (7, 0, 42, table.n_vars - 1)]
    _assert_genes(ssd.io.read_genes(store, genes), table, genes)
    _assert_genes(ssd.io.read_genes(store.as_uri(), genes), table, genes)  # a URL, through fsspec
    one = ssd.io.read_genes(store, genes[0], spatial=True)
    _assert_genes(one, table, genes[:1])
    np.testing.assert_array_equal(one.obsm["spatial"], table.obsm["spatial"])
    with pytest.raises(StimageError, match="'NOT_A_GENE' not in table"):
        ssd.io.read_genes(store, [genes[0], "NOT_A_GENE"])
    with pytest.raises(StimageError, match="no table 'other'"):
        ssd.io.read_genes(store, genes[0], table_key="other")


def test_the_index_is_invisible_to_spatialdata_and_a_plain_anndata(store):
    import anndata as ad

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata = sd.read_zarr(store)
    assert not [w for w in caught if "gene_index" in str(w.message)]
    assert set(sdata.elements_paths_on_disk()) == {"images/he", "shapes/spots", "tables/table"}
    assert not [p for p in sdata.elements_paths_on_disk() if GENE_INDEX in p]
    table = sdata.tables["table"]
    # documented layout: an AnnData in anndata's encoding, X the same counts gene-major
    index = ad.read_zarr(store / GENE_INDEX / "table")
    assert index.X.format == "csc"
    assert (index.X != table.X).nnz == 0
    assert list(index.obs_names) == list(table.obs_names) and list(index.var_names) == list(table.var_names)
    np.testing.assert_allclose(index.var["total_counts"], np.asarray(table.X.sum(axis=0)).ravel())
    rec = sdata.attrs["stimage"]["checksums"]["gene_index"]["table"]
    assert len(rec["digest"]) == 24 and set(rec["chunks"]) == {"data", "indices", "indptr"}
    assert ssd.io.validate(store).ok


def test_writing_the_index_warns_nothing(store):
    from stimage_sd.io._gene_index import write_gene_index

    table = _table(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_gene_index(store, "table", table.X, table.obs_names, table.var_names)


def test_a_filtered_table_written_back_keeps_the_index(store, stimage_log):
    """``pp`` filters then a write-back: the index is untouched and the reader aligns to the new table."""
    table = ssd.io.read(store)["table"]
    keep = (table.obs["spot_id"].to_numpy() % 3 != 0) & (np.arange(table.n_obs) < table.n_obs - 5)
    sub = table[keep][:, table.var_names[::-2]].copy()  # fewer spots, fewer genes, genes reordered
    ssd.pp.normalize(sub, n_top_genes=None)  # raw counts move to layers["counts"]
    assert "counts" in sub.layers
    before = _index_files(store)
    record = ssd.io.read(store).attrs["stimage"]["checksums"]["gene_index"]
    ssd.io.replace_table(store, sub)
    assert _index_files(store) == before
    assert not [r for r in stimage_log.records if "gene index" in r.getMessage()]
    assert ssd.io.read(store).attrs["stimage"]["checksums"]["gene_index"] == record
    new = _table(store)
    genes = [str(g) for g in new.var_names[[3, 0, 11]]]
    _assert_genes(ssd.io.read_genes(store, genes), new, genes)
    report = ssd.io.validate(store)
    assert "gene_index" in report.checks
    # (a filtered table no longer matches uns' spot and gene counts nor every shape: other checks say so)
    assert not [p for p in report.problems if p.check in ("structure", "checksums", "gene_index")], str(report)
    with pytest.raises(StimageError, match="not in table"):  # a gene filtered out of the table
        ssd.io.read_genes(store, str(table.var_names[-2]))


def test_other_counts_written_back_get_a_new_index(store, stimage_log):
    table = ssd.io.read(store)["table"]
    table.X = table.X * 2
    ssd.io.replace_table(store, table)
    assert any("writing a new one" in r.getMessage() for r in stimage_log.records)
    new = _table(store)
    genes = [str(g) for g in new.var_names[:4]]
    _assert_genes(ssd.io.read_genes(store, genes), new, genes)
    assert ssd.io.validate(store).ok
    # raw counts that are not CSR: the index goes (the table check then reports the matrix)
    table = ssd.io.read(store)["table"]
    table.X = table.X.toarray()
    ssd.io.replace_table(store, table)
    assert any("removing it" in r.getMessage() for r in stimage_log.records)
    assert not (store / GENE_INDEX / "table").exists()
    assert "table" not in ssd.io.read(store).attrs["stimage"]["checksums"].get("gene_index", {})
    got = ssd.io.read_genes(store, genes)
    assert (got.X != sp.csr_matrix(_table(store).X[:, :4])).nnz == 0
    report = ssd.io.validate(store)
    assert [p.check for p in report.problems] == ["table"], str(report)


#: The renames of a table swap that rewrites the index, in order: old table out, new table in,
#: old index out, new index in; then the metadata consolidation.
_STEPS = ("table-out", "table-in", "index-out", "index-in", "consolidate")


@pytest.mark.parametrize("step", _STEPS)
def test_a_swap_killed_at_any_step_is_recovered(store, step, monkeypatch):
    """A kill (an exception the swap does not handle) at each step: the store is incomplete, then
    :func:`~stimage_sd.io.recover_store` leaves the old table with the old index or the new with
    the new one, valid, and no sibling behind."""
    import stimage_sd.io._transaction as tx

    old = ssd.io.read(store)["table"]
    new = old.copy()
    new.X = new.X * 3
    replace, consolidate, seen = os.replace, tx.consolidate, []

    def crash_if(name: str) -> None:
        seen.append(name)
        if name == step:
            raise KeyboardInterrupt(f"killed at {name}")

    def traced_replace(src, dst):
        # the swap's own renames only (Zarr renames files too, in its I/O threads)
        src, dst = str(src), str(dst)
        if threading.current_thread() is threading.main_thread():
            if ".trash-table-" in dst and src.endswith(f"tables{os.sep}table"):
                crash_if("table-out")
            elif ".tmp-table-" in src and src.endswith(f"tables{os.sep}table"):
                crash_if("table-in")
            elif ".trash-index-" in dst:
                crash_if("index-out")
            elif ".tmp-table-" in src and src.endswith(f"{GENE_INDEX}{os.sep}table"):
                crash_if("index-in")
        replace(src, dst)

    def traced_consolidate(path):
        if ".tmp-" not in str(path) and threading.current_thread() is threading.main_thread():
            crash_if("consolidate")
        consolidate(path)

    monkeypatch.setattr(tx.os, "replace", traced_replace)
    monkeypatch.setattr(tx, "consolidate", traced_consolidate)
    with pytest.raises(KeyboardInterrupt):
        ssd.io.replace_table(store, new)
    monkeypatch.undo()
    assert seen[-1] == step
    assert not ssd.io.is_complete(store)
    outcome = ssd.io.recover_store(store)
    assert outcome in ("rolled_forward", "finished")
    report = ssd.io.validate(store)
    assert report.ok, str(report)
    table = _table(store)
    expected = new if step != "table-out" else old  # killed before the old table left: the old one stays
    assert (table.X != expected.X).nnz == 0
    genes = [str(g) for g in table.var_names[:5]]
    _assert_genes(ssd.io.read_genes(store, genes), table, genes)
    assert [p.name for p in store.parent.iterdir() if p != store and not p.name.endswith(".lock")] == []


def test_a_store_without_index_reads_the_whole_table(sample_root, tmp_path, stimage_log):
    from stimage_sd.cli import main

    path = ssd.io.convert_slide(sample_root, SLIDE, tmp_path / "a", gene_index=False, progress=False)
    assert not (path / GENE_INDEX).exists()
    assert "gene_index" not in ssd.io.read(path).attrs["stimage"]["checksums"]
    table = _table(path)
    genes = [str(g) for g in table.var_names[:3]]
    _assert_genes(ssd.io.read_genes(path, genes), table, genes)
    assert any("no gene index" in r.getMessage() for r in stimage_log.records)
    assert ssd.io.validate(path).ok
    assert main(["--quiet", "convert", str(sample_root), str(tmp_path / "b"), "-s", SLIDE, "--no-gene-index",
                 "--workers", "0"]) == 0
    assert not (tmp_path / "b" / f"{SLIDE}.zarr" / GENE_INDEX).exists()
    assert main(["--quiet", "convert", str(sample_root), str(tmp_path / "c"), "-s", SLIDE, "--workers", "0"]) == 0
    assert (tmp_path / "c" / f"{SLIDE}.zarr" / GENE_INDEX / "table" / "X").is_dir()


def _flip_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def _change_value(store: Path) -> None:
    import zarr

    arr = zarr.open_group(str(store / GENE_INDEX / "table" / "X"), mode="r+")["data"]
    values = arr[...]
    values[10] += 1
    arr[...] = values


_DAMAGE = {
    "flipped byte": (lambda s: _flip_byte(s / GENE_INDEX / "table" / "X" / "data" / "c" / "0"), {"structure"}),
    "deleted shard": (lambda s: (s / GENE_INDEX / "table" / "X" / "indices" / "c" / "0").unlink(), {"structure"}),
    "changed value": (_change_value, {"checksums", "gene_index"}),
    "deleted index": (lambda s: shutil.rmtree(s / GENE_INDEX), {"checksums"}),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_index_is_reported_and_not_trusted(store, damage, stimage_log):
    harm, checks = _DAMAGE[damage]
    table = _table(store)
    harm(store)
    report = ssd.io.validate(store)
    assert {p.check for p in report.problems} == checks, str(report)
    assert all("gene index 'table'" in p.message for p in report.problems), str(report)
    genes = [str(g) for g in table.var_names]  # every gene: the damaged chunk is read
    _assert_genes(ssd.io.read_genes(store, genes), table, genes)
    if damage != "deleted index":
        assert any("gene index cannot be read" in r.getMessage() for r in stimage_log.records)
