"""``stimage-sd view``: open a converted slide in napari-spatialdata."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


@app.command()
def view(
    store: Path = typer.Argument(..., help="A converted slide: OUT/<slide>.zarr."),
    color: str | None = typer.Option(
        None, "--color", "-c",
        help="Colour the spots by a column of table.obs (domain, annotation, total_counts, ...) or a gene.",
    ),
    coordinate_system: str = typer.Option(
        "global", "--coordinate-system", "--cs",
        help="'global' (image pixels) or 'micron' (µm, when a pixel size was estimated).",
    ),
    table: str = typer.Option(
        "table", "--table",
        help="Table whose spots are shown, e.g. table_16um for bins made by 'stimage-sd analyze' or ssd.pp.bin_hd.",
    ),
    layer: str | None = typer.Option(
        None, "--layer", help="For a gene: table layer to read (e.g. counts); default table.X.",
    ),
) -> None:
    """Open a converted slide in napari-spatialdata: the H&E image and the spots.

    Needs the 'viewer' extra of stimage-sd (napari-spatialdata, PyQt6) and a display.
    The napari-spatialdata panels stay available to colour by anything else.
    """
    from ..pl._view import view as _view

    _view(store, color=color, coordinate_system=coordinate_system, table_key=table, layer=layer, block=True)
