"""``stimage-sd patches``: export fixed-physical-scale training patches."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


def _genes_option(value: str) -> str | list[str]:
    """``intersection``, ``hvg``, a file of gene names (one per line) or ``A,B,C``."""
    if value in ("intersection", "hvg"):
        return value
    p = Path(value)
    if p.is_file():
        genes = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    else:
        genes = [g.strip() for g in value.split(",") if g.strip()]
    if not genes:
        raise typer.BadParameter(f"no gene names in {value!r}", param_hint="--genes")
    return genes


@app.command()
def patches(
    paths: list[Path] = typer.Argument(
        ...,
        help="Converted slides (<slide>.zarr, or folders of them), then the output patch store (last).",
        metavar="STORE... OUT",
    ),
    size_um: float = typer.Option(112.0, "--size-um", help="Patch side in µm (fixed mode)."),
    px: int = typer.Option(224, "--px", help="Patch side in pixels."),
    genes: str = typer.Option(
        "hvg",
        "--genes",
        help="Target panel: 'hvg' (per-slide highly variable genes), 'intersection' (genes common to all slides), "
        "a comma-separated list, or a file with one gene per line.",
    ),
    n_hvg: int = typer.Option(128, "--n-hvg", help="Genes per slide with --genes hvg."),
    target: str = typer.Option("log1p", "--target", help="'log1p' (normalize_total 1e4 + log1p) or 'counts'."),
    native: bool = typer.Option(False, "--native", help="The release's 2r crops (resized to --px) instead of a fixed size."),
    resample: str = typer.Option("bilinear", "--resample", help="Filter: bilinear, bicubic, lanczos, hamming, box, nearest."),
    drop_edge: bool = typer.Option(False, "--drop-edge", help="Drop patches that leave the image (default: pad white and flag)."),
    min_tissue: float = typer.Option(0.1, "--min-tissue", help="Flag patches with a smaller tissue fraction as no_tissue."),
    compression: str = typer.Option("zstd", "--compression", help="Patch codec: zstd (level 1), zstd:LEVEL, lz4 or none."),
    workers: int = typer.Option(0, "--workers", help="Threads cutting patches (0: automatic)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT instead of resuming/appending."),
) -> None:
    """Export one image patch and expression target per spot into a patch store.

    Patches cover --size-um µm at --px pixels on every slide, whatever its technology
    and image resolution. Running the command again on the same OUT resumes an
    interrupted export and appends slides not yet in it.
    """
    from rich.console import Console

    from ..ml import export_patches, read_patch_attrs

    if len(paths) < 2:
        raise typer.BadParameter("give at least one STORE and the OUT path", param_hint="STORE... OUT")
    *stores, out = paths
    export_patches(
        stores,
        out,
        size_um=size_um,
        px=px,
        mode="native" if native else "fixed",
        genes=_genes_option(genes),
        n_hvg=n_hvg,
        target=target,
        resample=resample,
        edge="drop" if drop_edge else "pad",
        min_tissue=min_tissue,
        compression=compression,
        workers=workers or None,
        overwrite=overwrite,
    )
    attrs = read_patch_attrs(out) or {}
    from rich.table import Table

    table = Table(title=f"{attrs.get('n', 0)} patches in {out}")
    for col in ("slide", "tech", "patches", "edge", "no tissue", "dropped", "µm/px", "source px"):
        table.add_column(col, overflow="fold")
    for r in attrs.get("slides", []):
        ump = r.get("um_per_px")
        table.add_row(
            r["slide"],
            str(r.get("tech", "")),
            str(r["stop"] - r["start"]),
            str(r.get("n_edge", "")),
            str(r.get("n_no_tissue", "")),
            str(r.get("n_dropped", "")),
            f"{ump:.3f}" if isinstance(ump, float) else "",
            f"{r.get('source_px', 0):.1f}",
        )
    Console().print(table)
