"""Reading regions of a converted slide's image pyramid and resampling them into patches.

Geometry conventions (shared by export and the dataset):

- Pixel coordinates are *edge* coordinates: pixel ``j`` spans ``[j, j + 1)`` and its centre
  is ``j + 0.5``. A spot centre ``(x, y)`` from the release (``obsm["spatial"]``) is a
  point in these coordinates, which is how the release's own recipe treats it
  (``PIL.Image.crop((x - r, y - r, x + r, y + r))``).
- Pyramid level ``k`` is the 2^k x 2^k block mean of level 0 (see
  :mod:`stimage_sd.io._pyramid`), so a level-0 box ``b`` is the level-``k`` box ``b / 2^k``.
- A patch is the square box ``[x - s/2, x + s/2) x [y - s/2, y + s/2)`` of side ``s``
  level-0 pixels, resampled to ``px x px`` with PIL's ``Image.resize(..., box=...)``
  (sub-pixel box, filter support scaled with the reduction so downsampling is
  antialiased). Pixels outside the image are white (255) before filtering.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .._constants import IMAGE_KEY
from ..errors import StimageError

__all__ = ["FILTERS", "PatchGeometry", "SlideImage", "cut_patches", "tissue_fraction"]

#: Resampling filters (names accepted by ``resample=``) -> PIL filter and support (px).
FILTERS: dict[str, tuple[str, float]] = {
    "nearest": ("NEAREST", 0.5),
    "box": ("BOX", 0.5),
    "bilinear": ("BILINEAR", 1.0),
    "hamming": ("HAMMING", 1.0),
    "bicubic": ("BICUBIC", 2.0),
    "lanczos": ("LANCZOS", 3.0),
}
#: White, the padding outside the image.
PAD_VALUE = 255
#: A pixel counts as tissue when its chroma ``max(R,G,B) - min(R,G,B)`` is at least this.
TISSUE_CHROMA = 15
#: Tissue fraction is measured on every ``TISSUE_STRIDE``-th pixel of a patch in each axis.
TISSUE_STRIDE = 4
#: Relative tolerance under which a scale factor counts as exactly 1 (no resampling).
_UNIT_SCALE_TOL = 1e-6


def _pil_filter(name: str) -> Any:
    from PIL import Image

    try:
        return getattr(Image.Resampling, FILTERS[name][0])
    except KeyError:
        raise StimageError(f"unknown resampling filter {name!r} (choose from {', '.join(FILTERS)})") from None


class SlideImage:
    """Random-access reader of the ``he`` image pyramid of a converted slide.

    Reads the level arrays straight from Zarr (no dask graph per request) through a
    small LRU cache of decoded chunks, so that many patches cut from the same area
    decode each chunk once. The object pickles as its path and opens lazily, so it can
    be handed to DataLoader worker processes.

    Parameters
    ----------
    store
        Path of a converted slide (``<slide>.zarr``), or its fsspec URL (``hf://``,
        ``s3://``, ``https://``: only the chunks a patch covers are fetched).
    key
        Image element name.
    cache_bytes
        Size of the decoded-chunk cache.
    """

    def __init__(self, store: str | Path, key: str = IMAGE_KEY, cache_bytes: int = 192 << 20):
        from ..io._remote import is_url

        self.store: Path | str = str(store) if is_url(store) else Path(store)
        self.key = key
        self.cache_bytes = int(cache_bytes)
        self._state: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "key": self.key, "cache_bytes": self.cache_bytes, "_state": None}

    # ------------------------------------------------------------------ opening
    def _open(self) -> dict[str, Any]:
        # reopened in a forked child (DataLoader worker): no lock or cache is shared
        if self._state is not None and self._state["pid"] == os.getpid():
            return self._state
        import zarr

        from ..io._remote import is_url, open_group

        remote = is_url(self.store)
        path = f"{self.store}/images/{self.key}" if remote else self.store / "images" / self.key
        try:
            if remote:
                group = open_group(str(self.store), path=f"images/{self.key}")
            else:
                group = zarr.open_group(str(path), mode="r")
        except Exception as e:
            raise StimageError(f"{self.store}: no image element {self.key!r} ({e})") from None
        attrs = group.attrs.asdict()
        ms = (attrs.get("ome") or attrs).get("multiscales")
        if not ms:
            raise StimageError(f"{path}: no OME-NGFF 'multiscales' metadata")
        arrays, factors = [], []
        for d in ms[0]["datasets"]:
            arr = group[d["path"]]
            scale = 1.0
            for t in d.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = float(t["scale"][-1])
            arrays.append(arr)
            factors.append(scale)
        if arrays[0].ndim != 3 or arrays[0].shape[0] != 3 or arrays[0].dtype != np.uint8:
            raise StimageError(f"{path}: expected uint8 (c=3, y, x) levels, got {arrays[0].dtype} {arrays[0].shape}")
        self._state = {
            "pid": os.getpid(),
            "arrays": arrays,
            "factors": factors,
            "cache": OrderedDict(),
            "cached": 0,
            "lock": threading.Lock(),
        }
        return self._state

    @property
    def n_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self._open()["arrays"])

    def shape(self, level: int = 0) -> tuple[int, int]:
        """``(height, width)`` of a level."""
        a = self._open()["arrays"][level]
        return int(a.shape[1]), int(a.shape[2])

    def factor(self, level: int) -> float:
        """Downsampling factor of a level relative to level 0 (``2 ** level``)."""
        return self._open()["factors"][level]

    # ------------------------------------------------------------------ reading
    def _chunk(self, level: int, cy: int, cx: int) -> np.ndarray:
        st = self._open()
        key = (level, cy, cx)
        with st["lock"]:
            hit = st["cache"].get(key)
            if hit is not None:
                st["cache"].move_to_end(key)
                return hit
        arr = st["arrays"][level]
        ch, cw = arr.chunks[1], arr.chunks[2]
        block = arr[:, cy * ch : (cy + 1) * ch, cx * cw : (cx + 1) * cw]
        block = np.ascontiguousarray(np.moveaxis(block, 0, -1))
        with st["lock"]:
            st["cache"][key] = block
            st["cached"] += block.nbytes
            while st["cached"] > self.cache_bytes and len(st["cache"]) > 1:
                _, old = st["cache"].popitem(last=False)
                st["cached"] -= old.nbytes
        return block

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of a level as ``(h, w, 3)`` uint8, white outside the image."""
        h, w = self.shape(level)
        out = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, dtype=np.uint8)
        iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if iy0 >= iy1 or ix0 >= ix1:
            return out
        arr = self._open()["arrays"][level]
        ch, cw = arr.chunks[1], arr.chunks[2]
        for cy in range(iy0 // ch, (iy1 - 1) // ch + 1):
            for cx in range(ix0 // cw, (ix1 - 1) // cw + 1):
                block = self._chunk(level, cy, cx)
                by0, bx0 = cy * ch, cx * cw
                sy0, sy1 = max(iy0, by0), min(iy1, by0 + block.shape[0])
                sx0, sx1 = max(ix0, bx0), min(ix1, bx0 + block.shape[1])
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = block[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0]
        return out


class PatchGeometry:
    """Where the patches of one slide come from and how they are resampled.

    Parameters
    ----------
    boxes
        ``(n, 4)`` level-0 boxes ``x0, y0, x1, y1`` (edge coordinates; may leave the image).
    px
        Output side in pixels.
    image
        The slide's :class:`SlideImage`.
    resample
        Filter name (:data:`FILTERS`).
    pyramid
        Read a coarser pyramid level when the patch is reduced by 2x or more.
    """

    def __init__(self, boxes: np.ndarray, px: int, image: SlideImage, resample: str = "bilinear", pyramid: bool = True):
        self.boxes = np.asarray(boxes, dtype=np.float64)
        self.px = int(px)
        self.image = image
        self.resample = resample
        self.filter = _pil_filter(resample)
        side = float(np.median(self.boxes[:, 2] - self.boxes[:, 0])) if len(self.boxes) else float(px)
        #: Reduction from level 0 to the output (``source side / px``; < 1 means upsampling).
        self.scale0 = side / self.px
        level = 0
        if pyramid and self.scale0 >= 2:
            level = min(math.floor(math.log2(self.scale0) + 1e-9), image.n_levels - 1)
        self.level = level
        self.factor = image.factor(level)
        #: Reduction from the level read to the output.
        self.scale = self.scale0 / self.factor
        support = FILTERS[resample][1] * max(self.scale, 1.0)
        self.margin = math.ceil(support) + 2
        h0, w0 = image.shape(0)
        b = self.boxes
        inter = np.clip(np.minimum(b[:, 2], w0) - np.maximum(b[:, 0], 0), 0, None) * np.clip(
            np.minimum(b[:, 3], h0) - np.maximum(b[:, 1], 0), 0, None
        )
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        #: Fraction of each box outside the image (padded with white).
        self.outside = np.where(area > 0, 1.0 - inter / np.where(area > 0, area, 1), 1.0).astype(np.float32)

    def level_boxes(self, idx: np.ndarray) -> np.ndarray:
        """Boxes of patches ``idx`` in the coordinates of the level read."""
        return self.boxes[idx] / self.factor

    def order(self, tile: int = 1024) -> np.ndarray:
        """Patch indices sorted by tile (row-major), then by y, then by x: cache-friendly."""
        if not len(self.boxes):
            return np.zeros(0, dtype=np.int64)
        lb = self.boxes / self.factor
        cx = (lb[:, 0] + lb[:, 2]) / 2
        cy = (lb[:, 1] + lb[:, 3]) / 2
        return np.lexsort((cx, cy, np.floor(cx / tile), np.floor(cy / tile)))


def cut_patches(geom: PatchGeometry, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Cut and resample patches ``idx`` of a slide into ``(len(idx), px, px, 3)`` uint8.

    One region covering all requested boxes (plus the filter margin) is read from the
    image level, then each patch is resampled from it. A box of exactly ``px`` integer
    pixels is copied without resampling.
    """
    from PIL import Image

    px = geom.px
    idx = np.asarray(idx, dtype=np.int64)
    if out is None:
        out = np.empty((len(idx), px, px, 3), dtype=np.uint8)
    if not len(idx):
        return out
    lb = geom.level_boxes(idx)
    m = geom.margin
    ry0 = math.floor(lb[:, 1].min()) - m
    rx0 = math.floor(lb[:, 0].min()) - m
    ry1 = math.ceil(lb[:, 3].max()) + m
    rx1 = math.ceil(lb[:, 2].max()) + m
    region = geom.image.read(geom.level, ry0, ry1, rx0, rx1)
    for j, (bx0, by0, bx1, by1) in enumerate(lb):
        ix0, iy0 = round(bx0), round(by0)
        if (
            abs(bx0 - ix0) < 1e-9
            and abs(by0 - iy0) < 1e-9
            and abs(bx1 - bx0 - px) < 1e-9
            and abs(by1 - by0 - px) < 1e-9
        ):
            out[j] = region[iy0 - ry0 : iy0 - ry0 + px, ix0 - rx0 : ix0 - rx0 + px]
            continue
        # resample from a window whose origin depends on this box only, so that a patch
        # is bit-identical however the patches were grouped (PIL's filter positions are
        # computed relative to the window origin)
        ox, oy = math.floor(bx0) - m, math.floor(by0) - m
        ex, ey = math.ceil(bx1) + m, math.ceil(by1) + m
        win = Image.fromarray(np.ascontiguousarray(region[oy - ry0 : ey - ry0, ox - rx0 : ex - rx0]))
        res = win.resize((px, px), geom.filter, box=(bx0 - ox, by0 - oy, bx1 - ox, by1 - oy))
        out[j] = np.asarray(res)
    return out


def tissue_fraction(patches: np.ndarray, chroma: int = TISSUE_CHROMA, stride: int = TISSUE_STRIDE) -> np.ndarray:
    """Fraction of tissue pixels in each patch of ``(n, px, px, 3)`` uint8.

    A pixel is tissue when its chroma ``max(R, G, B) - min(R, G, B)`` is at least
    ``chroma`` (glass, white padding and grey background have almost none; eosin and
    haematoxylin stains have plenty). Measured on every ``stride``-th pixel.
    """
    sub = patches[:, ::stride, ::stride, :]
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    chroma_px = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return (chroma_px >= chroma).mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
