"""napari-spatialdata viewer: ``ssd.pl.view`` and ``stimage-sd view``, run headless.

The viewer runs on a virtual X server (Xvfb) started here: Qt's ``offscreen`` platform
creates no working OpenGL surface, so napari's canvas would render black there. The test
needs an X server (Xvfb) and Qt's xcb libraries from the system. Where they are missing
(a bare machine) the test is skipped with the reason and the ``apt-get`` command that
installs them; in CI (``CI=true``), where ``.ci/run`` installs them, a missing piece fails
the test instead, so the viewer can never be skipped silently there.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import require_in_ci
from stimage_sd.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")]

SLIDE = "GSE000001_GSM0000001"  # Visium, annotated, µm/px 2.5
HD_SLIDE = "Mouse_Brain_Synth_03292024_VIsiumHD"
GREEN = np.array([0, 255, 0])
APT_HINT = (
    "install an X virtual framebuffer and Qt's xcb libraries: apt-get install xvfb libxcb-cursor0 "
    "libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libgl1-mesa-dri (as .ci/run does)"
)


# ---- CLI errors: answered before napari is imported, no display needed ----------------------


def test_cli_view_bad_input_is_one_line(sample_stores, capsys):
    store = str(sample_stores[SLIDE])
    assert main(["view", store, "--cs", "pixels"]) == 1
    err = capsys.readouterr().err
    assert "coordinate system 'pixels'" in err and "global, micron" in err and "Traceback" not in err
    assert main(["view", store, "--color", "annotaton"]) == 1
    assert "did you mean 'annotation'" in capsys.readouterr().err
    assert main(["view", str(sample_stores[SLIDE]) + "-missing"]) == 1
    assert "no such store" in capsys.readouterr().err
    assert main(["view", store, "--table", "table_8um"]) == 1
    assert "table 'table_8um' not in the slide" in capsys.readouterr().err


@pytest.mark.slow
def test_view_without_a_display_is_a_clear_error(sample_stores, monkeypatch, capsys):
    pytest.importorskip("napari_spatialdata")
    import napari

    if napari.current_viewer() is not None:
        pytest.skip("a viewer is already open in this process")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["view", str(sample_stores[SLIDE])]) == 1
    assert "no display" in capsys.readouterr().err


# ---- the headless viewer -------------------------------------------------------------------


def _load_qt() -> None:
    """Import a Qt binding through qtpy, or skip: the one reason this test may not run."""
    try:
        importlib.import_module("qtpy.QtWidgets")
    except Exception as e:  # qtpy.QtBindingsNotFoundError, or a binding whose libraries fail to load
        pytest.skip(f"no Qt binding can load ({type(e).__name__}: {e}); install 'stimage-sd[viewer]'")


_XVFB: list[subprocess.Popen] = []


def _start_xvfb() -> str:
    """Start Xvfb on a free display that lives as long as this process, and return it.

    Qt cannot outlive its X connection (a lost server aborts the process), so the server
    is not stopped after the tests: a watcher ends it once this process has exited.
    """
    read_fd, write_fd = os.pipe()
    script = (
        'Xvfb -displayfd "$1" -screen 0 1600x1200x24 -nolisten tcp 2>/dev/null & x=$!; '
        'while kill -0 "$2" 2>/dev/null && kill -0 "$x" 2>/dev/null; do sleep 1; done; kill "$x" 2>/dev/null'
    )
    proc = subprocess.Popen(
        ["sh", "-c", script, "sh", str(write_fd), str(os.getpid())],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    if not number:
        raise RuntimeError("Xvfb did not start")
    _XVFB.append(proc)
    return f":{number}"


def _missing_system(reason: str) -> None:
    """Skip on a bare machine, fail in CI: the viewer test must run in CI."""
    require_in_ci(f"{reason}; {APT_HINT}")


@pytest.fixture(scope="session")
def headless_qt():
    """A Qt platform that renders OpenGL off screen: xcb on a private Xvfb display."""
    _load_qt()
    if _XVFB:
        display = os.environ["DISPLAY"]
    elif shutil.which("Xvfb"):
        display = _start_xvfb()
    elif os.environ.get("DISPLAY"):
        display = os.environ["DISPLAY"]
    else:
        _missing_system("no X server (Xvfb) for a headless napari canvas")
    env = {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    # probe in a child first: a Qt platform plugin that cannot load aborts the process
    probe = subprocess.run(
        [sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([]); print('ok')"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0 or "ok" not in probe.stdout:
        _missing_system(f"Qt cannot open the display {display} ({probe.stderr.strip()[-800:]})")
    # Qt reads these once, when napari creates the QApplication; it stays for the session
    os.environ.update(env)
    return display


@pytest.fixture
def open_viewers(headless_qt):
    """Close every napari viewer a test opened."""
    yield
    import napari

    while (viewer := napari.current_viewer()) is not None:
        viewer.close()


def _canvas_pixels(viewer, world_yx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Screenshot pixel (row, col) of world points, from napari's camera (centre and zoom)."""
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    rows = shape[0] / 2 + (world_yx[:, 0] - cy) * zoom
    cols = shape[1] / 2 + (world_yx[:, 1] - cx) * zoom
    return np.rint(np.column_stack([rows, cols])).astype(int)


def _is_green(img: np.ndarray, rc: np.ndarray) -> np.ndarray:
    px = img[rc[:, 0], rc[:, 1], :3].astype(int)
    return np.abs(px - GREEN).max(axis=1) < 40


def _neighbour_midpoints(yx: np.ndarray) -> np.ndarray:
    """Midpoint between each spot and its nearest neighbour (outside both spots)."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(yx).query(yx, k=2)
    return (yx + yx[idx[:, 1]]) / 2


def _screenshot_check(session, n_spots: int) -> dict[str, float]:
    """Screenshot with and without the spots; green where the spots are, not between them."""
    from qtpy.QtWidgets import QApplication

    viewer = session._viewer
    viewer.window._qt_window.resize(1400, 1000)
    QApplication.processEvents()
    viewer.reset_view()
    spots = viewer.layers["spots"]
    assert len(spots.data) == n_spots
    world = np.array([spots.data_to_world(p) for p in spots.data])[:, -2:]
    shot = viewer.screenshot(canvas_only=True, flash=False)
    spots.visible = False
    image_only = viewer.screenshot(canvas_only=True, flash=False)
    spots.visible = True
    assert shot.shape == image_only.shape and shot.shape[0] > 300 and shot.shape[1] > 300

    # not blank: the H&E has texture; the spots change the picture
    assert image_only[..., :3].std() > 10, "image-only screenshot is blank"
    assert shot[..., :3].std() > 10, "screenshot is blank"
    assert np.abs(shot.astype(int) - image_only.astype(int)).sum() > 0

    centres = _canvas_pixels(viewer, world, shot.shape)
    inside = (centres >= 0).all(axis=1) & (centres[:, 0] < shot.shape[0]) & (centres[:, 1] < shot.shape[1])
    assert inside.all(), "reset_view() should show every spot"
    between = _canvas_pixels(viewer, _neighbour_midpoints(world), shot.shape)
    figures = {
        "green_at_centres": _is_green(shot, centres).mean(),
        "green_at_centres_image_only": _is_green(image_only, centres).mean(),
        "green_between_spots": _is_green(shot, between).mean(),
    }
    assert figures["green_at_centres"] > 0.98, figures
    assert figures["green_at_centres_image_only"] < 0.02, figures
    assert figures["green_between_spots"] < 0.05, figures
    return figures


def _with_probe(sdata) -> None:
    """A categorical column coloured pure green, so the spots are found in the pixels."""
    table = sdata["table"]
    table.obs["probe"] = pd.Categorical(["on"] * table.n_obs)
    table.uns["probe_colors"] = ["#00ff00"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cs", ["global", "micron"])
def test_view_headless_screenshot_shows_spots(sample_stores, open_viewers, cs):
    import stimage_sd as ssd

    sdata = ssd.io.read(sample_stores[SLIDE])
    _with_probe(sdata)
    session = ssd.pl.view(sdata, color="probe", coordinate_system=cs, block=False)
    viewer = session._viewer
    assert [layer.name for layer in viewer.layers] == ["he", "spots"]
    image, spots = viewer.layers["he"], viewer.layers["spots"]

    # the chosen coordinate system: world = pixels (global) or pixels x µm/px (micron)
    scale = 1.0 if cs == "global" else float(sdata["table"].uns["stimage"]["um_per_px"])
    xy = sdata["table"].obsm["spatial"]  # pixel centres [x, y], same order as spots (spot_id 0..n-1)
    world = np.array([spots.data_to_world(p) for p in spots.data])[:, -2:]
    order = np.asarray(spots.metadata["indices"])
    np.testing.assert_allclose(world[:, ::-1], xy[order] * scale, rtol=1e-6, atol=1e-6)
    h, w = sdata["he"]["scale0"]["image"].shape[-2:]
    extent = np.asarray(image.extent.world)[:, -2:]
    np.testing.assert_allclose(extent[1] - extent[0], np.array([h, w]) * scale, rtol=0.01)

    np.testing.assert_allclose(spots.face_color[:, :3], np.tile([0.0, 1.0, 0.0], (len(order), 1)))
    _screenshot_check(session, n_spots=sdata["table"].n_obs)


@pytest.mark.timeout(180)
def test_view_gene_and_squares(sample_stores, open_viewers):
    """A gene colours HD squares through viridis, in the order of the layer's shapes."""
    import matplotlib

    import stimage_sd as ssd

    sdata = ssd.io.read(sample_stores[HD_SLIDE])
    table = sdata["table"]
    totals = np.asarray(table.X.sum(axis=0)).ravel()
    gene = str(table.var_names[int(np.argmax(totals))])
    session = ssd.pl.view(sdata, color=gene, block=False)
    spots = session._viewer.layers["spots"]
    assert type(spots).__name__ == "Shapes" and len(spots.data) == table.n_obs

    expr = np.asarray(table[:, gene].X.toarray()).ravel()
    by_id = pd.Series(expr, index=table.obs["spot_id"].to_numpy())
    values = by_id.reindex(np.asarray(spots.metadata["indices"])).to_numpy()
    expected = matplotlib.colormaps["viridis"]((values - values.min()) / (values.max() - values.min()))
    np.testing.assert_allclose(spots.face_color, expected, atol=1e-6)
    np.testing.assert_allclose(spots.features[gene].to_numpy(), values)
    # a square covers its bin: 16 px wide for 8 µm bins at 0.5 µm/px
    first = np.asarray(spots.data[0])
    assert np.ptp(first[:, 0]) == pytest.approx(16, abs=0.5) and np.ptp(first[:, 1]) == pytest.approx(16, abs=0.5)
    session._viewer.close()

    # the 16 µm bins of ssd.pp.bin_hd: another table and the shapes it annotates
    ssd.pp.bin_hd(sdata, 16)
    session = ssd.pl.view(sdata, color="n_bins", table_key="table_16um", block=False)
    assert [layer.name for layer in session._viewer.layers] == ["he", "spots_16um"]
    coarse = session._viewer.layers["spots_16um"]
    assert len(coarse.data) == sdata["table_16um"].n_obs < table.n_obs
    first = np.asarray(coarse.data[0])
    assert np.ptp(first[:, 0]) == pytest.approx(32, abs=0.5)
    n_bins = sdata["table_16um"].obs.set_index("spot_id")["n_bins"].reindex(coarse.metadata["indices"])
    np.testing.assert_allclose(coarse.features["n_bins"].to_numpy(), n_bins.to_numpy())
    assert len(np.unique(coarse.face_color, axis=0)) == len(np.unique(n_bins))
