"""Position-hashed randomness: the same value at the same position whatever the tiling.

Images are rendered tile by tile; every random quantity of a pixel or lattice cell is a
hash of its integer coordinates and a seed, so a tile's content does not depend on which
other tiles were rendered, nor in which order.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["hash_u01", "rng_for", "stable_seed", "value_noise"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_KY = np.uint64(0xD6E8FEB86659FD93)


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from strings/ints, stable across processes (unlike ``hash``)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8"))


def rng_for(seed: int, slide: str, stream: str) -> np.random.Generator:
    """An independent generator for one purpose (``stream``) of one slide."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stable_seed(slide), stable_seed(stream)])


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_u64(iy: np.ndarray, ix: np.ndarray, seed: int) -> np.ndarray:
    """64-bit hash of integer lattice coordinates (broadcasting)."""
    with np.errstate(over="ignore"):
        y = np.asarray(iy).astype(np.int64).view(np.uint64) if np.ndim(iy) else np.uint64(np.int64(iy))
        x = np.asarray(ix).astype(np.int64).view(np.uint64) if np.ndim(ix) else np.uint64(np.int64(ix))
        z = y * _KY + x * _GOLD + np.uint64(seed & 0xFFFFFFFFFFFF) * _M2
        return _mix(_mix(z) + _GOLD)


def hash_u01(iy: np.ndarray, ix: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) float32 per lattice point (broadcasting)."""
    h = hash_u64(iy, ix, seed)
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


def _axis(c: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice index (relative to the first), smoothstep weight and lattice start of 1-D coords."""
    f = np.asarray(c, dtype=np.float64).ravel() / scale
    i = np.floor(f)
    t = (f - i).astype(np.float32)
    t = t * t * (3 - 2 * t)
    i = i.astype(np.int64)
    i0 = int(i.min()) if i.size else 0
    return i - i0, t, i0


def value_noise(y: np.ndarray, x: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1): hashed lattice values every ``scale`` units, interpolated.

    ``y`` and ``x`` are coordinates (any unit, broadcast together); the result varies on a
    length scale of ``scale`` in the same unit. A grid (``y`` a column, ``x`` a row) is
    evaluated separably: lattice values are hashed once and interpolated by gathers.
    """
    y = np.asarray(y)
    x = np.asarray(x)
    if y.ndim == 2 and x.ndim == 2 and y.shape[1] == 1 and x.shape[0] == 1:
        ry, ty, iy0 = _axis(y, scale)
        rx, tx, ix0 = _axis(x, scale)
        ny = int(ry.max()) + 2 if ry.size else 2
        nx = int(rx.max()) + 2 if rx.size else 2
        lat = hash_u01(np.arange(iy0, iy0 + ny)[:, None], np.arange(ix0, ix0 + nx)[None, :], seed)
        rows = lat[ry] * (1 - ty)[:, None] + lat[ry + 1] * ty[:, None]  # (h, nx)
        return rows[:, rx] * (1 - tx)[None, :] + rows[:, rx + 1] * tx[None, :]
    fy = y.astype(np.float64) / scale
    fx = x.astype(np.float64) / scale
    iy = np.floor(fy)
    ix = np.floor(fx)
    ty = (fy - iy).astype(np.float32)
    tx = (fx - ix).astype(np.float32)
    ty = ty * ty * (3 - 2 * ty)
    tx = tx * tx * (3 - 2 * tx)
    iy = iy.astype(np.int64)
    ix = ix.astype(np.int64)
    v00 = hash_u01(iy, ix, seed)
    v01 = hash_u01(iy, ix + 1, seed)
    v10 = hash_u01(iy + 1, ix, seed)
    v11 = hash_u01(iy + 1, ix + 1, seed)
    top = v00 + (v01 - v00) * tx
    bot = v10 + (v11 - v10) * tx
    return top + (bot - top) * ty


def fractal_noise(y: np.ndarray, x: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers (scale halving, amplitude halving), in [0, 1)."""
    total = np.zeros(np.broadcast_shapes(np.shape(y), np.shape(x)), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += np.float32(amp) * value_noise(y, x, scale / (2**o), seed + 7919 * o)
        norm += amp
        amp *= 0.5
    return total / np.float32(norm)
