"""``stimage-sd catalog``, ``stimage-sd split`` and ``stimage-sd download``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import StimageError
from . import app
from ._filters import CatalogFilter, filter_options, parse_bytes

_SOURCE_HELP = (
    "Where the catalogue comes from: a dataset root, a metadata CSV, or 'hub' (the Hugging Face "
    "repository; fetched once, then cached)."
)
_TABLE_COLUMNS = ("tech", "species", "tissue", "spot_num", "annotated", "study", "size_total")
_RESOLUTION_TABLE = ("um_per_px", "magnification", "spot_pitch_px", "image_width", "image_height", "fov_width_mm", "fov_height_mm")


def _load(source: str, revision: str | None = None):
    from ..hub import Catalog

    if source == "hub":
        return Catalog.from_hub(revision=revision)
    return Catalog.load(source)


def _missing(v) -> bool:
    import pandas as pd

    return v is None or (pd.api.types.is_scalar(v) and bool(pd.isna(v)))


def _cell(v) -> str:
    if isinstance(v, float) and not _missing(v):
        return f"{v:.4g}"
    return "" if _missing(v) else str(v)


def _fmt_size(v) -> str:
    from ..hub import format_bytes

    return "" if _missing(v) else format_bytes(int(v))


def _print_table(cat, columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = cat.table
    s = cat.summary()
    size = f", {_fmt_size(s['bytes'])}" if s["bytes"] is not None else ""
    table = Table(title=f"{s['slides']} slide(s), {s['spots']:,} spots, {s['studies']} studies{size}")
    table.add_column("slide", overflow="fold")
    for c in columns:
        table.add_column(c, overflow="fold", justify="right" if c in ("spot_num", "gene_num") or c.startswith("size") else "left")
    for slide, row in t[columns].iterrows():
        cells = [slide]
        for c in columns:
            v = row[c]
            cells.append(_fmt_size(v) if c.startswith("size") else _cell(v))
        table.add_row(*cells)
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _print_summary(cat, fmt: str) -> None:
    s = cat.summary()
    if fmt == "json":
        out = {k: (v.reset_index().to_dict(orient="records") if hasattr(v, "to_dict") else v) for k, v in s.items()}
        typer.echo(json.dumps(out, indent=1, default=_json_default))
        return
    if fmt == "csv":
        typer.echo("group,value,slides,spots,studies,annotated,bytes")
        for key in ("by_tech", "by_species", "by_tissue"):
            for value, row in s[key].iterrows():
                cells = [key[3:], str(value)] + [_cell(row[c]) for c in ("slides", "spots", "studies", "annotated", "bytes")]
                typer.echo(",".join(f'"{c}"' if "," in c else c for c in cells))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    anno = "unknown" if s["annotated"] is None else str(s["annotated"])
    size = _fmt_size(s["bytes"]) or "unknown"
    console.print(
        f"{s['slides']} slide(s), {s['spots']:,} spots, {s['studies']} studies, {anno} annotated, {size}"
        + (f" ({s['bytes_unknown']} slide(s) of unknown size)" if s["bytes_unknown"] and s["bytes"] is not None else "")
    )
    for key in ("by_tech", "by_species", "by_tissue"):
        df = s[key]
        table = Table(title=key.replace("_", " "))
        table.add_column(df.index.name)
        for c in df.columns:
            table.add_column(c, justify="right")
        for value, row in df.iterrows():
            table.add_row(str(value), *[_fmt_size(row[c]) if c == "bytes" else _cell(row[c]) for c in df.columns])
        console.print(table)


def _json_default(o):
    import numpy as np
    import pandas as pd

    if o is pd.NA:
        return None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


@app.command()
@filter_options
def catalog(
    filters: CatalogFilter,
    source: Annotated[str, typer.Option("--source", help=_SOURCE_HELP)] = "hub",
    fmt: Annotated[str, typer.Option("--format", "-f", help="Output format: table, csv or json.")] = "table",
    summary: Annotated[bool, typer.Option("--summary", help="Counts per tech, species and tissue instead of one row per slide.")] = False,
    columns: Annotated[str | None, typer.Option("--columns", help="Comma-separated columns to show (default: a short set for tables, all for csv/json).")] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit (with --source hub).")] = None,
    resolution: Annotated[bool, typer.Option("--resolution", help="Add µm/px, spot pitch, image size, field of view and magnification (10 / µm per px: 0.25 ≈ 40x, 0.5 ≈ 20x). From the hub only the coordinate files and the image headers are fetched; results are cached.")] = False,
) -> None:
    """List slides of the STimage-1K4M catalogue, filtered.

    Examples:
      stimage-sd catalog --species human --tissue brain --tech Visium --annotated

      stimage-sd catalog --resolution --tech Visium --max-um-per-px 0.5

      stimage-sd catalog --source ./release --tech ST --format csv > st.csv

      stimage-sd catalog --summary

    """
    if fmt not in ("table", "csv", "json"):
        raise StimageError(f"--format: unknown format {fmt!r} (table, csv or json)")
    cat = filters.apply(_load(source, revision))
    if resolution and "um_per_px" not in cat.table.columns:
        cat = cat.with_resolution(revision=revision)
    if summary:
        _print_summary(cat, fmt)
        return
    t = cat.table
    if columns:
        cols = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in cols if c not in t.columns]
        if unknown:
            raise StimageError(f"--columns: unknown column(s) {unknown}; columns: {', '.join(t.columns)}")
    else:
        cols = list(_TABLE_COLUMNS) if fmt == "table" else list(t.columns)
        if fmt == "table" and "um_per_px" in t.columns:
            cols = [c for c in cols if c != "study"] + list(_RESOLUTION_TABLE)
    if fmt == "table":
        _print_table(cat, cols)
    elif fmt == "csv":
        sys.stdout.write(t[cols].to_csv())
    else:
        records = [
            {k: None if _missing(v) else v for k, v in rec.items()}
            for rec in t[cols].reset_index().to_dict(orient="records")
        ]
        typer.echo(json.dumps(records, indent=1, default=_json_default))


@app.command()
@filter_options
def split(
    filters: CatalogFilter,
    source: Annotated[str, typer.Option("--source", help=_SOURCE_HELP)] = "hub",
    by: Annotated[str, typer.Option("--by", help="Group that must not straddle splits: study, tissue, species, pmid, slide, or any catalogue column.")] = "study",
    fractions: Annotated[str, typer.Option("--fractions", help="Target fractions, comma-separated (2 -> train,test; 3 -> train,val,test).")] = "0.8,0.1,0.1",
    names: Annotated[str | None, typer.Option("--names", help="Comma-separated split names (default train,val,test or train,test).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same split.")] = 0,
    stratify: Annotated[str | None, typer.Option("--stratify", help="Column to balance across splits, e.g. tech.")] = None,
    weight: Annotated[str, typer.Option("--weight", help="What the fractions count: slides or spots.")] = "slides",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the split here (.csv, .tsv or .json); default: CSV on standard output.")] = None,
) -> None:
    """Split slides into train/val/test with no study (or tissue, ...) on two sides.

    Deterministic for a given seed. The written file feeds 'download'/'convert'
    with --slides-file FILE --split NAME.

    Example:
      stimage-sd split --species human --by study --fractions 0.8,0.1,0.1 --seed 0 -o split.csv

    """
    from rich.console import Console

    try:
        fr = [float(x) for x in fractions.split(",") if x.strip()]
    except ValueError:
        raise StimageError(f"--fractions: not numbers: {fractions!r}") from None
    nm = [x.strip() for x in names.split(",")] if names else None
    cat = filters.apply(_load(source))
    if len(cat) == 0:
        raise StimageError("no slide matches the filters; nothing to split")
    splits = cat.split(by=by, fractions=fr, seed=seed, stratify=stratify, weight=weight, names=nm)
    t = cat.table
    err = Console(stderr=True)
    for name, ids in splits.items():
        groups = t.loc[ids, by].nunique() if by in t.columns else len(ids)
        spots = int(t.loc[ids, "spot_num"].sum()) if ids else 0
        err.print(f"{name}: {len(ids)} slide(s), {groups} {by} group(s), {spots:,} spots")
    if output is not None:
        cat.write_split(output, splits, by=by)
        err.print(f"written to {output}")
    else:
        rows = ["slide,split"] + [f"{s},{name}" if "," not in s else f'"{s}",{name}' for name, ids in splits.items() for s in ids]
        typer.echo("\n".join(rows))


@app.command()
@filter_options
def download(
    root: Annotated[Path, typer.Argument(help="Local dataset root to fill (release layout).")],
    filters: CatalogFilter,
    parts: Annotated[list[str] | None, typer.Option("--parts", "-p", help="Files per slide: image, coord, counts, annotation (repeatable or comma-separated; default all).")] = None,
    all_slides: Annotated[bool, typer.Option("--all", help="Download every slide (about 0.5 TB) when no filter is given.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation, whatever the size.")] = False,
    confirm_above: Annotated[str, typer.Option("--confirm-above", help="Ask for confirmation above this many bytes (e.g. 500MB, 10GiB).")] = "10GiB",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be downloaded.")] = False,
    catalog_source: Annotated[str, typer.Option("--catalog", help="Catalogue used by the filters: 'hub', a dataset root or a metadata CSV.")] = "hub",
    revision: Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check sha256 (or git sha1) of each downloaded file.")] = True,
    workers: Annotated[int, typer.Option("--workers", help="Parallel file transfers.")] = 8,
) -> None:
    """Download the files of the selected slides from Hugging Face into ROOT.

    Only the files of the selected slides are fetched (plus meta/), into the release
    layout. The total size is reported first; above --confirm-above you are asked to
    confirm (--yes skips the question; without a terminal the download stops instead).
    Re-running resumes: complete files are kept. HF_TOKEN, HF_ENDPOINT and
    HF_HUB_OFFLINE are honoured.

    Download, then convert, a filtered subset:

      stimage-sd download ./release --species human --tissue brain --tech Visium --annotated

      stimage-sd convert ./release ./stores --species human --tissue brain --tech Visium --annotated
    """
    from ..hub import DEFAULT_CONFIRM_BYTES, Catalog, format_bytes
    from ..hub import download as _download
    from ..io._layout import PARTS

    threshold = parse_bytes(confirm_above) if confirm_above else DEFAULT_CONFIRM_BYTES
    ids = filters.slide_ids()
    if filters.needs_catalogue:
        cat = Catalog.from_hub(revision=revision) if catalog_source == "hub" else Catalog.load(catalog_source)
        ids = filters.apply(cat).slides
        if not ids:
            raise StimageError("no slide matches the filters; nothing to download")
    elif ids is None:
        if not all_slides:
            raise StimageError(
                "no slides selected: use filters (--species, --tissue, --tech, ...), --slide or "
                "--slides-file, or pass --all to download the whole release (about 0.5 TB)"
            )
        ids = Catalog.from_hub(revision=revision).slides if catalog_source == "hub" else Catalog.load(catalog_source).slides
    part_list = [p.strip() for v in (parts or PARTS) for p in v.split(",") if p.strip()]

    def ask(plan) -> bool:
        if not sys.stdin.isatty():
            raise StimageError(
                f"{format_bytes(plan.bytes_to_fetch)} to download (more than {format_bytes(threshold)}) and no "
                "terminal to ask for confirmation; re-run with --yes, or raise --confirm-above"
            )
        return typer.confirm(f"Download {format_bytes(plan.bytes_to_fetch)} into {plan.root}?", default=False)

    plan = _download(
        ids,
        root,
        parts=part_list,
        revision=revision,
        confirm=True if yes else ask,
        confirm_above=threshold,
        verify=verify,
        dry_run=dry_run,
        max_workers=workers,
    )
    from rich.console import Console

    con = Console(stderr=True)
    if dry_run:
        con.print(f"[dry run] {plan.describe()}")
        for f in plan.to_fetch:
            typer.echo(f"{f.path}\t{f.size}")
        return
    con.print(f"done: {len(plan.slides)} slide(s), {len(plan.files)} file(s), {format_bytes(plan.bytes_total)} in {plan.root}")
    con.print(f"next: stimage-sd convert {plan.root} OUT")
