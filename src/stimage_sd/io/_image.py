"""Reader of the release images (``<tech>/image/<slide>.png``, whatever their real format).

Images are read lazily where the format allows it:

- **TIFF** (classic or BigTIFF; tiled or striped; pyramidal or not; 8/16-bit; RGB, RGBA,
  grayscale, grayscale + alpha; chunky or planar) is never decoded as a whole. An
  uncompressed, contiguous image is memory-mapped; any other is read through tifffile's
  Zarr interface (``TiffPageSeries.aszarr``), one region per dask chunk, decoding only
  the tiles or strips that region covers. Of a pyramidal TIFF the full-resolution level
  is read. TIFFs that tifffile cannot decode lazily (palette, CMYK, unusual compressions)
  fall back to a one-off PIL decode.
- **PNG and JPEG** have no random access: they are decoded once with PIL (its
  decompression-bomb guard lifted up to a configurable ceiling) and then converted to RGB
  chunk by chunk, so no second full-size copy is made.

Either way :func:`read_image` returns a dask array ``(3, y, x)`` of ``uint8`` whose chunks
convert to RGB with :func:`to_rgb8` when computed.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .._logging import logger
from ..errors import FormatError

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

#: Photometric interpretations that tifffile returns as raw samples which :func:`to_rgb8`
#: cannot interpret (palette indices, inverted gray, CMYK, Lab...): such TIFFs go to PIL.
_PIL_PHOTOMETRIC = frozenset({0, 3, 4, 5, 8, 9, 10, 32803, 32844, 32845, 34892})


def sniff_image_format(path: str | Path) -> str:
    """The real format of an image file from its first bytes: ``png``, ``jpeg`` or ``tiff``.

    Release files are all named ``.png`` but hold PNG, JPEG or TIFF data.

    Parameters
    ----------
    path
        The image file.

    Returns
    -------
    ``"png"``, ``"jpeg"`` or ``"tiff"`` (BigTIFF included).

    Raises
    ------
    FormatError
        If the file is empty or is none of these formats.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm")
    >>> ssd.io.sniff_image_format(files.image)
    'jpeg'
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


def to_rgb8(arr: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Convert a decoded image to ``uint8`` RGB ``(y, x, 3)``.

    Conversion rules (documented data contract, ``docs/data_contract.md``):

    - grayscale ``(y, x)`` or ``(y, x, 1)``: replicated to three channels;
    - grayscale + alpha ``(y, x, 2)`` and RGBA ``(y, x, 4)``: composited over white
      (``v * a + 255 * (1 - a)``, rounded), so transparent background becomes white;
    - unsigned integers: their data type's range, ``[0, 2**bits - 1]`` (16-bit:
      ``round(v / 257)``, the exact inverse of ``v8 * 257``), as scikit-image's
      ``img_as_ubyte``; ``bool``: 0 and 255;
    - signed integers and floats: a range taken from the values (:func:`image_value_range`):
      ``[0, 1]`` when every finite value lies in it (``round(255 v)``, as ``img_as_ubyte``),
      else ``[0, 255]`` when every value lies in that (values taken as 8-bit intensities,
      rounded), else the actual ``[min, max]`` stretched to ``[0, 255]`` (as scikit-image's
      ``rescale_intensity``; a constant image becomes 0). ``NaN`` becomes 255 (white, the
      slide background, as transparent pixels do), ``+inf`` 255 and ``-inf`` 0.

    Parameters
    ----------
    arr
        Decoded pixels, ``(y, x)`` or ``(y, x, c)`` with ``c`` in 1-4.
    value_range
        For signed integers and floats: the range ``(lo, hi)`` mapped to ``[0, 255]``, when
        ``arr`` is a region of a larger image (from :func:`image_value_range` of the whole
        image); by default taken from ``arr`` itself.

    Returns
    -------
    A C-contiguous ``uint8`` array of shape ``(y, x, 3)``.

    Raises
    ------
    ValueError
        If the array does not have one of the shapes above.

    Examples
    --------
    >>> import numpy as np
    >>> from stimage_sd.io import to_rgb8
    >>> to_rgb8(np.full((2, 2), 65535, dtype=np.uint16))[0, 0]
    array([255, 255, 255], dtype=uint8)
    """
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image shape {arr.shape}")
    a = _to_uint8(a, value_range)
    c = a.shape[-1]
    if c in (2, 4):
        color, alpha = a[..., : c - 1].astype(np.uint16), a[..., c - 1 :].astype(np.uint16)
        a = ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def needs_value_range(dtype: np.dtype) -> bool:
    """Whether pixels of ``dtype`` are mapped from a range taken from the values."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.signedinteger) or np.issubdtype(dtype, np.floating)


def image_value_range(a: np.ndarray) -> tuple[float, float]:
    """The range of a signed-integer or float image mapped to ``[0, 255]`` by :func:`to_rgb8`.

    ``(0, 1)`` when every finite value is in ``[0, 1]``, else ``(0, 255)`` when every finite
    value is in ``[0, 255]``, else the finite ``(min, max)``; ``(0, 1)`` when there is no
    finite value.
    """
    lo, hi = _finite_min_max(a)
    return range_from_min_max(lo, hi)


def _finite_min_max(a: np.ndarray) -> tuple[float, float]:
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.floating):
        a = a[np.isfinite(a)]
    if a.size == 0:
        return np.inf, -np.inf
    return float(a.min()), float(a.max())


def range_from_min_max(lo: float, hi: float) -> tuple[float, float]:
    """The mapped range, from the finite minimum and maximum of the whole image."""
    if lo > hi:  # no finite value
        return 0.0, 1.0
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    return lo, hi


def _to_uint8(a: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.unsignedinteger):
        info = np.iinfo(a.dtype)
        return np.round(a.astype(np.float64) / info.max * 255).astype(np.uint8)
    if not needs_value_range(a.dtype):
        raise ValueError(f"unsupported pixel type {a.dtype}")
    lo, hi = image_value_range(a) if value_range is None else value_range
    f = a.astype(np.float64)
    nan = np.isnan(f)
    if hi > lo:
        f = (np.clip(f, lo, hi) - lo) / (hi - lo) * 255.0  # as rescale_intensity
    else:
        f = np.where(f > hi, 255.0, 0.0)
    f[nan] = 255.0
    return np.round(f).astype(np.uint8)


# --------------------------------------------------------------------------------------
# lazy RGB view of a decoded or on-disk image
class _RGBView:
    """Array-like ``(3, y, x)`` ``uint8`` view of a raw image; converts one region at a time.

    ``raw`` is anything sliceable (numpy array, memory map, Zarr array over a TIFF) laid out
    as ``layout`` (``"YX"``, ``"YXS"`` or ``"SYX"``) after the ``prefix`` indices of leading
    axes. Regions are converted with :func:`to_rgb8` when dask asks for them.
    """

    def __init__(self, raw: Any, layout: str, path: Path, prefix: tuple[int, ...] = ()):
        self.raw, self.layout, self.path, self.prefix = raw, layout, path, prefix
        shape = tuple(raw.shape[len(prefix) :])
        h, w = (shape[1], shape[2]) if layout == "SYX" else (shape[0], shape[1])
        self.shape = (3, int(h), int(w))
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.value_range: tuple[float, float] | None = None
        if needs_value_range(raw.dtype):
            self.value_range = self._scan_range()

    def _raw_rows(self, ys: slice) -> np.ndarray:
        if self.layout == "SYX":
            return np.asarray(self.raw[(*self.prefix, slice(None), ys, slice(None))])
        return np.asarray(self.raw[(*self.prefix, ys)])

    def _scan_range(self, band: int = 256) -> tuple[float, float]:
        """The value range of the whole image (one pass in row bands: bounded memory)."""
        lo, hi = np.inf, -np.inf
        h = self.shape[1]
        logger.info("%s: %s pixels: scanning the values for their range", self.path, self.raw.dtype)
        try:
            for y in range(0, h, band):
                a, b = _finite_min_max(self._raw_rows(slice(y, min(h, y + band))))
                lo, hi = min(lo, a), max(hi, b)
        except FormatError:
            raise
        except Exception as e:
            raise FormatError(self.path, f"cannot decode image: {e}") from e
        rng = range_from_min_max(lo, hi)
        logger.info("%s: %s pixels in [%g, %g] mapped from [%g, %g] to 0-255",
                    self.path, self.raw.dtype, lo, hi, *rng)
        return rng

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        cs, ys, xs = key
        try:
            if self.layout == "SYX":
                a = np.moveaxis(np.asarray(self.raw[(*self.prefix, slice(None), ys, xs)]), 0, -1)
            elif self.layout == "YXS":
                a = np.asarray(self.raw[(*self.prefix, ys, xs, slice(None))])
            else:
                a = np.asarray(self.raw[(*self.prefix, ys, xs)])
            rgb = to_rgb8(a, self.value_range)
        except FormatError:
            raise
        except Exception as e:  # codec errors, truncated tiles, I/O errors
            raise FormatError(self.path, f"cannot decode image region rows {ys.start}:{ys.stop}, "
                              f"columns {xs.start}:{xs.stop}: {e}") from e
        out = np.empty((3, *rgb.shape[:2]), dtype=np.uint8)
        for k in range(3):  # de-interleave channel by channel (faster than a 3-D transpose)
            out[k] = rgb[..., k]
        return out[cs]


class _RawRows:
    """Rows of an uncompressed, contiguous ``(y, x[, s])`` image, read with plain file reads.

    Unlike a memory map, reading does not leave the file's pages mapped into the process
    (its resident memory stays bounded by the chunks in flight).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, int(offset), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __getitem__(self, key: tuple) -> np.ndarray:
        ys, rest = key[0], key[1:]
        y0, y1, _ = ys.indices(self.shape[0])
        n = max(y1 - y0, 0)
        buf = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + y0 * self.row_bytes)
            got = fh.readinto(memoryview(buf).cast("B"))
        if got != buf.nbytes:
            raise FormatError(self.path, f"TIFF file is truncated: rows {y0}:{y1} end beyond the file")
        return buf[(slice(None), *rest)]


def _layout(axes: str, shape: tuple[int, ...], path: Path) -> tuple[str, tuple[int, ...]]:
    """Layout (``YX``/``YXS``/``SYX``) and leading-axis indices of a tifffile series."""
    axes = axes.upper().replace("C", "S") if "S" not in axes.upper() else axes.upper()
    prefix: list[int] = []
    while len(axes) > 2 and axes[0] not in "YXS":
        if shape[len(prefix)] != 1:
            logger.warning("%s: TIFF axis %r has %d entries; reading the first", path, axes[0], shape[len(prefix)])
        prefix.append(0)
        axes = axes[1:]
    if axes in ("YX", "YXS", "SYX"):
        return axes, tuple(prefix)
    raise FormatError(path, f"unsupported TIFF layout {axes} with shape {shape}")


def _wrap(view: _RGBView, path: Path, chunks: int, row_block: int | None = None) -> da.Array:
    """Dask array over ``view`` with ``(3, chunks, chunks)`` chunks.

    ``row_block`` (a multiple of ``chunks``) reads full-width bands of that many rows, for
    striped sources where a narrower read would decode the same strips repeatedly; the
    bands are then split into square chunks.
    """
    st = path.stat()
    token = da.core.tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns, view.shape, chunks, row_block)
    w = view.shape[2]
    read_chunks = (3, row_block, w) if row_block else (3, chunks, chunks)
    arr = da.from_array(
        view, chunks=read_chunks, name=f"read-image-{token}", asarray=False, fancy=False, lock=False,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )
    if row_block:
        arr = arr.rechunk((3, chunks, chunks))
    return arr


# --------------------------------------------------------------------------------------
# PNG / JPEG (and TIFFs that tifffile cannot read lazily): one decode with PIL
@contextlib.contextmanager
def pil_limit(max_pixels: int | None):
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


class _PILRows:
    """Regions of a decoded PIL image as numpy arrays, converted one region at a time.

    PNG and JPEG have no random access, so the whole image is decoded once (PIL holds it,
    RGB as 4 bytes per pixel); regions are copied out when dask asks for them instead of
    copying the whole image into a numpy array too (which doubled the peak memory).
    """

    def __init__(self, im: Any, path: Path):
        self.im, self.path = im, path
        w, h = im.size
        probe = self._convert(im.crop((0, 0, min(w, 1), min(h, 1))))
        self.dtype = probe.dtype
        self.shape = (h, w, *probe.shape[2:])
        self.ndim = len(self.shape)

    @staticmethod
    def _convert(im: Any) -> np.ndarray:
        if im.mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16, copy=False)
        if im.mode == "I":
            return np.asarray(im).astype(np.int32).clip(0, 65535).astype(np.uint16)
        return np.asarray(im)

    def __getitem__(self, key: tuple) -> np.ndarray:
        ys, xs = key[0], key[1] if len(key) > 1 else slice(None)
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        a = self._convert(self.im.crop((x0, y0, max(x0, x1), max(y0, y1))))
        return a[(slice(None), slice(None), *key[2:])] if len(key) > 2 else a


def _decode_pil(path: Path, max_pixels: int | None) -> _PILRows:
    from PIL import Image

    with pil_limit(max_pixels), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                # the decoded pixels outlive the ``with``, which closes the file only
                return _PILRows(im, path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise FormatError(
                path,
                f"image is larger than the decoding ceiling of {max_pixels} pixels "
                "(raise max_pixels if the file is trusted)",
            ) from e
        except (OSError, SyntaxError, ValueError, MemoryError) as e:
            raise FormatError(path, f"cannot decode image: {e}") from e


def _pil_view(path: Path, max_pixels: int | None) -> _RGBView:
    arr = _decode_pil(path, max_pixels)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
        raise FormatError(path, f"unsupported image shape {arr.shape}")
    return _RGBView(arr, "YX" if arr.ndim == 2 else "YXS", path)


# --------------------------------------------------------------------------------------
# TIFF: lazy
def _tiff_view(path: Path, chunks: int, max_pixels: int | None) -> tuple[_RGBView, int | None]:
    """Lazy view of the full-resolution image of a TIFF, and the band height for strips."""
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises many types on corrupt files
        raise FormatError(path, f"cannot read TIFF image: {e}") from e
    try:
        if not tf.series:
            raise FormatError(path, "TIFF file holds no image")

        def npix(s) -> int:
            try:
                return int(np.prod([n for n, a in zip(s.shape, s.axes, strict=False) if a in "YX"]))
            except Exception:
                return 0

        index = max(range(len(tf.series)), key=lambda i: npix(tf.series[i]))
        series = tf.series[index]
        page = series.keyframe
        layout, prefix = _layout(series.axes, series.shape, path)
        _check_strile_extent(tf, series, path)
        if int(page.photometric) in _PIL_PHOTOMETRIC or (int(page.photometric) == 6 and int(page.compression) != 7):
            logger.info("%s: TIFF photometric %s is decoded with PIL", path, page.photometric.name)
            tf.close()
            return _pil_view(path, max_pixels), None
        raw: Any = None
        row_block = None
        if series.dataoffset is not None:  # uncompressed, contiguous
            if layout in ("YX", "YXS"):  # plain reads of full-width row bands
                dtype = np.dtype(series.dtype).newbyteorder(tf.byteorder)
                raw = _RawRows(path, series.dataoffset, series.shape[len(prefix) :], dtype)
                prefix, row_block = (), chunks
            else:
                with contextlib.suppress(Exception):
                    raw = tifffile.memmap(path, series=index, level=0, mode="r")
        if raw is None:
            store = series.aszarr(level=0)
            import zarr

            raw = zarr.open(store, mode="r")
            if not page.is_tiled:
                rps = int(page.rowsperstrip or page.imagelength)
                row_block = chunks * max(1, -(-rps // chunks))
            # decode one tile/strip now, so that an undecodable file fails here
            try:
                probe = _RGBView(raw, layout, path, prefix)
                probe[(slice(0, 3), slice(0, 1), slice(0, 1))]
            except FormatError as e:
                logger.info("%s: tifffile cannot decode it lazily (%s); trying PIL", path, e.message)
                tf.close()
                try:
                    return _pil_view(path, max_pixels), None
                except FormatError:
                    raise e from None
        else:
            tf.close()
        return _RGBView(raw, layout, path, prefix), row_block
    except FormatError:
        tf.close()
        raise
    except Exception as e:
        tf.close()
        raise FormatError(path, f"cannot read TIFF image: {e}") from e


def _check_strile_extent(tf: Any, series: Any, path: Path) -> None:
    """Raise if a tile or strip of the full-resolution level lies beyond the end of the file."""
    size = os.path.getsize(path)
    for page in series.levels[0].pages:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
        counts = np.asarray(page.databytecounts, dtype=np.uint64)
        if len(offsets) and int((offsets + counts).max()) > size:
            raise FormatError(path, f"TIFF file is truncated: image data ends beyond the file's {size} bytes")


def read_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    chunks: int = 1024,
) -> da.Array:
    """Read a release image lazily as ``uint8`` RGB with dims ``(c, y, x)``.

    The format is detected from the file's first bytes (release files are named ``.png``
    whatever they hold). TIFFs are read lazily: only the tiles or strips under a chunk are
    decoded when that chunk is computed, so memory stays bounded by the chunk size. PNG and
    JPEG are decoded once (they have no random access) and converted chunk by chunk.
    Pixels are converted with :func:`to_rgb8` (gray replicated, alpha composited over
    white, 16-bit scaled by 1/257, signed integers and floats from a range taken from the
    whole image's values). Of a pyramidal TIFF, the full-resolution level is read.

    Parameters
    ----------
    path
        The image file.
    max_pixels
        Ceiling on decoded pixels for PNG/JPEG (PIL's decompression-bomb guard); ``None``
        lifts it entirely. Lazily read TIFFs need no ceiling.
    chunks
        Spatial chunk size of the returned dask array (chunks are ``(3, chunks, chunks)``).

    Returns
    -------
    A dask array of shape ``(3, height, width)``, dtype ``uint8``.

    Raises
    ------
    FormatError
        If the file is not a decodable PNG, JPEG or TIFF, is truncated, or is larger than
        ``max_pixels`` (PNG/JPEG). A TIFF region that fails to decode later, when computed,
        raises :class:`FormatError` too.
    """
    path = Path(path)
    fmt = sniff_image_format(path)
    if fmt == "tiff":
        view, row_block = _tiff_view(path, chunks, max_pixels)
    else:
        view, row_block = _pil_view(path, max_pixels), None
    if view.shape[1] == 0 or view.shape[2] == 0:
        raise FormatError(path, f"image has no pixels (shape {view.shape})")
    return _wrap(view, path, chunks, row_block)
