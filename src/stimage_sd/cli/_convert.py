"""``stimage-sd convert`` and ``stimage-sd demo``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from . import app
from ._filters import CatalogFilter, filter_options, slide_args


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
@filter_options
def convert(
    root: Path = typer.Argument(..., help="Dataset root in the release layout (ST/, Visium/, VisiumHD/, meta/, annotation/)."),
    out: Path = typer.Argument(..., help="Output folder; each slide becomes OUT/<slide>.zarr."),
    slide: list[str] = typer.Option(None, "--slide", "-s", help="Slide id to convert (repeatable). Default: every slide in ROOT."),
    tech: list[str] = typer.Option(None, "--tech", "-t", help="Only slides of this technology: ST, Visium or VisiumHD (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-convert slides whose store is already complete."),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums", help="Record SHA-256 checksums of the source files."),
    gene_index: bool = typer.Option(
        True, "--gene-index/--no-gene-index",
        help="Write the gene index (a gene-major copy of the raw counts: reading a few genes, e.g. from the Hub, "
        "then skips the table's matrix; about as many bytes again as the counts).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", min=0,
        help="Worker processes of a local dask cluster. Default: one per CPU core (at most one per slide; "
        "small runs stay in this process). 0: convert in this process, one slide after another.",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler",
        help="Address of a running dask scheduler (tcp://host:8786) or its scheduler file (.json), e.g. a "
        "SLURM or Kubernetes dask cluster, instead of a local cluster. Workers must see ROOT and OUT.",
    ),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit",
        help="Memory limit per local worker, e.g. 8GB (default: the machine's available memory, so one "
        "large slide may use it all; slides run together only while their estimated peaks fit).",
    ),
    threads_per_worker: int | None = typer.Option(
        None, "--threads-per-worker", min=1,
        help="Threads one slide's conversion may use on a worker. Default: the cores divided among the "
        "local workers (1 with a worker per core); 1 on an existing cluster (--scheduler).",
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Convert only the slides recorded as failed in OUT/manifest.json."),
    filters: CatalogFilter | None = None,
) -> None:
    """Convert slides of a local dataset root into SpatialData Zarr stores.

    One dask task per slide, on a local cluster (--workers) or an existing one
    (--scheduler); larger slides first, and never more at once than the memory allows.
    Slides whose store is already complete are skipped (use --overwrite to redo them), so
    a killed run restarted converts only what is left. Every outcome is recorded in
    OUT/manifest.json as it happens. A slide that fails is reported and the run goes on;
    the exit status is 1 if any slide failed (--retry-failed then redoes just those).
    """
    from ..batch import convert_many, select_slides


    named = (filters.slide if filters else None) or slide
    known = _known_ids(root) if named else None
    ids = select_slides(
        root, filters.slide_ids(known) if filters else (slide_args(slide, known) if slide else None), tech or None
    )
    if filters is not None and set(filters.catalogue_kwargs()) - {"tech"}:
        # catalogue filters (--species, --annotated, ...): need ROOT's metadata table
        from ..hub import Catalog

        keep = set(filters.apply(Catalog.from_root(root)).slides)
        ids = [s for s in ids if s in keep]
    if not ids:
        raise typer.BadParameter(f"no slides found under {root}", param_hint="ROOT")
    if scheduler is not None and (workers is not None or memory_limit is not None):
        raise typer.BadParameter("--scheduler runs on an existing cluster: drop --workers/--memory-limit", param_hint="--scheduler")
    t0 = time.perf_counter()
    results = convert_many(
        root, out, ids, workers=workers, scheduler=scheduler, memory_limit=memory_limit,
        threads_per_worker=threads_per_worker, overwrite=overwrite, retry_failed=retry_failed, checksums=checksums,
        gene_index=gene_index,
    )
    _print_batch_summary(results, out, time.perf_counter() - t0, retry_failed=retry_failed)
    _report_failures(results)


def _print_batch_summary(results, out: Path, seconds: float, *, retry_failed: bool = False) -> None:
    """Results table (unless --quiet or many slides) and a one-line summary on stdout."""
    import logging

    from rich.console import Console

    from ..batch import MANIFEST_NAME

    quiet = logging.getLogger("stimage_sd").getEffectiveLevel() > logging.INFO  # --quiet
    console = Console()
    if not results:
        console.print("no failed slides to retry" if retry_failed else "no slides to convert", highlight=False)
        return
    if not quiet and len(results) <= 50:
        console.print(_results_table(results, f"{len(results)} slide(s) → {out}"))
    n = {s: sum(r.status == s for r in results) for s in ("converted", "skipped", "failed")}
    console.print(
        f"{n['converted']} converted, {n['skipped']} skipped, {n['failed']} failed of {len(results)} slide(s) "
        f"in {seconds:.1f} s; manifest: {out / MANIFEST_NAME}",
        highlight=False, soft_wrap=True,
    )


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
    from ..batch import convert_many

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


def _known_ids(root: Path) -> set[str]:
    """Slide ids of ROOT (on disk and in its metadata table), for verbatim ``--slide`` matches."""
    from ..io import find_metadata, list_slides

    ids = set(list_slides(root))
    meta = find_metadata(root)
    if meta is not None:
        from ..io._metadata import read_metadata

        ids |= set(read_metadata(meta).index)
    return ids
