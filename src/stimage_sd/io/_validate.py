"""Checking a converted store against the data contract and, optionally, its release files.

:func:`validate` never raises on a bad store: every check that fails (or cannot be run,
e.g. because an element is missing or unreadable) becomes a :class:`Problem` of the
returned :class:`ValidationReport`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._constants import (
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
from ..errors import StimageError
from ._gene_index import GENE_INDEX

__all__ = ["Problem", "ValidationReport", "validate"]

#: How many spot ids, genes or cells a problem lists before "and N more".
_SHOW = 5
#: Relative tolerance of float comparisons (float32 counts, pixel centres).
_RTOL = 1e-5


@dataclass(frozen=True)
class Problem:
    """One failed check.

    Attributes
    ----------
    check
        What was checked: ``"store"``, ``"marker"``, ``"elements"``, ``"table"``,
        ``"shapes"``, ``"image"``, ``"link"``, ``"coordinates"``, ``"metadata"``,
        ``"scale"``, ``"gene_index"`` or, against
        the release files, ``"source"``, ``"spots"``, ``"genes"``, ``"counts"``.
    message
        What is wrong, naming the spot, gene or element.
    """

    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass
class ValidationReport:
    """The outcome of :func:`validate` for one store.

    Attributes
    ----------
    path
        The store.
    source
        The dataset root it was compared with, if any.
    slide
        The slide id recorded in the store (``None`` if unreadable).
    problems
        Every failed check; empty when the store is valid.
    checks
        Names of the checks that were run.
    """

    path: Path | str
    source: Path | None = None
    slide: str | None = None
    problems: list[Problem] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems

    def add(self, check: str, message: str) -> None:
        """Record a failed check."""
        self.problems.append(Problem(check, message))

    def __str__(self) -> str:
        head = f"{self.path}: {'ok' if self.ok else f'{len(self.problems)} problem(s)'}"
        if self.source is not None:
            head += f" (compared with {self.source})"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

    def raise_if_invalid(self) -> None:
        """Raise :class:`~stimage_sd.StimageError` listing the problems, if any."""
        if self.problems:
            raise StimageError(str(self))


@contextlib.contextmanager
def _guard(report: ValidationReport, check: str) -> Iterator[None]:
    """Run a check; an unexpected exception becomes a problem instead of a crash."""
    report.checks.append(check)
    try:
        yield
    except StimageError as e:  # e.g. a malformed release file: its message names file and line
        report.add(check, str(e))
    except Exception as e:  # a hostile or damaged store may make anything fail
        report.add(check, f"check could not complete: {type(e).__name__}: {e}")


def _listing(items: list[Any], n: int | None = None) -> str:
    n = len(items) if n is None else n
    shown = ", ".join(repr(str(i)) for i in items[:_SHOW])
    return shown + (f" and {n - _SHOW} more" if n > _SHOW else "")


def validate(
    path: str | Path,
    source: str | Path | None = None,
    *,
    checksums: bool = True,
    progress: bool | None = None,
    storage_options: dict | None = None,
) -> ValidationReport:
    """Check a converted slide against the data contract and, optionally, its release files.

    Checks on the store alone:

    - **structure** (first, from the Zarr arrays, before any native code reads them): every
      sparse matrix of every table has an ``indptr`` that starts at 0, never decreases and
      ends at the number of values, indices inside the matrix (strictly increasing within
      each row of the raw counts), and no missing chunk file;
    - **checksums** (``checksums=True``): the content checksums recorded when the store was
      written (:mod:`stimage_sd.io._checksums`): raw counts of each table, each gene index,
      every image level (read one chunk at a time), chunk files present;
    - **gene_index**: the gene index of each table (``gene_index/<table>``, when the store has
      one; :func:`~stimage_sd.io.read_genes`) holds every spot and gene of the table and (with
      ``checksums``) its counts equal the table's raw counts, compared gene block by gene block;
    - **marker**: the completion marker ``attrs["stimage"]["complete"]`` is set;
    - **elements**: image ``"he"`` (when the slide was converted with its image), shapes
      ``"spots"`` and table ``"table"`` exist and pass the SpatialData model validation;
    - **image**: ``uint8``, dims ``(c, y, x)`` with 3 channels, level 0 of the recorded
      ``image_shape``, each level half the previous (floor), the smallest level readable;
    - **shapes**: integer index ``0..n-1``, one per table row, circles of the recorded
      radius (or squares for bins);
    - **link**: the table annotates ``"spots"`` (``region``/``region_key``/``instance_key``),
      every ``obs["spot_id"]`` is a shapes index, shape centres equal ``obsm["spatial"]``;
    - **table**: unique spot ids and gene names, ``var["gene_name"]``, raw counts (``X``,
      or ``layers["counts"]`` after normalisation) CSR, ``int32``/``int64``/``float32``/``float64``, finite,
      non-negative;
    - **coordinates**: ``"global"`` is the identity for image and shapes; ``"micron"``
      scales by the recorded µm/px when one was estimated;
    - **metadata**: ``uns["stimage"]`` agrees with the table (slide, spot and gene counts)
      and with ``attrs["stimage"]``;
    - **scale**: the recorded µm/px agrees within 10 % with the pixel size the store's own
      spot geometry gives (:func:`~stimage_sd.io.estimate_pixel_size` on ``obsm["spatial"]``
      and the recorded radius), unless ``uns["stimage"]["pixel_size"]`` records a reason for
      a value the geometry does not back (decision ``"radius"``, ``"pitch-only"`` or
      ``"none"``). Catches stores converted with the nearest-neighbour estimate, which was
      up to 2.7x off on sparse slides.

    With ``source`` (the dataset root the slide was converted from), also:

    - **source**: the release files still have the recorded sizes (and SHA-256 checksums);
    - **spots**: the store's spot ids are exactly the ids present in both the coordinate and
      count files, in coordinate-file order, and the dropped ids match the record;
    - **genes**: ``var["gene_name"]`` equals the count file's header, in order;
    - **counts**: per-spot count totals, per-gene totals and every cell equal the count file
      (streamed with :func:`~stimage_sd.io.read_counts`); centres equal the coordinate file.
    - **pixels**: level 0 of the image equals the source image, and every further level the
      2x2 mean of the level below, chunk by chunk (differing chunks are named).

    Parameters
    ----------
    path
        A ``.zarr`` store written by :func:`~stimage_sd.io.convert_slide`, or its fsspec URL
        (``hf://``, ``s3://``, ``https://``; the store checks read metadata, table, shapes and
        the smallest image level only: structure, checksums, gene index and pixels are
        checked on local stores).
    source
        Dataset root in the release layout, to compare with.
    checksums
        Check the content checksums recorded in the store, the gene index's counts against the
        table's and, with ``source``, the SHA-256 of the release files (sizes are always
        compared).
    progress
        Progress bar while streaming the count file (``None``: the global setting).
    storage_options
        fsspec options for a URL (see :func:`stimage_sd.io.read`).

    Returns
    -------
    A :class:`ValidationReport`; ``report.ok`` tells whether the store is valid.
    """
    from ._remote import is_url, read_remote, remote_attrs
    from ._transaction import MARKER, store_attrs

    remote = is_url(path)
    if not remote:
        path = Path(path)
    report = ValidationReport(path=path, source=None if source is None else Path(source))
    if remote:
        try:
            attrs = remote_attrs(str(path), storage_options=storage_options)
        except StimageError as e:
            report.add("store", str(e))
            return report
    elif not path.is_dir():
        report.add("store", "no such store (not a folder)")
        return report
    else:
        attrs = store_attrs(path)
    report.checks.append("marker")
    if not attrs:
        report.add("marker", "not a stimage_sd store: no attrs['stimage'] on the root group")
    elif attrs.get(MARKER) is not True:
        if attrs.get("pending_table"):
            report.add("marker", "completion marker missing: an interrupted table replacement (stimage-sd analyze); "
                       "run the analysis again or stimage_sd.io.recover_store to repair it")
        else:
            report.add("marker", "completion marker missing: an interrupted or foreign write; convert the slide again")

    import spatialdata as sd

    # structure first, from the Zarr arrays themselves: native code (scipy) must never see
    # a CSR matrix whose indices point outside it
    damaged: set[str] = set()
    if not remote:  # (a store at a URL: structure, checksums and pixels are checked locally only)
        with _guard(report, "structure"):
            damaged = _check_structure(report, path)
    try:
        sdata = read_remote(str(path), check=False, storage_options=storage_options) if remote else sd.read_zarr(path)
    except Exception as e:
        report.add("store", f"spatialdata cannot read it: {type(e).__name__}: {e}")
        return report

    table = sdata.tables.get(TABLE_KEY)
    shapes = sdata.shapes.get(SHAPES_KEY)
    image = sdata.images.get(IMAGE_KEY)
    meta: dict[str, Any] = {}
    with _guard(report, "elements"):
        if table is None:
            report.add("elements", f"no table {TABLE_KEY!r} (elements: {_element_names(sdata)})")
        else:
            meta = dict(table.uns.get(UNS_KEY, {}) or {})
            if not meta:
                report.add("metadata", f"table.uns[{UNS_KEY!r}] is missing")
        if shapes is None:
            report.add("elements", f"no shapes {SHAPES_KEY!r} (elements: {_element_names(sdata)})")
        if image is None and "image_shape" in meta:
            report.add("elements", f"no image {IMAGE_KEY!r} although the slide was converted with one")
    report.slide = str(meta.get("slide", attrs.get("slide"))) if (meta or attrs) else None

    if table is not None and TABLE_KEY not in damaged:
        with _guard(report, "table"):
            _check_table(report, table, meta)
        with _guard(report, "scale"):
            _check_scale(report, table, meta)
        with _guard(report, "metadata"):
            _check_metadata(report, table, meta, attrs)
    if shapes is not None:
        with _guard(report, "shapes"):
            _check_shapes(report, shapes, meta)
    if table is not None and shapes is not None:
        with _guard(report, "link"):
            _check_link(report, table, shapes)
    if image is not None:
        with _guard(report, "image"):
            _check_image(report, image, meta)
    with _guard(report, "coordinates"):
        _check_coordinates(report, {k: v for k, v in ((IMAGE_KEY, image), (SHAPES_KEY, shapes)) if v is not None}, meta)
    if checksums and not remote:
        with _guard(report, "checksums"):
            _check_checksums(report, path, attrs, sdata, damaged)
    if not remote:
        for key, tbl in sdata.tables.items():
            if (path / GENE_INDEX / key).is_dir() and key not in damaged and f"{GENE_INDEX}/{key}" not in damaged:
                with _guard(report, "gene_index"):
                    _check_gene_index(report, path / GENE_INDEX / key, tbl, key, values=checksums)

    if source is not None and table is not None:
        with _guard(report, "source"):
            _check_source(report, Path(source), table, meta, checksums=checksums, progress=progress,
                          damaged=TABLE_KEY in damaged)
        if image is not None and "image_shape" in meta and not remote:
            with _guard(report, "pixels"):
                _check_pixels(report, Path(source), path, meta, progress=progress)
    logger.debug("validated %s: %d problem(s)", path, len(report.problems))
    return report


def _element_names(sdata: Any) -> str:
    names = [*sdata.images, *sdata.labels, *sdata.points, *sdata.shapes, *sdata.tables]
    return ", ".join(names) or "none"


# --------------------------------------------------------------------------- store alone


def raw_counts(table: Any) -> Any:
    """The raw count matrix of a table: ``layers["counts"]`` if present, else ``X``."""
    return table.layers["counts"] if "counts" in table.layers else table.X


def _check_table(report: ValidationReport, table: Any, meta: dict) -> None:
    import scipy.sparse as sp
    from spatialdata.models import TableModel

    try:
        TableModel().validate(table)
    except Exception as e:
        report.add("table", f"not a valid SpatialData table: {e}")
    attrs = table.uns.get(TableModel.ATTRS_KEY, {}) or {}
    region = attrs.get(TableModel.REGION_KEY)
    region = [region] if isinstance(region, str) else list(np.atleast_1d(region)) if region is not None else []
    if region != [SHAPES_KEY]:
        report.add("link", f"table annotates {region!r}, expected [{SHAPES_KEY!r}]")
    if attrs.get(TableModel.REGION_KEY_KEY) != REGION_KEY:
        report.add("link", f"table region_key is {attrs.get(TableModel.REGION_KEY_KEY)!r}, expected {REGION_KEY!r}")
    if attrs.get(TableModel.INSTANCE_KEY) != INSTANCE_KEY:
        report.add("link", f"table instance_key is {attrs.get(TableModel.INSTANCE_KEY)!r}, expected {INSTANCE_KEY!r}")
    if REGION_KEY in table.obs and not (table.obs[REGION_KEY].astype(str) == SHAPES_KEY).all():
        report.add("link", f"obs[{REGION_KEY!r}] has values other than {SHAPES_KEY!r}")
    if not table.obs_names.is_unique:
        dup = table.obs_names[table.obs_names.duplicated()].unique()
        report.add("table", f"duplicated spot ids in obs_names: {_listing(list(dup))}")
    if not table.var_names.is_unique:
        dup = table.var_names[table.var_names.duplicated()].unique()
        report.add("table", f"duplicated gene names in var_names: {_listing(list(dup))}")
    if "gene_name" not in table.var:
        report.add("table", "var['gene_name'] (the original gene names) is missing")
    X = raw_counts(table)
    where = "layers['counts']" if "counts" in table.layers else "X"
    if not sp.issparse(X) or X.format != "csr":
        report.add("table", f"raw counts ({where}) are {type(X).__name__}, expected a CSR matrix")
        X = sp.csr_matrix(X)
    if X.dtype not in (np.int32, np.int64, np.float32, np.float64):
        report.add("table", f"raw counts ({where}) have dtype {X.dtype}, expected int32, int64, float32 or float64")
    data = X.data
    if data.size:
        bad = ~np.isfinite(data) | (data < 0)
        if bad.any():
            rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[bad]
            spots = table.obs_names[np.unique(rows)]
            report.add("table", f"{int(bad.sum())} negative or non-finite raw count(s), spots {_listing(list(spots))}")
    if "counts_dtype" in meta and str(meta["counts_dtype"]) != str(X.dtype):
        report.add("table", f"raw counts are {X.dtype}, but uns records {meta['counts_dtype']}")
    spatial = table.obsm.get("spatial")
    if spatial is None:
        report.add("table", "obsm['spatial'] (pixel centres) is missing")
    else:
        spatial = np.asarray(spatial)
        if spatial.shape != (table.n_obs, 2):
            report.add("table", f"obsm['spatial'] has shape {spatial.shape}, expected ({table.n_obs}, 2)")
        elif not np.isfinite(spatial).all():
            i = int(np.flatnonzero(~np.isfinite(spatial).all(axis=1))[0])
            report.add("table", f"obsm['spatial'] is not finite for spot {table.obs_names[i]!r}")


#: Recorded decisions that explain a scale the geometry does not back.
_UNBACKED_DECISIONS = ("radius", "pitch-only", "none")


def _check_scale(report: ValidationReport, table: Any, meta: dict) -> None:
    from .._constants import GEOMETRY, SCALE_DISAGREEMENT_WARN
    from ._scale import estimate_pixel_size

    tech = meta.get("tech")
    try:
        ump = float(meta.get("um_per_px"))
    except (TypeError, ValueError):
        return
    spatial = table.obsm.get("spatial")
    if tech not in GEOMETRY or not math.isfinite(ump) or ump <= 0 or spatial is None:
        return
    try:
        radius = float(meta.get("spot_radius_px", "nan"))
    except (TypeError, ValueError):
        radius = float("nan")
    xy = np.asarray(spatial, dtype=np.float64)
    ids = list(table.obs_names) if tech == "ST" else None
    est = estimate_pixel_size(xy, radius, tech, spot_ids=ids, source=str(meta.get("slide", "")), log=False)
    if not (math.isfinite(est.um_per_px) and est.um_per_px > 0):
        return
    off = abs(ump - est.um_per_px) / est.um_per_px
    if off <= SCALE_DISAGREEMENT_WARN:
        return
    rec = meta.get("pixel_size")
    rec = rec if isinstance(rec, dict) else {}
    explained = (
        bool(str(rec.get("reason", "") or "").strip())
        and rec.get("decision") in _UNBACKED_DECISIONS
        and _close(rec.get("um_per_px"), ump)
    )
    if explained:
        return
    report.add(
        "scale",
        f"the micron scale {ump:.4g} µm/px is inconsistent with the store's own spot geometry: "
        f"{est.um_per_px:.4g} µm/px ({100 * off:.0f} % apart; {est.reason}) and no reason is recorded in "
        f"uns[{UNS_KEY!r}]['pixel_size']; convert the slide again",
    )


def _close(a: Any, b: float) -> bool:
    try:
        return math.isclose(float(a), b, rel_tol=1e-6)
    except (TypeError, ValueError):
        return False


def _check_metadata(report: ValidationReport, table: Any, meta: dict, attrs: dict) -> None:
    if not meta:
        return
    for key in ("slide", "tech"):
        if key not in meta:
            report.add("metadata", f"uns[{UNS_KEY!r}] lacks {key!r}")
    if "n_spots" in meta and int(meta["n_spots"]) != table.n_obs:
        report.add("metadata", f"uns records {meta['n_spots']} spots, the table has {table.n_obs}")
    if "n_genes" in meta and int(meta["n_genes"]) != table.n_vars:
        report.add("metadata", f"uns records {meta['n_genes']} genes, the table has {table.n_vars}")
    for key in ("slide", "tech"):
        if attrs and key in meta and key in attrs and str(attrs[key]) != str(meta[key]):
            report.add("metadata", f"attrs[{UNS_KEY!r}][{key!r}] is {attrs[key]!r}, uns has {meta[key]!r}")


def _check_shapes(report: ValidationReport, shapes: Any, meta: dict) -> None:
    from spatialdata.models import ShapesModel

    try:
        ShapesModel().validate(shapes)
    except Exception as e:
        report.add("shapes", f"not valid SpatialData shapes: {e}")
    n = len(shapes)
    if not np.array_equal(np.asarray(shapes.index), np.arange(n)):
        report.add("shapes", f"index is not 0..{n - 1}")
    kind = meta.get("spot_shape")
    geom = set(shapes.geometry.geom_type.unique()) if n else set()
    if kind == "circle":
        if geom - {"Point"} or "radius" not in shapes:
            report.add("shapes", f"expected circles (points with a radius), got {sorted(geom)}")
        elif "spot_radius_px" in meta and n:
            r = shapes["radius"].to_numpy(dtype=float)
            if not np.allclose(r, float(meta["spot_radius_px"]), rtol=_RTOL):
                report.add("shapes", f"radii differ from the recorded spot radius {meta['spot_radius_px']}")
    elif kind == "square" and geom - {"Polygon"}:
        report.add("shapes", f"expected squares (polygons), got {sorted(geom)}")


def _check_link(report: ValidationReport, table: Any, shapes: Any) -> None:
    if INSTANCE_KEY not in table.obs:
        report.add("link", f"obs[{INSTANCE_KEY!r}] is missing")
        return
    ids = table.obs[INSTANCE_KEY].to_numpy()
    if len(ids) != len(shapes):
        report.add("link", f"the table has {len(ids)} rows, shapes {SHAPES_KEY!r} has {len(shapes)}")
    known = pd.Index(shapes.index)
    missing = ~pd.Index(ids).isin(known)
    if missing.any():
        spots = table.obs_names[missing]
        report.add("link", f"obs[{INSTANCE_KEY!r}] refers to no shape for spot(s) {_listing(list(spots), int(missing.sum()))}")
        return
    if pd.Index(ids).has_duplicates:
        report.add("link", f"obs[{INSTANCE_KEY!r}] has duplicated values")
    spatial = table.obsm.get("spatial")
    if spatial is None or len(shapes) == 0:
        return
    geom = shapes.geometry.loc[ids]
    if (geom.geom_type == "Point").all():
        cx, cy = geom.x.to_numpy(), geom.y.to_numpy()
    else:
        c = geom.centroid
        cx, cy = c.x.to_numpy(), c.y.to_numpy()
    xy = np.asarray(spatial, dtype=float)
    scale = max(1.0, float(np.abs(xy).max()) if xy.size else 1.0)
    off = np.hypot(cx - xy[:, 0], cy - xy[:, 1]) > _RTOL * scale
    if off.any():
        spots = table.obs_names[off]
        report.add("link", f"shape centres differ from obsm['spatial'] for spot(s) {_listing(list(spots), int(off.sum()))}")


def _image_levels(image: Any) -> list[Any]:
    """The levels of a single- or multiscale image, full resolution first."""
    from spatialdata import get_pyramid_levels
    from xarray import DataArray

    if isinstance(image, DataArray):
        return [image]
    return list(get_pyramid_levels(image))


def _check_image(report: ValidationReport, image: Any, meta: dict) -> None:
    from spatialdata.models import Image2DModel

    from ._pyramid import PYRAMID_MIN_SIDE, pyramid_levels

    try:
        Image2DModel().validate(image)
    except Exception as e:
        report.add("image", f"not a valid SpatialData image: {e}")
    levels = _image_levels(image)
    level0 = levels[0]
    if tuple(level0.dims) != ("c", "y", "x"):
        report.add("image", f"dims are {tuple(level0.dims)}, expected ('c', 'y', 'x')")
        return
    c, h, w = (int(s) for s in level0.shape)
    if c != 3:
        report.add("image", f"{c} channel(s), expected 3 (RGB)")
    for i, lv in enumerate(levels):
        if lv.dtype != np.uint8:
            report.add("image", f"level {i} has dtype {lv.dtype}, expected uint8")
            break
    shape = meta.get("image_shape")
    if shape is not None and [int(s) for s in shape] != [h, w]:
        report.add("image", f"level 0 is {h}x{w}, uns records image_shape {list(shape)}")
    expected_n = pyramid_levels(h, w)
    if len(levels) != expected_n + 1:
        report.add("image", f"{len(levels)} level(s), expected {expected_n + 1} (halving until the smallest side is <= {PYRAMID_MIN_SIDE})")
    for i in range(1, len(levels)):
        prev, cur = levels[i - 1].shape, levels[i].shape
        if tuple(cur[1:]) != (prev[1] // 2, prev[2] // 2):
            report.add("image", f"level {i} is {cur[1]}x{cur[2]}, expected half of level {i - 1} ({prev[1] // 2}x{prev[2] // 2})")
            break
    smallest = levels[-1]
    try:
        np.asarray(smallest.data.compute() if hasattr(smallest.data, "compute") else smallest.data)
    except Exception as e:
        report.add("image", f"level {len(levels) - 1} cannot be read: {type(e).__name__}: {e}")


def _check_coordinates(report: ValidationReport, elements: dict[str, Any], meta: dict) -> None:
    from spatialdata.transformations import Identity, get_transformation

    ump = meta.get("um_per_px")
    try:
        ump = float(ump) if ump is not None else None
    except (TypeError, ValueError):
        ump = None
    want_micron = ump is not None and math.isfinite(ump) and ump > 0
    for name, el in elements.items():
        tf = get_transformation(el, get_all=True)
        if PIXEL_CS not in tf:
            report.add("coordinates", f"{name!r} is not in the {PIXEL_CS!r} coordinate system")
        elif not isinstance(tf[PIXEL_CS], Identity):
            m = tf[PIXEL_CS].to_affine_matrix(("x", "y"), ("x", "y"))
            if not np.allclose(m, np.eye(3)):
                report.add("coordinates", f"{name!r}: the {PIXEL_CS!r} transformation is not the identity")
        if want_micron:
            if MICRON_CS not in tf:
                report.add("coordinates", f"{name!r} is not in the {MICRON_CS!r} coordinate system (µm/px {ump})")
            else:
                m = tf[MICRON_CS].to_affine_matrix(("x", "y"), ("x", "y"))
                expected = np.diag([ump, ump, 1.0])
                if not np.allclose(m, expected, rtol=1e-9, atol=1e-12):
                    report.add("coordinates", f"{name!r}: the {MICRON_CS!r} transformation is not a scale by {ump} µm/px")


# --------------------------------------------------------------------------- with the release


def _check_source(
    report: ValidationReport, root: Path, table: Any, meta: dict, *, checksums: bool, progress: bool | None,
    damaged: bool = False,
) -> None:
    import scipy.sparse as sp

    from ._coords import read_coords
    from ._counts import read_counts
    from ._layout import find_slide

    slide, tech = meta.get("slide"), meta.get("tech")
    if not slide:
        report.add("source", "the store records no slide id; cannot compare with the release files")
        return
    try:
        files = find_slide(root, str(slide), str(tech) if tech else None)
    except StimageError as e:
        report.add("source", str(e))
        return
    recorded = meta.get("source", {}) or {}
    parts = {"image": files.image, "coord": files.coord, "counts": files.counts}
    if files.annotation is not None:
        parts["annotation"] = files.annotation
    for part, p in parts.items():
        rec = recorded.get(part)
        if not rec:
            continue
        size = p.stat().st_size
        if "size" in rec and int(rec["size"]) != size:
            report.add("source", f"{p}: {size} bytes, but the store was converted from {rec['size']} bytes")
        elif checksums and rec.get("sha256"):
            from .._utils import sha256_file

            if sha256_file(p) != rec["sha256"]:
                report.add("source", f"{p}: SHA-256 differs from the file the store was converted from")

    coords = read_coords(files.coord)
    counts = read_counts(files.counts, progress=progress)
    count_ids = pd.Index(counts.spot_ids)
    expected = coords.index[coords.index.isin(count_ids)]
    got = pd.Index(table.obs_names)
    report.checks.append("spots")
    missing = expected[~expected.isin(got)]
    extra = got[~got.isin(expected)]
    if len(missing):
        report.add("spots", f"{len(missing)} spot id(s) of the release are not in the store: {_listing(list(missing))}")
    if len(extra):
        report.add("spots", f"{len(extra)} spot id(s) of the store are not in both release files: {_listing(list(extra))}")
    if not len(missing) and not len(extra) and not expected.equals(got):
        report.add("spots", "spot ids are not in coordinate-file order")
    dropped = meta.get("dropped_spots", {}) or {}
    n_coord_only = int((~coords.index.isin(count_ids)).sum())
    n_counts_only = int((~count_ids.isin(coords.index)).sum())
    for key, n in (("coord_only", n_coord_only), ("counts_only", n_counts_only)):
        rec_n = int((dropped.get(key) or {}).get("n", 0))
        if rec_n != n:
            report.add("spots", f"uns records {rec_n} dropped {key} spot(s), the release files have {n}")

    report.checks.append("genes")
    names = list(table.var["gene_name"]) if "gene_name" in table.var else list(table.var_names)
    src_genes = [str(g) for g in counts.genes]
    if [str(g) for g in names] != src_genes:
        if len(names) != len(src_genes):
            report.add("genes", f"the store has {len(names)} genes, the count file {len(src_genes)}")
        else:
            i = next(i for i, (a, b) in enumerate(zip(names, src_genes, strict=True)) if str(a) != b)
            report.add("genes", f"gene {i + 1} is {str(names[i])!r} in the store, {src_genes[i]!r} in the count file")
        return

    report.checks.append("counts")
    if damaged:
        report.add("counts", "counts not compared with the count file: the stored count matrix is damaged "
                   "(see the structure problems)")
        return
    common = got[got.isin(count_ids)]
    if not len(common):
        return
    X = raw_counts(table)
    X = X if sp.issparse(X) else sp.csr_matrix(X)
    A = sp.csr_matrix(X[got.get_indexer(common)], dtype=np.float64)
    B = sp.csr_matrix(counts.X[count_ids.get_indexer(common)], dtype=np.float64)
    row_a, row_b = np.asarray(A.sum(axis=1)).ravel(), np.asarray(B.sum(axis=1)).ravel()
    bad = ~np.isclose(row_a, row_b, rtol=1e-9, atol=0)
    if bad.any():
        idx = np.flatnonzero(bad)
        detail = ", ".join(f"{common[i]!r}: store {_num(row_a[i])}, release {_num(row_b[i])}" for i in idx[:_SHOW])
        more = f" and {len(idx) - _SHOW} more" if len(idx) > _SHOW else ""
        report.add("counts", f"per-spot count totals differ for {len(idx)} spot(s): {detail}{more}")
    col_a, col_b = np.asarray(A.sum(axis=0)).ravel(), np.asarray(B.sum(axis=0)).ravel()
    badg = ~np.isclose(col_a, col_b, rtol=1e-9, atol=0)
    if badg.any():
        idx = np.flatnonzero(badg)
        detail = ", ".join(f"{src_genes[j]!r}: store {_num(col_a[j])}, release {_num(col_b[j])}" for j in idx[:_SHOW])
        more = f" and {len(idx) - _SHOW} more" if len(idx) > _SHOW else ""
        report.add("counts", f"per-gene count totals differ for {len(idx)} gene(s): {detail}{more}")
    # both sides hold the file's values exactly (read_counts never rounds): compared exactly
    D = (A - B).tocoo()
    off = D.data != 0
    if off.any():
        order = np.lexsort((D.col[off], D.row[off]))
        rows, cols = D.row[off][order], D.col[off][order]
        cells = ", ".join(
            f"spot {common[r]!r} gene {src_genes[c]!r}: store {_num(A[r, c])}, release {_num(B[r, c])}"
            for r, c in zip(rows[:_SHOW], cols[:_SHOW], strict=True)
        )
        more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
        report.add("counts", f"{len(rows)} count(s) differ from the count file: {cells}{more}")

    spatial = table.obsm.get("spatial")
    if spatial is not None:
        xy = np.asarray(spatial, dtype=float)[got.get_indexer(common)]
        ref = coords.loc[common, ["x", "y"]].to_numpy()
        off = np.hypot(*(xy - ref).T) > _RTOL * max(1.0, float(np.abs(ref).max()))
        if off.any():
            spots = common[off]
            report.add("counts", f"centres differ from the coordinate file for spot(s) {_listing(list(spots), int(off.sum()))}")


# --------------------------------------------------------------------------- structure, checksums, pixels

#: Sparse encodings of AnnData (``encoding-type``) and the axis their ``indptr`` runs over.
_SPARSE = {"csr_matrix": 0, "csc_matrix": 1}
_TABLE_PARTS = ("X", "raw/X", "layers", "obsp", "varp", "obsm", "varm")


def _zattrs(node: Path) -> dict:
    import json

    try:
        meta = json.loads((node / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _sparse_groups(table_dir: Path) -> list[str]:
    """Relative paths of the sparse matrices of an AnnData element (``X``, ``layers/counts``, ...)."""
    out = []
    for part in _TABLE_PARTS:
        node = table_dir / part
        if part in ("X", "raw/X"):
            candidates = [node]
        else:
            candidates = sorted(q for q in node.iterdir() if q.is_dir()) if node.is_dir() else []
        for q in candidates:
            if _zattrs(q).get("attributes", {}).get("encoding-type") in _SPARSE:
                out.append(str(q.relative_to(table_dir)))
    return out


def _chunk_keys(idx: list[tuple[int, ...]]) -> str:
    return _listing(["/".join(map(str, i)) for i in idx], len(idx))


def structure_problems(path: str | Path) -> list[str]:
    """The structure problems of a store's tables (see :func:`validate`); empty when sound.

    Cheap (reads the sparse arrays once, no native code on them): workflows run it before
    handing a store's matrices to scanpy or scipy.
    """
    report = ValidationReport(path=Path(path))
    _check_structure(report, Path(path))
    return [p.message for p in report.problems]


def _check_structure(report: ValidationReport, path: Path) -> set[str]:
    """Check every sparse matrix of every table and gene index from its Zarr arrays; return the damaged ones.

    Runs before anything hands the arrays to native code: ``indptr`` starts at 0, never
    decreases and ends at the number of stored values; ``indices`` lie in the minor
    dimension (and, for the raw counts, increase strictly within a row, as the converter
    writes them); no chunk file of ``data``, ``indices`` or ``indptr`` is missing (Zarr
    reads a missing chunk back as zeros, and a CSR matrix never stores an all-zero chunk).
    """
    tables = path / "tables"
    damaged: set[str] = set()
    index = path / GENE_INDEX
    if index.is_dir():
        for idir in sorted(q for q in index.iterdir() if q.is_dir() and not q.name.startswith(".")):
            problems = _csr_problems(idir / "X", sorted_rows=True) if (idir / "X").is_dir() else ["no matrix X"]
            for msg in problems:
                report.add("structure", f"gene index {idir.name!r} X: {msg}")
            if problems:
                damaged.add(f"{GENE_INDEX}/{idir.name}")
    if not tables.is_dir():
        return damaged
    for tdir in sorted(q for q in tables.iterdir() if q.is_dir() and not q.name.startswith(".")):
        raw = "layers/counts" if (tdir / "layers" / "counts").is_dir() else "X"
        for sub in _sparse_groups(tdir):
            problems = _csr_problems(tdir / sub, sorted_rows=sub == raw)
            for msg in problems:
                report.add("structure", f"table {tdir.name!r} {sub}: {msg}")
            if problems:
                damaged.add(tdir.name)
    return damaged


def _csr_problems(node: Path, *, sorted_rows: bool) -> list[str]:
    import itertools

    import zarr

    from ._checksums import chunk_grid, stored_chunks

    attrs = _zattrs(node).get("attributes", {})
    axis = _SPARSE[attrs["encoding-type"]]
    try:
        shape = [int(v) for v in attrs["shape"]]
        n_major, n_minor = shape[axis], shape[1 - axis]
    except (KeyError, TypeError, ValueError, IndexError):
        return [f"shape attribute {attrs.get('shape')!r} is not two integers"]
    problems: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for part in ("data", "indices", "indptr"):
        adir = node / part
        if not (adir / "zarr.json").is_file():
            problems.append(f"array {part!r} is missing")
            continue
        try:
            arr = zarr.open_array(str(adir), mode="r")
        except Exception as e:
            problems.append(f"array {part!r} cannot be opened: {type(e).__name__}: {e}")
            continue
        found = stored_chunks(adir)
        if found is not None and arr.size:
            grid = chunk_grid(arr.shape, arr.shards or arr.chunks)  # a file per shard when sharded
            absent = sorted(set(itertools.product(*(range(n) for n in grid))) - found)
            if absent:
                problems.append(f"{len(absent)} of {int(np.prod(grid))} chunk file(s) of {part!r} missing on disk "
                                f"(chunk {_chunk_keys(absent)}); Zarr would read them back as zeros")
        try:
            arrays[part] = np.asarray(arr[...])
        except Exception as e:
            problems.append(f"array {part!r} cannot be decoded: {type(e).__name__}: {e}")
    if len(arrays) < 3:
        return problems
    data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
    if indptr.ndim != 1 or indices.ndim != 1 or data.ndim != 1:
        return [*problems, "data, indices and indptr must be one-dimensional"]
    if not np.issubdtype(indptr.dtype, np.integer) or not np.issubdtype(indices.dtype, np.integer):
        return [*problems, f"indptr/indices have dtypes {indptr.dtype}/{indices.dtype}, expected integers"]
    if len(indptr) != n_major + 1:
        return [*problems, f"indptr has {len(indptr)} entries, expected {n_major + 1} (shape {shape})"]
    if len(indices) != len(data):
        problems.append(f"{len(indices)} indices but {len(data)} values")
    ip = indptr.astype(np.int64)
    if ip[0] != 0:
        problems.append(f"indptr starts at {ip[0]}, expected 0")
    dec = np.flatnonzero(np.diff(ip) < 0)
    if dec.size:
        problems.append(f"indptr decreases at {dec.size} row(s) (first: row {int(dec[0])})")
    if ip[-1] != len(indices):
        problems.append(f"indptr ends at {ip[-1]}, but {len(indices)} values are stored")
    if indices.size:
        bad = (indices < 0) | (indices >= n_minor)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            problems.append(f"{int(bad.sum())} index(es) outside 0..{n_minor - 1} (first: {int(indices[i])} at "
                            f"position {i})")
        elif sorted_rows and not dec.size and ip[0] == 0 and ip[-1] == len(indices):
            step = np.diff(indices.astype(np.int64)) > 0
            starts = ip[1:-1]
            starts = starts[(starts > 0) & (starts < len(indices))]
            step[starts - 1] = True  # a new row may start anywhere
            if not step.all():
                pos = int(np.flatnonzero(~step)[0]) + 1
                row = int(np.searchsorted(ip, pos, side="right")) - 1
                major = "row" if axis == 0 else "column"
                problems.append(f"indices are not strictly increasing within {major} {row} (position {pos}): "
                                "duplicated or unsorted entries")
    return problems


def _check_checksums(report: ValidationReport, path: Path, attrs: dict, sdata: Any, damaged: set[str]) -> None:
    """Compare the content checksums recorded at conversion (:mod:`stimage_sd.io._checksums`)."""
    import itertools

    import zarr

    from .._logging import progress_bar
    from ._checksums import (
        CHECKSUM_KEY,
        SCHEME,
        SparseDigest,
        chunk_grid,
        csr_digest,
        level_digest,
        stored_chunks,
    )

    rec = attrs.get(CHECKSUM_KEY)
    if rec is None:
        logger.info("%s: no content checksums recorded (converted before stimage_sd recorded them)", path)
        return
    if not isinstance(rec, dict) or rec.get("scheme") != SCHEME:
        report.add("checksums", f"unknown checksum record (scheme {rec.get('scheme') if isinstance(rec, dict) else rec!r})")
        return
    for key, entry in (rec.get("tables") or {}).items():
        table = sdata.tables.get(key)
        if table is None:
            report.add("checksums", f"table {key!r} has recorded checksums but is missing")
            continue
        loc = "layers/counts" if "counts" in table.layers else "X"
        if loc != entry.get("location"):
            report.add("checksums", f"table {key!r}: raw counts are in {loc}, recorded in {entry.get('location')}")
            continue
        if key in damaged:
            continue  # the structure problems say what is wrong
        for part, n in (entry.get("chunks") or {}).items():
            found = stored_chunks(path / "tables" / key / loc / part)
            if found is not None and len(found) < int(n):
                report.add("checksums", f"table {key!r} {loc}/{part}: {int(n) - len(found)} chunk file(s) missing "
                           f"(written {n}, found {len(found)})")
        X = table.layers["counts"] if loc != "X" else table.X
        if csr_digest(X) != entry.get("digest"):
            report.add("checksums", f"table {key!r}: raw counts ({loc}) differ from those written "
                       "(checksum of the decoded matrix; changed bytes on disk?)")
    for key, entry in (rec.get("gene_index") or {}).items():
        idir = path / GENE_INDEX / key
        if not (idir / "X").is_dir():
            report.add("checksums", f"gene index {key!r} has recorded checksums but is missing "
                       "(convert the slide again, or read_genes reads the whole table)")
            continue
        if f"{GENE_INDEX}/{key}" in damaged:
            continue
        for part, n in (entry.get("chunks") or {}).items():
            found = stored_chunks(idir / "X" / part)
            if found is not None and len(found) < int(n):
                report.add("checksums", f"gene index {key!r} X/{part}: {int(n) - len(found)} shard file(s) missing "
                           f"(written {n}, found {len(found)})")
        try:
            digest = SparseDigest.of_group(zarr.open_group(str(idir / "X"), mode="r"))
        except Exception as e:  # a chunk's CRC-32C or codec failed: damaged bytes
            report.add("checksums", f"gene index {key!r}: cannot be decoded ({type(e).__name__}: {e})")
            continue
        if digest != entry.get("digest"):
            report.add("checksums", f"gene index {key!r}: counts differ from those written "
                       "(checksum of the decoded matrix; changed bytes on disk?)")
    for name, levels in (rec.get("images") or {}).items():
        for level, entry in sorted((levels or {}).items()):
            adir = path / "images" / name / level
            try:
                arr = zarr.open_array(str(adir), mode="r")
            except Exception as e:
                report.add("checksums", f"image {name!r} level {level}: cannot be opened: {type(e).__name__}: {e}")
                continue
            found = stored_chunks(adir)
            if found is not None and len(found) < int(entry.get("chunks", 0)):
                grid = chunk_grid(arr.shape, arr.chunks)
                absent = sorted(set(itertools.product(*(range(n) for n in grid))) - found)
                report.add("checksums", f"image {name!r} level {level}: {int(entry['chunks']) - len(found)} chunk "
                           f"file(s) missing (written {entry['chunks']}, found {len(found)}; absent: chunk "
                           f"{_chunk_keys([i[1:] for i in absent])} — absent chunks read back as black)")
            n = int(np.prod(chunk_grid(arr.shape, arr.chunks)))
            with progress_bar(f"checksums {name}/{level}", n) as advance:
                digest, broken = level_digest(arr, advance=advance)
            if broken:
                report.add("checksums", f"image {name!r} level {level}: {len(broken)} chunk(s) cannot be decoded "
                           f"(chunk {_chunk_keys([i[1:] for i in broken])})")
            elif digest != entry.get("digest"):
                report.add("checksums", f"image {name!r} level {level}: pixels differ from those written "
                           "(checksums of the decoded chunks; changed or missing chunk files)")


def _check_gene_index(report: ValidationReport, index_dir: Path, table: Any, key: str, *, values: bool) -> None:
    """The gene index covers the table's spots and genes and (``values``) holds the same raw counts.

    Compared gene block by gene block (bounded memory), against the raw counts in memory.
    """
    import scipy.sparse as sp
    import zarr
    from anndata.io import read_elem, sparse_dataset

    from ._gene_index import WRITE_BLOCK

    group = zarr.open_group(str(index_dir), mode="r")
    spots, genes = read_elem(group["obs"]).index, read_elem(group["var"]).index
    rows, cols = spots.get_indexer(table.obs_names), genes.get_indexer(table.var_names)
    what = f"gene index {key!r}"
    if (rows < 0).any():
        report.add("gene_index", f"{what}: {int((rows < 0).sum())} spot(s) of the table are not in it: "
                   f"{_listing(list(table.obs_names[rows < 0]))}; read_genes reads the whole table")
    if (cols < 0).any():
        report.add("gene_index", f"{what}: {int((cols < 0).sum())} gene(s) of the table are not in it: "
                   f"{_listing(list(table.var_names[cols < 0]))}; read_genes reads the whole table")
    if (rows < 0).any() or (cols < 0).any() or not values:
        return
    R = raw_counts(table)
    if not sp.issparse(R):
        return  # the table check says what is wrong
    R = R.tocsr()
    ds = sparse_dataset(group["X"])
    if tuple(ds.shape) != (len(spots), len(genes)):
        report.add("gene_index", f"{what}: X is {tuple(ds.shape)}, its obs/var {len(spots)} x {len(genes)}")
        return
    indptr = np.asarray(group["X/indptr"][...], dtype=np.int64)
    per_gene = np.diff(indptr)[cols]
    bad: list[str] = []
    n_bad = n_values = 0
    j0 = 0
    while j0 < len(cols):
        j1 = int(np.searchsorted(np.cumsum(per_gene[j0:]), WRITE_BLOCK, side="right")) + j0
        j1 = min(len(cols), max(j1, j0 + 1))
        block = cols[j0:j1]
        mask = np.zeros(len(genes), dtype=bool)
        mask[block] = True
        got = ds[:, mask]
        got = got[:, np.searchsorted(np.flatnonzero(mask), block)][rows, :].tocsc()
        want = R[:, j0:j1].tocsc()
        diff = abs(got.astype(np.float64) - want.astype(np.float64)).tocsc()
        diff.eliminate_zeros()
        if diff.nnz:
            per = np.diff(diff.indptr)
            bad += [str(g) for g in table.var_names[j0:j1][per > 0]]
            n_bad += int((per > 0).sum())
            n_values += int(diff.nnz)
        j0 = j1
    if n_bad:
        report.add("gene_index", f"{what}: counts of {n_bad} gene(s) differ from the table's raw counts "
                   f"({n_values} value(s)): {_listing(bad, n_bad)}")


def _check_pixels(report: ValidationReport, root: Path, path: Path, meta: dict, *, progress: bool | None) -> None:
    """Compare the image with the source, chunk by chunk (a few chunks in memory).

    Level 0 must equal the source image; every further level the documented 2x2 mean of the
    level below.
    """
    import dask.array as da
    import zarr

    from ._image import DEFAULT_MAX_PIXELS, read_image
    from ._layout import find_slide
    from ._pyramid import _local_scheduler, downsample

    files = find_slide(root, str(meta.get("slide")), str(meta.get("tech")) if meta.get("tech") else None)
    group = path / "images" / IMAGE_KEY
    levels = sorted((q for q in group.iterdir() if q.is_dir() and q.name[:1] == "s" and q.name[1:].isdigit()),
                    key=lambda q: int(q.name[1:]))
    if not levels:
        report.add("pixels", f"image {IMAGE_KEY!r} has no level arrays")
        return
    arrays = [zarr.open_array(str(q), mode="r") for q in levels]
    chunks = tuple(arrays[0].chunks)
    src = read_image(files.image, max_pixels=DEFAULT_MAX_PIXELS, chunks=chunks[-1])
    if tuple(src.shape) != tuple(arrays[0].shape):
        report.add("pixels", f"the source image {files.image} is {tuple(src.shape)}, level 0 {tuple(arrays[0].shape)}")
        return
    for k, arr in enumerate(arrays):
        stored = da.from_zarr(arr, chunks=arr.chunks)
        if k == 0:
            expected, what = src.rechunk(arr.chunks), f"the source image {files.image}"
        else:
            prev = da.from_zarr(arrays[k - 1], chunks=arrays[k - 1].chunks)
            expected, what = downsample(prev, arr.chunks[-1]).rechunk(arr.chunks), f"the 2x2 mean of level {k - 1}"
        if tuple(expected.shape) != tuple(arr.shape):
            report.add("pixels", f"level {k} is {tuple(arr.shape)}, expected {tuple(expected.shape)}")
            continue
        diff = (stored != expected).any(axis=0)
        per_chunk = diff.map_blocks(lambda b: np.array([[int(b.sum())]]), chunks=tuple((1,) * len(c) for c in diff.chunks),
                                    dtype=np.int64)
        counts = np.asarray(per_chunk.compute(scheduler=_local_scheduler()))
        if counts.any():
            bad = [tuple(int(v) for v in i) for i in np.argwhere(counts)]
            report.add("pixels", f"level {k}: {int(counts.sum())} pixel(s) differ from {what}, in {len(bad)} chunk(s) "
                       f"(chunk {_chunk_keys(bad)})")


def _num(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:.6g}"
