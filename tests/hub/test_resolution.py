"""The resolution index: coordinate files + image headers only, over the loopback fake Hub.

Oracles: the generator's true pixel size (``SlideTruth.um_per_px``) and the image sizes
that PIL / tifffile report when they decode the whole local file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from stimage_sd.cli import main
from stimage_sd.errors import StimageError
from stimage_sd.hub import RESOLUTION_COLUMNS, Catalog
from stimage_sd.io._layout import release_path

pytestmark = pytest.mark.slow

SLIDES = {
    "Human_Brain_Res_01012020_Visium_A": dict(tech="Visium", grid=(10, 10), um_per_px=0.5, image_format="png"),
    "Human_Brain_Res_01012020_Visium_B": dict(tech="Visium", grid=(8, 8), um_per_px=1.0, image_format="jpeg"),
    "Mouse_Brain_Res_02022021_ST_C": dict(tech="ST", grid=(6, 6), um_per_px=2.0, image_format="tiff", tiff_tile=256),
    "Mouse_Brain_Res_03292024_VisiumHD": dict(tech="VisiumHD", grid=(30, 30), um_per_px=0.25, image_format="png"),
}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from stimage_sd.datasets import SlideSpec, make_release

    root = tmp_path_factory.mktemp("res") / "release"
    specs = [SlideSpec(s, n_genes=400, n_domains=2, n_markers=2, **kw) for s, kw in SLIDES.items()]
    truths = make_release(root, specs)
    return root, truths


def _decoded_size(path: Path) -> tuple[int, int]:
    """Width, height by decoding the whole image (the oracle)."""
    import tifffile
    from PIL import Image

    if path.read_bytes()[:2] in (b"II", b"MM"):
        shape = tifffile.imread(path).shape
        return shape[1], shape[0]
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        im.load()
        return im.size


def _check(cat: Catalog, root: Path, truths) -> None:
    t = cat.table
    for s, kw in SLIDES.items():
        assert t.at[s, "um_per_px"] == pytest.approx(truths[s].um_per_px, rel=0.02), s
        img = root / release_path(s, kw["tech"], "image")
        w, h = _decoded_size(img)
        assert (t.at[s, "image_width"], t.at[s, "image_height"]) == (w, h), s
        assert t.at[s, "image_format"] == kw["image_format"]
        assert t.at[s, "fov_width_mm"] == pytest.approx(w * t.at[s, "um_per_px"] / 1000)
        assert t.at[s, "magnification"] == pytest.approx(10 / t.at[s, "um_per_px"])
    # 0.25 µm/px is 40x, 0.5 is 20x
    assert t.at["Mouse_Brain_Res_03292024_VisiumHD", "magnification"] == pytest.approx(40, rel=0.02)
    assert t.at["Human_Brain_Res_01012020_Visium_A", "magnification"] == pytest.approx(20, rel=0.02)


def test_local_root_index_and_filters(release):
    root, truths = release
    cat = Catalog.from_root(root).with_resolution()
    assert set(RESOLUTION_COLUMNS) <= set(cat.table.columns)
    _check(cat, root, truths)
    fine = cat.filter(max_um_per_px=0.6)
    assert set(fine.slides) == {"Human_Brain_Res_01012020_Visium_A", "Mouse_Brain_Res_03292024_VisiumHD"}
    assert cat.filter(min_um_per_px=1.5).slides == ["Mouse_Brain_Res_02022021_ST_C"]
    with pytest.raises(StimageError, match="with_resolution"):
        Catalog.from_root(root).filter(max_um_per_px=1)


def test_hub_index_fetches_coords_and_headers_only(release, fake_hub, tmp_path):
    root, truths = release
    hub = fake_hub(root)
    base = Catalog.from_hub()
    hub.clear()
    cache_root = tmp_path / "coords"
    cat = base.with_resolution(root=cache_root)
    _check(cat, root, truths)
    coords = {release_path(s, kw["tech"], "coord") for s, kw in SLIDES.items()}
    images = {release_path(s, kw["tech"], "image") for s, kw in SLIDES.items()}
    got = hub.downloads()
    assert set(got) <= coords | images
    assert coords <= set(got)
    # every image request was a ranged read of the header
    img_requests = [r for r in hub.requests if r.path in images and r.method == "GET" and r.status in (200, 206)]
    assert img_requests and all(r.range and r.status == 206 for r in img_requests)
    sent = hub.bytes_sent()
    total = int(base.table.loc[list(SLIDES), "size_total"].sum())
    image_bytes = sum(r.bytes_sent for r in img_requests)
    print(f"indexed {len(SLIDES)} slides: {sent} B sent of {total} B ({sent / total:.2%}); headers {image_bytes} B")
    assert sent < 0.05 * total
    assert image_bytes < 0.01 * sum(base.table.loc[list(SLIDES), "size_image"])
    # coordinate files landed in the release layout; the index is cached next to them
    assert all((cache_root / c).is_file() for c in coords)
    cached = json.loads((cache_root / ".stimage_sd" / "resolution.json").read_text())
    assert set(cached["slides"]) == set(SLIDES)

    # a second run reads the cache: no file content is fetched again
    hub.clear()
    again = base.with_resolution(root=cache_root)
    assert hub.downloads() == []
    np.testing.assert_allclose(again.table["um_per_px"], cat.table["um_per_px"])


def test_cli_catalog_resolution_and_download_filter(release, fake_hub, tmp_path, capsys, monkeypatch):
    root, _ = release
    fake_hub(root)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    assert main(["catalog", "--resolution", "--format", "csv", "--columns", "um_per_px,magnification,image_width"]) == 0
    out = capsys.readouterr().out
    assert "Mouse_Brain_Res_03292024_VisiumHD" in out and "um_per_px" in out
    assert main(["catalog", "--max-um-per-px", "0.6", "--format", "json", "--columns", "um_per_px"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["slide"] for r in rows} == {"Human_Brain_Res_01012020_Visium_A", "Mouse_Brain_Res_03292024_VisiumHD"}
    assert main(["download", str(tmp_path / "dl"), "--min-um-per-px", "1.5", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "Mouse_Brain_Res_02022021_ST_C" in listed and "Visium_A" not in listed


def test_cli_convert_filters_by_resolution(release, tmp_path):
    root, _ = release
    out = tmp_path / "stores"
    assert main(["convert", str(root), str(out), "--max-um-per-px", "0.3"]) == 0
    made = sorted(p.name for p in out.glob("*.zarr"))
    assert made == ["Mouse_Brain_Res_03292024_VisiumHD.zarr"]


class _Counting(io.RawIOBase):
    """A seekable file that counts the bytes read from it (a stand-in for a ranged reader)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.read_bytes = data, 0, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, off, whence=0):
        self.pos = off if whence == 0 else (self.pos + off if whence == 1 else len(self.data) + off)
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        chunk = self.data[self.pos : self.pos + len(b)]
        b[: len(chunk)] = chunk
        self.pos += len(chunk)
        self.read_bytes += len(chunk)
        return len(chunk)


@pytest.mark.parametrize("kind", ["bigtiff-be", "tiff-ifd-at-end", "jpeg-big-exif", "png"])
def test_header_reads_few_bytes(kind, tmp_path):
    import tifffile
    from PIL import Image

    from stimage_sd.io import read_image_header

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1200, 1500, 3), dtype=np.uint8)
    path = tmp_path / "img"
    if kind == "bigtiff-be":
        tifffile.imwrite(path, img, bigtiff=True, byteorder=">", photometric="rgb")
    elif kind == "tiff-ifd-at-end":
        # classic little-endian grayscale TIFF whose first IFD follows the pixel data
        import struct

        h, w = img.shape[:2]
        pixels = img[..., 0].tobytes()
        tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
                (277, 3, 1), (278, 4, h), (279, 4, len(pixels))]
        ifd = struct.pack("<H", len(tags))
        for tag, typ, value in tags:
            ifd += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
        ifd += struct.pack("<I", 0)
        path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd)
        assert tifffile.imread(path).shape == (h, w)
    elif kind == "jpeg-big-exif":
        Image.fromarray(img).save(path, format="JPEG", icc_profile=b"\0" * 60_000, quality=90)
    else:
        Image.fromarray(img).save(path, format="PNG")
    data = path.read_bytes()
    f = _Counting(data)
    h = read_image_header(io.BufferedReader(f, buffer_size=4096), name=kind)
    assert (h.width, h.height) == (1500, 1200)
    assert f.read_bytes < 0.05 * len(data) + 70_000, (f.read_bytes, len(data))
    if kind == "tiff-ifd-at-end":
        assert int.from_bytes(data[4:8], "little") > len(data) // 2  # the IFD really is at the end


def test_header_errors_name_the_file(tmp_path):
    from stimage_sd.errors import FormatError
    from stimage_sd.io import read_image_header

    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a" + b"\0" * 100)
    with pytest.raises(FormatError, match=r"x\.png"):
        read_image_header(bad)
