"""``stimage_sd.io.validate`` and ``stimage-sd validate``: the data contract and the release files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import zarr

from stimage_sd.cli import main
from stimage_sd.io import ValidationReport, validate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def stimage_logging():
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    yield log
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def _slide(sample_stores, tech: str = "Visium") -> str:
    return next(s for s, p in sample_stores.items() if sd.read_zarr(p, selection=("tables",))["table"].uns["stimage"]["tech"] == tech)


@pytest.fixture
def store_copy(sample_stores, tmp_path) -> tuple[str, Path]:
    slide = _slide(sample_stores)
    dst = tmp_path / "out" / sample_stores[slide].name
    shutil.copytree(sample_stores[slide], dst)
    return slide, dst


def _problems(report: ValidationReport, check: str) -> list[str]:
    return [p.message for p in report.problems if p.check == check]


def test_sample_stores_valid_against_release(sample_stores, sample_root):
    for slide, path in sample_stores.items():
        report = validate(path, source=sample_root)
        assert report.ok, str(report)
        assert report.slide == slide
        assert {"marker", "elements", "table", "shapes", "link", "image", "coordinates", "spots", "genes", "counts"} <= set(report.checks)


def test_one_count_altered_in_zarr_is_caught(store_copy, sample_root):
    _, path = store_copy
    group = zarr.open_group(str(path / "tables" / "table" / "X"), mode="r+")
    data, indptr = group["data"], group["indptr"][:]
    k = 7
    old = data[k]
    data[k] = old + 1
    row = int(np.searchsorted(indptr, k, side="right") - 1)
    spot = sd.read_zarr(path, selection=("tables",))["table"].obs_names[row]
    # the contract alone still holds (a count is just a number), but the content checksum
    # recorded at conversion catches it without the source (issue 15)
    plain = validate(path)
    # ... and the gene index, written from the counts as converted, no longer agrees with the table
    assert [p.check for p in plain.problems] == ["checksums", "gene_index"], str(plain)
    assert "raw counts (X) differ from those written" in str(plain)
    assert "counts of 1 gene(s) differ from the table's raw counts (1 value(s))" in str(plain)
    assert validate(path, checksums=False).ok
    report = validate(path, source=sample_root)
    assert not report.ok
    counts = _problems(report, "counts")
    assert any("per-spot count totals differ for 1 spot(s)" in m and repr(spot) in m for m in counts), counts
    assert any(f"spot {spot!r}" in m and f"store {int(old) + 1}, release {int(old)}" in m for m in counts), counts


def test_table_rewritten_with_one_count_changed_is_caught(store_copy, sample_root, capsys, stimage_logging):
    """Rewrite the table element through spatialdata (a plausible foreign edit)."""
    _, path = store_copy
    sdata = sd.read_zarr(path)
    table = sdata["table"]
    X = table.X.tolil()
    i, j = 3, int(np.flatnonzero(X[3].toarray().ravel() == 0)[0])
    X[i, j] = 1
    table.X = X.tocsr().astype(table.X.dtype)
    sdata.delete_element_from_disk("table")
    sdata.write_element("table")
    spot, gene = table.obs_names[i], table.var["gene_name"].iloc[j]
    report = validate(path, source=sample_root)
    msgs = " | ".join(str(p) for p in report.problems)
    assert f"spot {spot!r} gene {gene!r}: store 1, release 0" in msgs
    assert f"{gene!r}: store" in msgs  # per-gene totals
    code = main(["--quiet", "validate", str(path), "--source", str(sample_root)])
    cap = capsys.readouterr()
    assert code == 1
    text = cap.out + cap.err
    assert "Traceback" not in text
    assert spot in text and "invalid" in text
    assert "0 of 1 store(s) valid" in text


def test_cli_ok_on_output_folder(sample_stores, sample_root, capsys, stimage_logging):
    out = next(iter(sample_stores.values())).parent
    code = main(["--quiet", "validate", str(out), "--source", str(sample_root), "--no-checksums"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    n = len(sample_stores)
    assert f"{n} of {n} store(s) valid" in cap.out


def test_missing_marker(store_copy):
    _, path = store_copy
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["stimage"])
    meta["complete"] = False
    group.attrs["stimage"] = meta
    report = validate(path)
    assert _problems(report, "marker") and "completion marker missing" in _problems(report, "marker")[0]


def test_spot_removed_from_store(store_copy, sample_root):
    _, path = store_copy
    sdata = sd.read_zarr(path)
    table = sdata["table"]
    gone = table.obs_names[0]
    sdata.tables["table"] = table[1:].copy()
    sdata.delete_element_from_disk("table")
    sdata.write_element("table")
    report = validate(path, source=sample_root)
    spots = " ".join(_problems(report, "spots"))
    assert "1 spot id(s) of the release are not in the store" in spots and repr(gone) in spots
    # without the source the contract catches it too: the table and shapes disagree
    alone = validate(path)
    assert any("the table has" in m for m in _problems(alone, "link")) or _problems(alone, "metadata")


def test_gene_renamed(store_copy, sample_root):
    _, path = store_copy
    sdata = sd.read_zarr(path)
    table = sdata["table"]
    names = list(table.var["gene_name"])
    names[4] = "NOT_A_GENE"
    table.var["gene_name"] = names
    sdata.delete_element_from_disk("table")
    sdata.write_element("table")
    report = validate(path, source=sample_root)
    assert any("gene 5 is 'NOT_A_GENE' in the store" in m for m in _problems(report, "genes"))


def test_centres_moved(store_copy):
    _, path = store_copy
    sdata = sd.read_zarr(path)
    table = sdata["table"]
    table.obsm["spatial"] = table.obsm["spatial"] + np.array([5.0, 0.0])
    sdata.delete_element_from_disk("table")
    sdata.write_element("table")
    report = validate(path)
    assert any("shape centres differ from obsm['spatial']" in m for m in _problems(report, "link"))


def test_micron_scale_wrong(store_copy):
    from spatialdata.transformations import Scale, set_transformation

    _, path = store_copy
    sdata = sd.read_zarr(path)
    set_transformation(sdata["spots"], Scale([9.0, 9.0], axes=("y", "x")), to_coordinate_system="micron")
    sdata.write_transformations("spots")
    report = validate(path)
    assert any("'spots'" in m and "micron" in m for m in _problems(report, "coordinates"))


def test_table_element_deleted(store_copy):
    _, path = store_copy
    sdata = sd.read_zarr(path)
    sdata.delete_element_from_disk("table")
    report = validate(path)
    assert any("no table 'table'" in m for m in _problems(report, "elements"))


def test_source_file_changed(store_copy, sample_root, tmp_path):
    slide, path = store_copy
    root = tmp_path / "release"
    shutil.copytree(sample_root, root)
    from stimage_sd.io import find_slide

    files = find_slide(root, slide)
    data = bytearray(files.coord.read_bytes())
    i = data.index(b",", data.index(b"\n") + 1) + 1  # first digit of the first yaxis
    data[i] = ord("9") if data[i] != ord("9") else ord("8")  # same size, other value
    files.coord.write_bytes(bytes(data))
    report = validate(path, source=root)
    assert any("SHA-256 differs" in m for m in _problems(report, "source"))
    assert any("centres differ from the coordinate file" in m for m in _problems(report, "counts"))


def test_not_a_store(tmp_path, capsys, stimage_logging):
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    assert not validate(junk).ok
    assert not validate(tmp_path / "absent.zarr").ok
    code = main(["--quiet", "validate", str(junk), str(tmp_path / "absent.zarr")])
    cap = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in cap.out + cap.err
    assert "0 of 2 store(s) valid" in cap.out


def test_hostile_slide_id_in_store(store_copy, sample_root):
    """A store claiming slide ``../../evil`` is reported, never used as a path."""
    _, path = store_copy
    sdata = sd.read_zarr(path)
    table = sdata["table"]
    meta = dict(table.uns["stimage"])
    meta["slide"] = "../../evil"
    table.uns["stimage"] = meta
    sdata.delete_element_from_disk("table")
    sdata.write_element("table")
    report = validate(path, source=sample_root)
    assert any("invalid slide id" in m for m in _problems(report, "source"))
    assert any("attrs['stimage']['slide']" in m for m in _problems(report, "metadata"))


def test_report_json_free_of_surprises(store_copy):
    """The report is plain data (printable, comparable)."""
    _, path = store_copy
    r = validate(path)
    assert r.ok and str(r).endswith(": ok")
    json.dumps([str(p) for p in r.problems])


def test_damaged_release_file_reported_not_raised(store_copy, sample_root, tmp_path):
    slide, path = store_copy
    root = tmp_path / "release"
    shutil.copytree(sample_root, root)
    from stimage_sd.io import find_slide

    files = find_slide(root, slide)
    lines = files.counts.read_bytes().split(b"\n")
    lines[3] = lines[3] + b",1.0"  # one value too many on line 4
    files.counts.write_bytes(b"\n".join(lines))
    report = validate(path, source=root, checksums=False)
    assert not report.ok
    assert any(str(files.counts) in m and "line 4" in m for m in _problems(report, "source")), report.problems


def test_checksums_follow_the_table_swap_and_catch_damage_after_it(store_copy, sample_root):
    """``replace_table`` records the new table's checksum; ``recover_store`` when it rolls forward."""
    from stimage_sd.io import recover_store, replace_table
    from stimage_sd.io._checksums import CHECKSUM_KEY, csr_digest
    from stimage_sd.io._transaction import PENDING_KEY, store_attrs

    _, path = store_copy
    table = sd.read_zarr(path, selection=("tables",))["table"]
    counts = table.X.copy()
    table.layers["counts"] = counts
    table.X = counts.astype(np.float32) / 2  # any analysis result
    replace_table(path, table)
    rec = store_attrs(path)[CHECKSUM_KEY]["tables"]["table"]
    assert rec["location"] == "layers/counts" and rec["digest"] == csr_digest(counts)
    assert validate(path, source=sample_root).ok
    # killed after the swap, before the marker: the next run finishes it and records
    table2 = table.copy()
    table2.layers["counts"].data[0] += 1  # different raw counts: the record must follow them
    from stimage_sd.io import _transaction as tx

    def killed(_path):
        raise KeyboardInterrupt  # like SIGINT during step 4

    real, tx.consolidate = tx.consolidate, killed
    try:
        with pytest.raises(KeyboardInterrupt):
            replace_table(path, table2)
    finally:
        tx.consolidate = real
    assert store_attrs(path).get(PENDING_KEY)
    assert recover_store(path) == "finished"
    rec = store_attrs(path)[CHECKSUM_KEY]["tables"]["table"]
    assert rec["digest"] == csr_digest(table2.layers["counts"])
    assert validate(path).ok
    # damage after the swap is caught without the source
    group = zarr.open_group(str(path / "tables" / "table" / "layers" / "counts"), mode="r+")
    group["data"][0] = group["data"][0] + 1
    assert "raw counts (layers/counts) differ from those written" in str(validate(path))


@pytest.mark.parametrize(
    ("value", "dtype", "altered"),
    [("2147483653", np.int64, 2147483648), ("16777217", np.float64, 16777216)],
)
def test_source_comparison_is_exact_beyond_int32_and_float32(value, dtype, altered, tmp_path, capsys, stimage_logging):
    """Values int32/float32 would round are stored exactly; a one-unit change is caught."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from corpus import _set_cell, make_base
    from stimage_sd.io import convert_slide

    base = make_base(tmp_path / "release")
    _set_cell(base.files.counts, 3, 5, value)
    if dtype == np.float64:
        _set_cell(base.files.counts, 4, 6, "3.5")  # a non-integer: float, and float32 would round
    store = convert_slide(base.root, base.slide, tmp_path / "out")
    table = sd.read_zarr(store, selection=("tables",))["table"]
    assert table.X.dtype == dtype and int(value) in table.X.data
    assert main(["--quiet", "validate", str(store), "--source", str(base.root)]) == 0
    group = zarr.open_group(str(store / "tables" / "table" / "X"), mode="r+")
    data = group["data"][:]
    k = int(np.flatnonzero(data == int(value))[0])
    group["data"][k] = altered
    capsys.readouterr()
    assert main(["--quiet", "validate", str(store), "--source", str(base.root)]) == 1
    out = capsys.readouterr()
    assert f"store {altered}, release {value}" in out.out + out.err
