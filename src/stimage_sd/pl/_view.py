"""Interactive viewing of a converted slide in napari-spatialdata."""

from __future__ import annotations

import difflib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import (
    IMAGE_KEY,
    INSTANCE_KEY,
    MICRON_CS,
    PIXEL_CS,
    SHAPES_KEY,
    TABLE_KEY,
    UNS_KEY,
)
from .._keys import Key
from .._logging import logger
from ..errors import StimageError

if TYPE_CHECKING:
    from napari_spatialdata import Interactive
    from spatialdata import SpatialData

__all__ = ["view"]

#: Colour of spots without a value (missing category, NaN).
NA_COLOR = (0.5, 0.5, 0.5, 1.0)
_INSTALL_HINT = "install the viewer extra: pip install 'stimage-sd[viewer]'"


def _as_sdata(sdata: SpatialData | str | Path) -> SpatialData:
    if isinstance(sdata, str | Path):
        from ..io._store import read

        return read(sdata)
    return sdata


def _check_coordinate_system(sdata: SpatialData, coordinate_system: str) -> None:
    available = sorted(sdata.coordinate_systems)
    if coordinate_system in available:
        return
    hint = ""
    if coordinate_system == MICRON_CS:
        hint = " (no pixel size could be estimated for this slide, so it has no micron coordinates)"
    raise StimageError(
        f"coordinate system {coordinate_system!r} not in this slide{hint}; "
        f"available: {', '.join(available) or 'none'}"
    )


def _region(sdata: SpatialData, table_key: str) -> str:
    """The shapes element that ``table_key`` annotates (``"spots"`` for the main table)."""
    if table_key not in sdata.tables:
        if table_key == TABLE_KEY and SHAPES_KEY in sdata.shapes:
            return SHAPES_KEY
        raise StimageError(
            f"table {table_key!r} not in the slide; available: {', '.join(sdata.tables) or 'none'}"
        )
    region = sdata[table_key].uns.get("spatialdata_attrs", {}).get("region", SHAPES_KEY)
    region = region[0] if isinstance(region, list | tuple) and len(region) == 1 else region
    if not isinstance(region, str) or region not in sdata.shapes:
        raise StimageError(f"table {table_key!r} does not annotate one shapes element of the slide ({region!r})")
    return region


def _categorical_palette(table: Any, key: str, categories: pd.Index) -> list[str]:
    """Colours of a categorical column: ``uns[f"{key}_colors"]`` if it fits, else scanpy's defaults."""
    stored = table.uns.get(f"{key}_colors") if table is not None else None
    if stored is not None and len(stored) >= len(categories):
        return [str(c) for c in list(stored)[: len(categories)]]
    from scanpy.plotting import palettes

    n = len(categories)
    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(palette):
            return list(palette[:n])
    return [palettes.default_102[i % len(palettes.default_102)] for i in range(n)]


def _values(table: Any, color: str, layer: str | None) -> pd.Series:
    """The values of ``color`` per spot (index = ``spot_id``): an obs column or a gene."""
    obs = table.obs
    if color in obs.columns:
        values = obs[color]
    else:
        if color in table.var_names:
            gene = color
        elif Key.var.gene_name in table.var.columns and (table.var[Key.var.gene_name] == color).any():
            gene = table.var_names[(table.var[Key.var.gene_name] == color).to_numpy()][0]
        else:
            options = [*map(str, obs.columns), *map(str, table.var_names)]
            close = difflib.get_close_matches(color, options, n=5)
            suggestion = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise StimageError(
                f"{color!r} is neither a column of table.obs nor a gene of table.var{suggestion}"
            )
        if layer is not None and layer not in table.layers:
            raise StimageError(
                f"layer {layer!r} not in the table; available: {', '.join(table.layers) or 'none'}"
            )
        column = table[:, gene]
        x = column.X if layer is None else column.layers[layer]
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        values = pd.Series(np.asarray(x, dtype=float).ravel(), index=obs.index, name=color)
    return pd.Series(values.to_numpy(), index=obs[INSTANCE_KEY].to_numpy(), name=color)


def spot_colors(
    sdata: SpatialData,
    color: str,
    *,
    table_key: str = TABLE_KEY,
    layer: str | None = None,
    cmap: str = "viridis",
) -> tuple[pd.Series, np.ndarray]:
    """RGBA colours of the spots for a column of ``table.obs`` or a gene.

    Categorical (and string or boolean) columns use the colours stored in
    ``table.uns[f"{color}_colors"]`` when there are enough of them, else scanpy's default
    palette; numeric columns and genes are mapped through ``cmap`` after min-max scaling.
    Spots without a value are grey.

    Parameters
    ----------
    sdata
        A converted slide (table ``table`` annotating shapes ``spots``).
    color
        Column of ``table.obs`` (e.g. ``"domain"``, ``"annotation"``, ``"total_counts"``)
        or gene (a name of ``table.var_names`` or of ``table.var["gene_name"]``).
    table_key
        The table to read, e.g. ``"table_16um"`` of :func:`stimage_sd.pp.bin_hd`; its
        spots are the shapes it annotates.
    layer
        For a gene: the table layer to read (e.g. ``"counts"``); default ``table.X``.
    cmap
        Matplotlib colormap of numeric values.

    Returns
    -------
    ``(values, rgba)``: the values per spot, indexed like the shapes, and an
    ``(n_spots, 4)`` float array of colours in the same order.

    Raises
    ------
    StimageError
        If ``color`` is neither a column nor a gene, or ``layer`` does not exist.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> sdata = ssd.io.read("stores/GSE000001_GSM0000001.zarr")  # doctest: +SKIP
    >>> from stimage_sd.pl._view import spot_colors
    >>> values, rgba = spot_colors(sdata, "annotation")  # doctest: +SKIP
    >>> rgba.shape  # doctest: +SKIP
    (813, 4)
    """
    import matplotlib
    from matplotlib.colors import to_rgba

    if table_key not in sdata.tables:
        raise StimageError(f"the slide has no table {table_key!r} to colour its spots by")
    table = sdata[table_key]
    by_instance = _values(table, color, layer)
    index = sdata[_region(sdata, table_key)].index
    values = by_instance.reindex(index)
    values.index = index
    n = len(values)
    rgba = np.tile(np.asarray(NA_COLOR, dtype=float), (n, 1))
    source = table.obs[color] if color in table.obs.columns else None
    numeric = source is None or (
        pd.api.types.is_numeric_dtype(source) and not pd.api.types.is_bool_dtype(source)
    )
    if numeric:
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(x)
        if ok.any():
            lo, hi = float(x[ok].min()), float(x[ok].max())
            scaled = (x[ok] - lo) / (hi - lo) if hi > lo else np.full(ok.sum(), 0.5)
            rgba[ok] = matplotlib.colormaps[cmap](scaled)
        return values, rgba
    cats = source.astype("category") if not isinstance(source.dtype, pd.CategoricalDtype) else source
    categories = cats.cat.categories
    palette = dict(zip(categories, _categorical_palette(table, color, categories), strict=True))
    for i, v in enumerate(values.to_numpy()):
        if not pd.isna(v) and v in palette:
            rgba[i] = to_rgba(palette[v])
    return values, rgba


def _check_display() -> None:
    """Refuse clearly where Qt would abort the process: Linux without any display."""
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise StimageError(
            "no display to open napari on (DISPLAY is not set); on a server run it under a "
            "virtual display, e.g. 'xvfb-run -a stimage-sd view STORE', or use ssd.pl.spatial "
            "for static figures"
        )


def _wait_for_layer(viewer: Any, name: str, timeout: float) -> Any:
    """Let napari-spatialdata's loader thread finish adding ``name`` (it loads in a QThread)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while name not in viewer.layers:
        QApplication.processEvents()
        if time.monotonic() > deadline:
            raise StimageError(f"napari-spatialdata did not add the layer {name!r} within {timeout:.0f} s")
        time.sleep(0.01)
    QApplication.processEvents()
    return viewer.layers[name]


def _apply_colors(layer: Any, values: pd.Series, rgba: np.ndarray) -> None:
    """Colour the spots layer; its rows follow ``layer.metadata["indices"]`` (shapes index)."""
    order = pd.Index(values.index).get_indexer(layer.metadata.get("indices", list(values.index)))
    if (order < 0).any():
        raise StimageError("the spots layer holds shapes that are not in the spots element")
    colors = rgba[order]
    features = pd.DataFrame({str(values.name): values.to_numpy()[order]})
    features["index"] = np.asarray(values.index)[order]
    layer.features = features
    layer.face_color = colors
    if type(layer).__name__ == "Shapes":
        layer.edge_color = colors


def view(
    sdata: SpatialData | str | Path,
    color: str | None = None,
    coordinate_system: str = PIXEL_CS,
    *,
    table_key: str = TABLE_KEY,
    layer: str | None = None,
    cmap: str = "viridis",
    block: bool = True,
    timeout: float = 60.0,
) -> Interactive:
    """Open a converted slide in napari-spatialdata.

    Opens a new napari window with the H&E image (``he``) and the spots (``spots``, or
    the shapes that ``table_key`` annotates) in one coordinate system, the spots coloured
    by a column of ``table.obs`` or by a gene when asked (hovering a spot shows its
    value). The napari-spatialdata *SpatialData* and *View* panels stay available for
    everything else.

    Parameters
    ----------
    sdata
        A converted slide, or the path of its ``.zarr`` store (read with
        :func:`stimage_sd.io.read`).
    color
        Column of ``table.obs`` (``"domain"``, ``"annotation"``, a QC metric) or gene name.
        Default: the spots are drawn white.
    coordinate_system
        ``"global"`` (pixels of the released image) or ``"micron"`` (µm, when a pixel size
        was estimated).
    table_key
        The table whose spots are shown: ``"table"`` (the release's spots), or e.g.
        ``"table_16um"`` for the coarse bins of :func:`stimage_sd.pp.bin_hd` (shapes
        ``"spots_16um"``).
    layer
        For a gene: table layer to read (e.g. ``"counts"`` after normalisation);
        default ``table.X``.
    cmap
        Matplotlib colormap of numeric values.
    block
        Run napari's event loop and return when the window is closed. ``False`` returns
        at once with the viewer open (scripts and tests that drive it; Jupyter with
        ``%gui qt``).
    timeout
        Seconds to wait for napari-spatialdata to load each element.

    Returns
    -------
    The :class:`napari_spatialdata.Interactive` session; its ``_viewer`` attribute is the
    :class:`napari.Viewer`.

    Raises
    ------
    StimageError
        If the coordinate system, the table, the column or the gene does not exist, or
        napari-spatialdata is not installed.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.pl.view("stores/GSE000001_GSM0000001.zarr", color="annotation")  # doctest: +SKIP
    >>> ssd.pl.view(sdata, color="Gfap", coordinate_system="micron")  # doctest: +SKIP

    From the command line: ``stimage-sd view STORE --color domain``.
    """
    sdata = _as_sdata(sdata)
    if not sdata.shapes:
        raise StimageError("the slide has no shapes element; is it a converted slide?")
    shapes_key = _region(sdata, table_key)
    _check_coordinate_system(sdata, coordinate_system)
    colors = (
        spot_colors(sdata, color, table_key=table_key, layer=layer, cmap=cmap)
        if color is not None
        else None
    )
    try:
        import napari
        from napari_spatialdata import Interactive
    except ImportError as e:
        raise StimageError(f"napari-spatialdata cannot be imported ({e}); {_INSTALL_HINT}") from e

    if napari.current_viewer() is None:  # no Qt application yet: is there a display?
        _check_display()
    viewer = napari.Viewer(show=True)  # a window of its own (Interactive uses the newest)
    meta = sdata.attrs.get(UNS_KEY, {}) if isinstance(sdata.attrs, dict) else {}
    viewer.title = f"stimage-sd: {meta.get('slide', 'slide')} ({coordinate_system})"
    session = Interactive(sdata, headless=True)
    if IMAGE_KEY in sdata.images:
        session.add_element(IMAGE_KEY, coordinate_system)
        _wait_for_layer(viewer, IMAGE_KEY, timeout)
    session.add_element(shapes_key, coordinate_system)
    spots = _wait_for_layer(viewer, shapes_key, timeout)
    if colors is not None:
        _apply_colors(spots, *colors)
    viewer.layers.selection.active = spots
    viewer.reset_view()
    logger.info("opened %s in napari (%s coordinates)", meta.get("slide", "slide"), coordinate_system)
    if block:
        session.run()
    return session
