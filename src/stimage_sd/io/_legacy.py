"""A converted slide as a legacy spatial AnnData (``uns["spatial"]``), for older tools.

Uses spatialdata-io's :func:`spatialdata_io.experimental.to_legacy_anndata`, after
replacing a multiscale H&E image by the pyramid level closest to (and at least) the
2,000-pixel "hires" image that function renders, so that whole-slide images are not
read at full resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._constants import IMAGE_KEY, PIXEL_CS, SHAPES_KEY, TABLE_KEY, UNS_KEY
from ..errors import StimageError

__all__ = ["to_legacy_anndata"]

_HIRES_SIDE = 2000


def _small_level(image: Any) -> Any:
    """A single-scale image: the smallest pyramid level whose longest side is ≥ 2,000 px."""
    from spatialdata.models import Image2DModel
    from xarray import DataTree

    if not isinstance(image, DataTree):
        return image
    levels = [image[k]["image"] for k in sorted(image.keys(), key=lambda k: int(k.removeprefix("scale")))]
    chosen = levels[0]
    for level in levels:
        if max(level.shape[1:]) >= _HIRES_SIDE:
            chosen = level
    return Image2DModel.parse(
        chosen.data, dims=("c", "y", "x"), c_coords=list(chosen.coords["c"].values),
        transformations=dict(chosen.attrs["transform"]),
    )


def to_legacy_anndata(
    sdata: Any,
    *,
    coordinate_system: str = PIXEL_CS,
    include_images: bool = True,
    library_id: str | None = None,
    table_key: str = TABLE_KEY,
) -> Any:
    """Convert a converted slide into a legacy spatial AnnData (scanpy / squidpy plots).

    Parameters
    ----------
    sdata
        A converted slide (:class:`spatialdata.SpatialData`).
    coordinate_system
        ``"global"`` (pixels) or ``"micron"``.
    include_images
        Put a downscaled H&E image (``hires`` ~2,000 px and ``lowres`` 600 px) in
        ``uns["spatial"]``.
    library_id
        Key under ``uns["spatial"]`` (default: the slide id).
    table_key
        Table of the slide.

    Returns
    -------
    A copy of the table with ``obsm["spatial"]`` in the coordinates of the ``hires``
    image (``tissue_hires_scalef = 1``), ``obs["library_id"]`` and
    ``uns["spatial"][library_id]`` with ``images`` and ``scalefactors``
    (``spot_diameter_fullres``), so that ``squidpy.pl.spatial_scatter(adata,
    color=...)`` and ``scanpy.pl.spatial`` draw the spots over the tissue.

    Examples
    --------
    >>> import squidpy as sq
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> adata = ssd.io.to_legacy_anndata(sdata)
    >>> sq.pl.spatial_scatter(adata, color="annotation")  # doctest: +SKIP
    """
    import pandas as pd
    import spatialdata as sd
    from spatialdata_io.experimental import to_legacy_anndata as _to_legacy

    if table_key not in sdata.tables:
        raise StimageError(f"the slide has no table {table_key!r}")
    if coordinate_system not in sdata.coordinate_systems:
        raise StimageError(f"coordinate system {coordinate_system!r} not in the slide ({sdata.coordinate_systems})")
    table = sdata.tables[table_key]
    images = {}
    if include_images and IMAGE_KEY in sdata.images:
        images[IMAGE_KEY] = _small_level(sdata.images[IMAGE_KEY])
    slim = sd.SpatialData(images=images, shapes={SHAPES_KEY: sdata.shapes[SHAPES_KEY]}, tables={table_key: table})
    adata = _to_legacy(
        slim, coordinate_system=coordinate_system, table_name=table_key, include_images=bool(images)
    )
    info = table.uns.get(UNS_KEY, {})
    lib = library_id or str(info.get("slide") or IMAGE_KEY)
    spatial = dict(adata.uns.get("spatial", {}))
    if IMAGE_KEY in spatial and lib != IMAGE_KEY:
        spatial[lib] = spatial.pop(IMAGE_KEY)
    if lib not in spatial:
        radius = sdata.shapes[SHAPES_KEY].get("radius")
        diameter = float(2 * np.median(radius)) if radius is not None else float(2 * info.get("spot_radius_px", 1.0))
        spatial[lib] = {"scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": diameter}}
    adata.uns["spatial"] = spatial
    adata.obs["library_id"] = pd.Categorical([lib] * adata.n_obs)
    return adata
