"""Every helper of ``stimage_sd._compat`` works with the installed versions of its library.

Each test names the library and its installed version, so an upgrade that moves one of
these private APIs fails here, with the version in the report, rather than deep inside a
conversion.
"""

from __future__ import annotations

import socket
from importlib.metadata import version

import numpy as np
import pytest

from stimage_sd import _compat


def test_versions_under_test():
    for dist in ("spatialdata", "ome-zarr", "huggingface-hub", "typer"):
        assert version(dist)


def test_raster_format_and_ome_zarr_axes():
    fmt = _compat.raster_format()
    axes = _compat.get_valid_axes(["c", "y", "x"], fmt)
    names = [a["name"] if isinstance(a, dict) else a for a in axes]
    assert names == ["c", "y", "x"], f"spatialdata {version('spatialdata')}, ome-zarr {version('ome-zarr')}"
    assert _compat.get_ome_zarr_format(fmt) is not None


def test_image_helpers_on_a_real_image_model():
    from spatialdata.models import Image2DModel

    image = Image2DModel.parse(np.zeros((3, 8, 8), dtype=np.uint8), dims=("c", "y", "x"), c_coords=["r", "g", "b"])
    assert _compat.get_channel_names(image) == ["r", "g", "b"]
    with_coords = _compat.compute_coordinates(image)
    assert list(with_coords.coords["x"].values) == [i + 0.5 for i in range(8)]


def test_overwrite_transformations_writes_them(tmp_path):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale, get_transformation

    image = Image2DModel.parse(np.zeros((3, 8, 8), dtype=np.uint8), dims=("c", "y", "x"), transformations={"global": Identity()})
    path = tmp_path / "s.zarr"
    sd.SpatialData(images={"he": image}).write(path)
    import zarr

    group = zarr.open_group(str(path / "images" / "he"), mode="r+", use_consolidated=False)
    _compat.overwrite_coordinate_transformations_raster(
        group=group,
        transformations={"global": Identity(), "micron": Scale([0.5, 0.5], axes=("y", "x"))},
        axes=("c", "y", "x"),
        raster_format=_compat.raster_format(),
    )
    back = sd.read_zarr(path)
    assert set(get_transformation(back["he"], get_all=True)) == {"global", "micron"}


def test_hub_network_errors_cover_the_clients_transport_error():
    errors = _compat.hub_network_errors()
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    assert HTTPError in errors and issubclass(HfHubHTTPError, errors)
    # a refused connection through the installed hub client is one of them
    from huggingface_hub import HfApi

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(errors):
        HfApi(endpoint=f"http://127.0.0.1:{port}").repo_info("a/b", repo_type="dataset", timeout=5)


def test_click_exception_classes_catch_typer_usage_errors():
    import typer
    from typer.main import get_command

    app = typer.Typer()

    @app.command()
    def hello(n: int) -> None:  # pragma: no cover - never invoked
        pass

    with pytest.raises(_compat.click_exception_classes("ClickException")):
        get_command(app).main(["not-a-number"], standalone_mode=False)
    assert _compat.click_exception_classes("Exit")


def test_transformations_from_stored_ngff_and_set_on_a_multiscale(tmp_path):
    """spatialdata's stored ``coordinateTransformations`` decode and set on every pyramid level."""
    import spatialdata as sd
    import zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale, get_transformation

    tf = {"global": Identity(), "micron": Scale([0.5, 0.5], axes=("y", "x"))}
    image = Image2DModel.parse(np.zeros((3, 16, 16), dtype=np.uint8), dims=("c", "y", "x"), scale_factors=[2], transformations=tf)
    sd.SpatialData(images={"he": image}).write(tmp_path / "s.zarr")
    attrs = zarr.open_group(str(tmp_path / "s.zarr" / "images" / "he"), mode="r").attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    decoded = _compat.transformations_from_ngff(ms["coordinateTransformations"])
    assert set(decoded) == {"global", "micron"}, f"spatialdata {version('spatialdata')}"
    fresh = Image2DModel.parse(np.zeros((3, 16, 16), dtype=np.uint8), dims=("c", "y", "x"), scale_factors=[2])
    _compat.set_transformations(fresh, decoded)
    for cs in ("global", "micron"):
        got = get_transformation(fresh, cs).to_affine_matrix(("x", "y"), ("x", "y"))
        want = get_transformation(image, cs).to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(got, want)
