"""``stimage-sd analyze`` (issue 6): results written back into the stores, report, reruns."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pandas as pd
import pytest

import stimage_sd as ssd
from stimage_sd.cli import main


@pytest.fixture
def stores(analysis_slides, tmp_path):
    """Writable copies of an annotated Visium store and an unannotated VisiumHD store."""
    out = {}
    for tech in ("Visium", "VisiumHD"):
        _, src = analysis_slides[tech]
        dst = tmp_path / "stores" / src.name
        shutil.copytree(src, dst)
        out[tech] = dst
    return out


def _results(path):
    t = ssd.io.read(path)["table"]
    return t


def _assert_same_table(a, b) -> None:
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert (a.X != b.X).nnz == 0
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    for k in ("domain_pca", "X_domain", "spatial"):
        np.testing.assert_array_equal(a.obsm[k], b.obsm[k])
    assert set(a.obsp) == set(b.obsp)  # (KMeans, the default with --domains, builds no feature graph)
    for k in a.obsp:
        assert (a.obsp[k] != b.obsp[k]).nnz == 0
    pd.testing.assert_frame_equal(a.uns["moranI"], b.uns["moranI"])


@pytest.mark.slow
def test_analyze_writes_results_report_and_is_repeatable(stores, tmp_path, capsys):
    report = tmp_path / "report"
    visium, hd = stores["Visium"], stores["VisiumHD"]
    raw = {k: ssd.io.read(p)["table"].X.copy() for k, p in stores.items()}
    missing = tmp_path / "missing.zarr"
    rc = main(["analyze", str(missing), str(visium), str(hd), "--domains", "4", "--report", str(report), "--seed", "1"])
    err = capsys.readouterr()
    assert rc == 1, err  # the missing store failed, the others went on
    # a slide without annotation: a message, not an error
    assert "no annotation" in err.err + err.out

    first = {}
    for tech, path in stores.items():
        assert ssd.io.is_complete(path)
        t = _results(path)
        first[tech] = t
        assert t.obs["domain"].cat.categories.size == 4
        assert {"qc_outlier", "total_counts", "pct_counts_mt"} <= set(t.obs)
        assert {"moranI", "moranI_rank", "highly_variable"} <= set(t.var)
        assert (t.layers["counts"] != raw[tech]).nnz == 0
        assert t.uns["stimage_analysis"]["seed"] == 1
        assert t.uns["domain"]["n_domains"] == 4
    assert "domain_scores" in first["Visium"].uns and "domain_scores" not in first["VisiumHD"].uns
    # the store still opens with plain spatialdata, images and shapes untouched
    import spatialdata as sd

    s = sd.read_zarr(visium)
    assert set(s.images) == {"he"} and set(s.shapes) == {"spots"}

    # report: per-slide figures and a summary table
    rows = list(csv.DictReader(open(report / "summary.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert "no such store" in rows[0]["note"]
    rows = rows[1:]
    by_tech = {r["tech"]: r for r in rows}
    assert float(by_tech["Visium"]["ari"]) == pytest.approx(first["Visium"].uns["domain_scores"]["ari"], abs=1e-4)
    assert by_tech["VisiumHD"]["ari"] == "" and "no annotation" in by_tech["VisiumHD"]["note"]
    assert by_tech["Visium"]["n_domains"] == "4"
    from PIL import Image

    for r in rows:
        for kind in ("domains", "qc", "svg"):
            png = report / f"{r['slide']}_{kind}.png"
            assert np.asarray(Image.open(png).convert("L"), dtype=float).std() > 10, png

    # a second run gives identical results
    assert main(["analyze", str(visium), str(hd), "--domains", "4", "--seed", "1"]) == 0
    for tech, path in stores.items():
        _assert_same_table(first[tech], _results(path))
    assert not list(visium.parent.glob(".*"))  # no temporary leftovers


def test_analyze_reports_failures_and_goes_on(stores, tmp_path, capsys):
    broken = tmp_path / "broken.zarr"
    shutil.copytree(stores["VisiumHD"], broken)
    ssd.io._transaction.set_marker(broken, False)  # an interrupted conversion
    missing = tmp_path / "missing.zarr"
    report = tmp_path / "report"
    rc = main(["-q", "analyze", str(broken), str(missing), "--report", str(report), "--domains", "3"])
    captured = capsys.readouterr()
    assert rc == 1
    rows = list(csv.DictReader(open(report / "summary.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "completion marker" in rows[0]["note"] and "no such store" in rows[1]["note"]
    assert "Traceback" not in captured.err
    assert not ssd.io.is_complete(broken)  # left as it was
