"""``stimage-sd cohort``: one table over many converted slides."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


@app.command()
def cohort(
    stores: list[str] = typer.Argument(..., help="Stores (OUT/<slide>.zarr, or URLs), or folders holding them."),
    out: Path = typer.Option(..., "--out", "-o", help="Zarr file of the cohort table (AnnData)."),
    genes: str = typer.Option("intersection", "--genes", help="'intersection', 'union', or a text file with one gene name a line."),
    species: list[str] | None = typer.Option(None, "--species", help="Keep stores of this species (repeatable)."),
    tissue: list[str] | None = typer.Option(None, "--tissue", help="Keep stores of this tissue (repeatable)."),
    tech: list[str] | None = typer.Option(None, "--tech", help="Keep stores of this technology (repeatable)."),
    study: list[str] | None = typer.Option(None, "--study", help="Keep stores of this study (repeatable)."),
    allow_mixed_species: bool = typer.Option(False, "--allow-mixed-species", help="Allow stores of several species."),
    normalise_case: bool = typer.Option(True, "--normalise-case/--keep-case", help="Put gene symbols in their species' case before matching."),
    duplicates: str = typer.Option("sum", "--duplicates", help="Columns sharing a gene name on a slide: 'sum' or 'first'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
) -> None:
    """Join the tables of many stores into one AnnData Zarr, in bounded memory.

    Spots keep their slide's metadata (slide, study, tech, species, tissue, µm/px, store),
    coordinates and annotation; gene names are harmonised the same way on every slide.
    Example: stimage-sd cohort stores/ --species human --tissue brain -o brain.zarr
    """
    from rich.console import Console

    from ..errors import StimageError
    from ..io._cohort import read_cohort

    if genes in ("intersection", "union"):
        gene_arg: str | list[str] = genes
    else:
        path = Path(genes)
        if not path.is_file():
            raise typer.BadParameter(f"{genes!r} is neither 'intersection', 'union' nor a file", param_hint="--genes")
        gene_arg = [g.strip() for g in path.read_text().splitlines() if g.strip()]
        if not gene_arg:
            raise StimageError(f"{path}: no gene name in the file")
    adata = read_cohort(
        stores, genes=gene_arg, species=species or None, tissue=tissue or None, tech=tech or None,
        study=study or None, allow_mixed_species=allow_mixed_species, normalise_case=normalise_case,
        duplicates=duplicates, out=out, lazy=True, overwrite=overwrite,
    )
    n_slides = len(adata.uns["cohort"]["slides"])
    Console().print(f"{out}: {adata.n_obs} spots x {adata.n_vars} genes from {n_slides} slide(s)",
                    soft_wrap=True, highlight=False, markup=False)
