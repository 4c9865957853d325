"""Fitting the lattice of spot centres from pair-difference vectors.

Spots of every technology in the release sit on a lattice: Visium on a hexagonal grid,
legacy ST and VisiumHD bins on a square one. The difference of any two lattice points is a
lattice vector, so the lattice (and its fundamental spacing, the *pitch*) can be recovered
from the pair differences even when few spots are adjacent: a 100-spot subset of a Visium
capture area, where only ~15 % of the spots have a neighbour one pitch away, still
generates the full lattice. The median nearest-neighbour distance does not (it measures
the typical gap between *kept* spots, 2.7 pitches there).

The fit (:func:`fit_lattice`):

1. candidate basis: the shortest difference vectors between neighbouring spots, and the
   best-supported ones (seen most often, so that a stray spot does not set the scale);
2. the lattice those vectors generate. If spots fall *between* the sites of the current
   lattice, it is a sublattice (a sparse subset without adjacent spots in some direction):
   their offsets are themselves lattice vectors, the most frequent one is added and the
   basis reduced again (a noisy two-dimensional Euclid). A refinement is accepted only if
   it keeps the spots already on the lattice and takes in at least a third of the others;
3. coarsest lattice: a sublattice of index 2 or 3 that holds every on-lattice spot
   replaces the fit;
4. two modes: *exact* centres (10x, rounded to whole full-resolution pixels) use a fixed
   tight tolerance and no least squares while building; *jittered* centres (legacy ST)
   use least squares over the integer lattice coordinates, grown outwards from a central
   spot, with a tolerance relative to the pitch. The exact mode is used when it puts
   >= 90 % of the spots on its lattice;
5. a final least-squares fit over every on-lattice spot; quality measures are recorded.

A one-dimensional variant handles spots that all lie on a line (one row or column).
:func:`fit_array_lattice` does the same least-squares fit with the integer coordinates
given, from the ``<slide>_<A>x<B>`` array indices of legacy ST spot ids.

Private: :mod:`stimage_sd.io` (pixel size) and :mod:`stimage_sd.tl` (graph) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LatticeFit", "fit_array_lattice", "fit_lattice", "lattice_norms"]

#: A spot is *on* the lattice when it lies within this fraction of the pitch of a site.
#: Legacy ST arrays have a positional jitter of up to ~20 % of the pitch (real file
#: Human_Breast_Andersson_10142021_ST_A1: RMS 8.4 %, max 18.8 %), so 25 %; still far below
#: the 50 % (square) or 58 % (hex) a point can be away from the nearest site.
ON_LATTICE_TOL = 0.25
#: Spots used to find the basis (the fit quality is then measured on every spot).
_MAX_FIT_POINTS = 2000
#: Nearest neighbours whose differences are candidate lattice vectors.
_K_DIFF = 24
#: Two vectors are parallel when the sine of their angle is below this (~11.5 degrees).
_PARALLEL_SIN = 0.2
#: Fraction of (fit) spots that must be on the lattice to stop refining it.
_GOOD_FRACTION = 0.97
#: The fitted pitch may be at most this much shorter than the shortest supported spot
#: difference (a subset with no adjacent spots); a shorter generator is noise.
_MIN_PITCH_FRACTION = 0.05
#: Difference vectors within this fraction of a vector's length count as the same lattice
#: vector (support, mean-shift): well below the distance of neighbouring lattice vectors.
_MODE_TOL = 0.1
#: Exact mode: differences are lattice vectors within this fraction of the shortest one
#: (10x centres are rounded to whole full-resolution pixels: ~0.4 % of the pitch).
_EXACT_TOL = 0.03
#: Exact mode is used when this fraction of the (fit) spots is on its lattice.
_EXACT_FRACTION = 0.9
#: Hexagonal / square cell: basis lengths within 5 %, angle within 5 degrees.
_SHAPE_RATIO_TOL = 0.05
_SHAPE_ANGLE_TOL = 5.0


@dataclass(frozen=True)
class LatticeFit:
    """The lattice fitted to a set of spot centres.

    Attributes
    ----------
    dim
        2 (a plane lattice), 1 (the spots lie on one line), 0 (one spot, or all spots on one
        point) or -1 (no spots).
    kind
        ``"hex"``, ``"square"``, ``"rectangular"``, ``"oblique"`` (``dim`` 2), ``"line"``
        (``dim`` 1), ``"point"`` (``dim`` 0) or ``"none"``.
    pitch_px
        Length of the shortest lattice vector (the centre-to-centre distance of adjacent
        sites), in the units of the centres; ``nan`` for ``dim`` < 1.
    basis_px
        The reduced basis: ``[[x, y], [x, y]]`` (``dim`` 2) or ``[[x, y]]`` (``dim`` 1).
    n_spots
        Spots given (finite centres).
    n_on_lattice
        Spots within :data:`ON_LATTICE_TOL` pitches of a lattice site.
    fraction_on_lattice
        ``n_on_lattice / n_spots``.
    rms_residual
        Root-mean-square distance of the on-lattice spots to their site, in pitches.
    n_pitch_pairs
        Pairs of spots one pitch apart (within :data:`ON_LATTICE_TOL`): the pair vectors
        that measure the pitch directly (counted among at most 2,000 spots).
    angle_deg
        Angle between the two basis vectors (60 for hexagonal, 90 for square), ``nan`` for
        ``dim`` < 2.
    length_ratio
        ``|b2| / |b1|`` of the reduced basis (1 for hexagonal and square).
    method
        ``"pair-differences"`` (:func:`fit_lattice`) or ``"array-fit"``
        (:func:`fit_array_lattice`).
    """

    dim: int
    kind: str
    pitch_px: float
    basis_px: list[list[float]] = field(default_factory=list)
    n_spots: int = 0
    n_on_lattice: int = 0
    fraction_on_lattice: float = 0.0
    rms_residual: float = float("nan")
    n_pitch_pairs: int = 0
    angle_deg: float = float("nan")
    length_ratio: float = float("nan")
    method: str = "pair-differences"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-able), for ``uns``."""
        return {
            "dim": int(self.dim),
            "kind": self.kind,
            "pitch_px": float(self.pitch_px),
            "basis_px": [[float(v) for v in b] for b in self.basis_px],
            "n_spots": int(self.n_spots),
            "n_on_lattice": int(self.n_on_lattice),
            "fraction_on_lattice": float(self.fraction_on_lattice),
            "rms_residual": float(self.rms_residual),
            "n_pitch_pairs": int(self.n_pitch_pairs),
            "angle_deg": float(self.angle_deg),
            "length_ratio": float(self.length_ratio),
            "method": self.method,
        }


def lattice_norms(grid: str, max_norm: float = 3.0) -> list[float]:
    """Lengths of the lattice vectors up to ``max_norm`` pitches, shortest first.

    A line of lattice sites (one row, one column, one diagonal) has a spacing that is one of
    these multiples of the pitch: hexagonal 1, sqrt 3, 2, sqrt 7, 3; square 1, sqrt 2, 2,
    sqrt 5, sqrt 8, 3.
    """
    out = set()
    for a in range(-4, 5):
        for b in range(-4, 5):
            if a == b == 0:
                continue
            n2 = a * a + a * b + b * b if grid == "hex" else a * a + b * b
            if n2 <= max_norm**2 + 1e-9:
                out.add(round(float(np.sqrt(n2)), 9))
    return sorted(out)


# --------------------------------------------------------------------------- helpers


def _gauss_reduce(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction: the shortest basis of the lattice spanned by ``a``, ``b``."""
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    for _ in range(100):
        if b @ b < a @ a:
            a, b = b, a
        if not a @ a > 0:
            break
        mu = round(float(a @ b) / float(a @ a))
        if mu == 0:
            break
        b = b - mu * a
    if b @ b < a @ a:
        a, b = b, a
    return a, b


def _sin(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return abs(float(a[0] * b[1] - a[1] * b[0])) / (na * nb) if na > 0 and nb > 0 else 0.0


def _wrap(v: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``v`` minus its nearest vector of the lattice with rows ``B`` (rows of ``v``)."""
    k = np.rint(np.linalg.solve(B.T, v.T).T)
    return v - k @ B


def _reduce_generators(B: np.ndarray, g: np.ndarray, tol_abs: float) -> np.ndarray:
    """Basis of the lattice generated by the rows of ``B`` and ``g`` (noisy 2-D Euclid).

    A remainder shorter than ``tol_abs`` counts as zero.
    """
    vecs = [B[0], B[1], np.asarray(g, dtype=np.float64)]
    for _ in range(30):
        vecs.sort(key=lambda v: float(v @ v))
        a = vecs[0]
        j = next((i for i in (1, 2) if _sin(a, vecs[i]) >= _PARALLEL_SIN), None)
        if j is None:  # all parallel: should not happen (B spans the plane)
            break
        b = vecs[j]
        c = vecs[3 - j]
        a, b = _gauss_reduce(a, b)
        M = np.vstack([a, b])
        c = _wrap(c[None, :], M)[0]
        if np.linalg.norm(c) <= tol_abs:
            return M
        vecs = [a, b, c]
    return np.vstack(_gauss_reduce(B[0], B[1]))


def _reduce_1d(p: float, g: float, tol: float) -> float:
    """Spacing of the 1-D lattice generated by ``p`` and ``g`` (noisy Euclid)."""
    a, b = abs(p), abs(g)
    for _ in range(30):
        if b < a:
            a, b = b, a
        c = abs(b - round(b / a) * a)
        if c <= tol * a:
            return a
        a, b = c, a
    return abs(p)


def _subsample(xy: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """At most ``m`` rows: a dense central patch plus a random spread (deterministic)."""
    n = len(xy)
    if n <= m:
        return xy
    centre = np.median(xy, axis=0)
    d2 = ((xy - centre) ** 2).sum(axis=1)
    patch = np.argpartition(d2, m // 2)[: m // 2]
    mask = np.ones(n, dtype=bool)
    mask[patch] = False
    rest = np.flatnonzero(mask)
    spread = np.random.default_rng(seed).choice(rest, size=m - len(patch), replace=False)
    return xy[np.sort(np.concatenate([patch, spread]))]


def _differences(S: np.ndarray) -> np.ndarray:
    """Nonzero difference vectors of each point to its nearest neighbours, shortest first."""
    from scipy.spatial import cKDTree

    k = min(len(S), _K_DIFF + 1)
    _, idx = cKDTree(S).query(S, k=k)
    idx = np.asarray(idx).reshape(len(S), -1)
    D = (S[idx[:, 1:]] - S[:, None, :]).reshape(-1, 2)
    scale = max(float(np.ptp(S, axis=0).max()), 1e-300)
    D = D[np.hypot(D[:, 0], D[:, 1]) > 1e-9 * scale]
    return D[np.argsort(np.hypot(D[:, 0], D[:, 1]), kind="stable")]


def _supported(D: np.ndarray, tol: float, need: int, limit: int = 400) -> int | None:
    """Index of the short difference vector best supported by the others (up to sign).

    Support of a difference: how many differences lie within ``_MODE_TOL`` of its length
    of it or of its negative. The shortest difference with at least ``need`` and at least a
    quarter of the best support among the ``limit`` shortest sets the scale (so that pairs
    involving a stray spot, seen a few times, do not); among the differences up to 1.5
    times as long, the best supported wins (so that two jittered spots that happen to be
    close do not set the pitch), the shorter on ties.
    """
    from scipy.spatial import cKDTree

    m = min(len(D), limit)
    if m == 0:
        return None
    lengths = np.hypot(D[:m, 0], D[:m, 1])
    both = cKDTree(np.concatenate([D, -D]))
    support = np.asarray(both.query_ball_point(D[:m], _MODE_TOL * lengths, return_length=True))
    ok = np.flatnonzero(support >= max(need, 0.25 * support.max()))
    if not len(ok):
        return None
    first = ok[0]
    window = np.flatnonzero(lengths <= 1.5 * lengths[first])
    window = window[window >= first]
    return int(window[np.argmax(support[window])])


# --------------------------------------------------------------------------- 2-D fit


def _central(S: np.ndarray) -> int:
    return int(np.argmin(np.hypot(*(S - np.median(S, axis=0)).T)))


def _grow_fit(S: np.ndarray, B: np.ndarray, ref: int, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares ``S = t + k @ B`` over the on-lattice spots, grown out from ``ref``.

    Returns ``B``, ``t``, integer coordinates ``k`` and the on-lattice mask.
    """
    t = S[ref].copy()
    dist = np.hypot(*(S - t).T)
    radius = 3.0 * float(np.linalg.norm(B, axis=1).max())
    far = float(dist.max())
    for _ in range(64):
        sel = dist <= radius
        k = np.rint(np.linalg.solve(B.T, (S[sel] - t).T).T)
        res = S[sel] - t - k @ B
        inl = np.hypot(*res.T) <= tol * float(np.linalg.norm(B, axis=1).min())
        B, t = _refine(k[inl], S[sel][inl], B, t, tol)
        if radius >= far:
            break
        radius *= 2.0
    k = np.rint(np.linalg.solve(B.T, (S - t).T).T)
    res = S - t - k @ B
    inl = np.hypot(*res.T) <= tol * float(np.linalg.norm(B, axis=1).min())
    return B, t, k, inl


def _refine(k: np.ndarray, xy: np.ndarray, B: np.ndarray, t: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares update of ``B``, ``t`` from on-lattice spots; kept only if it is a refinement.

    Needs more spots than unknowns (an exactly determined fit follows any integer
    assignment) and may move each basis vector by less than ``tol`` of its length.
    """
    if len(k) < 5:
        return B, t
    design = np.column_stack([k, np.ones(len(k))])
    if np.linalg.matrix_rank(design) < 3:
        return B, t
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    Bn = coef[:2]
    if np.all(np.linalg.norm(Bn - B, axis=1) <= tol * np.linalg.norm(B, axis=1)):
        return Bn, coef[2]
    return B, t


def _coset_candidates(res: np.ndarray, B: np.ndarray, r_tol: float, limit: int = 20) -> list[tuple[int, np.ndarray]]:
    """Offsets of off-lattice spots from their nearest site, most frequent first.

    Each is a lattice vector of the true lattice when the fitted one is a sublattice; the
    offsets shared by several spots (up to sign and fitted-lattice vectors) come first,
    then the shortest. Each candidate is the mean of the offsets it stands for.
    """
    if not len(res):
        return []
    scored = []
    used = np.zeros(len(res), dtype=bool)
    order = np.argsort(np.hypot(*res.T), kind="stable")[:500]
    for i in order:
        if used[i]:
            continue
        r = res[i]
        w = _wrap(res - r, B)
        wm = _wrap(res + r, B)
        plus = np.hypot(*w.T) <= r_tol
        minus = (np.hypot(*wm.T) <= r_tol) & ~plus
        members = plus | minus
        used |= members
        g = r + np.concatenate([w[plus], -wm[minus]]).mean(axis=0)
        scored.append((-int(members.sum()), float(np.linalg.norm(g)), g))
    scored.sort(key=lambda x: (x[0], x[1]))
    return [(-n, g) for n, _, g in scored[:limit]]


def _better(on_old: np.ndarray, on_new: np.ndarray) -> bool:
    """Whether a finer lattice is a true refinement rather than one fitted to noise.

    It must keep (almost) every spot that was on the coarser lattice and take in at least
    a third of the others: a coarse fit of index ``m`` leaves ``(m-1)/m`` of a random subset
    off, and each added generator brings in at least one of its ``m-1`` cosets (``m`` <= 4
    in practice). A generator taken from stray or jittered spots brings in only the few
    that happen to sit near its sites, and loses jittered ones as the tolerance shrinks.
    """
    n_old, n_off = int(on_old.sum()), int((~on_old).sum())
    kept = int((on_old & on_new).sum())
    gained = int((on_new & ~on_old).sum())
    return kept >= 0.98 * n_old and gained >= max(1, n_off / 3)


def _coarsen(k: np.ndarray, inl: np.ndarray, B: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """A sublattice of index 2 or 3 holding >= 97 % of the on-lattice spots, if any."""
    kk = k[inl].astype(np.int64)
    if len(kk) < 3:
        return B, t, False
    cands = []
    for m in (2, 3):
        cands.append(np.array([[m, 0], [0, 1]]))
        for j in range(m):
            cands.append(np.array([[j, 1], [m, 0]]))
    for M in cands:  # rows: new basis vectors in units of the old basis
        Minv = np.linalg.inv(M.astype(np.float64))
        frac = kk @ Minv
        coset = np.rint((frac - np.floor(frac + 1e-9)) * abs(round(np.linalg.det(M)))).astype(np.int64)
        keys, counts = np.unique(coset, axis=0, return_counts=True)
        top = int(counts.argmax())
        if counts[top] >= _GOOD_FRACTION * len(kk) and len(kk) - counts[top] <= int(0.03 * len(kk)):
            member = kk[np.all(coset == keys[top], axis=1)][0]
            Bn = M.astype(np.float64) @ B
            tn = t + member @ B
            a, b = _gauss_reduce(Bn[0], Bn[1])
            return np.vstack([a, b]), tn, True
    return B, t, False


def _mode(D: np.ndarray, v: np.ndarray, tol: float) -> np.ndarray:
    """Mean-shift ``v`` to the centre of the differences around it (up to sign)."""
    for _ in range(10):
        r = tol * float(np.linalg.norm(v))
        plus = np.hypot(*(D - v).T) <= r
        minus = np.hypot(*(D + v).T) <= r
        if not (plus.any() or minus.any()):
            break
        vn = np.concatenate([D[plus], -D[minus]]).mean(axis=0)
        if np.allclose(vn, v, rtol=1e-9, atol=0):
            break
        v = vn
    return v


def _fit_2d_exact(S: np.ndarray, u: np.ndarray, w: np.ndarray, tol_abs: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The lattice generated by the spot differences, for centres without jitter.

    Centres of 10x slides come from Space Ranger's fitted array (rounded to whole
    full-resolution pixels), so every difference is a lattice vector to within
    ``tol_abs``; no least-squares step is needed while the lattice is built, which keeps
    sparse subsets exact. Returns the basis, the origin and the fraction of spots within
    ``tol_abs`` of a site.
    """
    a, b = _gauss_reduce(u, w)
    B = np.vstack([a, b])
    floor = _MIN_PITCH_FRACTION * float(np.linalg.norm(u))
    t = S[_central(S)]
    V = S - t
    need = 2 if len(S) >= 30 else 1  # a stray spot is a coset of its own
    for _ in range(20):
        R = _wrap(V, B)
        off = np.hypot(*R.T) > tol_abs
        if not off.any():
            break
        for _, g in [(n, g) for n, g in _coset_candidates(R[off], B, tol_abs) if n >= need]:
            Bn = _reduce_generators(B, g, tol_abs)
            if float(np.linalg.norm(Bn, axis=1).min()) < floor:
                continue
            on_new = np.hypot(*_wrap(V, Bn).T) <= tol_abs
            if _better(~off, on_new):
                B = Bn
                break
        else:
            break
    for _ in range(6):
        k = np.rint(np.linalg.solve(B.T, V.T).T)
        inl = np.hypot(*(V - k @ B).T) <= tol_abs
        B2, t2, changed = _coarsen(k, inl, B, t)
        if not changed:
            break
        B, t = B2, t2
        V = S - t
    k = np.rint(np.linalg.solve(B.T, V.T).T)
    frac = float(np.mean(np.hypot(*(V - k @ B).T) <= tol_abs))
    a, b = _gauss_reduce(B[0], B[1])
    return np.vstack([a, b]), t, frac


def _fit_2d(S: np.ndarray, u: np.ndarray, w: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = _gauss_reduce(u, w)
    floor = _MIN_PITCH_FRACTION * float(np.linalg.norm(u))
    centre = np.median(S, axis=0)
    refs = np.argsort(np.hypot(*(S - centre).T), kind="stable")[:5]
    best = None
    for ref in refs:  # a central spot that is on the lattice (not a stray one)
        fit = _grow_fit(S, np.vstack([a, b]), int(ref), tol)
        if best is None or fit[3].sum() > best[1][3].sum():
            best = (int(ref), fit)
        if fit[3].mean() >= 0.5:
            break
    assert best is not None
    ref, (B, t, k, inl) = best
    for _ in range(12):
        if inl.mean() >= _GOOD_FRACTION:
            break
        res = S[~inl] - t - k[~inl] @ B
        r_tol = tol * float(np.linalg.norm(B, axis=1).min())
        for _, g in _coset_candidates(res, B, r_tol):
            Bn = _reduce_generators(B, g, r_tol)
            if float(np.linalg.norm(Bn, axis=1).min()) < floor:  # a noise vector, not a lattice vector
                continue
            fit = _grow_fit(S, Bn, ref, tol)
            if _better(inl, fit[3]):
                B, t, k, inl = fit
                break
        else:
            break
    for _ in range(6):
        B2, t2, changed = _coarsen(k, inl, B, t)
        if not changed:
            break
        ref = int(np.argmin(np.hypot(*(S - t2).T)))
        B, t, k, inl = _grow_fit(S, B2, ref, tol)
    a, b = _gauss_reduce(B[0], B[1])
    return np.vstack([a, b]), t


def _classify(B: np.ndarray) -> tuple[str, float, float]:
    a, b = B
    la, lb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosang = abs(float(a @ b)) / (la * lb)
    angle = float(np.degrees(np.arccos(min(1.0, cosang))))
    ratio = lb / la
    if abs(angle - 90.0) <= _SHAPE_ANGLE_TOL:
        kind = "square" if ratio <= 1 + _SHAPE_RATIO_TOL else "rectangular"
    elif abs(angle - 60.0) <= _SHAPE_ANGLE_TOL and ratio <= 1 + _SHAPE_RATIO_TOL:
        kind = "hex"
    else:
        kind = "oblique"
    return kind, angle, ratio


def _pitch_pairs(xy: np.ndarray, pitch: float, tol: float) -> int:
    from scipy.spatial import cKDTree

    P = _subsample(xy, _MAX_FIT_POINTS, seed=1)
    if len(P) < 2 or not pitch > 0:
        return 0
    tree = cKDTree(P)
    hi = tree.count_neighbors(tree, (1 + tol) * pitch)
    lo = tree.count_neighbors(tree, (1 - tol) * pitch)
    return int((hi - lo) // 2)


def _final_2d(xy: np.ndarray, B: np.ndarray, t: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refit on every spot; returns basis, residual distances and on-lattice mask."""
    k = np.rint(np.linalg.solve(B.T, (xy - t).T).T)
    res = np.hypot(*(xy - t - k @ B).T)
    inl = res <= tol * float(np.linalg.norm(B, axis=1).min())
    if inl.sum() >= 3 and np.linalg.matrix_rank(np.column_stack([k[inl], np.ones(int(inl.sum()))])) == 3:
        coef, *_ = np.linalg.lstsq(np.column_stack([k[inl], np.ones(int(inl.sum()))]), xy[inl], rcond=None)
        B, t = coef[:2], coef[2]
        res = np.hypot(*(xy - t - k @ B).T)
        inl = res <= tol * float(np.linalg.norm(B, axis=1).min())
    a, b = _gauss_reduce(B[0], B[1])
    return np.vstack([a, b]), res, inl


# --------------------------------------------------------------------------- 1-D fit


def _wrap1(v: np.ndarray, p: float) -> np.ndarray:
    return v - np.rint(v / p) * p


def _coarsen_1d(s: np.ndarray, p: float, t: float, tol_abs: float) -> tuple[float, float]:
    """A 2x or 3x spacing that holds (almost) every on-lattice position, repeatedly."""
    for _ in range(6):
        k = np.rint((s - t) / p).astype(np.int64)
        kk = k[np.abs(s - t - k * p) <= tol_abs]
        if len(kk) < 3:
            break
        for m in (2, 3):
            vals, counts = np.unique(np.mod(kk, m), return_counts=True)
            top = int(counts.argmax())
            if counts[top] >= _GOOD_FRACTION * len(kk) and len(kk) - counts[top] <= int(0.03 * len(kk)):
                t, p = t + int(vals[top]) * p, p * m
                break
        else:
            break
    return p, t


def _refine_1d(s: np.ndarray, p: float, t: float, tol_abs: float, grow: bool) -> tuple[float, float, np.ndarray]:
    """Positions on the lattice ``t + k p``; with ``grow``, least squares grown out from ``t``."""
    if grow:
        dist = np.abs(s - t)
        radius = 3.0 * p
        for _ in range(64):
            sel = dist <= radius
            k = np.rint((s[sel] - t) / p)
            inl = np.abs(s[sel] - t - k * p) <= tol_abs
            if inl.sum() >= 4 and np.ptp(k[inl]) > 0:
                coef, *_ = np.linalg.lstsq(np.column_stack([k[inl], np.ones(int(inl.sum()))]), s[sel][inl], rcond=None)
                if abs(coef[0] - p) <= 0.25 * p:
                    p, t = float(coef[0]), float(coef[1])
            if radius >= dist.max():
                break
            radius *= 2.0
    on = np.abs(_wrap1(s - t, p)) <= tol_abs
    return p, t, on


def _fit_1d_from(s: np.ndarray, p: float, tol_abs: float | None, tol: float) -> tuple[float, float, float]:
    """1-D lattice from a starting spacing: exact (fixed ``tol_abs``) or jittered (``None``)."""
    grow = tol_abs is None
    t = float(s[np.argmin(np.abs(s - np.median(s)))])
    floor = _MIN_PITCH_FRACTION * p
    need = 2 if len(s) >= 30 else 1
    ta = (lambda q: tol * q) if grow else (lambda q: tol_abs)
    p, t, on = _refine_1d(s, p, t, ta(p), grow)
    for _ in range(12):
        if on.mean() >= _GOOD_FRACTION:
            break
        R = _wrap1(s[~on] - t, p)
        cands = []
        used = np.zeros(len(R), dtype=bool)
        for i in np.argsort(np.abs(R), kind="stable")[:500]:
            if used[i]:
                continue
            r = R[i]
            plus = np.abs(_wrap1(R - r, p)) <= ta(p)
            minus = (np.abs(_wrap1(R + r, p)) <= ta(p)) & ~plus
            used |= plus | minus
            n = int((plus | minus).sum())
            if n >= need:
                cands.append((-n, abs(r), r + float(np.concatenate([_wrap1(R[plus] - r, p), -_wrap1(R[minus] + r, p)]).mean())))
        cands.sort(key=lambda c: (c[0], c[1]))
        for *_, g in cands[:20]:
            pn = _reduce_1d(p, g, ta(p) / p)
            if pn < floor:
                continue
            pn2, tn, on_new = _refine_1d(s, pn, t, ta(pn), grow)
            if _better(on, on_new):
                p, t, on = pn2, tn, on_new
                break
        else:
            break
    p, t = _coarsen_1d(s, p, t, ta(p))
    p, t, on = _refine_1d(s, p, t, ta(p), grow)
    return p, t, float(on.mean())


def _fit_1d(s: np.ndarray, tol: float) -> tuple[float, float]:
    """Spacing and origin of the 1-D lattice of positions ``s`` (same strategy as in 2-D)."""
    ss = np.sort(s)
    k = min(len(ss) - 1, 8)
    d = np.concatenate([ss[j:] - ss[:-j] for j in range(1, k + 1)])
    scale = max(float(ss[-1] - ss[0]), 1e-300)
    d = np.sort(d[d > 1e-9 * scale])
    D = np.column_stack([d, np.zeros(len(d))])
    i = _supported(D, tol, 4 if len(s) >= 12 else 1)
    p_sup = float(_mode(D, D[i if i is not None else 0], _MODE_TOL)[0])
    best = None
    for p0 in dict.fromkeys([float(d[0]), p_sup]):
        tol_abs = _EXACT_TOL * p0
        p, t, frac = _fit_1d_from(s, p0, tol_abs, tol)
        if frac >= _EXACT_FRACTION and tol_abs <= 0.1 * p and (best is None or (frac, p) > (best[2], best[0])):
            best = (p, t, frac)
    if best is None:
        best = _fit_1d_from(s, p_sup, None, tol)
    return best[0], best[1]


# --------------------------------------------------------------------------- public


def _empty(n: int, dim: int, kind: str, method: str = "pair-differences") -> LatticeFit:
    return LatticeFit(dim=dim, kind=kind, pitch_px=float("nan"), n_spots=n, method=method)


def fit_lattice(xy: np.ndarray, *, tol: float = ON_LATTICE_TOL) -> LatticeFit:
    """Fit the lattice that spot centres lie on, from their pair-difference vectors.

    Parameters
    ----------
    xy
        ``(n, 2)`` spot centres (pixels); non-finite rows are ignored.
    tol
        A spot is on the lattice within ``tol`` pitches of a site.

    Returns
    -------
    :class:`LatticeFit`. Spots that do not form a lattice (random positions) give a fit
    with a low ``fraction_on_lattice``; callers decide from the fit quality.

    Examples
    --------
    >>> import numpy as np
    >>> rows, cols = np.nonzero(np.random.default_rng(0).random((40, 40)) < 0.1)
    >>> xy = np.c_[(cols + 0.5 * (rows % 2)) * 7.3, rows * 7.3 * np.sqrt(3) / 2]
    >>> fit = fit_lattice(xy)
    >>> fit.kind, round(fit.pitch_px, 3)
    ('hex', 7.3)
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    n = len(xy)
    if n == 0:
        return _empty(0, -1, "none")
    extent = float(np.ptp(xy, axis=0).max()) if n > 1 else 0.0
    if n == 1 or extent <= 1e-12 * max(1.0, float(np.abs(xy).max())):
        return LatticeFit(dim=0, kind="point", pitch_px=float("nan"), n_spots=n, n_on_lattice=n,
                          fraction_on_lattice=1.0)
    S = _subsample(xy, _MAX_FIT_POINTS)
    D = _differences(S)
    need = 4 if len(S) >= 12 else 1  # each pair appears twice (i -> j and j -> i)
    i = _supported(D, tol, need)
    if i is None:
        i = 0
    u = D[i]
    lu = float(np.linalg.norm(u))
    # one line? (every spot within tol pitches of the line through the spots along u)
    centred = xy - xy.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    uh, nh = vt[0], np.array([-vt[0][1], vt[0][0]])  # the principal axis and its normal
    perp = centred @ nh
    line_tol = tol * min(lu, 1.5 * float(np.linalg.norm(D[0])))
    if float(np.abs(perp - np.median(perp)).max()) <= line_tol:
        s = xy @ uh
        p, t = _fit_1d(s, tol)
        k = np.rint((s - t) / p)
        along = s - t - k * p
        res = np.hypot(along, perp - np.median(perp))
        inl = res <= tol * p
        n_on = int(inl.sum())
        return LatticeFit(
            dim=1, kind="line", pitch_px=float(p), basis_px=[list(map(float, uh * p))], n_spots=n,
            n_on_lattice=n_on, fraction_on_lattice=n_on / n,
            rms_residual=float(np.sqrt(np.mean(res[inl] ** 2)) / p) if n_on else float("nan"),
            n_pitch_pairs=_pitch_pairs(xy, p, tol),
        )
    lengths = np.hypot(D[:, 0], D[:, 1])
    par = np.abs(u[0] * D[:, 1] - u[1] * D[:, 0]) >= _PARALLEL_SIN * lu * lengths
    idx = np.flatnonzero(par)
    if len(idx):
        w = D[idx[0]]
    else:  # not collinear, but no non-parallel neighbour difference: use the farthest spot
        cand = xy - xy[np.argmax(np.abs(perp - np.median(perp)))]
        sins = np.array([_sin(u, c) for c in cand])
        ok = np.flatnonzero(sins >= _PARALLEL_SIN)
        w = cand[ok[np.argmin(np.hypot(*cand[ok].T))]] if len(ok) else cand[int(np.argmax(sins))]
    j = _supported(D[idx], tol, need) if len(idx) else None
    if j is not None:
        w = D[idx][j]
    um, wm = _mode(D, u, _MODE_TOL), _mode(D, w, _MODE_TOL)
    if _sin(um, wm) >= _PARALLEL_SIN:
        u, w = um, wm
    # exact centres (10x): the lattice generated by the differences, tight tolerance; started
    # from the shortest differences (sparse subsets: nothing is seen twice) and from the
    # supported ones (stray spots: the shortest difference may involve one)
    starts = [(u, w)]
    u0 = D[0]
    par0 = np.abs(u0[0] * D[:, 1] - u0[1] * D[:, 0]) >= _PARALLEL_SIN * float(np.linalg.norm(u0)) * lengths
    if par0.any():
        starts.insert(0, (u0, D[np.flatnonzero(par0)[0]]))
    best = None
    for us, ws in starts:
        tol_abs = _EXACT_TOL * float(np.linalg.norm(us))
        Bx, tx, frac = _fit_2d_exact(S, us, ws, tol_abs)
        pitch_x = float(np.linalg.norm(Bx, axis=1).min())
        if frac >= _EXACT_FRACTION and tol_abs <= 0.1 * pitch_x:
            if best is None or (frac, pitch_x) > (best[2], best[3]):
                best = (Bx, tx, frac, pitch_x)
    if best is not None:
        B, t = best[0], best[1]
    else:  # jittered centres (legacy ST): grown least-squares fit, tolerance relative to the pitch
        B, t = _fit_2d(S, u, w, tol)
    B, res, inl = _final_2d(xy, B, t, tol)
    kind, angle, ratio = _classify(B)
    p = float(np.linalg.norm(B[0]))
    n_on = int(inl.sum())
    return LatticeFit(
        dim=2, kind=kind, pitch_px=p, basis_px=[list(map(float, B[0])), list(map(float, B[1]))], n_spots=n,
        n_on_lattice=n_on, fraction_on_lattice=n_on / n,
        rms_residual=float(np.sqrt(np.mean(res[inl] ** 2)) / p) if n_on else float("nan"),
        n_pitch_pairs=_pitch_pairs(xy, p, tol), angle_deg=angle, length_ratio=ratio,
    )


def fit_array_lattice(ab: np.ndarray, xy: np.ndarray, *, tol: float = ON_LATTICE_TOL) -> LatticeFit:
    """Fit ``xy = t + [A, B] @ M`` by least squares, from known integer array indices.

    Legacy ST spot ids carry their array position (``<slide>_<A>x<B>``), so the integer
    lattice coordinates are known and positional jitter cannot make them wrong. When every
    spot shares one index (one array row or one column) the fit is one-dimensional: the
    spacing per step of the other index; the result then does not depend on the index or
    coordinate offsets.

    Parameters
    ----------
    ab
        ``(n, 2)`` integer array indices.
    xy
        ``(n, 2)`` centres (pixels).
    tol
        A spot is on the lattice within ``tol`` pitches of its site.

    Returns
    -------
    :class:`LatticeFit` with ``method="array-fit"``; ``pitch_px`` is ``sqrt(|det M|)`` (the
    side of one grid cell) in two dimensions, the spacing per index step in one.
    """
    ab = np.asarray(ab, dtype=np.float64).reshape(-1, 2)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(xy).all(axis=1) & np.isfinite(ab).all(axis=1)
    ab, xy = ab[ok], xy[ok]
    n = len(xy)
    if n == 0:
        return _empty(0, -1, "none", "array-fit")
    abc = ab - ab.mean(axis=0)
    rank = np.linalg.matrix_rank(abc, tol=1e-9) if n > 1 else 0
    if rank == 0:
        return LatticeFit(dim=0, kind="point", pitch_px=float("nan"), n_spots=n, n_on_lattice=n,
                          fraction_on_lattice=1.0, method="array-fit")
    if rank == 1:
        # all indices on one line of the array: project them on that line's direction
        _, _, vt = np.linalg.svd(abc, full_matrices=False)
        d = vt[0]
        d = d / np.abs(d).max()  # integer step along the line, e.g. (1, 0) or (0, 1)
        s = abc @ d / (d @ d)
        design = np.column_stack([s, np.ones(n)])
        coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
        # one step d along the line moves by coef[0]: |d| pitches (1 along a row or column)
        dn = float(np.sqrt(d @ d))
        step = coef[0] / dn
        p = float(np.linalg.norm(step))
        res = np.hypot(*(xy - design @ coef).T)
        inl = res <= tol * p
        n_on = int(inl.sum())
        return LatticeFit(
            dim=1, kind="line", pitch_px=p, basis_px=[list(map(float, step))],
            n_spots=n, n_on_lattice=n_on, fraction_on_lattice=n_on / n,
            rms_residual=float(np.sqrt(np.mean(res[inl] ** 2)) / p) if n_on else float("nan"),
            n_pitch_pairs=_pitch_pairs(xy, p, tol), method="array-fit",
        )
    design = np.column_stack([ab, np.ones(n)])
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    M = coef[:2]
    p = float(np.sqrt(abs(np.linalg.det(M))))
    res = np.hypot(*(xy - design @ coef).T)
    inl = res <= tol * p
    n_on = int(inl.sum())
    kind, angle, ratio = _classify(np.vstack(_gauss_reduce(M[0], M[1])))
    return LatticeFit(
        dim=2, kind=kind, pitch_px=p, basis_px=[list(map(float, M[0])), list(map(float, M[1]))], n_spots=n,
        n_on_lattice=n_on, fraction_on_lattice=n_on / n,
        rms_residual=float(np.sqrt(np.mean(res[inl] ** 2)) / p) if n_on else float("nan"),
        n_pitch_pairs=_pitch_pairs(xy, p, tol), angle_deg=angle, length_ratio=ratio, method="array-fit",
    )
