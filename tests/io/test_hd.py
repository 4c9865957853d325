"""VisiumHD: square bins at their real size, circles on request, bin aggregation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
import spatialdata as sd

import stimage_sd as ssd
from stimage_sd import io
from stimage_sd.errors import StimageError
from stimage_sd.pp._binning import fit_square_grid

SLIDE = "Mouse_Brain_Test_03292024_VIsiumHD"


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    """A small generated VisiumHD slide (8 µm bins, 0.5 µm/px) converted once."""
    from stimage_sd.datasets import SlideSpec, make_slide

    tmp = tmp_path_factory.mktemp("hd")
    spec = SlideSpec(SLIDE, "VisiumHD", grid=(44, 52), n_genes=150, um_per_px=0.5, image_format="png")
    truth = make_slide(tmp / "root", spec)
    path = io.convert_slide(tmp / "root", SLIDE, tmp / "out", progress=False)
    return tmp, truth, path


def test_bins_are_squares_of_the_bin_size(hd):
    _, truth, path = hd
    sdata = io.read(path)
    shapes, table = sdata.shapes["spots"], sdata.tables["table"]
    assert len(shapes) == table.n_obs == truth.n_spots
    side = 8.0 / truth.um_per_px  # 8 µm bins, in pixels
    meta = table.uns["stimage"]
    np.testing.assert_allclose(meta["um_per_px"], truth.um_per_px, rtol=1e-3)
    assert meta["spot_shape"] == "square"
    geoms = shapes.geometry.to_numpy()
    assert (shapely.get_type_id(geoms) == 3).all()  # polygons
    b = shapely.bounds(geoms)
    np.testing.assert_allclose(b[:, 2] - b[:, 0], side, rtol=1e-3)
    np.testing.assert_allclose(b[:, 3] - b[:, 1], side, rtol=1e-3)
    np.testing.assert_allclose(shapely.area(geoms), side**2, rtol=2e-3)
    # centred on the bin centres of the table (instance key -> shapes index)
    cen = shapely.get_coordinates(shapely.centroid(geoms))
    xy = table.obsm["spatial"][np.argsort(table.obs["spot_id"].to_numpy())]
    np.testing.assert_allclose(cen[shapes.index.to_numpy()], xy, atol=1e-6)
    # neighbouring squares tile the plane: no overlap beyond rounding
    assert shapely.area(shapely.intersection(geoms[0], geoms[1:50])).max() < 1e-6 * side**2
    assert sp.issparse(table.X) and table.X.format == "csr"


def test_circles_on_request(hd):
    tmp, truth, _ = hd
    sdata = io.read_slide(tmp / "root", SLIDE, shape="circle", image=False, progress=False)
    shapes = sdata.shapes["spots"]
    assert "radius" in shapes.columns
    np.testing.assert_allclose(shapes["radius"].to_numpy(), truth.radius_px)
    assert sdata.tables["table"].uns["stimage"]["spot_shape"] == "circle"


@pytest.mark.parametrize("size_um", [32, 16])
def test_bin_hd_preserves_counts_and_maps_every_bin(hd, size_um):
    _, truth, path = hd
    sdata = io.read(path)
    fine = sdata.tables["table"]
    ssd.pp.bin_hd(sdata, size_um=size_um)
    key = f"{size_um}um"
    coarse = sdata.tables[f"table_{key}"]
    shapes = sdata.shapes[f"spots_{key}"]
    f = size_um // 8

    # totals preserved exactly, per gene too; dtype and sparsity kept
    assert coarse.X.dtype == fine.X.dtype and sp.issparse(coarse.X)
    assert coarse.X.sum() == fine.X.sum()
    np.testing.assert_array_equal(np.asarray(coarse.X.sum(axis=0)).ravel(), np.asarray(fine.X.sum(axis=0)).ravel())
    # every fine bin maps to exactly one coarse bin, and the coarse counts are its sums
    m = fine.obs[f"bin_{key}"].to_numpy()
    assert m.min() >= 0 and m.max() < coarse.n_obs and len(np.unique(m)) == coarse.n_obs
    assert coarse.obs["n_bins"].sum() == fine.n_obs
    assert coarse.obs["n_bins"].max() <= f * f
    ind = sp.csr_matrix((np.ones(fine.n_obs), (m, np.arange(fine.n_obs))), shape=(coarse.n_obs, fine.n_obs))
    assert abs(ind @ fine.X.astype(np.float64) - coarse.X.astype(np.float64)).max() == 0
    # each fine bin's centre lies inside its coarse square, whose side is f bins
    side = f * 8.0 / truth.um_per_px
    geoms = shapes.geometry.to_numpy()
    np.testing.assert_allclose(shapely.area(geoms), side**2, rtol=2e-3)
    inside = shapely.contains_xy(geoms[m], fine.obsm["spatial"][:, 0], fine.obsm["spatial"][:, 1])
    assert inside.all()
    # fine bins of one coarse bin form an f x f block of grid positions
    grid = fit_square_grid(fine.obsm["spatial"])
    blocks = pd.DataFrame({"m": m, "r": grid.rows // f, "c": grid.cols // f}).groupby("m").nunique()
    assert (blocks[["r", "c"]] == 1).all().all()
    # table annotates the new shapes and validates; ids follow the 10x pattern
    attrs = coarse.uns["spatialdata_attrs"]
    assert attrs["region"] == f"spots_{key}" and attrs["instance_key"] == "spot_id"
    assert coarse.obs.index[0].startswith(f"{SLIDE}_s_{size_um:03d}um_")
    assert coarse.uns["stimage"]["bin_size_um"] == size_um
    assert coarse.uns["stimage"]["binned_from"]["factor"] == f


def test_bin_hd_written_and_read_back(hd, tmp_path):
    _, _, path = hd
    sdata = io.read(path, selection=("shapes", "tables"))
    ssd.pp.bin_hd(sdata, size_um=32)
    out = io.write(sdata, tmp_path / "binned.zarr")
    back = io.read(out)
    assert {"spots", "spots_32um"} <= set(back.shapes)
    assert back.tables["table_32um"].X.sum() == back.tables["table"].X.sum()
    assert (back.tables["table"].obs["bin_32um"] >= 0).all()


def test_bin_hd_uses_raw_counts_layer_and_is_not_inplace_on_request(hd):
    _, _, path = hd
    sdata = io.read(path)
    fine = sdata.tables["table"]
    raw_total = fine.X.sum()
    fine.layers["counts"] = fine.X.copy()
    fine.X = fine.X.astype(np.float32) * 0.5  # "normalised"
    shapes, table = ssd.pp.bin_hd(sdata, size_um=64, inplace=False)
    assert table.X.sum() == raw_total
    assert "table_64um" not in sdata.tables and "bin_64um" not in fine.obs
    assert len(shapes) == table.n_obs


def test_bin_hd_rejects_sizes_that_are_not_multiples(hd):
    _, _, path = hd
    sdata = io.read(path, selection=("shapes", "tables"))
    with pytest.raises(StimageError, match="multiple"):
        ssd.pp.bin_hd(sdata, size_um=12)


def test_fit_square_grid_on_rotated_jittered_grid():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:60, 0:80]
    keep = rng.random(rows.shape) < 0.8
    r, c = rows[keep] + 7, cols[keep] + 3
    theta = np.radians(3.0)
    u = 15.3 * np.array([np.cos(theta), np.sin(theta)])
    v = 15.3 * np.array([-np.sin(theta), np.cos(theta)])
    xy = np.array([500.0, 200.0]) + c[:, None] * u + r[:, None] * v + rng.normal(0, 0.3, (len(r), 2))
    g = fit_square_grid(xy)
    np.testing.assert_array_equal(g.rows, r - r.min())
    np.testing.assert_array_equal(g.cols, c - c.min())
    assert abs(g.angle_deg - 3.0) < 0.05 and abs(g.pitch_px - 15.3) < 0.02
    with pytest.raises(StimageError, match="square grid"):
        fit_square_grid(rng.uniform(0, 1000, (500, 2)))


def test_bin_hd_on_rotated_grid_builds_rotated_squares():
    """Coarse squares follow the grid's rotation and tile its fine bins."""
    import anndata as ad
    from spatialdata.models import ShapesModel, TableModel

    rows, cols = np.mgrid[0:24, 0:24]
    r, c = rows.ravel(), cols.ravel()
    theta = np.radians(10.0)
    u = 16 * np.array([np.cos(theta), np.sin(theta)])
    v = 16 * np.array([-np.sin(theta), np.cos(theta)])
    xy = 300 + c[:, None] * u + r[:, None] * v
    n = len(xy)
    X = sp.random(n, 20, density=0.2, format="csr", random_state=0, dtype=np.float64)
    X.data = np.ceil(X.data * 5)
    X = X.astype(np.int32)
    t = ad.AnnData(X=X, obs=pd.DataFrame({"region": pd.Categorical(["spots"] * n), "spot_id": np.arange(n)},
                                         index=[f"b{i}" for i in range(n)]))
    t.obsm["spatial"] = xy
    t.uns["stimage"] = {"um_per_px": 0.5, "slide": "S"}
    t = TableModel.parse(t, region="spots", region_key="region", instance_key="spot_id")
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(n, 8.0), index=np.arange(n))
    sdata = sd.SpatialData(shapes={"spots": shapes}, tables={"table": t})
    ssd.pp.bin_hd(sdata, size_um=32)
    coarse, geoms = sdata.tables["table_32um"], sdata.shapes["spots_32um"].geometry.to_numpy()
    assert coarse.n_obs == 36 and (coarse.obs["n_bins"] == 16).all()
    assert coarse.X.sum() == X.sum()
    # squares of side 64 px rotated by 10 degrees; union covers every fine centre exactly once
    np.testing.assert_allclose(shapely.area(geoms), 64.0**2)
    ring = shapely.get_coordinates(geoms[0])
    edge = ring[1] - ring[0]
    ang = np.degrees(np.arctan2(edge[1], edge[0])) % 90
    assert min(abs(ang - 10.0), abs(ang - 100.0)) < 1e-6 or abs(ang - 10.0) < 1e-6
    hits = shapely.contains_xy(geoms[:, None], xy[None, :, 0], xy[None, :, 1]).sum(axis=0)
    assert (hits == 1).all()
