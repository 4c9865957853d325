"""Spots coloured by an ``obs`` column or a gene, over the H&E image (spatialdata-plot)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import IMAGE_KEY, MICRON_CS, PIXEL_CS, SHAPES_KEY, TABLE_KEY
from .._logging import logger
from ..errors import StimageError
from ..pp._utils import get_table, slide_info

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["spatial"]


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def spatial(
    sdata: SpatialData,
    color: str | None = None,
    *,
    coordinate_system: str = PIXEL_CS,
    image: bool = True,
    layer: str | None = None,
    gene_symbols: str | None = None,
    cmap: str | None = None,
    fill_alpha: float = 0.8,
    scalebar: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 6.0),
    dpi: int = 110,
    save: str | Path | None = None,
    ax: Any = None,
    table_key: str = TABLE_KEY,
) -> Any:
    """Draw the slide's spots coloured by ``color`` over the H&E image.

    Parameters
    ----------
    sdata
        A converted slide (:class:`spatialdata.SpatialData`).
    color
        An ``obs`` column (``"domain"``, ``"total_counts"``, ``"annotation"``...) or a
        gene (``var_names``, or ``var[gene_symbols]``); ``None`` draws the spots only.
    coordinate_system
        ``"global"`` (pixels of the released image) or ``"micron"``.
    image
        Draw the H&E image under the spots.
    layer
        Table layer for gene values (default ``X``, normalised when
        :func:`stimage_sd.pp.normalize` has run).
    gene_symbols
        ``var`` column holding the gene names ``color`` refers to.
    cmap
        Colormap for continuous values.
    fill_alpha
        Opacity of the spots.
    scalebar
        Draw a scale bar (µm) when the pixel size is known.
    title
        Panel title (default: slide id and ``color``).
    figsize, dpi
        Figure size (inches) and resolution.
    save
        Write the figure to this file (PNG, PDF, SVG... by extension) and close it.
    ax
        Draw into these axes instead of a new figure.
    table_key
        Table of the slide; its spots are the shapes it annotates (``"spots"``, or e.g.
        ``"spots_16um"`` for ``"table_16um"`` of :func:`stimage_sd.pp.bin_hd`).

    Returns
    -------
    The :class:`matplotlib.axes.Axes` (``None`` when ``save`` is given).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> ax = ssd.pl.spatial(sdata, color="annotation")
    >>> summary = ssd.tl.run_pipeline(sdata, n_domains=3)
    >>> ssd.pl.spatial(sdata, color="domain", coordinate_system="micron", save="domains.png")
    """
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)

    if coordinate_system not in sdata.coordinate_systems:
        raise StimageError(
            f"coordinate system {coordinate_system!r} not in the slide (has {sdata.coordinate_systems})"
        )
    adata = get_table(sdata, table_key)
    info = slide_info(adata)
    if color is not None and color not in adata.obs and color not in adata.var_names and not (
        gene_symbols and color in set(adata.var[gene_symbols].astype(str))
    ):
        raise KeyError(f"{color!r} is neither an obs column nor a gene of the table")
    region = adata.uns.get("spatialdata_attrs", {}).get("region", SHAPES_KEY)
    region = region[0] if isinstance(region, list | tuple | np.ndarray) else str(region)
    elements = [region] + ([IMAGE_KEY] if image and IMAGE_KEY in sdata.images else [])
    sub = sdata.subset(elements, filter_tables=True)
    um_per_px = float(info.get("um_per_px", np.nan)) if info.get("um_per_px") is not None else np.nan
    try:
        um_per_px = float(um_per_px)
    except (TypeError, ValueError):
        um_per_px = np.nan
    if scalebar:
        dx = 1.0 if coordinate_system == MICRON_CS else um_per_px
        if not np.isfinite(dx) or dx <= 0:
            logger.info("pixel size unknown: no scale bar")
            dx = None
    else:
        dx = None

    own_fig = ax is None
    if own_fig:
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    else:
        fig = ax.figure
    chain = sub.pl
    if IMAGE_KEY in elements:
        chain = chain.render_images(IMAGE_KEY).pl
    shape_kw: dict[str, Any] = {"fill_alpha": fill_alpha}
    if color is not None:
        shape_kw.update(color=color, table_name=table_key)
        if layer is not None:
            shape_kw["table_layer"] = layer
        if gene_symbols is not None:
            shape_kw["gene_symbols"] = gene_symbols
        if cmap is not None:
            shape_kw["cmap"] = cmap
    chain = chain.render_shapes(region, **shape_kw)
    slide = info.get("slide", "")
    chain.pl.show(
        coordinate_systems=coordinate_system,
        ax=ax,
        title=title if title is not None else f"{slide}  {color or ''}".strip(),
        scalebar_dx=dx,
        scalebar_units="um",
        scalebar_params={"location": "lower right", "box_alpha": 0.6} if dx else None,
        show=False,
    )
    ax.set_xlabel("x (µm)" if coordinate_system == MICRON_CS else "x (px)")
    ax.set_ylabel("y (µm)" if coordinate_system == MICRON_CS else "y (px)")
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=dpi, bbox_inches="tight")
        if own_fig:
            _close(fig)
        return None
    return ax
