"""Technology-aware spatial neighbour graph (squidpy's ``spatial_neighbors_grid`` / ``_knn`` / ``_radius`` / ``_delaunay``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._constants import GEOMETRY, TABLE_KEY
from .._docs import dedent
from .._keys import Key
from .._logging import logger
from ..pp._utils import quiet, slide_info, table_to_modify

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["detect_lattice", "spatial_graph"]

#: A layout is a lattice when at least this fraction of spots lies on the fitted lattice,
#: and a *filled* (dense) one when this fraction has its nearest neighbour within
#: ``_PITCH_TOL`` of the pitch; only a filled grid gets squidpy's grid graph.
_REGULAR_FRACTION = 0.9
_PITCH_TOL = 0.1
#: ... and the spots have, on average, at least this fraction of the full grid's neighbours
#: (6 on a hexagonal grid, 4 on a square one). A grid with many holes (a legacy ST array with
#: 30 % of its spots missing: ~2.8 of 4) has most spots next to a hole, where a grid graph
#: averages over 2-3 spots; a k-NN graph reaches across the holes (``bench_domains.py``).
_FILLED_FRACTION = 0.8
_FULL_COORDINATION = {"hex": 6, "square": 4}
#: Neighbours closer than this multiple of the pitch count towards the coordination number.
_SHELL = 1.25


def detect_lattice(xy: np.ndarray) -> dict[str, Any]:
    """Describe the layout of spot centres: lattice, pitch, regularity and coordination number.

    The lattice is fitted from pair-difference vectors (the same fit that gives the pixel
    size, see ``docs/pixel_size.md``), so a sparse subset of a grid (e.g. 100 spots left of
    a Visium capture area, few of them adjacent) is still recognised as that grid.

    Parameters
    ----------
    xy
        ``(n, 2)`` spot centres.

    Returns
    -------
    dict with ``lattice`` (``"hex"`` or ``"square"`` when at least 90 % of the spots lie on
    such a lattice, else ``"irregular"``), ``pitch`` (the lattice's fundamental spacing;
    for an irregular layout the median nearest-neighbour distance; same unit as ``xy``),
    ``fraction_on_lattice``, ``regular_fraction`` (spots whose nearest neighbour is within
    10 % of the pitch), ``coordination`` (typical number of neighbours within 1.25 pitches: 6 on
    a filled hexagonal grid, 4 on a square one), ``filled_fraction`` (the mean number of
    neighbours within 1.25 pitches over the full grid's: 1 on a filled grid, ~0.7 on a square
    grid with 30 % of its spots missing), ``dense`` (``regular_fraction`` >= 0.9 and
    ``filled_fraction`` >= 0.8: the grid is filled, not a sparse subset or a grid with many
    holes) and ``fit`` (the lattice fit as a dict).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> coords = ssd.io.read_coords(ssd.io.find_slide(root, "GSE000001_GSM0000001").coord)
    >>> ssd.tl.detect_lattice(coords[["x", "y"]].to_numpy())["lattice"]
    'hex'
    """
    from scipy.spatial import cKDTree

    from ..io._lattice import fit_lattice

    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    out: dict[str, Any] = {"pitch": float("nan"), "regular_fraction": 0.0, "coordination": 0,
                           "lattice": "irregular", "fraction_on_lattice": 0.0, "filled_fraction": 0.0, "dense": False,
                           "fit": {}}
    if n < 3:
        return out
    fit = fit_lattice(xy)
    out["fit"] = fit.to_dict()
    out["fraction_on_lattice"] = float(fit.fraction_on_lattice)
    k = min(9, n)
    dist, _ = cKDTree(xy).query(xy, k=k)
    d1 = dist[:, 1]
    on = fit.dim == 2 and fit.kind in ("hex", "square") and fit.fraction_on_lattice >= _REGULAR_FRACTION
    pitch = float(fit.pitch_px) if on else float(np.median(d1))
    out["pitch"] = pitch
    if not pitch > 0:
        return out
    regular = float(np.mean(np.abs(d1 - pitch) <= _PITCH_TOL * pitch))
    counts = (dist[:, 1:] <= _SHELL * pitch).sum(axis=1)
    kind = fit.kind if on else "irregular"
    filled = float(np.mean(counts)) / _FULL_COORDINATION[kind] if kind in _FULL_COORDINATION else 0.0
    out.update(
        regular_fraction=regular,
        coordination=int(np.quantile(counts, 0.75)),
        lattice=kind,
        filled_fraction=filled,
        dense=regular >= _REGULAR_FRACTION and filled >= _FILLED_FRACTION,
    )
    return out


@dedent
def spatial_graph(
    data: AnnData | SpatialData,
    *,
    method: Literal["auto", "grid", "knn", "radius", "delaunay"] = "auto",
    n_neighs: int | None = None,
    radius: float | None = None,
    n_rings: int = 1,
    key_added: str = Key.obsp.spatial,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Build the spatial neighbour graph of a slide's spots.

    Parameters
    ----------
    %(data)s
        Uses ``obsm["spatial"]`` (pixels).
    method
        ``"auto"``: squidpy's grid graph (:func:`squidpy.gr.spatial_neighbors_grid`) when
        the spots form a filled lattice (:func:`detect_lattice`'s ``dense``), with 6
        neighbours on a hexagonal grid (Visium, staggered ST) and 4 on a square grid (ST,
        VisiumHD bins); otherwise (scattered subsets, grids with many holes such as ST
        arrays missing 20 % or more of their spots, irregular layouts) a
        k-nearest-neighbour graph (:func:`squidpy.gr.spatial_neighbors_knn`) with the
        same number of neighbours, which reaches across the holes.
        ``"grid"``, ``"knn"``, ``"radius"`` (:func:`squidpy.gr.spatial_neighbors_radius`)
        and ``"delaunay"`` (:func:`squidpy.gr.spatial_neighbors_delaunay`) force a
        builder.
    n_neighs
        Neighbours per spot for ``"grid"``/``"knn"``; default from the detected lattice, or
        the technology's grid (6 for Visium, 4 for ST and VisiumHD).
    radius
        Radius in pixels for ``"radius"`` (default 1.5 x the spot pitch).
    n_rings
        Rings of grid neighbours (``"grid"`` only).
    key_added
        Prefix of the keys written (squidpy's convention).
    %(table_key)s
    %(copy)s

    Returns
    -------
    %(returns_copy)s

    Notes
    -----
    Writes ``obsp["{key_added}_connectivities"]``, ``obsp["{key_added}_distances"]`` and
    ``uns["{key_added}_neighbors"]`` (squidpy's parameters, plus ``"stimage"``: the
    builder used, detected lattice, pitch in pixels, regular fraction and tech).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ssd.tl.spatial_graph(sdata)
    >>> ssd.tl.spatial_graph(sdata, method="knn", n_neighs=8, key_added="knn8")
    """
    adata = table_to_modify(data, table_key, copy)
    tech = slide_info(adata).get("tech")
    lat = detect_lattice(adata.obsm[Key.obsm.spatial])
    tech_neighs = {"hex": 6, "square": 4}.get(GEOMETRY[tech].grid, 6) if tech in GEOMETRY else 6
    if method == "auto":
        method = "grid" if lat["lattice"] in ("hex", "square") and lat["dense"] else "knn"
        if method == "knn":
            logger.info(
                "spots are not on a filled grid (%s layout, %.0f%% with a neighbour at the pitch, coordination "
                "%d): using a %d-NN graph",
                lat["lattice"], 100 * lat["regular_fraction"], lat["coordination"], n_neighs or tech_neighs,
            )
    with quiet("spatialdata._logging", "squidpy"):
        k = _build(adata, method, lat, tech, tech_neighs, n_neighs, radius, n_rings, key_added)
    params = adata.uns[Key.uns.spatial_neighs(key_added)]
    params["stimage"] = {
        "method": method,
        "lattice": lat["lattice"],
        "n_neighs": int(k),
        "pitch_px": float(lat["pitch"]),
        "regular_fraction": float(lat["regular_fraction"]),
        "tech": str(tech) if tech else "unknown",
    }
    return adata if copy else None


def _build(adata, method, lat, tech, tech_neighs, n_neighs, radius, n_rings, key_added) -> int:
    import squidpy as sq

    if method == "grid":
        k = n_neighs or {"hex": 6, "square": 4}.get(lat["lattice"], tech_neighs)
        if tech in GEOMETRY and lat["lattice"] in ("hex", "square") and lat["lattice"] != GEOMETRY[tech].grid:
            logger.info("%s spots lie on a %s grid; using %d grid neighbours", tech, lat["lattice"], k)
        sq.gr.spatial_neighbors_grid(adata, n_neighs=k, n_rings=n_rings, key_added=key_added)
        return int(k)
    if method == "knn":
        k = n_neighs or tech_neighs
        sq.gr.spatial_neighbors_knn(adata, n_neighs=k, key_added=key_added)
        return int(k)
    if method == "radius":
        r = float(radius) if radius is not None else 1.5 * lat["pitch"]
        sq.gr.spatial_neighbors_radius(adata, radius=r, key_added=key_added)
    elif method == "delaunay":
        sq.gr.spatial_neighbors_delaunay(adata, key_added=key_added)
    else:
        raise ValueError(f"method must be 'auto', 'grid', 'knn', 'radius' or 'delaunay', got {method!r}")
    conn = adata.obsp[Key.obsp.spatial_conn(key_added)]
    return int(np.median(np.diff(conn.indptr))) if conn.shape[0] else 0  # typical degree
