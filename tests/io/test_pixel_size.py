"""Pixel size (µm/px) against real 10x Visium geometry and real ST coordinates (issues 15, 17).

Oracle: the real 10x sample in ``../shared/real-data/visium_mouse_brain``. The true pixel
size of an image at scale factor ``s`` is ``65 / (spot_diameter_fullres * s)`` µm/px (10x
defines ``spot_diameter_fullres`` as the pixels spanning a theoretical 65 µm spot). The
release-layout coordinate files are written as the release does:
``yaxis = pxl_row_in_fullres * s``, ``xaxis = pxl_col_in_fullres * s``,
``r = spot_diameter_fullres / 2 * s``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stimage_sd as ssd
from stimage_sd.io._scale import array_fit_spacing, estimate_pixel_size, nearest_neighbour_spacing

SCALES = ("tissue_lowres_scalef", "tissue_hires_scalef")
SLIDE = "GSE999999_GSM9999999"  # a Visium slide id in the release's GEO style
ST_FILE = "Human_Breast_Andersson_10142021_ST_A1_coord.csv"


@pytest.fixture
def stimage_logging():
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    log.propagate = True
    yield log
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


@pytest.fixture(scope="module")
def visium(real_data) -> dict:
    """The real 10x sample: positions, scale factors and the barcodes of the 100-spot subset."""
    import h5py

    root = real_data / "visium_mouse_brain"
    if not root.is_dir():
        pytest.skip(f"real 10x Visium sample not available: {root} is absent")
    pos = pd.read_csv(
        root / "spatial" / "tissue_positions_list.csv", header=None,
        names=["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"],
    ).set_index("barcode")
    sf = json.loads((root / "spatial" / "scalefactors_json.json").read_text())
    with h5py.File(root / "filtered_feature_bc_matrix.h5", "r") as f:
        barcodes = [b.decode() for b in f["matrix"]["barcodes"][:]]
    return {"root": root, "pos": pos, "sf": sf, "subset": barcodes}


def _variant(v: dict, name: str) -> pd.DataFrame:
    pos = v["pos"]
    rng = np.random.default_rng(17)
    if name == "full":
        return pos
    if name == "in_tissue":
        return pos[pos["in_tissue"] == 1]
    if name == "qc_thinned":  # 40 % removed at random
        keep = rng.choice(len(pos), size=round(0.6 * len(pos)), replace=False)
        return pos.iloc[np.sort(keep)]
    if name == "partial":  # one corner of the capture area
        return pos[(pos["array_row"] < 30) & (pos["array_col"] < 60)]
    if name == "sparse":  # the 100 real spots of the h5 subset
        return pos.loc[v["subset"]]
    if name == "single_row":
        return pos[pos["array_row"] == 20]
    if name == "single_column":  # every other row: sqrt 3 pitches apart
        return pos[pos["array_col"] == 40]
    raise ValueError(name)


def _write_coord(path: Path, spots: pd.DataFrame, v: dict, scale: str, slide: str = SLIDE, r_factor: float = 1.0):
    """A coord file as the release writes it (``,yaxis,xaxis,r``, ids ``<slide>_<barcode>``)."""
    s = v["sf"][scale]
    df = pd.DataFrame(
        {
            "yaxis": spots["pxl_row"].to_numpy() * s,
            "xaxis": spots["pxl_col"].to_numpy() * s,
            "r": v["sf"]["spot_diameter_fullres"] / 2 * s * r_factor,
        },
        index=[f"{slide}_{b}" for b in spots.index],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)
    return path


def _truth(v: dict, scale: str) -> float:
    return 65.0 / (v["sf"]["spot_diameter_fullres"] * v["sf"][scale])


def _estimate(path: Path, tech: str = "Visium", **kw):
    coords = ssd.io.read_coords(path)
    return estimate_pixel_size(coords[["x", "y"]].to_numpy(), float(coords["r"].median()), tech,
                               spot_ids=coords.index, source=path.name, **kw), coords


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["full", "in_tissue", "qc_thinned", "partial", "sparse", "single_row"])
def test_real_visium_variants_within_2_percent(visium, tmp_path, scale, name):
    path = _write_coord(tmp_path / "coord.csv", _variant(visium, name), visium, scale)
    est, coords = _estimate(path)
    truth = _truth(visium, scale)
    assert est.um_per_px == pytest.approx(truth, rel=0.02)
    assert est.trusted and est.decision in ("lattice", "agree")
    if name != "single_row":  # a plane lattice decides alone: the same value with a wrong radius
        assert est.decision == "lattice" and est.lattice["kind"] == "hex" and est.lattice["decisive"]
        assert est.pitch_um_per_px == pytest.approx(truth, rel=0.02)
        wrong = _write_coord(tmp_path / "wrong_r.csv", _variant(visium, name), visium, scale, r_factor=1.5)
        est_w, _ = _estimate(wrong, log=False)
        assert est_w.um_per_px == pytest.approx(truth, rel=0.02) and est_w.decision == "lattice"
        assert "release radius implies" in est_w.reason
    if name == "sparse":
        # the old estimate (median nearest-neighbour distance) is 2.66x off here
        nn = 100.0 / nearest_neighbour_spacing(coords[["x", "y"]].to_numpy())
        assert nn / truth == pytest.approx(1 / 2.66, rel=0.02)
        assert est.lattice["n_spots"] == 100 and est.lattice["fraction_on_lattice"] == 1.0
        # ~15 % of the spots have a neighbour one pitch away: a handful of pairs, enough
        assert 3 <= est.lattice["n_pitch_pairs"] <= 15


@pytest.mark.parametrize("scale", SCALES)
def test_single_column_is_sqrt3_pitches(visium, tmp_path, scale):
    """A Visium column holds every other row: sqrt 3 pitches apart; the radius picks that multiple."""
    path = _write_coord(tmp_path / "coord.csv", _variant(visium, "single_column"), visium, scale)
    est, _ = _estimate(path)
    assert est.decision == "agree" and est.lattice_multiple == pytest.approx(np.sqrt(3))
    assert est.um_per_px == pytest.approx(_truth(visium, scale), rel=0.02)
    assert est.lattice["kind"] == "line" and not est.lattice["decisive"]


def test_detect_lattice_on_the_sparse_real_subset(visium):
    """The 100 real spots form a hexagonal lattice (a sparse one: the graph is a kNN graph)."""
    xy = _variant(visium, "sparse")[["pxl_col", "pxl_row"]].to_numpy(float)
    lat = ssd.tl.detect_lattice(xy)
    pitch_true = visium["sf"]["spot_diameter_fullres"] / 65 * 100
    assert lat["lattice"] == "hex" and lat["fraction_on_lattice"] == 1.0
    assert lat["pitch"] == pytest.approx(pitch_true, rel=0.01)
    assert not lat["dense"]
    full = ssd.tl.detect_lattice(visium["pos"][["pxl_col", "pxl_row"]].to_numpy(float))
    assert full["lattice"] == "hex" and full["dense"] and full["coordination"] == 6


# ------------------------------------------------------------------------- legacy ST


def _st(real_data):
    path = real_data / ST_FILE
    if not path.is_file():
        pytest.skip(f"real ST coordinate file not available: {path} is absent")
    coords = ssd.io.read_coords(path)
    ab = np.array([[int(g) for g in re.search(r"_(\d+)x(\d+)$", s).groups()] for s in coords.index])
    return coords, ab


def test_real_st_array_fit_and_pair_differences_agree(real_data):
    """Jittered real ST array (RMS 8 % of the pitch): the array fit and the lattice fit agree."""
    coords, _ = _st(real_data)
    xy, r = coords[["x", "y"]].to_numpy(), float(coords["r"].median())
    est = estimate_pixel_size(xy, r, "ST", spot_ids=coords.index)
    geo = estimate_pixel_size(xy, r, "ST")  # no ids: the pair-difference fit
    assert est.pitch_method == "array-fit" and geo.pitch_method == "pair-differences"
    assert est.decision == geo.decision == "lattice"
    assert geo.lattice["kind"] == "square" and geo.lattice["fraction_on_lattice"] == 1.0
    assert geo.um_per_px == pytest.approx(est.um_per_px, rel=0.01)
    # the release radius (100 µm spots) is an independent check
    assert est.um_per_px == pytest.approx(est.radius_um_per_px, rel=0.02)


@pytest.mark.parametrize("axis", [0, 1])
def test_st_one_row_or_column_is_offset_independent(real_data, axis):
    """Issue 15: an ST slide on one array row/column; the fit was rank-deficient and offset-dependent."""
    coords, ab = _st(real_data)
    xy = coords[["x", "y"]].to_numpy()
    full = array_fit_spacing(coords.index, xy)
    value = np.bincount(ab[:, axis]).argmax()  # the longest row (or column)
    sel = ab[:, axis] == value
    ids = coords.index[sel]
    r = float(coords["r"].median())
    results = []
    for offset in (0.0, 1e4, -3e3, 0.5e6):
        est = estimate_pixel_size(xy[sel] + offset, r, "ST", spot_ids=ids, log=False)
        assert est.pitch_method == "array-fit" and est.decision == "lattice"
        results.append(est.pitch_px)
    np.testing.assert_allclose(results, results[0], rtol=1e-9)
    assert results[0] == pytest.approx(full, rel=0.02)


def test_generated_st_jitter_within_2_percent(tmp_path):
    from stimage_sd.datasets import SlideSpec, make_slide

    spec = SlideSpec("Human_Breast_Jit_10142021_ST_A1", "ST", grid=(16, 18), um_per_px=7.0, n_genes=40,
                     n_domains=2, n_markers=2)
    truth = make_slide(tmp_path, spec)
    files = ssd.io.find_slide(tmp_path, spec.slide)
    est, _ = _estimate(files.coord, tech="ST")
    assert est.um_per_px == pytest.approx(truth.um_per_px, rel=0.02) and est.decision == "lattice"


# ------------------------------------------------------------------------- bad input


def test_degenerate_geometry_warns_and_records_why(visium, tmp_path, stimage_logging, caplog):
    caplog.set_level(logging.WARNING, logger="stimage_sd")
    pos = visium["pos"]
    scale = "tissue_lowres_scalef"
    truth = _truth(visium, scale)
    cases = {
        "one_spot": pos.iloc[:1],
        "one_point": pd.concat([pos.iloc[:1]] * 6).set_axis([f"b{i}" for i in range(6)]),
    }
    for name, spots in cases.items():
        caplog.clear()
        est, _ = _estimate(_write_coord(tmp_path / f"{name}.csv", spots, visium, scale))
        assert est.decision == "radius" and not est.trusted
        assert est.um_per_px == pytest.approx(truth, rel=1e-6)
        assert "no lattice" in est.reason and est.lattice["dim"] == 0
        assert any(f"{name}.csv" in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)
    # two estimates that disagree, no lattice to decide: one row with a radius 1.5x too large
    caplog.clear()
    est, _ = _estimate(_write_coord(tmp_path / "row.csv", _variant(visium, "single_row"), visium, scale, r_factor=1.5))
    assert est.decision == "radius" and not est.trusted and "does not decide" in est.reason
    assert any("disagrees" in rec.getMessage() for rec in caplog.records)
    # nothing at all: no pixel size, no micron system
    xy = np.zeros((3, 2))
    est = estimate_pixel_size(xy, float("nan"), "Visium", source="empty")
    assert np.isnan(est.um_per_px) and est.decision == "none" and "no micron coordinate system" in est.reason


# ------------------------------------------------------------------------- end to end


def _release(v: dict, root: Path, spots: pd.DataFrame, scale: str, slide: str = SLIDE) -> Path:
    """A one-slide release: real coordinates, the real lowres/hires image, real counts (h5 subset)."""
    import h5py
    import scipy.sparse as sp

    with h5py.File(v["root"] / "filtered_feature_bc_matrix.h5", "r") as f:
        m = f["matrix"]
        X = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:])).T.tocsr()
        barcodes = [b.decode() for b in m["barcodes"][:]]
        genes = [g.decode() for g in m["features"]["name"][:]]
    counts = pd.DataFrame(X.toarray(), index=[f"{slide}_{b}" for b in barcodes], columns=genes)
    counts = counts.loc[[f"{slide}_{b}" for b in spots.index]]
    (root / "Visium" / "gene_exp").mkdir(parents=True)
    counts.to_csv(root / "Visium" / "gene_exp" / f"{slide}_count.csv")
    _write_coord(root / "Visium" / "coord" / f"{slide}_coord.csv", spots, v, scale, slide)
    (root / "Visium" / "image").mkdir(parents=True)
    png = "tissue_lowres_image.png" if scale == "tissue_lowres_scalef" else "tissue_hires_image.png"
    shutil.copyfile(v["root"] / "spatial" / png, root / "Visium" / "image" / f"{slide}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_sparse_real_slide_converts_and_validates(visium, tmp_path, scale):
    from stimage_sd.cli import main

    root = _release(visium, tmp_path / "release", _variant(visium, "sparse"), scale)
    store = ssd.io.convert_slide(root, SLIDE, tmp_path / "stores", tech="Visium")
    sdata = ssd.io.read(store)
    meta = sdata["table"].uns["stimage"]
    truth = _truth(visium, scale)
    assert meta["um_per_px"] == pytest.approx(truth, rel=0.02)
    ps = meta["pixel_size"]
    assert ps["decision"] == "lattice" and ps["method"] == "pitch" and ps["reason"]
    assert ps["radius_um_per_px"] == pytest.approx(truth, rel=1e-6)
    assert ps["lattice"]["kind"] == "hex" and ps["lattice"]["decisive"]
    assert ssd.io.validate(store).ok
    assert main(["--quiet", "validate", str(store)]) == 0


@pytest.mark.slow
def test_validate_flags_a_store_with_the_old_wrong_scale(visium, tmp_path, capsys):
    """A store whose micron system came from the nearest-neighbour median (6.08 vs 16.15 µm/px)."""
    import spatialdata as sd
    from spatialdata.transformations import Scale, set_transformation

    from stimage_sd.cli import main

    scale = "tissue_lowres_scalef"
    root = _release(visium, tmp_path / "release", _variant(visium, "sparse"), scale)
    store = ssd.io.convert_slide(root, SLIDE, tmp_path / "stores", tech="Visium")
    sdata = sd.read_zarr(store)
    xy = sdata["table"].obsm["spatial"]
    old = 100.0 / nearest_neighbour_spacing(xy)  # what the old estimator recorded
    assert old / _truth(visium, scale) < 0.4
    meta = sdata["table"].uns["stimage"]
    meta["um_per_px"] = old
    meta["pixel_size"] = {"um_per_px": old, "method": "pitch", "pitch_method": "nearest-neighbour"}
    sdata.attrs["stimage"] = {**sdata.attrs["stimage"], "um_per_px": old}
    for el in (sdata["he"], sdata["spots"]):
        set_transformation(el, Scale([old, old], axes=("y", "x")), to_coordinate_system="micron")
    bad = tmp_path / "old.zarr"
    sdata.write(bad)
    report = ssd.io.validate(bad)
    scale_problems = [p for p in report.problems if p.check == "scale"]
    assert len(scale_problems) == 1 and "inconsistent" in scale_problems[0].message
    assert f"{_truth(visium, scale):.4g}" in scale_problems[0].message
    capsys.readouterr()
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr()
    assert "inconsistent with the store's own spot geometry" in out.out + out.err
    assert "Traceback" not in out.out + out.err
    # the same scale with a recorded reason for a value the geometry does not back is accepted
    meta["pixel_size"] = {"um_per_px": old, "decision": "radius", "reason": "set by hand for this test"}
    ok = tmp_path / "explained.zarr"
    sdata.write(ok)
    assert not [p for p in ssd.io.validate(ok).problems if p.check == "scale"]


@pytest.mark.slow
def test_single_row_with_wrong_radius_converts_and_records_why(visium, tmp_path, caplog, stimage_logging):
    """Bad input: two estimates disagree and no lattice decides: converts, warns, the store says why."""
    caplog.set_level(logging.WARNING, logger="stimage_sd")
    scale = "tissue_lowres_scalef"
    # counts exist only for the 100 subset barcodes: the 5 of them on one array row, with gaps
    sub = _variant(visium, "sparse")
    row = sub[sub["array_row"] == sub["array_row"].value_counts().idxmax()]
    assert len(row) == 5
    root = _release(visium, tmp_path / "release", row, scale)
    coord = root / "Visium" / "coord" / f"{SLIDE}_coord.csv"
    _write_coord(coord, row, visium, scale, r_factor=1.5)  # a radius 1.5x too large (cf. release issue #10)
    store = ssd.io.convert_slide(root, SLIDE, tmp_path / "stores", tech="Visium")
    meta = ssd.io.read(store)["table"].uns["stimage"]
    ps = meta["pixel_size"]
    assert ps["decision"] == "radius" and not ps["trusted"] and ps["lattice"]["kind"] == "line"
    assert "does not decide" in ps["reason"] and "disagrees" in ps["reason"]
    assert meta["um_per_px"] == pytest.approx(_truth(visium, scale) / 1.5, rel=1e-6)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and SLIDE in r.getMessage()]
    assert any("check this slide's scale" in m for m in warned)
    assert ssd.io.validate(store).ok  # the recorded reason explains the scale
    # with the right radius the line's spacing agrees with it: one pitch
    _write_coord(coord, row, visium, scale)
    store = ssd.io.convert_slide(root, SLIDE, tmp_path / "stores", tech="Visium", overwrite=True)
    ps = ssd.io.read(store)["table"].uns["stimage"]["pixel_size"]
    assert ps["decision"] == "agree" and ps["trusted"] and ps["um_per_px"] == pytest.approx(_truth(visium, scale), rel=0.02)


# ------------------------------------------------------------------------- lattice fit


def _grid(grid: str, nr: int, nc: int) -> np.ndarray:
    r, c = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    if grid == "hex":
        return np.c_[(c + 0.5 * (r % 2)).ravel(), r.ravel() * np.sqrt(3) / 2]
    return np.c_[c.ravel(), r.ravel()].astype(float)


@pytest.mark.parametrize("seed", range(12))
def test_lattice_fit_rotated_offset_sparse_jittered(seed):
    """Rotated, shifted, thinned (to 10 %), jittered grids with a few stray spots: pitch within 2 %."""
    from stimage_sd.io._lattice import fit_lattice

    rng = np.random.default_rng(seed)
    grid = ("hex", "square")[seed % 2]
    pitch = 10 ** rng.uniform(0.5, 3)
    p = _grid(grid, 40, 40)
    p = p[rng.random(len(p)) < (1.0, 0.6, 0.1)[seed % 3]]
    jitter = (0.0, 0.03)[(seed // 3) % 2]
    p = p + rng.normal(0, jitter, p.shape)
    if seed >= 6:  # 1 % stray spots, between sites
        stray = rng.choice(len(p), max(1, len(p) // 100), replace=False)
        p[stray] += rng.uniform(0.3, 0.7, (len(stray), 2))
    ang = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    xy = (p * pitch) @ rot.T + rng.uniform(-1e5, 1e5, 2)
    fit = fit_lattice(xy)
    assert fit.kind == grid and fit.pitch_px == pytest.approx(pitch, rel=0.02)
    assert fit.fraction_on_lattice >= 0.97


def test_random_positions_are_not_a_lattice():
    from stimage_sd.io._lattice import fit_lattice

    xy = np.random.default_rng(0).random((400, 2)) * 1000
    fit = fit_lattice(xy)
    assert fit.fraction_on_lattice < 0.5
    est = estimate_pixel_size(xy, 10.0, "Visium", log=False)
    assert est.decision == "radius" and not est.trusted
    assert ssd.tl.detect_lattice(xy)["lattice"] == "irregular"
