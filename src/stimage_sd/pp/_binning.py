"""Aggregating VisiumHD bins into coarser square bins."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import GEOMETRY, INSTANCE_KEY, REGION_KEY, SHAPES_KEY, TABLE_KEY, UNS_KEY
from .._keys import Key
from .._logging import logger
from ..errors import StimageError

if TYPE_CHECKING:
    import geopandas as gpd
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["BinGrid", "bin_hd", "fit_square_grid"]

#: Largest distance of a centre from its fitted grid position, in grid pitches.
_GRID_TOLERANCE = 0.25


@dataclass(frozen=True)
class BinGrid:
    """A square grid fitted to bin centres: ``xy = origin + col * u + row * v``.

    Attributes
    ----------
    origin
        Pixel position ``[x, y]`` of grid position ``(row 0, col 0)``, the lowest row and
        column present.
    u, v
        Pixel vectors of one column and one row step (orthogonal, equal length).
    rows, cols
        Integer grid position of every centre (``int64``, from 0).
    pitch_px
        Centre-to-centre spacing, pixels.
    angle_deg
        Rotation of the grid relative to the image axes.
    max_residual_px
        Largest distance of a centre from its grid position.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    pitch_px: float
    angle_deg: float
    max_residual_px: float


def fit_square_grid(xy: np.ndarray, *, sample: int = 20_000, seed: int = 0) -> BinGrid:
    """Fit a (possibly rotated) square grid to bin centres and index every centre.

    The pitch and rotation come from the nearest-neighbour vectors of a sample of the
    centres (rotation as the 4-fold circular mean of their angles); every centre is then
    given the nearest integer grid position, and the grid is refined by least squares on
    those positions.

    Parameters
    ----------
    xy
        Centres ``[x, y]`` in pixels, shape ``(n, 2)``.
    sample
        Centres used to estimate pitch and rotation.
    seed
        Seed of the sample.

    Returns
    -------
    :class:`BinGrid`.

    Raises
    ------
    StimageError
        If there are fewer than 2 centres or they do not lie on a square grid (a centre
        farther than a quarter pitch from its grid position).
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if n < 2:
        raise StimageError(f"cannot fit a bin grid to {n} centre(s)")
    tree = cKDTree(xy)
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, size=min(sample, n), replace=False) if n > sample else np.arange(n)
    d, idx = tree.query(xy[pick], k=min(5, n))
    nn = d[:, 1]
    nn_med = float(np.median(nn[nn > 0])) if np.any(nn > 0) else 0.0
    if not nn_med > 0:
        raise StimageError("bin centres are all identical; cannot fit a grid")
    vec = xy[idx[:, 1:]] - xy[pick][:, None, :]
    close = np.abs(d[:, 1:] - nn_med) < _GRID_TOLERANCE * nn_med
    pitch = float(np.median(d[:, 1:][close]))  # all close neighbours, not only the nearest
    ang = np.arctan2(vec[..., 1], vec[..., 0])[close]
    theta = float(np.angle(np.mean(np.exp(4j * ang))) / 4)
    basis = pitch * np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])  # rows u, v
    # refine on growing discs around one centre, so that index errors never accumulate
    o = xy[int(pick[0])].copy()
    dist = np.sqrt(((xy - o) ** 2).sum(axis=1))
    radius = 8.0 * pitch
    while True:
        sel = dist <= radius
        if sel.sum() >= 3:
            cr = np.rint(np.linalg.solve(basis.T, (xy[sel] - o).T).T)
            design = np.column_stack([cr, np.ones(len(cr))])
            if np.linalg.matrix_rank(design) == 3:
                coef, *_ = np.linalg.lstsq(design, xy[sel], rcond=None)
                basis, o = coef[:2], coef[2]
        if radius >= dist.max():
            break
        radius *= 4
    cr = np.rint(np.linalg.solve(basis.T, (xy - o).T).T)
    cols, rows = cr[:, 0].astype(np.int64), cr[:, 1].astype(np.int64)
    resid = np.sqrt(((xy - (o + cr @ basis)) ** 2).sum(axis=1))
    u, v = basis[0], basis[1]
    pitch = float(np.sqrt(abs(np.linalg.det(basis))))
    worst = float(resid.max())
    if worst > _GRID_TOLERANCE * pitch:
        raise StimageError(
            f"bin centres do not lie on a square grid: a centre is {worst:.2f} px from its grid "
            f"position (pitch {pitch:.2f} px)"
        )
    r0, c0 = rows.min(), cols.min()
    origin = o + c0 * u + r0 * v
    return BinGrid(
        origin=origin, u=u, v=v, rows=rows - r0, cols=cols - c0, pitch_px=pitch,
        angle_deg=float(np.degrees(np.arctan2(u[1], u[0]))), max_residual_px=worst,
    )


def _size_label(size_um: float) -> str:
    return f"{size_um:g}um".replace(".", "p")


def bin_hd(
    sdata: SpatialData,
    size_um: float = 16,
    *,
    table_key: str = TABLE_KEY,
    shapes_key: str = SHAPES_KEY,
    key_added: str | None = None,
    shape: Literal["square", "circle"] = "square",
    inplace: bool = True,
) -> tuple[gpd.GeoDataFrame, AnnData] | None:
    """Aggregate VisiumHD bins into coarser square bins of ``size_um`` µm.

    The bin grid is parsed from the bin centres (``table.obsm["spatial"]``), not from the
    bin ids: :func:`fit_square_grid` finds its pitch and rotation and the integer
    position of every bin. Fine bins are grouped into blocks of ``f x f`` positions,
    ``f = size_um / bin size``, starting at the lowest row and column present; each
    block that holds at least one bin becomes a coarse bin whose counts are the sums of
    its bins' raw counts (``layers["counts"]`` when present, else ``X``), computed as a
    sparse indicator matrix times the sparse count matrix, so totals are preserved
    exactly and the table stays sparse.

    Parameters
    ----------
    sdata
        A converted VisiumHD slide (:class:`spatialdata.SpatialData`).
    size_um
        Side of the coarse bins in µm; an integer multiple of the fine bin size (8 µm
        for the release's bins, or ``uns["stimage"]["bin_size_um"]`` of an already
        binned table).
    table_key, shapes_key
        The fine table and its shapes.
    key_added
        Suffix of the new elements; default ``"<size>um"`` (e.g. ``"16um"``).
    shape
        ``"square"`` (default; squares of side ``size_um``, rotated with the grid) or
        ``"circle"`` (radius ``size_um / 2``).
    inplace
        Add the new elements to ``sdata`` (in memory; use
        :meth:`spatialdata.SpatialData.write_element` to save them to a backed store)
        and the mapping column to the fine table. Otherwise return them and leave
        ``sdata`` unchanged.

    Returns
    -------
    ``None`` if ``inplace``, else ``(shapes, table)``.

    With ``inplace``, adds:

    - shapes ``"<shapes_key>_<size>um"`` (e.g. ``"spots_16um"``): one geometry per coarse
      bin, integer index ``0..m-1``, same coordinate transformations as the fine shapes;
    - table ``"<table_key>_<size>um"`` (e.g. ``"table_16um"``), annotating those shapes
      (``region`` = the new shapes, ``instance_key="spot_id"``): ``X`` the summed raw
      counts (CSR, same dtype), ``var`` the fine table's, ``obs`` indexed by
      ``<slide>_s_<size>um_<row>_<col>`` with ``region``, ``spot_id``, ``array_row``,
      ``array_col`` (coarse grid position) and ``n_bins`` (fine bins aggregated),
      ``obsm["spatial"]`` the coarse bin centres in pixels, ``uns["stimage"]`` the fine
      table's metadata updated (``bin_size_um``, ``n_spots``, ``spot_shape``,
      ``spot_half_side_px``, ``binned_from``);
    - ``obs["bin_<size>um"]`` in the fine table: the ``spot_id`` of the coarse bin that
      holds each fine bin.

    Raises
    ------
    StimageError
        If an element is missing, the bins do not form a square grid, or ``size_um`` is
        not a multiple of the fine bin size.
    """
    import anndata as ad
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, get_transformation

    if table_key not in sdata.tables:
        raise StimageError(f"no table {table_key!r} in the SpatialData object")
    if shape not in ("square", "circle"):
        raise ValueError(f"shape must be 'square' or 'circle', got {shape!r}")
    table = sdata.tables[table_key]
    meta = dict(table.uns.get(UNS_KEY, {}))
    if Key.obsm.spatial not in table.obsm:
        raise StimageError(f"table {table_key!r} has no obsm['spatial'] bin centres")
    xy = np.asarray(table.obsm[Key.obsm.spatial], dtype=np.float64)
    fine_um = float(meta.get("bin_size_um", GEOMETRY["VisiumHD"].pitch_um))
    ratio = float(size_um) / fine_um
    f = round(ratio)
    if f < 1 or abs(ratio - f) > 1e-6:
        raise StimageError(f"size_um={size_um} is not a multiple of the {fine_um:g} µm bin size")
    grid = fit_square_grid(xy)
    um_per_px = float(meta.get("um_per_px", "nan"))
    if np.isfinite(um_per_px) and um_per_px > 0:
        measured = grid.pitch_px * um_per_px
        if abs(measured - fine_um) > 0.05 * fine_um:
            logger.warning("bin pitch %.3g µm differs from the %.3g µm bin size", measured, fine_um)

    crow, ccol = grid.rows // f, grid.cols // f
    key = crow * (int(ccol.max()) + 1) + ccol
    uniq, inv = np.unique(key, return_inverse=True)
    m, n = len(uniq), len(xy)
    raw = table.layers[Key.layers.counts] if Key.layers.counts in table.layers else table.X
    raw = sp.csr_matrix(raw)
    indicator = sp.csr_matrix((np.ones(n, dtype=raw.dtype), (inv, np.arange(n))), shape=(m, n))
    X = (indicator @ raw).tocsr().astype(raw.dtype, copy=False)
    X.sort_indices()
    n_bins = np.bincount(inv, minlength=m)
    cr, cc = uniq // (int(ccol.max()) + 1), uniq % (int(ccol.max()) + 1)

    # centres and corners of the coarse bins, in pixels
    half = f / 2
    cx = (cc * f + (f - 1) / 2)[:, None]
    cy = (cr * f + (f - 1) / 2)[:, None]
    centres = grid.origin + cx * grid.u + cy * grid.v
    label = key_added or _size_label(size_um)
    new_shapes_key, new_table_key = f"{shapes_key}_{label}", f"{table_key}_{label}"
    fine_shapes = sdata.shapes.get(shapes_key)
    tf = get_transformation(fine_shapes, get_all=True) if fine_shapes is not None else {"global": Identity()}
    side_px = f * grid.pitch_px
    if shape == "square":
        signs = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64) * half
        ring = centres[:, None, :] + signs[None, :, :1] * grid.u + signs[None, :, 1:] * grid.v
        gdf = gpd.GeoDataFrame(geometry=shapely.polygons(ring), index=pd.RangeIndex(m))
        shapes = ShapesModel.parse(gdf, transformations=dict(tf))
    else:
        shapes = ShapesModel.parse(
            centres, geometry=0, radius=np.full(m, side_px / 2), index=np.arange(m), transformations=dict(tf)
        )

    slide = meta.get("slide")
    size_txt = f"{size_um:g}".replace(".", "p").zfill(3)
    ids = [f"{slide + '_' if slide else ''}s_{size_txt}um_{r:05d}_{c:05d}" for r, c in zip(cr, cc, strict=True)]
    obs = pd.DataFrame(index=pd.Index(ids))
    obs[REGION_KEY] = pd.Categorical([new_shapes_key] * m)
    obs[INSTANCE_KEY] = np.arange(m, dtype=np.int64)
    obs["array_row"] = cr.astype(np.int64)
    obs["array_col"] = cc.astype(np.int64)
    obs["n_bins"] = n_bins.astype(np.int64)
    new = ad.AnnData(X=X, obs=obs, var=table.var.copy())
    new.obsm[Key.obsm.spatial] = centres
    new_meta = copy.deepcopy(meta)
    new_meta.update(
        {
            "n_spots": int(m),
            "spot_shape": shape,
            "bin_size_um": float(size_um),
            "spot_half_side_px": float(side_px / 2),
            "spot_radius_px": float(side_px / 2),
            "binned_from": {
                "table": table_key,
                "shapes": shapes_key,
                "bin_size_um": fine_um,
                "factor": int(f),
                "grid_pitch_px": grid.pitch_px,
                "grid_angle_deg": grid.angle_deg,
            },
        }
    )
    for k in ("spots_outside_image", "dropped_spots", "annotation", "n_genes"):
        new_meta.pop(k, None)
    new_meta["n_genes"] = int(X.shape[1])
    new.uns[UNS_KEY] = new_meta
    new = TableModel.parse(new, region=new_shapes_key, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    logger.info("binned %d bins of %g µm into %d bins of %g µm", n, fine_um, m, size_um)
    if not inplace:
        return shapes, new
    table.obs[Key.obs.bin(label)] = np.asarray(inv, dtype=np.int64)
    sdata.shapes[new_shapes_key] = shapes
    sdata.tables[new_table_key] = new
    return None
