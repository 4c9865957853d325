"""Round trips of the converter on generated slides of every technology, and bad input."""

from __future__ import annotations

import csv
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import stimage_sd as ssd
from stimage_sd import datasets
from stimage_sd.cli import main
from stimage_sd.errors import FormatError, IncompleteStoreError, SlideNotFoundError
from stimage_sd.io import find_slide, to_rgb8

SPECS = {s.slide: s for s in datasets.SAMPLE_SPECS}


def _decode_independently(path) -> np.ndarray:
    """Decode an image with PIL/tifffile directly (not through stimage_sd.io.read_image)."""
    import tifffile
    from PIL import Image

    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        arr = tifffile.imread(path)
    else:
        with Image.open(path) as im:
            arr = np.asarray(im)
    return to_rgb8(arr)


@pytest.fixture(scope="module", params=sorted(SPECS))
def converted(request, sample_root, sample_stores):
    slide = request.param
    return slide, find_slide(sample_root, slide), sd.read_zarr(sample_stores[slide])


def test_sample_covers_every_technology():
    assert {s.tech for s in SPECS.values()} == {"ST", "Visium", "VisiumHD"}


def test_counts_identical_to_pandas(converted):
    _, files, sdata = converted
    table = sdata["table"]
    ref = pd.read_csv(files.counts, index_col=0)
    with open(files.counts, newline="") as fh:
        header = next(csv.reader(fh))[1:]
    assert list(table.var["gene_name"]) == header
    assert table.var_names.is_unique
    dense = np.asarray(table.X.todense())
    np.testing.assert_array_equal(dense, ref.loc[table.obs_names].to_numpy())
    assert set(table.obs_names) == set(ref.index)
    from test_counts import expected_dtype

    assert table.X.dtype == expected_dtype(ref.to_numpy(dtype=np.float64))
    assert table.X.format == "csr"


def test_centres_and_shapes_match_coord_file(converted):
    slide, files, sdata = converted
    table = sdata["table"]
    coords = pd.read_csv(files.coord, index_col=0).loc[table.obs_names]
    np.testing.assert_array_equal(table.obsm["spatial"][:, 0], coords["xaxis"].to_numpy())
    np.testing.assert_array_equal(table.obsm["spatial"][:, 1], coords["yaxis"].to_numpy())
    shapes = sdata["spots"]
    assert list(shapes.index) == list(range(len(shapes)))
    np.testing.assert_array_equal(table.obs["spot_id"].to_numpy(), np.arange(table.n_obs))
    cent = shapes.geometry.centroid
    np.testing.assert_allclose(cent.x.to_numpy(), coords["xaxis"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(cent.y.to_numpy(), coords["yaxis"].to_numpy(), atol=1e-6)
    if files.tech == "VisiumHD":
        assert (shapes.geometry.geom_type == "Polygon").all()
        side = np.sqrt(shapes.geometry.area.to_numpy())
        np.testing.assert_allclose(side, 8.0 / SPECS[slide].um_per_px, rtol=0.02)
    else:
        np.testing.assert_allclose(shapes["radius"].to_numpy(), coords["r"].to_numpy())


def test_table_linked_to_shapes(converted):
    _, _, sdata = converted
    from spatialdata.models import TableModel

    attrs = sdata["table"].uns[TableModel.ATTRS_KEY]
    assert attrs["region"] == "spots"
    assert attrs["region_key"] == "region"
    assert attrs["instance_key"] == "spot_id"


def test_image_level0_identical_to_source(converted):
    _, files, sdata = converted
    image = sdata["he"]
    level0 = image["scale0"]["image"]
    assert level0.dtype == np.uint8
    assert tuple(level0.dims) == ("c", "y", "x")
    expected = _decode_independently(files.image)
    np.testing.assert_array_equal(np.moveaxis(level0.to_numpy(), 0, -1), expected)
    # multiscale until the smallest side is at most ~1000 px
    last = image[sorted(image.keys())[-1]]["image"]
    assert min(last.shape[1:]) <= 1000


def test_pixel_size_within_2_percent(converted):
    slide, _, sdata = converted
    truth = SPECS[slide].um_per_px
    meta = sdata["table"].uns["stimage"]
    assert meta["um_per_px"] == pytest.approx(truth, rel=0.02)
    assert meta["pixel_size"]["radius_um_per_px"] == pytest.approx(truth, rel=0.02)
    from spatialdata.transformations import get_transformation

    scale = get_transformation(sdata["spots"], to_coordinate_system="micron")
    assert scale.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0] == pytest.approx(meta["um_per_px"])
    assert set(get_transformation(sdata["he"], get_all=True)) == {"global", "micron"}


def test_metadata_and_provenance(converted):
    slide, files, sdata = converted
    meta = sdata["table"].uns["stimage"]
    assert meta["slide"] == slide
    assert meta["tech"] == files.tech
    assert meta["species"] == SPECS[slide].species
    assert sdata.attrs["stimage"]["complete"] is True
    src = meta["source"]
    assert src["counts"]["size"] == files.counts.stat().st_size
    import hashlib

    for part in ("coord", "counts", "image"):  # the count file's is computed while parsing it
        assert src[part]["sha256"] == hashlib.sha256(getattr(files, part).read_bytes()).hexdigest()
    # element names never contain the slide id
    assert set(sdata.images) | set(sdata.shapes) | set(sdata.tables) <= {"he", "spots", "table"}


def test_annotation_matched_per_spot(converted):
    _, files, sdata = converted
    table = sdata["table"]
    if files.annotation is None:
        assert "annotation" not in table.obs
        return
    anno = pd.read_csv(files.annotation, dtype=str, keep_default_na=False)
    anno = anno[~anno.iloc[:, 0].duplicated()].set_index(anno.columns[0]).iloc[:, 0]
    got = table.obs["annotation"].astype(object)
    for spot, label in anno.items():
        if spot in got.index:
            expected = label if label != "" else None
            value = got[spot]
            assert (value if pd.notna(value) else None) == expected, spot
    assert table.obs["annotation"].dtype == "category"


def test_read_refuses_store_without_marker(sample_stores, tmp_path):
    src = next(iter(sample_stores.values()))
    copy = tmp_path / "copy.zarr"
    shutil.copytree(src, copy)
    assert ssd.io.is_complete(copy)
    import zarr

    group = zarr.open_group(str(copy), mode="r+")
    meta = dict(group.attrs["stimage"])
    meta["complete"] = False
    group.attrs["stimage"] = meta
    with pytest.raises(IncompleteStoreError, match="completion marker"):
        ssd.io.read(copy)


def test_convert_skips_complete_store(sample_root, sample_stores, caplog):
    slide, store = next(iter(sample_stores.items()))
    before = store.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="stimage_sd"):
        assert ssd.io.convert_slide(sample_root, slide, store.parent) == store
    assert store.stat().st_mtime_ns == before
    assert "already converted" in caplog.text


# --- the real release files ----------------------------------------------------------


def test_real_metadata_table(real_data):
    meta = ssd.io.read_metadata(real_data / "meta_all_gene02122025.csv")
    assert len(meta) == 1149
    assert meta["involve_cancer"].dtype == "boolean"
    assert meta["spot_num"].dtype == "Int64"
    assert meta["spot_num"].sum() == 4_293_195
    assert meta["tech"].value_counts().to_dict() == {"Visium": 994, "ST": 151, "VisiumHD": 4}
    assert meta.loc["GSE144239_GSM4284316", "pmid"] == "32579974,38037084"
    assert "Mouse_Brain_10X_03292024_VIsiumHD" in meta.index


def test_real_metadata_tab_separated(real_data, tmp_path):
    src = pd.read_csv(real_data / "meta_all_gene02122025.csv", dtype=str, keep_default_na=False)
    tsv = tmp_path / "meta_all_gene.csv"
    src.to_csv(tsv, sep="\t", index=False, quoting=csv.QUOTE_ALL)
    meta = ssd.io.read_metadata(tsv)
    assert len(meta) == 1149
    assert meta["spot_num"].sum() == 4_293_195


def test_real_st_coordinates(real_data):
    coords = ssd.io.read_coords(real_data / "Human_Breast_Andersson_10142021_ST_A1_coord.csv")
    assert len(coords) == 346
    assert coords["r"].iloc[0] == pytest.approx(54.328144511906295)
    first = coords.iloc[0]
    assert (first["x"], first["y"]) == (1923.65, 2622.15)  # xaxis is the column, yaxis the row
    est = ssd.io.estimate_pixel_size(
        coords[["x", "y"]].to_numpy(), coords["r"].iloc[0], "ST", spot_ids=coords.index
    )
    assert est.um_per_px == pytest.approx(0.9, abs=0.03)
    assert est.disagreement < 0.02


# --- bad input ------------------------------------------------------------------------


@pytest.fixture
def root_copy(sample_root, tmp_path):
    dst = tmp_path / "release"
    shutil.copytree(sample_root, dst)
    return dst


def _visium_slide():
    return next(s for s in SPECS.values() if s.tech == "Visium")


def test_missing_count_file(root_copy, tmp_path):
    files = find_slide(root_copy, _visium_slide().slide)
    files.counts.unlink()
    with pytest.raises(SlideNotFoundError, match=r"_count\.csv"):
        ssd.io.convert_slide(root_copy, files.slide, tmp_path / "out")
    assert not ssd.io.is_complete(ssd.io.store_path(tmp_path / "out", files.slide))


def test_unknown_slide_lists_close_matches(root_copy):
    slide = _visium_slide().slide
    with pytest.raises(SlideNotFoundError, match="close matches"):
        find_slide(root_copy, slide[:-1] + "X")


def test_partly_overlapping_ids_converts_intersection(root_copy, tmp_path, caplog):
    files = find_slide(root_copy, _visium_slide().slide)
    coords = pd.read_csv(files.coord, index_col=0)
    coords.iloc[:-5].to_csv(files.coord)  # drop 5 spots from the coord file
    with caplog.at_level(logging.WARNING, logger="stimage_sd"):
        store = ssd.io.convert_slide(root_copy, files.slide, tmp_path / "out")
    table = sd.read_zarr(store)["table"]
    assert table.n_obs == len(coords) - 5
    dropped = table.uns["stimage"]["dropped_spots"]["counts_only"]
    assert dropped["n"] == 5
    assert set(dropped["ids"]) == set(coords.index[-5:])
    assert "dropped" in caplog.text


def test_disjoint_ids_fail(root_copy, tmp_path):
    files = find_slide(root_copy, _visium_slide().slide)
    coords = pd.read_csv(files.coord, index_col=0)
    coords.index = [f"other_{i}" for i in range(len(coords))]
    coords.to_csv(files.coord)
    with pytest.raises(FormatError, match="no spot id in common"):
        ssd.io.convert_slide(root_copy, files.slide, tmp_path / "out")
    assert not ssd.io.is_complete(ssd.io.store_path(tmp_path / "out", files.slide))


def test_negative_count_names_line_and_gene(root_copy, tmp_path):
    files = find_slide(root_copy, _visium_slide().slide)
    lines = files.counts.read_text().splitlines(keepends=True)
    header = next(csv.reader([lines[0]]))
    cells = lines[3].rstrip("\r\n").split(",")
    cells[2] = "-1.0"
    lines[3] = ",".join(cells) + "\n"
    files.counts.write_text("".join(lines))
    with pytest.raises(FormatError) as err:
        ssd.io.convert_slide(root_copy, files.slide, tmp_path / "out")
    msg = str(err.value)
    assert str(files.counts) in msg
    assert "line 4" in msg
    assert header[2] in msg


def test_undecodable_image(root_copy, tmp_path):
    files = find_slide(root_copy, _visium_slide().slide)
    files.image.write_bytes(b"this is not an image at all")
    with pytest.raises(FormatError, match="not a PNG, JPEG or TIFF"):
        ssd.io.convert_slide(root_copy, files.slide, tmp_path / "out")


def test_duplicate_spot_ids_in_coords(root_copy, tmp_path):
    files = find_slide(root_copy, _visium_slide().slide)
    lines = files.coord.read_text().splitlines(keepends=True)
    lines.append(lines[1])
    files.coord.write_text("".join(lines))
    with pytest.raises(FormatError, match=f"line {len(lines)}.*duplicated spot id|duplicated spot id"):
        ssd.io.convert_slide(root_copy, files.slide, tmp_path / "out")


@pytest.mark.slow
def test_cli_bad_slide_exit_code_no_traceback(root_copy, tmp_path, capsys):
    files = find_slide(root_copy, _visium_slide().slide)
    files.image.write_bytes(b"garbage")
    out = tmp_path / "out"
    code = main(["--quiet", "convert", str(root_copy), str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert "not a PNG, JPEG or TIFF" in captured.err + captured.out
    # the batch went on: every other slide is converted and complete
    for slide in SPECS:
        store = ssd.io.store_path(out, slide)
        assert ssd.io.is_complete(store) == (slide != files.slide), slide
    assert not list(out.glob(".*tmp-*"))


def test_cli_single_missing_slide(root_copy, tmp_path, capsys):
    code = main(["convert", str(root_copy), str(tmp_path / "o"), "--slide", "GSE0_nope"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    assert "GSE0_nope" in captured.err + captured.out


def test_unsafe_slide_id_refused(root_copy, tmp_path):
    for bad in ("../etc", "a/b", "..", "x\x00y"):
        with pytest.raises(ssd.StimageError, match="invalid slide id"):
            ssd.io.convert_slide(root_copy, bad, tmp_path / "out")
