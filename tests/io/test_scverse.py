"""scverse tools accept converted stores as they are."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd

from stimage_sd import datasets
from stimage_sd.cli import main


def _visium(sample_stores):
    spec = next(s for s in datasets.SAMPLE_SPECS if s.tech == "Visium")
    return sample_stores[spec.slide]


def test_squidpy_builds_spatial_graph(sample_stores):
    import squidpy as sq

    table = sd.read_zarr(_visium(sample_stores))["table"]
    sq.gr.spatial_neighbors_grid(table, n_neighs=6, spatial_key="spatial")
    conn = table.obsp["spatial_connectivities"]
    degree = np.asarray(conn.sum(axis=1)).ravel()
    # hexagonal Visium grid: interior spots have 6 neighbours
    assert np.median(degree) == 6
    assert degree.max() <= 6


@pytest.mark.slow
def test_spatialdata_plot_renders_spots_over_image(sample_stores, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)
    from PIL import Image

    sdata = sd.read_zarr(_visium(sample_stores))
    out = tmp_path / "spots.png"
    (
        sdata.pl.render_images("he")
        .pl.render_shapes("spots", color="annotation", table_name="table")
        .pl.show(coordinate_systems="global", save=str(out))
    )
    plt.close("all")
    assert out.is_file()
    img = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 10  # not blank


@pytest.mark.slow
def test_demo_command(tmp_path, capsys):
    code = main(["--quiet", "demo", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0
    stores = sorted((tmp_path / "demo" / "stores").glob("*.zarr"))
    assert len(stores) == len(datasets.SAMPLE_SPECS)
    for store in stores:
        sdata = sd.read_zarr(store)
        assert sdata.attrs["stimage"]["complete"] is True
    assert "ssd.io.read" in out
    # rerunning skips what is complete
    assert main(["--quiet", "demo", str(tmp_path / "demo")]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--help"], ["convert", "--help"], ["demo", "--help"]])
def test_help(args, capsys):
    assert main(args) == 0
    assert "Usage" in capsys.readouterr().out
