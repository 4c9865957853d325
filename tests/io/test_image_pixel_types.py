"""Float and signed-integer images map to uint8 RGB by the documented rule, checked pixel by pixel.

The expected pixels are computed here independently: with scikit-image (``img_as_ubyte`` for
floats in [0, 1], ``rescale_intensity`` for a stretched range) or plain numpy, never with
:func:`stimage_sd.io.to_rgb8`. Each image is written as a TIFF in the layouts that take
different read paths (uncompressed strips read as raw rows, compressed tiles through
tifffile's Zarr store, planar RGB), and read back lazily in small chunks, so a range taken
per chunk instead of per image would show.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.exposure import rescale_intensity
from skimage.util import img_as_ubyte

from stimage_sd.io import read_image, to_rgb8

H, W = 70, 90


def _ramp(lo: float, hi: float, dtype, seed: int = 0, rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (H, W, 3) if rgb else (H, W)
    a = rng.uniform(lo, hi, size=shape)
    a.flat[0], a.flat[1] = lo, hi  # the extremes are present
    if np.issubdtype(np.dtype(dtype), np.integer):
        a = np.round(a)
    return a.astype(dtype)


def _stretch(a: np.ndarray) -> np.ndarray:
    f = a.astype(np.float64)
    lo, hi = np.nanmin(f[np.isfinite(f)]), np.nanmax(f[np.isfinite(f)])
    return np.round(rescale_intensity(np.clip(f, lo, hi), in_range=(lo, hi), out_range=(0.0, 255.0))).astype(np.uint8)


def _as_8bit(a: np.ndarray) -> np.ndarray:
    return np.round(a.astype(np.float64)).astype(np.uint8)


def _unit(a: np.ndarray) -> np.ndarray:
    return img_as_ubyte(a.astype(np.float64))


CASES = {
    # name: (image, oracle)
    "int16 in 0-255 (the issue: all 128 before)": (_ramp(0, 255, np.int16), _as_8bit),
    "int16 with negatives": (_ramp(-3000, 12000, np.int16), _stretch),
    "int8 in 0-127": (_ramp(0, 127, np.int8), _as_8bit),
    "int8 with negatives": (_ramp(-128, 127, np.int8), _stretch),
    "int32 12-bit range": (_ramp(0, 4095, np.int32), _stretch),
    "int32 in 0-255 RGB": (_ramp(0, 255, np.int32, rgb=True), _as_8bit),
    "float32 in 0-1": (_ramp(0, 1, np.float32), _unit),
    "float64 in 0-1 RGB": (_ramp(0, 1, np.float64, rgb=True), _unit),
    "float16 in 0-1": (_ramp(0, 1, np.float16), _unit),
    "float32 in 0-255 (the issue: all white before)": (_ramp(0, 255, np.float32, rgb=True), _as_8bit),
    "float64 arbitrary range": (_ramp(-2.5, 1e4, np.float64), _stretch),
    "float32 in 0.25-3.5 (within 0-255: 8-bit values)": (_ramp(0.25, 3.5, np.float32), _as_8bit),
    "float32 in 1.5-300": (_ramp(1.5, 300, np.float32), _stretch),
}


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[5:9, 10:20] = np.nan
    a[30, 3] = np.inf
    a[31, 3] = -np.inf
    return a


def _nan_oracle(inner):
    def oracle(a: np.ndarray) -> np.ndarray:
        finite = np.where(np.isfinite(a), a, 0.5 if a[np.isfinite(a)].max() <= 1 else 100.0)
        out = inner(finite)
        out[np.isnan(a)] = 255
        out[np.isposinf(a)] = 255
        out[np.isneginf(a)] = 0
        return out

    return oracle


CASES["float32 in 0-1 with NaN and inf"] = (_with_nan(_ramp(0, 1, np.float32)), _nan_oracle(_unit))
CASES["float64 arbitrary with NaN"] = (_with_nan(_ramp(-7, 900, np.float64)), _nan_oracle(_stretch))


def _rgb(expected: np.ndarray) -> np.ndarray:
    return np.repeat(expected[..., None], 3, axis=-1) if expected.ndim == 2 else expected


@pytest.mark.parametrize("name", list(CASES))
def test_to_rgb8_matches_oracle(name):
    image, oracle = CASES[name]
    np.testing.assert_array_equal(to_rgb8(image), _rgb(oracle(image)))


@pytest.mark.parametrize("layout", ["strips", "tiles-deflate", "planar"])
@pytest.mark.parametrize("name", list(CASES))
def test_tiff_read_lazily_matches_oracle(name, layout, tmp_path):
    image, oracle = CASES[name]
    if layout == "planar" and image.ndim == 2:
        pytest.skip("planar needs samples")
    path = tmp_path / "img.tif"
    if layout == "strips":
        tifffile.imwrite(path, image, rowsperstrip=8, photometric="rgb" if image.ndim == 3 else "minisblack")
    elif layout == "tiles-deflate":
        tifffile.imwrite(path, image, tile=(32, 32), compression="zlib", photometric="rgb" if image.ndim == 3 else "minisblack")
    else:
        tifffile.imwrite(path, np.moveaxis(image, -1, 0), planarconfig="separate", photometric="rgb")
    got = read_image(path, chunks=32).compute()  # chunks smaller than the image
    np.testing.assert_array_equal(np.moveaxis(got, 0, -1), _rgb(oracle(image)))


def test_constant_image_outside_the_ranges_is_black():
    np.testing.assert_array_equal(to_rgb8(np.full((3, 3), 1000, dtype=np.int16)), 0)
    np.testing.assert_array_equal(to_rgb8(np.full((3, 3), np.nan, dtype=np.float32)), 255)


def test_unsigned_types_keep_the_dtype_range():
    a = np.array([[0, 1, 32768, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb8(a)[..., 0], img_as_ubyte(a))
    b = np.array([[0, 2**31, 2**32 - 1]], dtype=np.uint32)
    np.testing.assert_array_equal(to_rgb8(b)[..., 0], np.round(b / (2**32 - 1) * 255).astype(np.uint8))
