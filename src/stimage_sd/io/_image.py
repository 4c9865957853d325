"""Reader of the release images (``<tech>/image/<slide>.png``, whatever their real format)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import dask.array as da
import numpy as np

from .._errors import FormatError

__all__ = ["DEFAULT_MAX_PIXELS", "read_image", "sniff_image_format", "to_rgb8"]

#: Ceiling on the pixel count of a PNG/JPEG decoded by PIL (its decompression-bomb guard is
#: lifted up to this value). The largest release image is ~11 GB; 4e9 pixels covers it.
DEFAULT_MAX_PIXELS = 4_000_000_000

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)


def sniff_image_format(path: str | Path) -> str:
    """The real format of an image file from its first bytes: ``png``, ``jpeg`` or ``tiff``.

    Release files are all named ``.png`` but hold PNG, JPEG or TIFF data.

    Raises
    ------
    FormatError
        If the file is empty or is none of these formats.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise FormatError(path, "image file is empty")
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    raise FormatError(path, f"not a PNG, JPEG or TIFF image (first bytes {head[:8]!r})")


def to_rgb8(arr: np.ndarray) -> np.ndarray:
    """Convert a decoded image to ``uint8`` RGB ``(y, x, 3)``.

    Conversion rules (documented data contract):

    - grayscale ``(y, x)`` or ``(y, x, 1)``: replicated to three channels;
    - grayscale + alpha ``(y, x, 2)`` and RGBA ``(y, x, 4)``: composited over white
      (``v * a + 255 * (1 - a)``, rounded), so transparent background becomes white;
    - 16-bit: ``round(v / 257)`` (exact inverse of ``v8 * 257``); other integer types
      are scaled from their full range, floats are assumed in ``[0, 1]``.
    """
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image shape {arr.shape}")
    a = _to_uint8(a)
    c = a.shape[-1]
    if c in (2, 4):
        color, alpha = a[..., : c - 1].astype(np.uint16), a[..., c - 1 :].astype(np.uint16)
        a = ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        f = (a.astype(np.float64) - info.min) / (info.max - info.min)
        return np.round(f * 255).astype(np.uint8)
    f = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0)
    return np.round(f * 255).astype(np.uint8)


@contextlib.contextmanager
def _pil_limit(max_pixels: int | None):
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _decode_pil(path: Path, max_pixels: int | None) -> np.ndarray:
    from PIL import Image

    with _pil_limit(max_pixels), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                if im.mode.startswith("I;16"):
                    return np.asarray(im).astype(np.uint16)
                if im.mode == "I":
                    return np.asarray(im).astype(np.int32).clip(0, 65535).astype(np.uint16)
                if im.mode == "F":
                    return np.asarray(im)
                return np.asarray(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise FormatError(
                path,
                f"image is larger than the decoding ceiling of {max_pixels} pixels "
                "(raise max_pixels if the file is trusted)",
            ) from e
        except (OSError, SyntaxError, ValueError) as e:
            raise FormatError(path, f"cannot decode image: {e}") from e


def _decode_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            arr = series.asarray()
            axes = series.axes
    except Exception as e:  # tifffile raises many types on corrupt files
        raise FormatError(path, f"cannot decode TIFF image: {e}") from e
    return _tiff_to_yxc(arr, axes, path)


def _tiff_to_yxc(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    axes = axes.upper()
    # drop leading singleton axes such as Q, Z, T
    while arr.ndim > 2 and axes[0] not in "YXSC":
        if arr.shape[0] != 1:
            arr, axes = arr[0], axes[1:]
            continue
        arr, axes = arr[0], axes[1:]
    if axes in ("YX",):
        return arr
    if axes in ("YXS", "YXC"):
        return arr
    if axes in ("SYX", "CYX"):
        return np.moveaxis(arr, 0, -1)
    raise FormatError(path, f"unsupported TIFF layout {axes} with shape {arr.shape}")


def read_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    chunks: int = 1024,
) -> da.Array:
    """Read a release image as ``uint8`` RGB with dims ``(c, y, x)``.

    The format is detected from the file's first bytes (release files are named ``.png``
    whatever they hold). Images are converted with :func:`to_rgb8`.

    Parameters
    ----------
    path
        The image file.
    max_pixels
        Ceiling on decoded pixels for PNG/JPEG (PIL's decompression-bomb guard); ``None``
        lifts it entirely.
    chunks
        Spatial chunk size of the returned dask array.

    Returns
    -------
    A dask array of shape ``(3, height, width)``, dtype ``uint8``.

    Raises
    ------
    FormatError
        If the file is not a decodable PNG, JPEG or TIFF.
    """
    path = Path(path)
    fmt = sniff_image_format(path)
    arr = _decode_tiff(path) if fmt == "tiff" else _decode_pil(path, max_pixels)
    try:
        rgb = to_rgb8(arr)
    except ValueError as e:
        raise FormatError(path, str(e)) from e
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise FormatError(path, f"image has no pixels (shape {rgb.shape})")
    return da.from_array(np.moveaxis(rgb, -1, 0), chunks=(3, chunks, chunks))
