"""H&E-like image texture, rendered tile by tile, and writers for PNG, JPEG and TIFF.

The texture is built from stain concentrations turned into colour with the Beer–Lambert
law (typical haematoxylin and eosin optical-density vectors): white glass outside the tissue,
pink eosin stroma with fibre-like streaks, purple haematoxylin nuclei whose density,
size, shape and darkness depend on the domain. Every random quantity is a hash of its
position, so any tile can be rendered on its own and big images are written in bounded
memory (strip by strip for PNG and strip TIFF, tile by tile for tiled TIFF).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._geometry import Layout
from ._noise import fractal_noise, hash_u01, rng_for, stable_seed, value_noise
from ._spec import SlideSpec

__all__ = ["ImageRenderer", "write_image"]

_H = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_E = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
_H /= np.linalg.norm(_H)
_E /= np.linalg.norm(_E)
#: Residual optical density of glass and mounting medium (a slightly grey-blue white).
_GLASS = np.array([0.035, 0.04, 0.03], dtype=np.float32)
#: Lattice cell of the nucleus field, µm (at most one nucleus per cell and layer).
_CELL_UM = 10.0
#: Period of the film-grain table, pixels.
_GRAIN_PERIOD = 509
#: Range and quantisation of the stain densities looked up in the colour table.
_H_MAX, _NH = 2.6, 640
_E_MAX, _NE = 1.3, 320
#: Largest pixel count rendered at once.
_BLOCK_PX = 1 << 21


@dataclass
class _DomainLook:
    density: float  # probability that a lattice cell holds a nucleus
    radius_um: float  # nucleus radius
    aspect: float  # elongation of nuclei
    h_nuc: float  # haematoxylin optical density at a nucleus
    h_bg: float  # haematoxylin in cytoplasm/stroma
    eosin: float  # eosin optical density
    fibres: float  # strength of fibre streaks


def _looks(spec: SlideSpec) -> list[_DomainLook]:
    rng = rng_for(spec.seed, spec.slide, "looks")
    n = spec.n_domains
    out: list[_DomainLook] = []
    for k in range(n):
        j = rng.uniform(-1, 1, size=7)
        if spec.domain_layout in ("blobs", "varied_blobs"):
            if k == 0:  # stroma: sparse elongated fibroblasts, strong eosin, fibres
                base = _DomainLook(0.18, 2.4, 2.6, 0.9, 0.05, 0.55, 0.45)
            elif k == 1:  # tumour: crowded large dark nuclei
                base = _DomainLook(0.85, 4.0, 1.3, 1.25, 0.16, 0.35, 0.05)
            elif k == 2:  # lymphoid aggregate: very dense small round very dark nuclei
                base = _DomainLook(0.95, 2.6, 1.05, 1.5, 0.10, 0.22, 0.0)
            else:
                base = _DomainLook(0.5, 3.2, 1.5, 1.0, 0.1, 0.42, 0.2)
        else:
            t = k / max(n - 1, 1)
            last = k == n - 1 and n >= 3
            if last:  # white matter: sparse nuclei, pale, fibrous
                base = _DomainLook(0.15, 2.6, 1.4, 0.85, 0.04, 0.30, 0.35)
            elif k == 0 and n >= 3:  # molecular layer: few cells
                base = _DomainLook(0.22, 2.8, 1.2, 0.9, 0.06, 0.45, 0.1)
            else:
                base = _DomainLook(0.45 + 0.35 * math.sin(math.pi * t), 3.0 + 0.8 * t, 1.3, 1.05, 0.09, 0.42, 0.05)
        out.append(
            _DomainLook(
                density=float(np.clip(base.density * (1 + 0.1 * j[0]), 0.05, 0.98)),
                radius_um=base.radius_um * (1 + 0.06 * j[1]),
                aspect=max(1.0, base.aspect * (1 + 0.1 * j[2])),
                h_nuc=base.h_nuc * (1 + 0.08 * j[3]),
                h_bg=base.h_bg * (1 + 0.15 * j[4]),
                eosin=base.eosin * (1 + 0.1 * j[5]),
                fibres=base.fibres,
            )
        )
    return out


class ImageRenderer:
    """Renders any rectangle of a slide's image, identically whatever the tiling."""

    def __init__(self, spec: SlideSpec, layout: Layout):
        self.spec = spec
        self.layout = layout
        self.field = layout.field
        self.ump = float(spec.um_per_px)  # type: ignore[arg-type]
        self.height = layout.height
        self.width = layout.width
        self.seed = stable_seed(spec.seed, spec.slide, "image")
        looks = _looks(spec)
        self.density = np.array([lk.density for lk in looks], dtype=np.float32)
        self.rad_px = np.array([lk.radius_um / self.ump for lk in looks], dtype=np.float32)
        self.aspect = np.array([lk.aspect for lk in looks], dtype=np.float32)
        self.h_nuc = np.array([lk.h_nuc for lk in looks], dtype=np.float32)
        self.h_bg = np.array([lk.h_bg for lk in looks], dtype=np.float32)
        self.eosin = np.array([lk.eosin for lk in looks], dtype=np.float32)
        self.fibres = np.array([lk.fibres for lk in looks], dtype=np.float32)
        self.cell_px = _CELL_UM / self.ump
        self.edge = np.float32(max(0.6, 0.25 / self.ump))
        # stroma shading, tissue and domains are computed on a coarse, globally aligned
        # grid of this stride (pixels) and interpolated
        self.stride = max(2, int(2.0 / self.ump))
        # film grain: a periodic table of hashed values (period prime, invisible)
        p = _GRAIN_PERIOD
        # (in quantisation steps of the colour table, also dithering the quantisation)
        self.grain = hash_u01(np.arange(p)[:, None], np.arange(p)[None, :], self.seed + 9) * np.float32(5.0) - np.float32(2.0)
        self._lut_cache: np.ndarray | None = None

    # ------------------------------------------------------------------------------------
    def _to_um(self, p: np.ndarray) -> np.ndarray:
        return self.layout.px_to_um(p)

    def _shading(self, py: np.ndarray, px: np.ndarray, jitter: bool = False) -> np.ndarray:
        """Eosin, background haematoxylin and tissue cover at pixel positions ``py`` x ``px``.

        Returns float32 ``(3, len(py), len(px))``.
        """
        yu = self._to_um(py)[:, None]
        xu = self._to_um(px)[None, :]
        if jitter:
            # tissue and domains are sampled at jittered positions, so that interpolating
            # the coarse grid gives ragged boundaries instead of staircases
            iy = np.rint(np.asarray(py) / self.stride).astype(np.int64)[:, None]
            ix = np.rint(np.asarray(px) / self.stride).astype(np.int64)[None, :]
            amp = 0.8 * self.stride * self.ump
            gy = yu + (hash_u01(iy, ix, self.seed + 31) - 0.5) * amp
            gx = xu + (hash_u01(iy, ix, self.seed + 32) - 0.5) * amp
        else:
            gy, gx = yu, xu
        tissue = self.field.tissue(gy, gx)
        dom = self.field.domain(gy, gx)
        dom = np.where(tissue, dom, 0)
        tex = fractal_noise(yu, xu, 60.0, self.seed + 1, octaves=3)
        c = value_noise(yu, xu, 400.0, self.seed + 2) * np.float32(2.0) - np.float32(1.0)
        sn = value_noise(yu, xu, 400.0, self.seed + 12) * np.float32(2.0) - np.float32(1.0)
        along = (xu * c + yu * sn).astype(np.float32) / np.float32(3.0)
        streak = 0.5 + 0.5 * np.sin(along + 6.0 * value_noise(yu, xu, 25.0, self.seed + 3))
        eos = self.eosin[dom] * (0.7 + 0.6 * tex) * (1 - self.fibres[dom] * 0.7 * (1 - streak))
        hem = self.h_bg[dom] * (0.6 + 0.8 * value_noise(yu, xu, 15.0, self.seed + 4))
        hole = value_noise(yu, xu, 90.0, self.seed + 5) > 0.97
        cover = (tissue & ~hole).astype(np.float32)
        return np.stack([eos, hem, cover]).astype(np.float32)

    def _coarse(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """:meth:`_shading` on the coarse grid, bilinearly interpolated to every pixel."""
        s = self.stride
        if s == 1:
            return self._shading(np.arange(y0, y0 + h, dtype=np.float64), np.arange(x0, x0 + w, dtype=np.float64))
        cy0, cy1 = y0 // s, (y0 + h - 1) // s + 1
        cx0, cx1 = x0 // s, (x0 + w - 1) // s + 1
        grid = self._shading(np.arange(cy0, cy1 + 1) * float(s), np.arange(cx0, cx1 + 1) * float(s), jitter=True)
        fy = np.arange(y0, y0 + h) / s
        fx = np.arange(x0, x0 + w) / s
        iy = np.floor(fy).astype(np.int64)
        ix = np.floor(fx).astype(np.int64)
        ty = (fy - iy).astype(np.float32)[None, :, None]
        tx = (fx - ix).astype(np.float32)[None, None, :]
        iy -= cy0
        ix -= cx0
        rows = grid[:, iy] * (1 - ty) + grid[:, iy + 1] * ty
        return rows[:, :, ix] * (1 - tx) + rows[:, :, ix + 1] * tx

    def _nuclei(self, y0: int, x0: int, h: int, w: int, layer: int) -> np.ndarray:
        """Haematoxylin of one jittered lattice of nuclei (at most one per lattice cell)."""
        c = self.cell_px
        off = 0.5 * c * layer
        fy = (np.arange(y0, y0 + h) + off) / c
        fx = (np.arange(x0, x0 + w) + off) / c
        iy = np.floor(fy).astype(np.int64)
        ix = np.floor(fx).astype(np.int64)
        ly = ((fy - iy) * c).astype(np.float32)  # position inside the cell, px
        lx = ((fx - ix) * c).astype(np.float32)
        iy0, ix0 = int(iy[0]), int(ix[0])
        ny, nx = int(iy[-1]) - iy0 + 1, int(ix[-1]) - ix0 + 1
        gy = np.arange(iy0, iy0 + ny)[:, None]
        gx = np.arange(ix0, ix0 + nx)[None, :]
        seed = self.seed + 101 * (layer + 1)
        # per-cell parameters, from the domain at the cell centre
        cyu = self._to_um((gy + 0.5) * c - off)
        cxu = self._to_um((gx + 0.5) * c - off)
        dom = self.field.domain(cyu, cxu)
        exist = hash_u01(gy, gx, seed) < self.density[dom] * np.float32(0.62)
        rmax = np.minimum(self.rad_px[dom] * np.sqrt(self.aspect[dom]), np.float32(c / 2))
        span = np.maximum(np.float32(c) - 2 * rmax, np.float32(0.0))
        cy = rmax + hash_u01(gy, gx, seed + 2) * span
        cx = rmax + hash_u01(gy, gx, seed + 3) * span
        theta = hash_u01(gy, gx, seed + 4) * np.float32(math.pi)
        ct, st = np.cos(theta), np.sin(theta)
        sa = np.sqrt(self.aspect[dom] * (0.85 + 0.3 * hash_u01(gy, gx, seed + 5)))
        r = self.rad_px[dom] * (0.8 + 0.4 * hash_u01(gy, gx, seed + 1))
        dark = np.where(exist, self.h_nuc[dom] * (0.8 + 0.4 * hash_u01(gy, gx, seed + 6)), 0.0)
        # gather to pixels
        k = ((iy - iy0)[:, None] * nx + (ix - ix0)[None, :]).astype(np.intp)
        dy = ly[:, None] - cy.ravel()[k]
        dx = lx[None, :] - cx.ravel()[k]
        ctk, stk = ct.ravel()[k], st.ravel()[k]
        sak = sa.ravel()[k]
        a = (dx * ctk + dy * stk) / sak
        b = (dy * ctk - dx * stk) * sak
        dist = np.sqrt(a * a + b * b)
        cover = np.clip((r.ravel()[k] - dist) / self.edge + np.float32(0.5), 0.0, 1.0)
        return (cover * dark.astype(np.float32).ravel()[k]).astype(np.float32)

    def stains(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Haematoxylin and eosin optical densities (float32) of a rectangle."""
        eos, hem, cover = self._coarse(y0, x0, h, w)
        nuc = np.maximum(self._nuclei(y0, x0, h, w, 0), self._nuclei(y0, x0, h, w, 1))
        # chromatin: fine texture inside nuclei
        if 1.3 / self.ump >= 1.5:  # only visible when a nucleus spans several pixels
            yu = (np.arange(y0, y0 + h, dtype=np.float64) * self.ump)[:, None]
            xu = (np.arange(x0, x0 + w, dtype=np.float64) * self.ump)[None, :]
            nuc *= np.float32(0.75) + np.float32(0.5) * value_noise(yu, xu, 1.3, self.seed + 21)
        return (hem + nuc) * cover, eos * cover

    def _lut(self) -> np.ndarray:
        """Colour of every quantised (haematoxylin, eosin) pair, in the output mode."""
        if self._lut_cache is None:
            hq = np.linspace(0.0, _H_MAX, _NH, dtype=np.float32)
            eq = np.linspace(0.0, _E_MAX, _NE, dtype=np.float32)
            od = hq[:, None, None] * _H + eq[None, :, None] * _E + _GLASS
            rgb = np.exp(-od).reshape(-1, 3)
            mode = self.spec.image_mode
            if mode == "RGB16":
                lut = np.rint(rgb * 65535.0).astype(np.uint16)
            elif mode == "L":
                lut = np.rint(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32) * 255.0).astype(np.uint8)
            else:
                lut = np.rint(rgb * 255.0).astype(np.uint8)
                if mode == "RGBA":
                    lut = np.concatenate([lut, np.full((len(lut), 1), 255, dtype=np.uint8)], axis=1)
            self._lut_cache = lut
        return self._lut_cache

    def pixels(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The rectangle in the spec's pixel mode (uint8 RGB/RGBA/L or uint16 RGB).

        Stain densities are quantised (with film grain as dither) and looked up in a
        colour table computed once with the Beer-Lambert law.
        """
        hem, eos = self.stains(y0, x0, h, w)
        p = _GRAIN_PERIOD
        g = self.grain[np.ix_(np.arange(y0, y0 + h) % p, np.arange(x0, x0 + w) % p)]
        hi = hem * np.float32((_NH - 1) / _H_MAX) + g
        np.clip(hi, 0, _NH - 1, out=hi)
        ei = eos * np.float32((_NE - 1) / _E_MAX) + g
        np.clip(ei, 0, _NE - 1, out=ei)
        idx = hi.astype(np.int32) * _NE + ei.astype(np.int32)
        return self._lut()[idx]

    def strips(self, rows: int) -> Iterator[np.ndarray]:
        """Full-width strips of ``rows`` rows (the last one shorter), top to bottom."""
        for y0 in range(0, self.height, rows):
            yield self.pixels(y0, 0, min(rows, self.height - y0), self.width)

    def tiles(self, tile: int) -> Iterator[np.ndarray]:
        """Tiles of ``tile`` x ``tile`` pixels in row-major order, edge tiles zero-padded."""
        for y0 in range(0, self.height, tile):
            for x0 in range(0, self.width, tile):
                h = min(tile, self.height - y0)
                w = min(tile, self.width - x0)
                px = self.pixels(y0, x0, h, w)
                if h < tile or w < tile:
                    pad = np.zeros((tile, tile, *px.shape[2:]), dtype=px.dtype)
                    pad[:h, :w] = px
                    px = pad
                yield px

    def lazy(self, chunk: int):
        """The whole image as a lazy ``(y, x, 3)`` dask array of ``chunk``-pixel tiles.

        Each tile is rendered when computed, so images far larger than memory (a 20k² slide)
        can be written tile by tile, e.g. with :func:`stimage_sd.io._pyramid.multiscale_image`.
        """
        import dask.array as da

        def tile(block_info=None):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            return self.pixels(y0, x0, y1 - y0, x1 - x0)

        chunks = (da.core.normalize_chunks(chunk, (self.height,))[0],
                  da.core.normalize_chunks(chunk, (self.width,))[0], (3,))
        return da.map_blocks(tile, dtype=np.uint8, chunks=chunks)

    def full(self) -> np.ndarray:
        """The whole image in memory."""
        return np.concatenate(list(self.strips(self._strip_rows())), axis=0)

    def _strip_rows(self) -> int:
        return max(1, min(self.height, _BLOCK_PX // max(self.width, 1)))


# --------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png(path: Path, r: ImageRenderer) -> None:
    """Stream a PNG (8-bit L/RGB/RGBA), strip by strip, filter type 0 on every row.

    zlib level 6 (the usual default) for ordinary images, level 1 above 16 Mpx where
    compression would dominate the generation time.
    """
    level = 6 if r.height * r.width <= 1 << 24 else 1
    mode = r.spec.image_mode
    color = {"L": 0, "RGB": 2, "RGBA": 6}[mode]
    comp = zlib.compressobj(level)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", r.width, r.height, 8, color, 0, 0, 0)))
        for strip in r.strips(r._strip_rows()):
            rows = strip.reshape(strip.shape[0], -1)
            raw = np.concatenate([np.zeros((rows.shape[0], 1), dtype=np.uint8), rows], axis=1)
            data = comp.compress(raw.tobytes())
            if data:
                fh.write(_png_chunk(b"IDAT", data))
        fh.write(_png_chunk(b"IDAT", comp.flush()))
        fh.write(_png_chunk(b"IEND", b""))


def _write_jpeg(path: Path, r: ImageRenderer) -> None:
    from PIL import Image

    arr = r.full()
    img = Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=r.spec.jpeg_quality, subsampling=0, optimize=False)
    path.write_bytes(buf.getvalue())


def _write_tiff(path: Path, r: ImageRenderer) -> None:
    import tifffile

    spec = r.spec
    ch = {"L": (), "RGB": (3,), "RGBA": (4,), "RGB16": (3,)}[spec.image_mode]
    dtype = np.uint16 if spec.image_mode == "RGB16" else np.uint8
    photometric = "minisblack" if spec.image_mode == "L" else "rgb"
    extrasamples = ("unassalpha",) if spec.image_mode == "RGBA" else None
    shape = (r.height, r.width, *ch)
    kw: dict = {"photometric": photometric, "metadata": None, "software": False, "datetime": False}
    if extrasamples:
        kw["extrasamples"] = extrasamples
    if spec.tiff_tile:
        t = spec.tiff_tile
        tifffile.imwrite(
            path, r.tiles(t), shape=shape, dtype=dtype, tile=(t, t),
            compression=spec.tiff_compression, **kw,
        )
    else:
        rows = max(1, min(r.height, (1 << 20) // max(r.width, 1)))
        strips = (s.tobytes() for s in r.strips(rows))
        tifffile.imwrite(path, strips, shape=shape, dtype=dtype, rowsperstrip=rows, **kw)


def write_image(path: str | Path, spec: SlideSpec, layout: Layout) -> tuple[int, int]:
    """Render and write the slide image in the spec's real format; returns ``(height, width)``."""
    path = Path(path)
    r = ImageRenderer(spec, layout)
    if spec.image_format == "png":
        _write_png(path, r)
    elif spec.image_format == "jpeg":
        _write_jpeg(path, r)
    else:
        _write_tiff(path, r)
    return r.height, r.width
