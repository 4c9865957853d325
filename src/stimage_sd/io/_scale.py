"""Estimating the pixel size of a slide from its spot geometry.

The release ships no micrometres-per-pixel value. Two independent estimates are made:

- **pitch**: the median nearest-neighbour distance between spot centres, in pixels, against
  the technology's centre-to-centre distance (Visium 100 µm, ST 200 µm, VisiumHD 8 µm);
- **radius**: the release's spot radius ``r`` against the physical radius it stands for
  (Visium 32.5 µm, since Space Ranger's ``spot_diameter_fullres`` spans a *theoretical
  65 µm* spot; ST 50 µm; VisiumHD half the 8 µm bin).

The pitch estimate is used (radii are known to be wrong in some releases); both are kept
and a warning is logged when they disagree by more than 10 %.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .._constants import GEOMETRY, SCALE_DISAGREEMENT_WARN
from .._logging import logger

__all__ = ["PixelSize", "array_fit_spacing", "estimate_pixel_size", "nearest_neighbour_spacing"]

_ST_ID = re.compile(r"_(\d+)x(\d+)$")


@dataclass(frozen=True)
class PixelSize:
    """A pixel-size estimate.

    Attributes
    ----------
    um_per_px
        The estimate used (µm per pixel), or ``nan`` when none could be made.
    method
        ``"pitch"`` or ``"radius"``: which estimate ``um_per_px`` is.
    pitch_um_per_px, radius_um_per_px
        Both estimates (``nan`` when not available).
    pitch_px
        Centre-to-centre spacing of neighbouring spots, in pixels.
    pitch_method
        How ``pitch_px`` was measured: ``"array-fit"`` (least-squares fit of the centres
        against the array indices in ST spot ids ``<slide>_<A>x<B>``; robust to the
        positional jitter of legacy ST) or ``"nearest-neighbour"`` (median distance).
    disagreement
        ``|pitch - radius| / pitch``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> coords = ssd.io.read_coords(ssd.io.find_slide(root, "GSE000001_GSM0000001").coord)
    >>> size = ssd.io.estimate_pixel_size(coords[["x", "y"]].to_numpy(), coords["r"].median(), "Visium")
    >>> size.method
    'pitch'
    """

    um_per_px: float
    method: str
    pitch_um_per_px: float
    radius_um_per_px: float
    pitch_px: float
    disagreement: float
    pitch_method: str = "nearest-neighbour"

    def to_dict(self) -> dict[str, float | str]:
        """Plain-dict form, for ``uns``/``attrs``."""
        return {k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in asdict(self).items()}


def nearest_neighbour_spacing(xy: np.ndarray) -> float:
    """Median distance from each point to its nearest neighbour (``nan`` for < 2 points)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    nn = d[:, 1]
    nn = nn[nn > 0]
    return float(np.median(nn)) if len(nn) else float("nan")


def array_fit_spacing(spot_ids: Sequence[str], xy: np.ndarray) -> float:
    """Grid spacing in pixels from ST array indices (``<slide>_<A>x<B>`` spot ids).

    Fits ``[x, y] = M @ [A, B] + t`` by least squares and returns ``sqrt(|det M|)``, the
    side of one grid cell; rotation-invariant. ``nan`` when fewer than 90 % of the ids
    carry array indices or the fit is degenerate.
    """
    ab = []
    keep = []
    for i, s in enumerate(spot_ids):
        m = _ST_ID.search(str(s))
        if m:
            ab.append((int(m.group(1)), int(m.group(2))))
            keep.append(i)
    if len(keep) < max(3, 0.9 * len(spot_ids)):
        return float("nan")
    ab_arr = np.asarray(ab, dtype=np.float64)
    design = np.column_stack([ab_arr, np.ones(len(ab_arr))])
    coef, *_ = np.linalg.lstsq(design, np.asarray(xy, dtype=np.float64)[keep], rcond=None)
    det = abs(np.linalg.det(coef[:2].T))
    return float(np.sqrt(det)) if det > 0 else float("nan")


def estimate_pixel_size(
    xy: np.ndarray,
    radius_px: float,
    tech: str,
    *,
    spot_ids: Sequence[str] | None = None,
    source: str = "",
) -> PixelSize:
    """Estimate µm per pixel from spot centres and the release radius.

    Parameters
    ----------
    xy
        Spot centres in pixels, shape ``(n, 2)``.
    radius_px
        The release's spot radius ``r`` in pixels.
    tech
        ``"ST"``, ``"Visium"`` or ``"VisiumHD"``.
    spot_ids
        Spot ids; for ST their array indices give a jitter-free pitch (see
        :func:`array_fit_spacing`).
    source
        Name used in the warning (slide id or file).

    Returns
    -------
    :class:`PixelSize`; the pitch estimate is used when available.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "Human_Breast_Synth_10142021_ST_A1")
    >>> coords = ssd.io.read_coords(files.coord)
    >>> xy, r = coords[["x", "y"]].to_numpy(), coords["r"].median()
    >>> size = ssd.io.estimate_pixel_size(xy, r, "ST", spot_ids=coords.index, source=files.slide)
    """
    geom = GEOMETRY[tech]
    pitch_px, pitch_method = float("nan"), "nearest-neighbour"
    if tech == "ST" and spot_ids is not None:
        pitch_px = array_fit_spacing(spot_ids, xy)
        pitch_method = "array-fit"
    if not np.isfinite(pitch_px):
        pitch_px, pitch_method = nearest_neighbour_spacing(xy), "nearest-neighbour"
    by_pitch = geom.pitch_um / pitch_px if np.isfinite(pitch_px) and pitch_px > 0 else float("nan")
    by_radius = geom.radius_um / radius_px if np.isfinite(radius_px) and radius_px > 0 else float("nan")
    if np.isfinite(by_pitch):
        used, method = by_pitch, "pitch"
    else:
        used, method = by_radius, "radius"
    disagreement = (
        abs(by_pitch - by_radius) / by_pitch if np.isfinite(by_pitch) and np.isfinite(by_radius) else float("nan")
    )
    if np.isfinite(disagreement) and disagreement > SCALE_DISAGREEMENT_WARN:
        logger.warning(
            "%s: pixel size from spot pitch (%.4g µm/px) and from the radius (%.4g µm/px) "
            "disagree by %.0f %%; using the pitch estimate",
            source or tech, by_pitch, by_radius, 100 * disagreement,
        )
    return PixelSize(
        um_per_px=float(used),
        method=method,
        pitch_um_per_px=float(by_pitch),
        radius_um_per_px=float(by_radius),
        pitch_px=float(pitch_px),
        disagreement=float(disagreement),
        pitch_method=pitch_method,
    )
