"""``stimage-sd benchmark``: embed, linear probing and expression prediction for one encoder."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


@app.command()
def benchmark(
    stores: list[Path] = typer.Argument(..., help="Converted slides (<slide>.zarr, or folders of them).", metavar="STORES..."),
    encoder: str = typer.Option(
        ...,
        "--encoder",
        "-e",
        help="histogram, random-resnet18, random:TIMM_NAME, a timm model name, open_clip:NAME[:TAG], "
        "or the path of a TorchScript model file.",
        metavar="NAME_OR_PATH",
    ),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (results.csv, results.md, results.png)."),
    task: str = typer.Option("probe,expression", "--task", help="Comma-separated: probe, expression."),
    name: str = typer.Option("", "--name", help="Encoder name in the results (default: from --encoder)."),
    mode: str = typer.Option("native", "--mode", help="Patches: 'native' (the release's 2r crops) or 'fixed' (--size-um at --px)."),
    px: int = typer.Option(224, "--px", help="Patch side in pixels."),
    size_um: float = typer.Option(112.0, "--size-um", help="Patch side in µm (--mode fixed)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per forward pass."),
    device: str = typer.Option("", "--device", help="cuda, cpu, ... (default: the GPU if there is one)."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (0: a read-ahead thread)."),
    input_size: int = typer.Option(0, "--input-size", help="Override the encoder's input size (0: its own)."),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Random weights for named models (no download)."),
    genes: int = typer.Option(50, "--genes", help="Expression task: most variable shared genes per tissue."),
    by: str = typer.Option("study", "--by", help="Expression task: fold grouping (catalogue column)."),
    folds: int = typer.Option(5, "--folds", help="Expression task: number of grouped folds."),
    pca: int = typer.Option(0, "--pca", help="Expression task: PCA components before ridge (0: none; HEST uses 256)."),
) -> None:
    """Benchmark one image encoder on converted slides; a second run with another encoder adds its rows.

    Runs embed (kept in a patch store in OUT), then the release's linear probing on each
    annotated slide, then HEST-style expression prediction per tissue, and writes
    OUT/results.csv, OUT/results.md and OUT/results.png.
    """
    from rich.console import Console

    from ..ml import benchmark as run

    tasks = [t.strip() for t in task.split(",") if t.strip()]
    rows = run(
        stores,
        encoder,
        out,
        tasks=tasks,
        name=name or None,
        mode=mode,
        px=px,
        size_um=size_um,
        batch_size=batch_size,
        device=device or None,
        amp=amp,
        workers=workers,
        input_size=input_size or None,
        pretrained=not no_pretrained,
        n_genes=genes,
        by=by,
        folds=folds,
        pca=pca or None,
    )
    console = Console()
    for r in rows.itertuples():
        console.print(f"{r.encoder}  {r.task:<10} {r.dataset:<45} {r.metric} {r.mean:.3f} ± {r.std:.3f}  (n={r.n_spots})")
    console.print(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
