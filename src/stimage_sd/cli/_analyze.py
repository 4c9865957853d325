"""``stimage-sd analyze``: the per-slide pipeline on many stores, results written back."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import typer

from . import app

SUMMARY_COLUMNS = (
    "slide", "status", "tech", "n_spots", "n_genes", "n_flagged", "n_domains", "ari", "nmi",
    "top_svg", "seconds", "store", "note",
)


def _row(store: Path, summary: dict[str, Any] | None, error: str | None, status: str = "failed") -> dict[str, Any]:
    if summary is None:
        return {"slide": store.name.removesuffix(".zarr"), "status": status, "store": str(store), "note": error}
    skipped = summary.get("skipped") or {}
    if skipped:
        note = f"skipped {', '.join(skipped)}: {next(iter(skipped.values()))}"
    else:
        note = "" if summary.get("ari") is not None else "no annotation: scoring skipped"
    return {
        "slide": summary["slide"],
        "status": "skipped" if skipped else "ok",
        "tech": summary["tech"],
        "n_spots": summary["n_spots"],
        "n_genes": summary["n_genes"],
        "n_flagged": summary["n_flagged"],
        "n_domains": summary["n_domains"],
        "ari": "" if summary["ari"] is None else f"{summary['ari']:.4f}",
        "nmi": "" if summary["nmi"] is None else f"{summary['nmi']:.4f}",
        "top_svg": ";".join(summary["top_svg"]),
        "seconds": f"{summary['seconds'].get('total', 0.0):.1f}",
        "store": summary["store"],
        "note": note,
    }


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..io._transaction import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in SUMMARY_COLUMNS})


@app.command()
def analyze(
    stores: list[Path] = typer.Argument(..., help="Converted stores (<slide>.zarr) to analyse."),
    domains: int | None = typer.Option(None, "--domains", "-k", min=2, help="Number of spatial domains (default: Leiden at --resolution)."),
    report: Path | None = typer.Option(None, "--report", "-r", help="Folder for per-slide figures and summary.csv."),
    seed: int = typer.Option(0, "--seed", help="Random seed of every step."),
    resolution: float = typer.Option(0.5, "--resolution", help="Leiden resolution when --domains is not given."),
    normalize: str = typer.Option("log1p", "--normalize", help="Normalisation: log1p or pearson."),
    filter_spots: bool = typer.Option(False, "--filter/--no-filter", help="Remove QC-flagged spots before the analysis (default: keep them, flagged)."),
    table: str = typer.Option("table", "--table", help="Table element to analyse (e.g. table_16um of a binned VisiumHD store)."),
) -> None:
    """Run QC → normalisation → spatial graph → domains → spatially variable genes on stores.

    Results are written back into each store (the table is replaced crash-safely: an
    interrupted run leaves the previous table, or a store that the next run repairs).
    Annotated slides are scored against their annotation (ARI, NMI). Each store runs in a
    worker process: a store that fails, or crashes in native code, is reported (status
    failed or crashed in summary.csv) and the others go on; a store too small for a step
    (fewer than 10 spots) has that step skipped (status skipped, the reason in the note).
    The exit status is 1 if any store failed or crashed.
    """
    from rich.console import Console
    from rich.table import Table

    from .._logging import logger, track
    from ..workflows import analyze_store

    if normalize not in ("log1p", "pearson"):
        raise typer.BadParameter("must be 'log1p' or 'pearson'", param_hint="--normalize")
    from .._isolate import Isolated

    rows: list[dict[str, Any]] = []
    # each store runs in a worker process: an error or a crash in native code is that
    # store's row of the report, and the other stores go on
    with Isolated() as iso:
        for store in track(stores, f"analysing {len(stores)} store(s)", total=len(stores)):
            out = iso.call(
                analyze_store, store, n_domains=domains, seed=seed, report_dir=report, resolution=resolution,
                normalize_method=normalize, filter_spots=filter_spots, table_key=table,
            )
            if out.status != "ok":
                status = "crashed" if out.status == "crashed" else "failed"
                logger.error("%s: %s", store, out.describe())
                rows.append(_row(store, None, out.describe(), status))
                continue
            row = _row(store, out.value, None)
            if row["note"]:
                logger.info("%s: %s", row["slide"], row["note"])
            rows.append(row)
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        _write_summary(report / "summary.csv", rows)

    out = Table(title=f"{len(rows)} store(s) analysed" + (f"; report in {report}" if report else ""))
    for col in ("slide", "status", "spots", "domains", "ARI", "s", "note / error"):
        out.add_column(col, overflow="fold")
    for r in rows:
        out.add_row(
            str(r.get("slide", "")), r["status"], str(r.get("n_spots", "")), str(r.get("n_domains", "")),
            str(r.get("ari", "")), str(r.get("seconds", "")), str(r.get("note") or ""),
        )
    Console().print(out)
    if any(r["status"] in ("failed", "crashed") for r in rows):
        raise typer.Exit(1)
