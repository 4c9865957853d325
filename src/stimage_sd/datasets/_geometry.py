"""Spot layout, tissue outline and spatial domains of a synthetic slide."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._noise import fractal_noise, rng_for, stable_seed
from ._spec import SlideSpec

__all__ = ["Layout", "build_layout"]

_ACGT = np.frombuffer(b"ACGT", dtype=np.uint8)


@dataclass
class Layout:
    """Where everything is on one slide.

    Pixel coordinates are those of the written image; "array µm" are micrometres from
    the first array position (spot row 0, column 0).
    """

    ids: np.ndarray  # spot ids (object array of str), coordinate-file order
    x: np.ndarray  # pixel column of each spot centre
    y: np.ndarray  # pixel row of each spot centre
    domain: np.ndarray  # int, domain at the spot centre
    mix: np.ndarray  # (n_spots, n_domains) fraction of the spot area in each domain
    radius_px: float
    pitch_px: float
    width: int
    height: int
    origin_px: float  # pixel position of array µm 0 (both axes)
    field: DomainField

    def px_to_um(self, p: np.ndarray) -> np.ndarray:
        """Pixel coordinate -> array µm (same for rows and columns)."""
        return (np.asarray(p, dtype=np.float64) - self.origin_px) * self.field.um_per_px


class DomainField:
    """Tissue outline and domain of any point, as a function of array µm.

    Deterministic and evaluable anywhere (spot centres, image pixels), so the image
    texture and the expression follow the same domains.
    """

    def __init__(self, spec: SlideSpec, extent_um: tuple[float, float], sample_y: np.ndarray, sample_x: np.ndarray):
        self.spec = spec
        self.um_per_px = float(spec.um_per_px)
        self.ey, self.ex = extent_um
        self.n = spec.n_domains
        self.seed = stable_seed(spec.seed, spec.slide, "field")
        rng = rng_for(spec.seed, spec.slide, "field")
        self.layout = spec.domain_layout
        # tissue: irregular ellipse; threshold set so that ~tissue_fraction of the array is kept
        d = self._radial(sample_y, sample_x)
        if spec.tissue_fraction >= 1.0:
            self.r_tissue = float(d.max()) * 1.02 + 1e-9
        else:
            self.r_tissue = float(np.quantile(d, max(spec.tissue_fraction, 0.05)))
        inside = d <= self.r_tissue
        ty, tx = sample_y[inside], sample_x[inside]
        if self.layout in ("layers", "curved_layers"):
            self.phase = float(rng.uniform(0, 2 * math.pi))
            self.amp = float(rng.uniform(0.06, 0.12))
            self.freq = float(rng.uniform(0.5, 1.0))
            w = rng.uniform(0.6, 1.4, size=self.n)
            if self.n >= 3:
                w[0] *= 0.6  # a thin outer layer, like cortical L1
            if self.layout == "curved_layers":  # strongly folded, every other layer thin
                self.amp *= 2.0
                self.freq *= 1.5
                w[1::2] *= 0.4
            t = self._layer_coord(ty, tx)
            q = np.cumsum(w)[:-1] / w.sum()
            self.cuts = np.quantile(t, q) if len(t) else q
        else:
            self._init_blobs(rng, ty, tx, (self.ex * self.ey) / max(len(sample_y), 1))

    # --- tissue -----------------------------------------------------------------------
    def _radial(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        u = (np.asarray(x, dtype=np.float64) / max(self.ex, 1e-9) - 0.5) / 0.5
        v = (np.asarray(y, dtype=np.float64) / max(self.ey, 1e-9) - 0.5) / 0.5
        d = np.sqrt(u * u + v * v)
        scale = max(self.ex, self.ey) / 2.5 + 1e-6
        wob = fractal_noise(y, x, scale, self.seed + 11, octaves=2) - 0.5
        return d * (1.0 + 0.35 * wob)

    def tissue(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Whether each point (array µm) is on tissue."""
        return self._radial(y, x) <= self.r_tissue

    # --- domains ----------------------------------------------------------------------
    def _layer_coord(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        u = np.asarray(x, dtype=np.float64) / max(self.ex, 1e-9)
        v = np.asarray(y, dtype=np.float64) / max(self.ey, 1e-9)
        scale = max(self.ex, self.ey) / 4 + 1e-6
        warp = 0.06 * (fractal_noise(y, x, scale, self.seed + 23, octaves=2) - 0.5)
        return v + self.amp * np.sin(2 * math.pi * self.freq * u + self.phase) + 0.15 * (u - 0.5) + warp

    def _init_blobs(self, rng: np.random.Generator, ty: np.ndarray, tx: np.ndarray, cell: float) -> None:
        area = max(len(ty), 1)
        n_fg = self.n - 1
        centres: list[tuple[float, float, float, int]] = []
        if n_fg > 0 and len(ty):
            share = rng.uniform(0.7, 1.3, size=n_fg)
            share[0] *= 1.8  # the tumour is the largest compartment
            share = 0.5 * share / share.sum()
            varied = self.layout == "varied_blobs"
            for k in range(n_fg):
                n_isl = int(rng.integers(1, 4))
                a = share[k] * area * cell / n_isl
                # varied_blobs: islands from ~0.2x to ~3x the mean area (radii over ~4x)
                sizes = rng.lognormal(0.0, 0.8, size=n_isl + 1) if varied else np.ones(n_isl + 1)
                sizes = sizes / sizes.mean()
                for i_isl in range(n_isl + int(varied)):
                    a_i = a * float(sizes[i_isl])
                    for _try in range(30):
                        j = int(rng.integers(len(ty)))
                        cy, cx = float(ty[j]), float(tx[j])
                        if all((cy - c[0]) ** 2 + (cx - c[1]) ** 2 > (c[2] * 1.1) ** 2 for c in centres):
                            break
                    r = math.sqrt(a_i / math.pi) * float(rng.uniform(0.85, 1.15))
                    centres.append((cy, cx, r, k + 1))
        self.centres = np.array([c[:3] for c in centres], dtype=np.float64).reshape(-1, 3)
        self.centre_dom = np.array([c[3] for c in centres], dtype=np.int64)

    def domain(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Domain index of points given in array µm (broadcast together)."""
        y = np.asarray(y, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        shape = np.broadcast_shapes(y.shape, x.shape)
        if self.n == 1:
            return np.zeros(shape, dtype=np.int64)
        if self.layout in ("layers", "curved_layers"):
            t = self._layer_coord(y, x)
            return np.searchsorted(self.cuts, t).astype(np.int64)
        best = np.full(shape, 0.0, dtype=np.float32)
        dom = np.zeros(shape, dtype=np.int64)
        scale = max(float(np.median(self.centres[:, 2])) if len(self.centres) else 1.0, 1.0)
        wob = 0.35 * (fractal_noise(y, x, scale * 0.8, self.seed + 31, octaves=2) - 0.5)
        for (cy, cx, r), k in zip(self.centres, self.centre_dom, strict=True):
            s = (1.0 - np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / r).astype(np.float32) + wob
            better = s > best
            best[better] = s[better]
            dom[better] = k
        return dom


def _barcodes(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Deterministic, unique 16-letter ACGT barcodes from array positions (bijective hash)."""
    v = (row.astype(np.uint64) * np.uint64(4096) + col.astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    with np.errstate(over="ignore"):
        for _ in range(2):  # invertible 32-bit mixing: xorshift + odd multiply
            v ^= v >> np.uint64(16)
            v = (v * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
            v ^= v >> np.uint64(15)
            v = (v * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
            v ^= v >> np.uint64(16)
    shifts = np.arange(30, -1, -2, dtype=np.uint64)
    codes = ((v[:, None] >> shifts[None, :]) & np.uint64(3)).astype(np.intp)
    letters = _ACGT[codes]
    return np.array([b.decode("ascii") for b in letters.view("S16").ravel()], dtype=object)


def _spot_ids(spec: SlideSpec, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    s = spec.slide
    if spec.tech == "Visium":
        bc = _barcodes(row, col)
        return np.array([f"{s}_{b}-1" for b in bc], dtype=object)
    if spec.tech == "ST":
        return np.array([f"{s}_{c + 1}x{r + 1}" for r, c in zip(row, col, strict=True)], dtype=object)
    return np.array([f"{s}_s_008um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)], dtype=object)


def build_layout(spec: SlideSpec) -> Layout:
    """Compute spot positions, ids, tissue and domains of a spec (no file written)."""
    rows, cols = spec.grid  # type: ignore[misc]
    ump = float(spec.um_per_px)  # type: ignore[arg-type]
    pitch = spec.pitch_um
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    if spec.tech == "Visium":
        xu = (cc + 0.5 * (rr % 2)) * pitch
        yu = rr * pitch * math.sqrt(3) / 2
    else:
        xu = cc * pitch * 1.0
        yu = rr * pitch * 1.0
    ey = float(yu.max()) if rows > 1 else pitch
    ex = float(xu.max()) if cols > 1 else pitch
    field = DomainField(spec, (ey, ex), yu, xu)
    keep = field.tissue(yu, xu)
    if keep.sum() < 2:
        keep[:] = True
    if spec.spot_dropout > 0:  # spots lost at random (QC filtering, a sparsely sampled array)
        lost = rng_for(spec.seed, spec.slide, "dropout").random(len(keep)) < spec.spot_dropout
        if (keep & ~lost).sum() >= 2:
            keep &= ~lost
    rr, cc, xu, yu = rr[keep], cc[keep], xu[keep], yu[keep]

    radius_px = spec.radius_um / ump
    pitch_px = pitch / ump
    margin = float(spec.margin_px) if spec.margin_px is not None else max(1.5 * pitch_px, 2 * radius_px, 32.0)
    origin = margin + radius_px
    x = origin + xu / ump
    y = origin + yu / ump
    if spec.tech == "ST":  # small positional jitter of the spotted array, ~1 % of the pitch
        jit = rng_for(spec.seed, spec.slide, "jitter").normal(0.0, 0.01 * pitch_px, size=(2, len(x)))
        x = x + jit[0]
        y = y + jit[1]
        x = np.round(x, 2)
        y = np.round(y, 2)
    width = math.ceil(origin + ex / ump + radius_px + margin)
    height = math.ceil(origin + ey / ump + radius_px + margin)

    dom = field.domain(yu, xu)
    # domain mixture over the spot footprint: centre + 6 points at 0.7 of the physical radius
    phys_r = {"Visium": 27.5, "ST": 50.0, "VisiumHD": 4.0}[spec.tech]
    ang = np.arange(6) * (math.pi / 3) + 0.3
    oy = np.concatenate([[0.0], 0.7 * phys_r * np.sin(ang)])
    ox = np.concatenate([[0.0], 0.7 * phys_r * np.cos(ang)])
    samp = field.domain(yu[:, None] + oy[None, :], xu[:, None] + ox[None, :])
    mix = np.stack([(samp == k).mean(axis=1) for k in range(spec.n_domains)], axis=1)

    return Layout(
        ids=_spot_ids(spec, rr, cc),
        x=x,
        y=y,
        domain=dom,
        mix=mix,
        radius_px=radius_px,
        pitch_px=pitch_px,
        width=width,
        height=height,
        origin_px=origin,
        field=field,
    )
