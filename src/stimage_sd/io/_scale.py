"""Estimating the pixel size of a slide from its spot geometry.

The release ships no micrometres-per-pixel value. Two independent estimates are made:

- **pitch**: the fundamental spacing of the lattice the spot centres lie on, in pixels,
  against the technology's centre-to-centre distance (Visium 100 µm, ST 200 µm, VisiumHD
  8 µm). The lattice is fitted from pair-difference vectors (``stimage_sd.io._lattice``),
  so it is right on sparse subsets too; for legacy ST, whose spot ids carry their array
  indices, it is a least-squares fit against those indices (robust to positional jitter);
- **radius**: the release's spot radius ``r`` against the physical radius it stands for
  (Visium 32.5 µm, since Space Ranger's ``spot_diameter_fullres`` spans a *theoretical
  65 µm* spot; ST 50 µm; VisiumHD half the 8 µm bin).

Neither wins blindly: the decision rule is documented in :func:`estimate_pixel_size` and
``docs/pixel_size.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._constants import GEOMETRY, SCALE_DISAGREEMENT_WARN
from .._logging import logger
from ._lattice import LatticeFit, fit_array_lattice, fit_lattice, lattice_norms

__all__ = [
    "PixelSize",
    "array_fit_spacing",
    "estimate_pixel_size",
    "lattice_is_decisive",
    "nearest_neighbour_spacing",
]

_ST_ID = re.compile(r"_(\d+)x(\d+)$")

#: A lattice decides the pixel size alone when (see :func:`lattice_is_decisive`) ...
#: ... at least this many spots are on it: the chance that n random sites of a lattice all
#: fall on one coset of a coarser sublattice (which would double the pitch) is about
#: 3 x 2^-(n-1) (index 2; hexagonal lattices rule that out by their shape, leaving
#: 3^-(n-1)): below 0.2 % for 12 spots;
DECISIVE_MIN_SPOTS = 12
#: ... (array fit: the indices give the integer coordinates, so only the least squares
#: needs spots to spare);
DECISIVE_MIN_SPOTS_ARRAY = 5
#: ... at least this fraction of the spots is on it (within 25 % of the pitch of a site);
DECISIVE_MIN_FRACTION = 0.9
#: ... the RMS distance of those spots to their site is at most this fraction of the pitch
#: (10x centres: 0.3 %; the jittered real ST array: 8.4 %);
DECISIVE_MAX_RMS = 0.1
DECISIVE_MAX_RMS_ARRAY = 0.15
#: ... and at least this many spot pairs lie exactly one pitch apart (pair vectors that
#: measure the pitch directly; the real 100-spot Visium subset has 7).
DECISIVE_MIN_PITCH_PAIRS = 3
#: Largest lattice-line spacing (in pitches) tried when the lattice does not decide and
#: its spacing is matched against the radius: 1, sqrt 3, 2 (hex); 1, sqrt 2, 2 (square).
_MAX_MULTIPLE = 2.0


@dataclass(frozen=True)
class PixelSize:
    """A pixel-size estimate.

    Attributes
    ----------
    um_per_px
        The estimate used (µm per pixel), or ``nan`` when none could be made.
    method
        ``"pitch"``, ``"radius"`` or ``"none"``: which estimate ``um_per_px`` is.
    pitch_um_per_px, radius_um_per_px
        Both estimates (``nan`` when not available); the pitch estimate takes the fitted
        lattice spacing as one pitch.
    pitch_px
        The fitted lattice spacing (shortest lattice vector), in pixels.
    disagreement
        ``|pitch - radius| / pitch``.
    pitch_method
        How ``pitch_px`` was measured: ``"array-fit"`` (least-squares fit of the centres
        against the array indices in ST spot ids ``<slide>_<A>x<B>``) or
        ``"pair-differences"`` (lattice fitted from the pair-difference vectors).
    decision
        ``"lattice"`` (a decisive lattice fit), ``"agree"`` (the lattice does not decide,
        but its spacing, as 1, sqrt 3, sqrt 2 or 2 pitches, agrees with the radius),
        ``"radius"`` (no decisive lattice and no agreement: the radius is used),
        ``"pitch-only"`` (no radius; a lattice that does not decide) or ``"none"``.
    reason
        Why, in words (also logged; a warning unless ``trusted``).
    trusted
        Whether the geometry supports the value (``decision`` ``"lattice"`` or
        ``"agree"``).
    lattice_multiple
        The lattice spacing in pitches that was used (1 unless a line of spots is e.g. a
        Visium column, sqrt 3 pitches apart).
    lattice
        The lattice fit (``stimage_sd.io._lattice.LatticeFit`` as a dict): kind,
        spots on it, RMS residual, pitch pairs, ... and ``decisive``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> coords = ssd.io.read_coords(ssd.io.find_slide(root, "GSE000001_GSM0000001").coord)
    >>> size = ssd.io.estimate_pixel_size(coords[["x", "y"]].to_numpy(), coords["r"].median(), "Visium")
    >>> size.method, size.decision
    ('pitch', 'lattice')
    """

    um_per_px: float
    method: str
    pitch_um_per_px: float
    radius_um_per_px: float
    pitch_px: float
    disagreement: float
    pitch_method: str = "pair-differences"
    decision: str = "lattice"
    reason: str = ""
    trusted: bool = True
    lattice_multiple: float = 1.0
    lattice: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for ``uns``/``attrs``."""
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = float(v) if isinstance(v, float | np.floating) else dict(v) if isinstance(v, dict) else v
        return out


def nearest_neighbour_spacing(xy: np.ndarray) -> float:
    """Median distance from each point to its nearest neighbour (``nan`` for < 2 points).

    Not a pitch estimate on sparse subsets (it measures the gaps between the kept spots);
    kept as a descriptive statistic.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    nn = d[:, 1]
    nn = nn[nn > 0]
    return float(np.median(nn)) if len(nn) else float("nan")


def _array_indices(spot_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    ab, keep = [], []
    for i, s in enumerate(spot_ids):
        m = _ST_ID.search(str(s))
        if m:
            ab.append((int(m.group(1)), int(m.group(2))))
            keep.append(i)
    if not keep or len(keep) < 0.9 * len(spot_ids):
        return None
    return np.asarray(ab, dtype=np.float64), np.asarray(keep, dtype=np.int64)


def array_fit_spacing(spot_ids: Sequence[str], xy: np.ndarray) -> float:
    """Grid spacing in pixels from ST array indices (``<slide>_<A>x<B>`` spot ids).

    Fits ``[x, y] = M @ [A, B] + t`` by least squares and returns ``sqrt(|det M|)``, the
    side of one grid cell; rotation-invariant. When all spots share one array row or
    column, the spacing per index step along it (independent of the offsets). ``nan`` when
    fewer than 90 % of the ids carry array indices or all spots share one index pair.
    """
    got = _array_indices(spot_ids)
    if got is None:
        return float("nan")
    ab, keep = got
    return float(fit_array_lattice(ab, np.asarray(xy, dtype=np.float64)[keep]).pitch_px)


def lattice_is_decisive(fit: LatticeFit, grid: str | None) -> tuple[bool, str]:
    """Whether a lattice fit decides the pixel size alone, and if not, why not.

    Decisive: a two-dimensional lattice of the technology's cell shape (``grid``:
    ``"hex"`` or ``"square"``; any shape when ``None``), or for an array fit also one array
    row or column; with at least :data:`DECISIVE_MIN_SPOTS` spots on it
    (:data:`DECISIVE_MIN_SPOTS_ARRAY` for an array fit), at least
    :data:`DECISIVE_MIN_FRACTION` of the spots on it, an RMS residual of at most
    :data:`DECISIVE_MAX_RMS` pitches (:data:`DECISIVE_MAX_RMS_ARRAY` for an array fit) and
    at least :data:`DECISIVE_MIN_PITCH_PAIRS` spot pairs one pitch apart.
    """
    array = fit.method == "array-fit"
    if fit.dim < 1 or not np.isfinite(fit.pitch_px):
        return False, {0: "one spot, or all spots on one point", -1: "no spots"}.get(fit.dim, "no lattice")
    if fit.dim == 1 and not array:
        return False, "the spots lie on one line, whose spacing may be 1, sqrt 3 or 2 pitches"
    if fit.dim == 2 and grid is not None and fit.kind != grid:
        return False, f"the fitted cell is {fit.kind} (angle {fit.angle_deg:.0f} deg), not {grid}"
    need = DECISIVE_MIN_SPOTS_ARRAY if array else DECISIVE_MIN_SPOTS
    if fit.n_on_lattice < need:
        return False, f"only {fit.n_on_lattice} spot(s) on the lattice (at least {need} needed)"
    if fit.fraction_on_lattice < DECISIVE_MIN_FRACTION:
        return False, f"only {fit.fraction_on_lattice:.0%} of the spots on the lattice"
    max_rms = DECISIVE_MAX_RMS_ARRAY if array else DECISIVE_MAX_RMS
    if not fit.rms_residual <= max_rms:
        return False, f"fit residual {fit.rms_residual:.1%} of the pitch (at most {max_rms:.0%})"
    if fit.n_pitch_pairs < DECISIVE_MIN_PITCH_PAIRS:
        return False, f"only {fit.n_pitch_pairs} spot pair(s) one pitch apart (at least {DECISIVE_MIN_PITCH_PAIRS})"
    return True, ""


def _fit(xy: np.ndarray, tech: str, spot_ids: Sequence[str] | None) -> LatticeFit:
    if tech == "ST" and spot_ids is not None and len(spot_ids) == len(xy):
        got = _array_indices(spot_ids)
        if got is not None:
            ab, keep = got
            fit = fit_array_lattice(ab, xy[keep])
            if fit.dim >= 1:
                return fit
    return fit_lattice(xy)


def estimate_pixel_size(
    xy: np.ndarray,
    radius_px: float,
    tech: str,
    *,
    spot_ids: Sequence[str] | None = None,
    source: str = "",
    log: bool = True,
) -> PixelSize:
    """Estimate µm per pixel from spot centres and the release radius.

    The decision rule:

    1. **The lattice decides** when its fit is decisive (:func:`lattice_is_decisive`: the
       technology's cell shape, >= 12 spots and >= 90 % of them on it, RMS residual
       <= 10 % of the pitch, >= 3 spot pairs one pitch apart). Then the pitch is used even
       if the radius disagrees: a full or sparse lattice measures the scale from hundreds
       of spots, while a radius is one number copied per slide and known to be wrong in
       some releases (release issue #10). A disagreement > 10 % is logged and recorded.
    2. Otherwise, **agreement**: the fitted spacing is a lattice vector, i.e. 1, sqrt 3 or
       2 pitches (hexagonal; 1, sqrt 2, 2 square; e.g. one Visium column is sqrt 3 pitches
       apart). If the radius agrees within 10 % with one of these, that multiple is used
       (the lattice value, which is the more precise).
    3. Otherwise **the radius** is used, with a warning: the geometry cannot decide, and the
       radius is exact by construction for 10x slides (Space Ranger's
       ``spot_diameter_fullres``).
    4. No radius: the (non-decisive) pitch, with a warning; nothing at all: ``nan`` (no
       micron coordinate system is written), with a warning.

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
        Name used in the messages (slide id or file).
    log
        Log the decision (a warning when it is not backed by the geometry).

    Returns
    -------
    :class:`PixelSize` with both estimates, the lattice fit, the decision and its reason.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "Human_Breast_Synth_10142021_ST_A1")
    >>> coords = ssd.io.read_coords(files.coord)
    >>> xy, r = coords[["x", "y"]].to_numpy(), coords["r"].median()
    >>> size = ssd.io.estimate_pixel_size(xy, r, "ST", spot_ids=coords.index, source=files.slide)
    >>> size.pitch_method, size.decision
    ('array-fit', 'lattice')
    """
    geom = GEOMETRY[tech]
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    fit = _fit(xy, tech, spot_ids)
    decisive, why_not = lattice_is_decisive(fit, geom.grid)
    lattice = {**fit.to_dict(), "decisive": bool(decisive)}
    if not decisive:
        lattice["not_decisive_because"] = why_not
    pitch_px = float(fit.pitch_px)
    by_pitch = geom.pitch_um / pitch_px if np.isfinite(pitch_px) and pitch_px > 0 else float("nan")
    by_radius = geom.radius_um / radius_px if radius_px is not None and np.isfinite(radius_px) and radius_px > 0 else float("nan")
    disagreement = abs(by_pitch - by_radius) / by_pitch if np.isfinite(by_pitch) and np.isfinite(by_radius) else float("nan")
    name = source or tech
    multiple = 1.0
    fit_words = (
        f"{fit.kind} lattice, {fit.n_on_lattice}/{fit.n_spots} spots on it, RMS residual "
        f"{fit.rms_residual:.1%} of the pitch, {fit.n_pitch_pairs} pairs one pitch apart ({fit.method})"
    )
    if decisive:
        used, method, decision, trusted = by_pitch, "pitch", "lattice", True
        reason = f"the lattice decides: {fit_words}"
        if np.isfinite(disagreement) and disagreement > SCALE_DISAGREEMENT_WARN:
            reason += (
                f"; the release radius implies {by_radius:.4g} µm/px ({100 * disagreement:.0f} % off) and is "
                "not used (radii are wrong in some releases: release issue #10)"
            )
    elif np.isfinite(by_pitch) and np.isfinite(by_radius):
        options = [m for m in lattice_norms(geom.grid, _MAX_MULTIPLE)]
        errs = [abs(by_pitch * m - by_radius) / by_radius for m in options]
        best = int(np.argmin(errs))
        if errs[best] <= SCALE_DISAGREEMENT_WARN:
            multiple = float(options[best])
            used, method, decision, trusted = by_pitch * multiple, "pitch", "agree", True
            as_what = "one pitch" if multiple == 1 else f"{multiple:.4g} pitches"
            reason = (
                f"the lattice does not decide ({why_not}); its spacing {pitch_px:.4g} px, taken as {as_what}, "
                f"agrees with the release radius within {100 * errs[best]:.1f} %"
            )
        else:
            used, method, decision, trusted = by_radius, "radius", "radius", False
            reason = (
                f"the lattice does not decide ({why_not}) and its spacing ({by_pitch:.4g} µm/px as one pitch) "
                f"disagrees with the release radius ({by_radius:.4g} µm/px) by {100 * disagreement:.0f} %: using "
                "the radius (exact by construction for 10x slides, wrong in some releases); check this slide's scale"
            )
    elif np.isfinite(by_radius):
        used, method, decision, trusted = by_radius, "radius", "radius", False
        reason = f"no lattice ({why_not}): from the release radius alone, unchecked by the geometry"
    elif np.isfinite(by_pitch):
        used, method, decision, trusted = by_pitch, "pitch", "pitch-only", False
        reason = f"no usable radius and the lattice does not decide ({why_not}): from its spacing alone, unchecked"
    else:
        used, method, decision, trusted = float("nan"), "none", "none", False
        reason = f"no pixel size: no lattice ({why_not}) and no usable radius; the store has no micron coordinate system"
    if log:
        if trusted and not (decisive and np.isfinite(disagreement) and disagreement > SCALE_DISAGREEMENT_WARN):
            logger.debug("%s: pixel size %.4g µm/px; %s", name, used, reason)
        else:
            logger.warning("%s: pixel size %s; %s", name, "unknown" if math.isnan(used) else f"{used:.4g} µm/px", reason)
    return PixelSize(
        um_per_px=float(used),
        method=method,
        pitch_um_per_px=float(by_pitch),
        radius_um_per_px=float(by_radius),
        pitch_px=pitch_px,
        disagreement=float(disagreement),
        pitch_method=fit.method,
        decision=decision,
        reason=reason,
        trusted=trusted,
        lattice_multiple=multiple,
        lattice=lattice,
    )
