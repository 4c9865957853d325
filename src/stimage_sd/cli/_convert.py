"""``stimage-sd convert`` and ``stimage-sd demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


def _results_table(results, title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("slide", "status", "tech", "spots", "genes", "µm/px", "store / error"):
        table.add_column(col, overflow="fold")
    for r in results:
        i = r.info or {}
        ump = i.get("um_per_px")
        table.add_row(
            r.slide,
            r.status,
            str(i.get("tech") or ""),
            str(i.get("n_spots") or ""),
            str(i.get("n_genes") or ""),
            f"{ump:.3f}" if isinstance(ump, float) else "",
            str(r.path) if r.path else (r.error or ""),
        )
    return table


def _report_failures(results) -> None:
    """Print one unwrapped line per failed slide on stderr and exit 1 if any failed."""
    from rich.console import Console
    from rich.markup import escape

    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return
    err = Console(stderr=True)
    for r in failed:
        err.print(f"[bold red]failed:[/] {escape(r.slide)}: {escape(str(r.error))}", soft_wrap=True, highlight=False)
    err.print(f"{len(failed)} of {len(results)} slide(s) failed", highlight=False)
    raise typer.Exit(1)


@app.command()
def convert(
    root: Path = typer.Argument(..., help="Dataset root in the release layout (ST/, Visium/, VisiumHD/, meta/, annotation/)."),
    out: Path = typer.Argument(..., help="Output folder; each slide becomes OUT/<slide>.zarr."),
    slide: list[str] = typer.Option(None, "--slide", "-s", help="Slide id to convert (repeatable). Default: every slide in ROOT."),
    tech: list[str] = typer.Option(None, "--tech", "-t", help="Only slides of this technology: ST, Visium or VisiumHD (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-convert slides whose store is already complete."),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums", help="Record SHA-256 checksums of the source files."),
) -> None:
    """Convert slides of a local dataset root into SpatialData Zarr stores.

    Slides whose store is already complete are skipped (use --overwrite to redo them).
    A slide that fails is reported and the run goes on; the exit status is 1 if any
    slide failed.
    """
    from rich.console import Console

    from ..io._batch import convert_many, select_slides

    ids = select_slides(root, slide or None, tech or None)
    if not ids:
        raise typer.BadParameter(f"no slides found under {root}", param_hint="ROOT")
    results = convert_many(root, out, ids, overwrite=overwrite, checksums=checksums)
    Console().print(_results_table(results, f"{len(results)} slide(s) → {out}"))
    _report_failures(results)


@app.command()
def demo(
    out: Path = typer.Argument(Path("stimage_demo"), help="Folder for the sample release and its stores."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate the sample and re-convert."),
) -> None:
    """Generate the built-in sample, convert it, and show how to open the result.

    Writes a few small synthetic slides of every technology in the release layout to
    OUT/release, converts them to OUT/stores/<slide>.zarr and prints a summary.
    """
    from rich.console import Console

    from .. import datasets
    from ..io._batch import convert_many

    console = Console()
    release = datasets.sample(out / "release", overwrite=overwrite)
    results = convert_many(release, out / "stores", overwrite=overwrite)
    console.print(_results_table(results, f"STimage-1K4M sample converted to {out / 'stores'}"))
    first = next((r.path for r in results if r.path is not None), None)
    if first is not None:
        console.print(
            "\nOpen a store in Python:\n"
            "    import stimage_sd as ssd\n"
            f"    sdata = ssd.io.read({str(first)!r})\n"
            "    sdata['table']          # AnnData: raw counts, obsm['spatial'], uns['stimage']\n"
            "or with spatialdata directly:  spatialdata.read_zarr(path)\n",
            highlight=False,
            markup=False,
        )
    _report_failures(results)
