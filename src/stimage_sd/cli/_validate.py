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


@app.command()
def validate(
    stores: list[str] = typer.Argument(..., help="Stores (OUT/<slide>.zarr), folders holding them, or store URLs (hf://datasets/<repo>/<slide>.zarr, s3://, https://)."),
    source: Path | None = typer.Option(
        None, "--source", help="Dataset root the stores were converted from: also compare spot ids, "
        "per-spot count totals, every count and gene names with the release files.",
    ),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums", help="With --source, compare SHA-256 checksums of the release files."),
) -> None:
    """Check converted stores: elements, links, coordinate systems, completion marker.

    With --source, also check that spot ids, per-spot count totals, every count and gene
    names match the release files. Prints one line per store and each problem found; the
    exit status is 1 if any store has a problem.
    """
    from rich.console import Console
    from rich.markup import escape

    from .._logging import track
    from ..io._validate import validate as validate_store

    if source is not None and not source.is_dir():
        raise typer.BadParameter(f"{source} does not exist or is not a folder", param_hint="--source")
    paths = _expand(stores)
    out, err = Console(), Console(stderr=True)
    n_bad = 0
    for path in track(paths, "validating", total=len(paths)):
        report = validate_store(path, source=source, checksums=checksums)
        if report.ok:
            out.print(f"[green]ok[/]      {escape(str(path))}", soft_wrap=True, highlight=False)
            continue
        n_bad += 1
        err.print(f"[bold red]invalid[/] {escape(str(path))}: {len(report.problems)} problem(s)", soft_wrap=True, highlight=False)
        for p in report.problems:
            err.print(f"  - {escape(str(p))}", soft_wrap=True, highlight=False)
    summary = f"{len(paths) - n_bad} of {len(paths)} store(s) valid"
    if source is not None:
        summary += f" (compared with {source})"
    out.print(summary, soft_wrap=True, highlight=False, markup=False)
    if n_bad:
        raise typer.Exit(1)
