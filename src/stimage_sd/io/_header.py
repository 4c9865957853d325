"""Image dimensions from the header alone (PNG, JPEG, TIFF/BigTIFF), on any seekable file.

Only the bytes the header parser asks for are read: the PNG ``IHDR`` chunk, the JPEG
markers up to the first start-of-frame, the TIFF header and first IFD (wherever in the file
it lies, little- or big-endian, classic or BigTIFF). On a file object that fetches byte
ranges on demand (a ranged HTTP reader) that is a few kilobytes of a gigabyte image.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import FormatError

__all__ = ["ImageHeader", "read_image_header"]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageHeader:
    """Size and format of an image, from its header.

    Attributes
    ----------
    width, height
        Pixels (columns, rows) of the full-resolution image.
    format
        ``"png"``, ``"jpeg"`` or ``"tiff"``.
    """

    width: int
    height: int
    format: str


def read_image_header(source: str | Path | IO[bytes], *, name: str = "") -> ImageHeader:
    """Width, height and format of a PNG, JPEG or TIFF image, reading its header only.

    Parameters
    ----------
    source
        A path, or a binary file object that can ``seek`` (e.g. a ranged HTTP reader:
        only the header's bytes are requested).
    name
        Name used in error messages (default: the path).

    Returns
    -------
    :class:`ImageHeader`.

    Raises
    ------
    FormatError
        If the bytes are none of these formats or the header is damaged.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "GSE000001_GSM0000001")
    >>> header = ssd.io.read_image_header(files.image)
    >>> header.format
    'png'
    """
    if isinstance(source, str | Path):
        with open(source, "rb") as fh:
            return read_image_header(fh, name=name or str(source))
    fh: Any = source
    name = name or str(getattr(fh, "name", "image"))
    fh.seek(0)
    magic = fh.read(4)
    fh.seek(0)
    if not magic:
        raise FormatError(name, "empty file, no image header")
    try:
        if magic in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(fh, name=name) as tif:
                page = tif.pages.first
                return ImageHeader(width=int(page.imagewidth), height=int(page.imagelength), format="tiff")
        from PIL import Image

        with _PIL_LOCK, warnings.catch_warnings():
            # only the header is parsed: no decompression bomb can go off
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(fh, formats=("PNG", "JPEG")) as im:
                    w, h = im.size
                    fmt = str(im.format).lower()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except FormatError:
        raise
    except Exception as e:  # PIL/tifffile raise many types for damaged headers
        raise FormatError(name, f"cannot read the image header ({type(e).__name__}: {e})") from e
    return ImageHeader(width=int(w), height=int(h), format="jpeg" if fmt in ("jpeg", "mpo") else fmt)
