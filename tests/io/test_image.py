"""Image reading (every format, dtype and channel layout), pyramids, and the extent checks.

Images are generated here with PIL and tifffile (every file named ``.png``, as in the
release); reading is checked against the decoded source, pyramids against an
independent implementation of the documented downsampling, and stores are read back
with :func:`spatialdata.read_zarr`.
"""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
import tifffile
import zarr
from PIL import Image

from stimage_sd import io
from stimage_sd.errors import FormatError
from stimage_sd.io._pyramid import (
    DEFAULT_CHUNK,
    PYRAMID_ATTR,
    downsample_block,
    multiscale_image,
    pyramid_levels,
    write_multiscale_image,
)

H, W = 203, 317  # odd sizes: trailing rows/columns are exercised at every level
CHUNK = 64


# --------------------------------------------------------------------------------------
# helpers
def _pixels(mode: str, dtype: str, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A smooth image with noise; alpha (if any) spans fully transparent to opaque."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == "uint8" else 65535
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(yy / 17.0) + np.cos(xx / 23.0) + 2) / 4
    n = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    chans = []
    for k in range(n):
        v = base * (0.6 + 0.1 * k) + rng.uniform(0, 0.4, size=(h, w))
        chans.append(np.clip(v, 0, 1))
    a = np.rint(np.stack(chans, axis=-1) * top).astype(dtype)
    if mode in ("RGBA", "LA"):
        a[..., -1] = rng.integers(0, top + 1, size=(h, w), dtype=np.int64).astype(dtype)
        a[:10, :10, -1] = 0
        a[-10:, -10:, -1] = top
    return a[..., 0] if mode == "L" else a


def _ref_downsample(a: np.ndarray) -> np.ndarray:
    """Independent reference of the documented method: 2x2 means rounded half up, trimmed."""
    _, h, w = a.shape
    h2, w2 = h // 2, w // 2
    f = a[:, : 2 * h2, : 2 * w2].astype(np.float64)
    m = (f[:, 0::2, 0::2] + f[:, 1::2, 0::2] + f[:, 0::2, 1::2] + f[:, 1::2, 1::2]) / 4
    return np.floor(m + 0.5).astype(np.uint8)


def _cyx(rgb_yxc: np.ndarray) -> np.ndarray:
    return np.moveaxis(rgb_yxc, -1, 0)


_TIFF_LAYOUTS = {
    "tiles-zlib": {"tile": (64, 64), "compression": "zlib"},
    "strips-zlib": {"rowsperstrip": 7, "compression": "zlib"},
    "strips-raw": {"rowsperstrip": 16},  # uncompressed, contiguous: memory-mapped
    "tiles-raw": {"tile": (48, 48)},
    "single-strip-zlib": {"rowsperstrip": H, "compression": "zlib"},
    "bigtiff-tiles": {"tile": (32, 32), "bigtiff": True, "compression": "zlib"},
    "bigtiff-strips": {"rowsperstrip": 5, "bigtiff": True},
    "planar-strips": {"rowsperstrip": 9, "planarconfig": "separate", "compression": "zlib"},
    "pyramid-subifds": {"tile": (64, 64), "compression": "zlib", "pyramid": True},
}


def _write_tiff(path: Path, a: np.ndarray, mode: str, layout: str) -> None:
    kw = dict(_TIFF_LAYOUTS[layout])
    pyramid = kw.pop("pyramid", False)
    photometric = "rgb" if mode in ("RGB", "RGBA") else "minisblack"
    if mode in ("RGBA", "LA"):
        kw["extrasamples"] = ["unassalpha"]
    data = a
    if kw.get("planarconfig") == "separate":
        data = np.moveaxis(a, -1, 0)
    if pyramid:
        with tifffile.TiffWriter(path) as tw:
            tw.write(data, photometric=photometric, subifds=2, **kw)
            # reduced levels deliberately differ from a downsampling: level 0 must be read
            tw.write(np.zeros_like(data[::2, ::2]), photometric=photometric, subfiletype=1, **kw)
            tw.write(np.zeros_like(data[::4, ::4]), photometric=photometric, subfiletype=1, **kw)
    else:
        tifffile.imwrite(path, data, photometric=photometric, **kw)


def _cases() -> list[tuple[str, str, str, str]]:
    """(format, layout, mode, dtype) combinations."""
    out = []
    modes = [(m, d) for d in ("uint8", "uint16") for m in ("RGB", "RGBA", "L", "LA")]
    for layout in ("tiles-zlib", "strips-zlib"):
        out += [("tiff", layout, m, d) for m, d in modes]
    for layout in _TIFF_LAYOUTS:
        if layout in ("tiles-zlib", "strips-zlib"):
            continue
        out += [("tiff", layout, "RGB", "uint8"), ("tiff", layout, "RGBA", "uint16")]
    out.append(("tiff", "strips-raw", "L", "uint16"))
    out.append(("tiff", "tiles-raw", "LA", "uint8"))
    out += [("png", "-", m, "uint8") for m in ("RGB", "RGBA", "L", "LA", "P")]
    out.append(("png", "-", "L", "uint16"))
    out += [("jpeg", "-", m, "uint8") for m in ("RGB", "L")]
    out.append(("tiff", "tiles-jpeg", "RGB", "uint8"))
    return out


def _make(tmp: Path, fmt: str, layout: str, mode: str, dtype: str) -> tuple[Path, np.ndarray]:
    """Write an image named ``.png``; return its path and the expected RGB ``(y, x, 3)``."""
    path = tmp / "slide.png"
    if fmt == "tiff" and layout == "tiles-jpeg":
        a = _pixels("RGB", "uint8")
        tifffile.imwrite(path, a, photometric="rgb", tile=(64, 64), compression="jpeg")
        return path, io.to_rgb8(tifffile.imread(path))
    if fmt == "tiff":
        a = _pixels(mode, dtype)
        _write_tiff(path, a, mode, layout)
        return path, io.to_rgb8(a)
    if mode == "P":
        rgb = _pixels("RGB", "uint8")
        im = Image.fromarray(rgb).quantize(colors=64)
        im.save(path, format="PNG")
        return path, io.to_rgb8(np.asarray(im.convert("RGB")))
    a = _pixels(mode, dtype)
    if dtype == "uint16":
        im = Image.fromarray(a)  # 2-D uint16: mode I;16
    else:
        im = Image.fromarray(a, mode=mode)
    if fmt == "png":
        im.save(path, format="PNG")
        return path, io.to_rgb8(a)
    im.save(path, format="JPEG", quality=90)
    with Image.open(path) as dec:  # lossy: the decoded source is the reference
        return path, io.to_rgb8(np.asarray(dec))


# --------------------------------------------------------------------------------------
# every format / dtype / channel layout: level 0, pyramid, chunks, on disk
@pytest.mark.parametrize(("fmt", "layout", "mode", "dtype"), _cases(), ids=lambda v: str(v))
def test_formats_level0_pyramid_and_chunks(tmp_path, fmt, layout, mode, dtype):
    path, expected = _make(tmp_path, fmt, layout, mode, dtype)
    assert io.sniff_image_format(path) == ("tiff" if fmt == "tiff" else fmt)
    img = io.read_image(path, chunks=CHUNK)
    assert isinstance(img, da.Array)
    assert img.shape == (3, H, W) and img.dtype == np.uint8
    assert img.chunks[0] == (3,) and set(img.chunks[1][:-1]) == {CHUNK} and set(img.chunks[2][:-1]) == {CHUNK}
    np.testing.assert_array_equal(img.compute(), _cyx(expected))

    tree = multiscale_image(img, n_levels=2, chunk=CHUNK)
    store = tmp_path / "s.zarr"
    sd.SpatialData().write(store)
    write_multiscale_image(store, "he", tree, progress=False)
    prev = None
    for k in range(3):
        arr = zarr.open_array(store / "images" / "he" / f"s{k}", mode="r")
        assert arr.chunks == (3, CHUNK, CHUNK)
        level = arr[:]
        if k == 0:
            np.testing.assert_array_equal(level, _cyx(expected))
        else:
            np.testing.assert_array_equal(level, _ref_downsample(prev))
        np.testing.assert_array_equal(tree[f"scale{k}"]["image"].values, level)
        prev = level


def test_planar_grayscale_and_palette_tiffs(tmp_path):
    g = _pixels("L", "uint8")
    p = tmp_path / "white.png"
    tifffile.imwrite(p, g, photometric="miniswhite")
    np.testing.assert_array_equal(io.read_image(p).compute()[0], 255 - g)  # decoded by PIL
    p = tmp_path / "pal.png"
    cmap = np.random.default_rng(1).integers(0, 256, (3, 256)).astype(np.uint16) * 257
    tifffile.imwrite(p, g, photometric="palette", colormap=cmap)
    got = io.read_image(p).compute()
    np.testing.assert_array_equal(got, (cmap[:, g] // 257).astype(np.uint8))


# --------------------------------------------------------------------------------------
# laziness and bounded memory
def test_tiff_is_read_lazily(tmp_path):
    """Reading a 2,048 x 2,048 tiled TIFF and computing one chunk allocates ~one chunk."""
    h = w = 2048
    a = np.broadcast_to(_pixels("RGB", "uint8", h=256, w=256), (8, 8, 256, 256, 3))
    a = np.ascontiguousarray(a.transpose(0, 2, 1, 3, 4).reshape(h, w, 3))
    p = tmp_path / "big.png"
    tifffile.imwrite(p, a, photometric="rgb", tile=(256, 256), compression="zlib")
    del a
    tracemalloc.start()
    try:
        img = io.read_image(p, chunks=256)
        block = img.blocks[0, 3, 5].compute()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert block.shape == (3, 256, 256)
    assert peak < 3 * h * w / 8, f"peak {peak / 1e6:.1f} MB for a {3 * h * w / 1e6:.0f} MB image"


def test_pyramid_write_memory_is_bounded(tmp_path):
    """Writing the pyramid of a 2,048² TIFF with 256² chunks stays far below the image size."""
    h = w = 2048
    a = np.ascontiguousarray(
        np.broadcast_to(_pixels("RGB", "uint8", h=256, w=256), (8, 8, 256, 256, 3)).transpose(0, 2, 1, 3, 4)
    ).reshape(h, w, 3)
    p = tmp_path / "big.png"
    tifffile.imwrite(p, a, photometric="rgb", tile=(256, 256), compression="zlib")
    store = tmp_path / "s.zarr"
    sd.SpatialData().write(store)
    tree = multiscale_image(io.read_image(p, chunks=256), chunk=256, n_levels=3)
    tracemalloc.start()
    try:
        with dask.config.set(num_workers=2):
            write_multiscale_image(store, "he", tree, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    image_bytes = 3 * h * w
    assert peak < image_bytes / 2, f"peak {peak / 1e6:.1f} MB for a {image_bytes / 1e6:.1f} MB image"
    back = zarr.open_array(store / "images" / "he" / "s0", mode="r")[:]
    np.testing.assert_array_equal(back, _cyx(a))
    s3 = zarr.open_array(store / "images" / "he" / "s3", mode="r")
    assert s3.shape == (3, 256, 256)


@pytest.mark.parametrize("scheduler", ["synchronous", None])
def test_pyramid_write_threads_follow_the_dask_scheduler(tmp_path, scheduler):
    """With ``scheduler="synchronous"`` every level is computed in the calling thread
    (single-threaded batch workers rely on it); otherwise dask's thread pool is used, even
    when a distributed client would be the default."""
    import threading

    h, w, chunk = 512, 384, 64
    ref = _pixels("RGB", "uint8", h=h, w=w)
    seen: set[int] = set()

    def block(x, block_info=None):
        seen.add(threading.get_ident())
        (y0, y1), (x0, x1) = block_info[0]["array-location"][1:]
        return _cyx(ref)[:, y0:y1, x0:x1]

    zeros = da.zeros((3, h, w), dtype=np.uint8, chunks=(3, chunk, chunk))
    data = da.map_blocks(block, zeros, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    tree = multiscale_image(data, chunk=chunk, n_levels=2)
    store = tmp_path / "s.zarr"
    sd.SpatialData().write(store)
    with dask.config.set(scheduler=scheduler, num_workers=2):
        write_multiscale_image(store, "he", tree, progress=False)
    if scheduler == "synchronous":
        assert seen == {threading.get_ident()}
    else:
        assert threading.get_ident() not in seen
    np.testing.assert_array_equal(zarr.open_array(store / "images" / "he" / "s0", mode="r")[:], _cyx(ref))


# --------------------------------------------------------------------------------------
# pyramid method, level count, metadata
def test_downsample_block_matches_reference():
    rng = np.random.default_rng(3)
    for shape in [(3, 8, 8), (3, 9, 7), (3, 1, 5), (1, 33, 65)]:
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        np.testing.assert_array_equal(downsample_block(a), _ref_downsample(a))
    # rounding half up: (1 + 1 + 2 + 2) / 4 = 1.5 -> 2; (0 + 0 + 0 + 1) / 4 = 0.25 -> 0
    a = np.array([[[1, 1], [2, 2]]], dtype=np.uint8)
    assert downsample_block(a)[0, 0, 0] == 2
    a = np.array([[[0, 0], [0, 1]]], dtype=np.uint8)
    assert downsample_block(a)[0, 0, 0] == 0
    assert downsample_block(np.full((3, 2, 2), 255, np.uint8))[0, 0, 0] == 255


@pytest.mark.parametrize(
    ("h", "w", "n"),
    [(999, 5000, 0), (1000, 1000, 0), (1001, 1001, 1), (2000, 2000, 1), (2001, 3000, 1), (2002, 3000, 2), (4004, 3000, 2), (20000, 20000, 5), (100_000, 60_000, 6)],
)
def test_pyramid_levels_from_image_size(h, w, n):
    assert pyramid_levels(h, w) == n
    side = min(h, w)
    for _ in range(n):
        side //= 2
    assert side <= 1000


def test_multiscale_image_shapes_chunks_and_attrs():
    img = da.zeros((3, 5000, 3001), dtype=np.uint8, chunks=(3, 1000, 1000))
    tree = multiscale_image(img)
    shapes = [tree[k]["image"].shape for k in tree.children]
    assert shapes == [(3, 5000, 3001), (3, 2500, 1500), (3, 1250, 750)]
    for k in tree.children:
        ch = tree[k]["image"].data.chunks
        assert ch[0] == (3,) and all(c == DEFAULT_CHUNK for c in ch[1][:-1] + ch[2][:-1])
    assert tree.attrs[PYRAMID_ATTR]["method"].startswith("mean2x2")
    with pytest.raises(ValueError, match="compression"):
        multiscale_image(img, compression="lz77")


def test_metadata_identical_to_spatialdata_writer(tmp_path):
    """Our level-by-level writer produces the element metadata spatialdata itself writes."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    rng = np.random.default_rng(0)
    img = da.from_array(rng.integers(0, 256, (3, 301, 257), dtype=np.uint8), chunks=(3, 128, 128))
    tf = {"global": Identity(), "micron": Scale([0.5, 0.5], axes=("y", "x"))}
    ref = Image2DModel.parse(
        img, dims=("c", "y", "x"), c_coords=["r", "g", "b"], scale_factors=[2, 2],
        chunks={"c": 3, "y": 128, "x": 128}, transformations=tf,
    )
    sd.SpatialData(images={"he": ref}).write(tmp_path / "ref.zarr")
    ours = multiscale_image(img, transformations=tf, n_levels=2, chunk=128)
    io.write(sd.SpatialData(images={"he": ours}), tmp_path / "ours.zarr")
    a = json.loads((tmp_path / "ours.zarr/images/he/zarr.json").read_text())
    b = json.loads((tmp_path / "ref.zarr/images/he/zarr.json").read_text())
    assert a == b
    back = io.read(tmp_path / "ours.zarr")
    assert [back["he"][k]["image"].shape for k in back["he"].children] == [
        ref[k]["image"].shape for k in ref.children
    ]


@pytest.mark.parametrize(("compression", "codec"), [("zstd", "zstd"), ("gzip:4", "gzip"), ("blosc", "blosc"), (None, None)])
def test_compression_is_configurable(tmp_path, compression, codec):
    img = da.from_array(_cyx(io.to_rgb8(_pixels("RGB", "uint8"))), chunks=(3, 64, 64))
    tree = multiscale_image(img, n_levels=1, chunk=64, compression=compression)
    io.write(sd.SpatialData(images={"he": tree}), tmp_path / "s.zarr")
    for k in (0, 1):
        meta = json.loads((tmp_path / f"s.zarr/images/he/s{k}/zarr.json").read_text())
        names = [c["name"] for c in meta["codecs"]]
        assert names == (["bytes", codec] if codec else ["bytes"])
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 64, 64]
    back = io.read(tmp_path / "s.zarr")
    np.testing.assert_array_equal(back["he"]["scale0"]["image"].values, img.compute())


# --------------------------------------------------------------------------------------
# errors
def test_errors_name_the_file(tmp_path):
    p = tmp_path / "text.png"
    p.write_text("not an image")
    with pytest.raises(FormatError, match=r"text\.png"):
        io.read_image(p)
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        io.read_image(p)
    # truncated PNG
    good, _ = _make(tmp_path, "png", "-", "RGB", "uint8")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(FormatError, match=r"cut\.png"):
        io.read_image(cut)
    # decompression bomb ceiling
    with pytest.raises(FormatError, match="ceiling"):
        io.read_image(good, max_pixels=1000)
    assert io.read_image(good, max_pixels=None).shape == (3, H, W)
    # truncated TIFF: detected before any pixel is read
    t = tmp_path / "t.png"
    _write_tiff(t, _pixels("RGB", "uint8"), "RGB", "tiles-zlib")
    tcut = tmp_path / "tcut.png"
    raw = t.read_bytes()
    tcut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(FormatError, match=r"tcut\.png"):
        io.read_image(tcut)


def test_corrupt_tile_raises_format_error_at_compute(tmp_path):
    t = tmp_path / "t.png"
    _write_tiff(t, _pixels("RGB", "uint8"), "RGB", "tiles-zlib")
    with tifffile.TiffFile(t) as tf:
        off, n = tf.pages[0].dataoffsets[-1], tf.pages[0].databytecounts[-1]
    raw = bytearray(t.read_bytes())
    raw[off : off + n] = b"\x00" * n  # last tile: not a zlib stream any more
    t.write_bytes(bytes(raw))
    img = io.read_image(t, chunks=CHUNK)  # first tile still decodes
    with pytest.raises(FormatError, match=r"t\.png"):
        img.compute()


# --------------------------------------------------------------------------------------
# conversion: lazily read image in the store, extent checks
@pytest.fixture(scope="module")
def visium_slide(tmp_path_factory):
    from stimage_sd.datasets import SlideSpec, make_slide

    root = tmp_path_factory.mktemp("visium")
    spec = SlideSpec("Human_Brain_Img_01012020_Visium_1", "Visium", grid=(12, 12), n_genes=120,
                     um_per_px=3.0, image_format="tiff", tiff_tile=64, image_mode="RGB16")
    return root, make_slide(root, spec)


def test_converted_tiff_slide_round_trips(tmp_path):
    """A 16-bit tiled TIFF slide converts into a lazily written multiscale image."""
    from spatialdata.transformations import get_transformation

    from stimage_sd.datasets import SlideSpec, make_slide

    spec = SlideSpec("Human_Brain_Rt_01012020_Visium_1", "Visium", grid=(8, 8), n_genes=120,
                     um_per_px=0.8, image_format="tiff", tiff_tile=128, image_mode="RGB16")
    truth = make_slide(tmp_path / "root", spec)
    sdata = io.read_slide(tmp_path / "root", truth.slide, progress=False)
    src = io.to_rgb8(tifffile.imread(truth.files.image))
    path = io.write(sdata, tmp_path / "s.zarr")
    assert io.is_complete(path)
    back = sd.read_zarr(path)
    im = back.images["he"]
    n = pyramid_levels(*src.shape[:2])
    assert n >= 1 and len(im.children) == n + 1
    level = im["scale0"]["image"].values
    np.testing.assert_array_equal(level, _cyx(src))
    for k in range(1, n + 1):
        nxt = im[f"scale{k}"]["image"].values
        np.testing.assert_array_equal(nxt, _ref_downsample(level))
        level = nxt
    tf = get_transformation(im, get_all=True)
    assert set(tf) == {"global", "micron"}
    um = back.tables["table"].uns["stimage"]["um_per_px"]
    np.testing.assert_allclose(tf["micron"].to_affine_matrix(("x", "y"), ("x", "y"))[0, 0], um)
    meta = back.tables["table"].uns["stimage"]
    assert meta["spots_outside_image"] == 0 and "image_scale_mismatch" not in meta


def _copy_slide(root: Path, truth, dest: Path) -> Path:
    import shutil

    shutil.copytree(root, dest)
    return dest


def test_spots_outside_the_image_are_counted_and_warned(visium_slide, tmp_path, caplog):
    root, truth = visium_slide
    root2 = _copy_slide(root, truth, tmp_path / "r")
    coord = root2 / truth.files.coord.relative_to(root)
    df = pd.read_csv(coord, index_col=0)
    h, w = truth.image_shape
    df.iloc[:5, df.columns.get_loc("xaxis")] = w + 40.0
    df.iloc[5:7, df.columns.get_loc("yaxis")] = h + 3.0
    df.to_csv(coord)
    with caplog.at_level(logging.WARNING, logger="stimage_sd"):
        sdata = io.read_slide(root2, truth.slide, progress=False)
    meta = sdata.tables["table"].uns["stimage"]
    assert meta["spots_outside_image"] == 7
    assert "image_scale_mismatch" not in meta
    assert any("7 of" in r.getMessage() and "outside" in r.getMessage() for r in caplog.records)


def _rescale_image(path: Path, factor: float) -> None:
    src = io.to_rgb8(tifffile.imread(path))
    h, w = src.shape[:2]
    im = Image.fromarray(src).resize((round(w * factor), round(h * factor)), Image.Resampling.BILINEAR)
    im.save(path, format="PNG")


def test_hires_image_with_full_resolution_coordinates(visium_slide, tmp_path, caplog):
    root, truth = visium_slide
    root2 = _copy_slide(root, truth, tmp_path / "r")
    _rescale_image(root2 / truth.files.image.relative_to(root), 1 / 4)
    with caplog.at_level(logging.WARNING, logger="stimage_sd"):
        sdata = io.read_slide(root2, truth.slide, progress=False)
    meta = sdata.tables["table"].uns["stimage"]
    mm = meta["image_scale_mismatch"]
    assert mm["direction"] == "image smaller"
    assert 3.0 <= mm["likely_factor"] <= 4.2  # a lower bound of the true factor 4
    assert meta["spots_outside_image"] > meta["n_spots"] / 2
    assert any("downscaled" in r.getMessage() for r in caplog.records)


def test_full_resolution_image_with_hires_coordinates(visium_slide, tmp_path, caplog):
    root, truth = visium_slide
    root2 = _copy_slide(root, truth, tmp_path / "r")
    _rescale_image(root2 / truth.files.image.relative_to(root), 4)
    with caplog.at_level(logging.WARNING, logger="stimage_sd"):
        sdata = io.read_slide(root2, truth.slide, progress=False)
    meta = sdata.tables["table"].uns["stimage"]
    assert meta["spots_outside_image"] == 0
    mm = meta["image_scale_mismatch"]
    assert mm["direction"] == "image larger"
    assert 4.0 <= mm["likely_factor"] <= 5.0  # an upper bound of the true factor 4
    assert any("may be for an image" in r.getMessage() for r in caplog.records)
