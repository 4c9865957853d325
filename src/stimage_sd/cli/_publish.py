"""``stimage-sd publish``: converted stores and a dataset card to a Hugging Face dataset repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app


@app.command()
def publish(
    stores: Annotated[list[Path], typer.Argument(help="Converted <slide>.zarr stores, or folders holding them.")],
    repo: Annotated[str, typer.Option("--repo", help="Target dataset repository, user/name.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files that would be sent; upload nothing.")] = False,
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (default: main).")] = None,
) -> None:
    """Upload converted stores plus a dataset card (contract, manifest, citations) to the Hub.

    Resumable: run it again after an interruption; files already on the Hub are skipped.
    Needs a write token (HF_TOKEN or 'hf auth login'); HF_ENDPOINT is honoured.

    Example:
      stimage-sd publish ./stores --repo me/stimage-stores --dry-run

    """
    from rich.console import Console

    from ..hub import format_bytes
    from ..hub import publish as _publish

    plan = _publish(stores, repo, dry_run=dry_run, private=private, revision=revision)
    con = Console(stderr=True)
    if dry_run:
        con.print(f"[dry run] {plan.describe()}")
        for _, path, size in plan.files:
            typer.echo(f"{path}\t{size}")
        return
    con.print(f"published {len(plan.stores)} store(s), {format_bytes(plan.bytes_total)} to hf://datasets/{repo}")
    con.print(f"read one: python -c \"import stimage_sd as ssd; ssd.io.read('hf://datasets/{repo}/{next(iter(plan.stores))}.zarr')\"")
