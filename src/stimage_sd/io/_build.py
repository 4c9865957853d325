"""Building the SpatialData object of one slide (the data contract of DESIGN.md)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .. import __version__
from .._constants import (
    GEOMETRY,
    IMAGE_KEY,
    INSTANCE_KEY,
    MICRON_CS,
    PIXEL_CS,
    REGION_KEY,
    SHAPES_KEY,
    TABLE_KEY,
    UNS_KEY,
)
from .._logging import logger
from .._utils import sha256_file
from ..errors import FormatError
from ._annotation import _read_annotation
from ._coords import read_coords
from ._counts import read_counts
from ._image import DEFAULT_MAX_PIXELS, read_image
from ._layout import SlideFiles, find_metadata, find_slide
from ._pyramid import DEFAULT_CHUNK as IMAGE_CHUNK
from ._pyramid import DEFAULT_COMPRESSION, multiscale_image, pyramid_levels
from ._pyramid import PYRAMID_MIN_SIDE as PYRAMID_MIN_SIDE  # re-exported
from ._scale import PixelSize, estimate_pixel_size

__all__ = ["build_sdata", "pyramid_levels", "read_slide"]

_MAX_IDS_RECORDED = 1000
#: Spot centres reaching beyond this multiple of the image size mean a scale mismatch
#: (coordinates for a larger image than the one shipped); centres all within this fraction
#: of it, the opposite.
_SCALE_MISMATCH = 1.5
_SCALE_MISMATCH_LOW = 1 / 3


def _metadata_row(root: Path, slide: str) -> dict[str, Any]:
    meta_path = find_metadata(root)
    if meta_path is None:
        return {}
    from ._metadata import read_metadata

    table = read_metadata(meta_path)
    if slide not in table.index:
        return {}
    row = table.loc[slide]
    out: dict[str, Any] = {}
    for k, v in row.items():
        if pd.isna(v):
            continue
        out[str(k)] = v.item() if hasattr(v, "item") else v
    return out


def _transformations(um_per_px: float) -> dict[str, Any]:
    from spatialdata.transformations import Identity, Scale

    tf: dict[str, Any] = {PIXEL_CS: Identity()}
    if np.isfinite(um_per_px) and um_per_px > 0:
        tf[MICRON_CS] = Scale([um_per_px, um_per_px], axes=("y", "x"))
    return tf


def _shapes(xy: np.ndarray, radius: float, shape: str, tf: dict[str, Any]):
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    index = np.arange(len(xy))
    if shape == "circle":
        return ShapesModel.parse(xy, geometry=0, radius=np.full(len(xy), radius), index=index, transformations=tf)
    half = radius
    boxes = shapely.box(xy[:, 0] - half, xy[:, 1] - half, xy[:, 0] + half, xy[:, 1] + half)
    gdf = gpd.GeoDataFrame(geometry=boxes, index=pd.RangeIndex(len(xy)))
    return ShapesModel.parse(gdf, transformations=tf)


def build_sdata(
    *,
    slide: str,
    tech: str,
    coords: pd.DataFrame,
    counts: Any,
    image: Any | None,
    labels: pd.Series | None = None,
    label_column: str | None = None,
    metadata: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    shape: str | None = None,
    counts_path: str = "counts",
    annotation_path: str | None = None,
    annotation_conflicts: dict[str, Any] | None = None,
    image_compression: str | None = DEFAULT_COMPRESSION,
) -> Any:
    """Assemble the SpatialData object of one slide from parsed parts.

    See :func:`read_slide` for the elements and keys produced.

    Parameters
    ----------
    slide
        Slide id, verbatim.
    tech
        ``"ST"``, ``"Visium"`` or ``"VisiumHD"``.
    coords
        Spot centres as :func:`~stimage_sd.io.read_coords` returns them (index spot id,
        columns ``x``, ``y``, ``r``).
    counts
        The :class:`~stimage_sd.io.Counts` of the slide (:func:`~stimage_sd.io.read_counts`);
        rows are joined to ``coords`` on the spot id, spots found in one file only are
        dropped and recorded.
    image
        The H&E image, ``(c, y, x)`` uint8 (:func:`~stimage_sd.io.read_image`), or ``None``
        for shapes and table only.
    labels, label_column
        Annotation labels indexed by spot id and the name of their column, as
        :func:`~stimage_sd.io.read_annotation` returns them; ``None`` when not annotated.
    metadata
        The slide's row of the metadata table (stored in ``uns["stimage"]``; the abstract
        is left out).
    provenance
        Source files (path, size, checksum) by part, stored in ``uns["stimage"]["source"]``.
    shape
        ``"circle"`` or ``"square"``; ``None``: the technology's default.
    counts_path, annotation_path
        Names of the count and annotation files, used in messages and the provenance.
    annotation_conflicts
        Spots the annotation file gives two different labels (columns ``spot``, ``kept``,
        ``dropped``, ``line`` and the count ``n``, as read by :func:`read_slide`); recorded
        in ``uns["stimage"]["annotation"]["conflicts"]``.
    image_compression
        Codec of the image when written (see :func:`read_slide`).

    Returns
    -------
    The slide's :class:`spatialdata.SpatialData`.

    Raises
    ------
    FormatError
        If the count file has no rows, duplicated spot ids, or no spot id in common with
        the coordinate file.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "GSE000001_GSM0000001")
    >>> sdata = ssd.io.build_sdata(
    ...     slide=files.slide, tech=files.tech, coords=ssd.io.read_coords(files.coord),
    ...     counts=ssd.io.read_counts(files.counts), image=None,
    ... )
    """
    import spatialdata as sd
    from spatialdata.models import TableModel

    geom = GEOMETRY[tech]
    shape = shape or geom.shape
    if shape not in ("circle", "square"):
        raise ValueError(f"shape must be 'circle' or 'square', got {shape!r}")

    # --- join coord and count rows on spot id (coord-file order) -------------------
    count_ids = pd.Index(counts.spot_ids)
    if len(count_ids) == 0:
        raise FormatError(counts_path, "count file has no spot rows (header only)", line=2)
    if count_ids.has_duplicates:
        dup = count_ids[count_ids.duplicated()][0]
        line = int(np.flatnonzero(count_ids == dup)[1]) + 2
        raise FormatError(counts_path, "duplicated spot id", line=line, spot=str(dup))
    common_mask = coords.index.isin(count_ids)
    coord_only = coords.index[~common_mask]
    counts_only = count_ids[~count_ids.isin(coords.index)]
    if not common_mask.any():
        raise FormatError(
            counts_path,
            f"no spot id in common with the coordinate file ({len(coords)} coord spots, "
            f"{len(count_ids)} count rows); first count id {count_ids[0] if len(count_ids) else None!r}, "
            f"first coord id {coords.index[0]!r}",
        )
    dropped: dict[str, Any] = {}
    for name, ids in (("coord_only", coord_only), ("counts_only", counts_only)):
        if len(ids):
            dropped[name] = {"n": len(ids), "ids": [str(i) for i in ids[:_MAX_IDS_RECORDED]]}
    if dropped:
        logger.warning(
            "%s: %d spot(s) only in the coord file and %d only in the count file were dropped",
            slide, len(coord_only), len(counts_only),
        )
    kept = coords[common_mask]
    rows = count_ids.get_indexer(kept.index)
    X = counts.X[rows] if not np.array_equal(rows, np.arange(counts.X.shape[0])) else counts.X
    X.sort_indices()

    xy = kept[["x", "y"]].to_numpy(dtype=np.float64)
    radius = float(np.median(coords["r"].to_numpy()))
    scale: PixelSize = estimate_pixel_size(
        coords[["x", "y"]].to_numpy(), radius, tech, spot_ids=coords.index, source=slide
    )
    tf = _transformations(scale.um_per_px)

    # --- table --------------------------------------------------------------------
    n = len(kept)
    obs = pd.DataFrame(index=pd.Index(kept.index.astype(str), name=None))
    obs[REGION_KEY] = pd.Categorical([SHAPES_KEY] * n)
    obs[INSTANCE_KEY] = np.arange(n, dtype=np.int64)
    anno_info: dict[str, Any] | None = None
    if labels is not None:
        matched = labels.reindex(obs.index)
        n_matched = int(matched.notna().sum())
        n_unknown = int((~labels.index.isin(obs.index)).sum())
        anno_info = {
            "file": annotation_path,
            "label_column": label_column,
            "n_labeled": n_matched,
            "n_unmatched_ids": n_unknown,
        }
        if annotation_conflicts:
            anno_info["conflicts"] = annotation_conflicts
        if n_matched == 0:
            logger.warning(
                "%s: annotation file %s matches none of the slide's spots (wrong slide?); ignored",
                slide, annotation_path,
            )
            anno_info["ignored"] = True
        else:
            if n_unknown:
                logger.warning("%s: %d annotated spot id(s) are not in the slide", slide, n_unknown)
            obs["annotation"] = pd.Categorical(matched.astype(object).where(matched.notna(), None))
    genes = np.asarray(counts.genes, dtype=object).astype(str)
    names = pd.Index(genes.copy())
    dup_genes: dict[str, Any] | None = None
    if names.has_duplicates:
        # the same rule as AnnData.var_names_make_unique: "A", "A-1", "A-2", ...
        from anndata.utils import make_index_unique

        repeated = [str(g) for g in names[names.duplicated()].unique()]
        dup_genes = {"n": len(repeated), "names": repeated[:_MAX_IDS_RECORDED]}
        logger.warning(
            "%s: %d duplicated gene name(s) in %s (%s%s) made unique with -1, -2 suffixes; "
            "the original names are in var['gene_name']",
            slide, len(repeated), counts_path, ", ".join(repeated[:5]), ", ..." if len(repeated) > 5 else "",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            names = make_index_unique(names)
    var = pd.DataFrame(index=names)
    var["gene_name"] = genes
    table = ad.AnnData(X=X, obs=obs, var=var)
    table.obsm["spatial"] = xy

    meta: dict[str, Any] = {
        "slide": slide,
        "tech": tech,
        **{k: v for k, v in (metadata or {}).items() if k not in ("slide", "tech", "abstract")},
        "spot_radius_px": radius,
        "spot_shape": shape,
        "pixel_size": scale.to_dict(),
        "um_per_px": scale.um_per_px,
        "n_spots": n,
        "n_genes": int(X.shape[1]),
        "counts_dtype": str(X.dtype),
        "stimage_sd_version": __version__,
    }
    if dropped:
        meta["dropped_spots"] = dropped
    if dup_genes is not None:
        meta["duplicate_genes"] = dup_genes
    if anno_info is not None:
        meta["annotation"] = anno_info
    if provenance:
        meta["source"] = provenance

    # --- image --------------------------------------------------------------------
    images: dict[str, Any] = {}
    if image is not None:
        _, h, w = image.shape
        meta["image_shape"] = [int(h), int(w)]
        _check_extent(slide, xy, radius, h, w, scale, meta)
        # lazy pyramid (2x2 means, see io/_pyramid.py); io.write writes it level by level
        images[IMAGE_KEY] = multiscale_image(
            image,
            transformations=tf,
            n_levels=pyramid_levels(h, w),
            chunk=IMAGE_CHUNK,
            compression=image_compression,
        )

    half_key = "spot_half_side_px"
    if shape == "square":
        meta[half_key] = (
            geom.pitch_um / scale.um_per_px / 2
            if np.isfinite(scale.um_per_px) and scale.um_per_px > 0
            else radius
        )
    table.uns[UNS_KEY] = _jsonable(meta)
    table = TableModel.parse(table, region=SHAPES_KEY, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    # a bin's side is the bin size (the grid pitch), whatever radius the release ships
    shapes = _shapes(xy, meta.get(half_key, radius), shape, tf)
    return sd.SpatialData(
        images=images,
        shapes={SHAPES_KEY: shapes},
        tables={TABLE_KEY: table},
        attrs={UNS_KEY: _jsonable(meta)},
    )


def _check_extent(slide: str, xy: np.ndarray, radius: float, h: int, w: int, scale: PixelSize, meta: dict) -> None:
    """Check spot centres against the image size; record and warn about what does not fit.

    Records in ``meta`` (``uns["stimage"]``):

    - ``spots_outside_image``: number of spot centres outside ``[0, w) x [0, h)``;
    - ``coord_extent_over_image``: ``[max x / w, max y / h]`` of the centres;
    - ``image_scale_mismatch`` (only when detected): ``direction``, ``coord_extent_over_image``
      and ``likely_factor``. ``"image smaller"``: centres reach beyond 1.5x the image
      (e.g. full-resolution coordinates with a downscaled ``hires`` image); the factor is
      the largest extent ratio, a lower bound of the true factor (tissue seldom reaches the
      image border). ``"image larger"``: every centre lies within the top-left third of
      the image (e.g. ``hires`` coordinates with the full-resolution image); the factor is
      the inverse ratio, an upper bound.

    A warning is logged for spots outside the image and for a mismatch.
    """
    if not len(xy) or not h or not w:
        meta["spots_outside_image"] = 0
        return
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    n_out = int(outside.sum())
    meta["spots_outside_image"] = n_out
    ext_xy = [float(xy[:, 0].max() / w), float(xy[:, 1].max() / h)]
    meta["coord_extent_over_image"] = [round(e, 4) for e in ext_xy]
    ext = max(ext_xy)
    mismatch = None
    if ext > _SCALE_MISMATCH:
        mismatch = {"direction": "image smaller", "coord_extent_over_image": round(ext, 4),
                    "likely_factor": round(ext, 2)}
        hint = (f"; centres reach {ext:.2f}x the image size: the image is likely downscaled by "
                f"~{ext:.2f} or more relative to the coordinates (e.g. a hires image with "
                "full-resolution coordinates)")
    elif 0 < ext < _SCALE_MISMATCH_LOW:
        mismatch = {"direction": "image larger", "coord_extent_over_image": round(ext, 4),
                    "likely_factor": round(1 / ext, 2)}
        hint = ""
        logger.warning(
            "%s: every spot centre lies within %.0f %% of the %dx%d image from its origin: the "
            "coordinates may be for an image up to ~%.2fx smaller (e.g. hires coordinates with "
            "the full-resolution image)", slide, 100 * ext, w, h, 1 / ext,
        )
    else:
        hint = ""
    if mismatch is not None:
        meta["image_scale_mismatch"] = mismatch
    if n_out:
        logger.warning("%s: %d of %d spot centres lie outside the %dx%d image%s", slide, n_out, len(xy), w, h, hint)


def _jsonable(value: Any) -> Any:
    """Convert numpy/pandas scalars and containers into JSON-safe Python objects."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_slide(
    root: str | Path,
    slide: str,
    *,
    tech: str | None = None,
    image: bool = True,
    shape: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_compression: str | None = DEFAULT_COMPRESSION,
    checksums: bool = True,
    count_workers: int | None = None,
    progress: bool | None = None,
) -> Any:
    """Read one slide of the release into a SpatialData object.

    Parameters
    ----------
    root
        Dataset root in the release layout (``<tech>/image|coord|gene_exp``,
        ``annotation/``, ``meta/``).
    slide
        Slide id, verbatim.
    tech
        Technology; taken from the metadata table or the folder when ``None``.
    image
        Read the H&E image (``False`` builds shapes and table only).
    shape
        ``"circle"`` or ``"square"``; default circles for ST and Visium, squares for
        VisiumHD bins.
    max_pixels
        Decoding ceiling for PNG/JPEG images (see :func:`stimage_sd.io.read_image`).
    image_compression
        Codec of the image when the slide is written: ``"zstd:1"`` (default), ``"zstd"``
        (level 3), ``"zstd:<level>"``, ``"blosc"``, ``"gzip"`` or ``None`` (see
        :data:`stimage_sd.io._pyramid.COMPRESSIONS`).
    checksums
        Record SHA-256 checksums of the source files in the provenance.
    count_workers
        Parser threads of :func:`stimage_sd.io.read_counts` (default: the usable cores,
        at most 8; a batch gives each single-threaded worker one).
    progress
        Show progress bars (``None``: the global setting).

    Returns
    -------
    :class:`spatialdata.SpatialData` with

    - image ``"he"``: uint8 RGB ``(c, y, x)``, read lazily (TIFF) and multiscale: 2x
      levels of 2x2 means rounded half up (odd trailing row/column dropped) until the
      smallest side is ≤ 1,000 px, chunks 1024² (see :mod:`stimage_sd.io._pyramid`);
      :func:`stimage_sd.io.write` writes it level by level in bounded memory;
    - shapes ``"spots"``: circles with the release radius; for VisiumHD squares whose
      side is the bin size (the 8 µm grid pitch, in pixels; ``shape="circle"`` gives
      circles of the release radius instead), integer index ``0..n-1``;
    - table ``"table"``: raw counts as CSR, stored exactly (``int32``, ``int64``,
      ``float32`` or ``float64``: the narrowest that holds every value, see
      :func:`~stimage_sd.io.read_counts`),
      ``obs`` indexed by spot id with ``region``, ``spot_id`` and ``annotation``
      (when annotated), ``var`` indexed by unique gene names with the original names in
      ``var["gene_name"]``, ``obsm["spatial"]`` pixel centres ``[x, y]``,
      ``uns["stimage"]`` metadata and provenance;
    - coordinate systems ``"global"`` (pixels) and ``"micron"`` (when a pixel size could
      be estimated); ``attrs["stimage"]`` mirrors ``uns["stimage"]``.

    Raises
    ------
    SlideNotFoundError
        If the slide or one of its files is missing.
    FormatError
        If a file is malformed (the message names the file and the line, spot or field).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read_slide(root, "GSE000001_GSM0000001")
    >>> table = sdata["table"]
    >>> path = ssd.io.write(sdata, "GSE000001_GSM0000001.zarr")
    """
    files: SlideFiles = find_slide(root, slide, tech)
    root = Path(root)
    logger.info("reading %s (%s)", slide, files.tech)
    metadata = _metadata_row(root, slide)
    coords = read_coords(files.coord)
    counts = read_counts(files.counts, workers=count_workers, checksum=checksums, progress=progress)
    labels = label_column = conflicts = None
    if files.annotation is not None:
        labels, label_column, conflicts = _read_annotation(files.annotation)
    img = read_image(files.image, max_pixels=max_pixels, chunks=IMAGE_CHUNK) if image else None
    provenance = {}
    for part, p in {**files.required(), **({"annotation": files.annotation} if files.annotation else {})}.items():
        entry: dict[str, Any] = {"file": str(p.relative_to(root)), "size": p.stat().st_size}
        if checksums:  # the count file's was computed while it was parsed
            entry["sha256"] = counts.sha256 if part == "counts" and counts.sha256 else sha256_file(p)
        provenance[part] = entry
    return build_sdata(
        slide=slide,
        tech=files.tech,
        coords=coords,
        counts=counts,
        image=img,
        labels=labels,
        label_column=label_column,
        metadata=metadata,
        provenance=provenance,
        shape=shape,
        counts_path=str(files.counts),
        annotation_path=str(files.annotation.relative_to(root)) if files.annotation else None,
        annotation_conflicts=conflicts,
        image_compression=image_compression,
    )
