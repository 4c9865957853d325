"""``stimage-sd validate``: check converted stores against the data contract and the release."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


def _is_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _expand(paths: list[str]) -> list[Path | str]:
    """Stores named on the command line; a folder that is not a store stands for its ``*.zarr``; URLs are kept."""
    from ..io._remote import is_url

    out: list[Path | str] = []
    for item in paths:
        if is_url(item):
            out.append(item)
            continue
        p = Path(item)
        if p.is_dir() and not _is_store(p) and p.suffix != ".zarr":
            found = sorted(q for q in p.glob("*.zarr") if q.is_dir())
            out.extend(found if found else [p])
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def _validate_one(iso, validate_store, path: Path, source: Path | None, checksums: bool):
    from ..io._validate import ValidationReport

    outcome = iso.call(validate_store, path, source=source, checksums=checksums, progress=False)
    if outcome.status == "ok":
        return outcome.value
    report = ValidationReport(path=path, source=source)
    report.add("store", f"validation {outcome.describe()}")
    return report


@app.command()
def validate(
    stores: list[str] = typer.Argument(..., help="Stores (OUT/<slide>.zarr), folders holding them, or store URLs (hf://datasets/<repo>/<slide>.zarr, s3://, https://)."),
    source: Path | None = typer.Option(
        None, "--source", help="Dataset root the stores were converted from: also compare spot ids, "
        "per-spot count totals, every count and gene names with the release files.",
    ),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums", help="Compare the content checksums recorded at conversion (counts, every image level) and, with --source, the SHA-256 of the release files."),
) -> None:
    """Check converted stores: structure, content checksums, elements, links, coordinate systems, marker.

    With --source, also check that spot ids, per-spot count totals, every count, gene
    names and image pixels match the release files. Each store is checked in a worker
    process: damage that crashes native code is reported, never a crash. Prints one line per store and each problem found; the
    exit status is 1 if any store has a problem.
    """
    from rich.console import Console
    from rich.markup import escape

    from .._isolate import Isolated
    from .._logging import track
    from ..io._validate import validate as validate_store

    if source is not None and not source.is_dir():
        raise typer.BadParameter(f"{source} does not exist or is not a folder", param_hint="--source")
    paths = _expand(stores)
    out, err = Console(), Console(stderr=True)
    n_bad = 0
    iso = Isolated()  # a crash in native code on a damaged store is reported, and the others go on
    try:
        for path in track(paths, "validating", total=len(paths)):
            report = _validate_one(iso, validate_store, path, source, checksums)
            if report.ok:
                out.print(f"[green]ok[/]      {escape(str(path))}", soft_wrap=True, highlight=False)
                continue
            n_bad += 1
            err.print(f"[bold red]invalid[/] {escape(str(path))}: {len(report.problems)} problem(s)",
                      soft_wrap=True, highlight=False)
            for p in report.problems:
                err.print(f"  - {escape(str(p))}", soft_wrap=True, highlight=False)
    finally:
        iso.close()
    summary = f"{len(paths) - n_bad} of {len(paths)} store(s) valid"
    if source is not None:
        summary += f" (compared with {source})"
    out.print(summary, soft_wrap=True, highlight=False, markup=False)
    if n_bad:
        raise typer.Exit(1)
