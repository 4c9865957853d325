"""Publishing converted stores to a Hugging Face dataset repository, with a dataset card.

:func:`publish` uploads each complete ``<slide>.zarr`` store with
:meth:`huggingface_hub.HfApi.upload_folder`. In ``huggingface_hub`` 2.x (with ``hf_xet``,
a dependency of the client) that is the resumable, multi-commit pipeline that replaced
``upload_large_folder``: files already on the Hub with the same content are skipped, so an
interrupted publish is resumed by running it again. A ``manifest.json`` (one entry per
slide) and a ``README.md`` dataset card (the data contract, the manifest, the citation of
the release and of every study, and how to read the stores in place) are committed last,
so a card on the Hub means every store listed in it was uploaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .._logging import logger
from ..errors import StimageError
from ..io._store import resolve_stores
from ._client import REPO_TYPE, endpoint_url, format_bytes, hub_errors

__all__ = ["PublishPlan", "dataset_card", "publish"]

RELEASE_CITATION = """@inproceedings{chen2024stimage,
  title     = {{STimage-1K4M}: A histopathology image-gene expression dataset for spatial transcriptomics},
  author    = {Chen, Jiawen and Zhou, Muqing and Wu, Wenrong and Zhang, Jinwei and Li, Yun and Li, Didong},
  booktitle = {Advances in Neural Information Processing Systems, Datasets and Benchmarks Track},
  year      = {2024},
  eprint    = {2406.06393},
  archivePrefix = {arXiv}
}"""

_CONTRACT = """| element | name | content |
|---|---|---|
| image | `he` | `Image2DModel`, dims `(c, y, x)`, uint8 RGB, multiscale, chunks ~1024² |
| shapes | `spots` | circles (radius `r`) for ST and Visium; squares for VisiumHD bins; index 0..n-1 |
| table | `table` | `TableModel`, `region="spots"`, `region_key="region"`, `instance_key="spot_id"` |

- Coordinate systems: `global` = pixels of the released image; `micron` = the same scaled by
  the estimated µm per pixel.
- `table.X`: raw counts, CSR, int32 when integral else float32; `obs` index = the release's
  spot ids; `var` index = unique gene names (original names in `var["gene_name"]`);
  `obsm["spatial"]` = pixel centres `[x, y]`.
- `gene_index/table`: the same raw counts gene-major (an AnnData, X CSC, in anndata's
  encoding; not a SpatialData element): `ssd.io.read_genes(url, ["GENE"])` reads a few genes
  for every spot without the table's matrix (absent from stores converted with
  `--no-gene-index`).
- `attrs["stimage"]` / `table.uns["stimage"]`: slide id, tech, species, tissue, pmid, title,
  spot radius, µm/px estimate and method, source files with sizes and checksums, and a
  completion marker (`complete`) written last."""


@dataclass
class PublishPlan:
    """What :func:`publish` uploads (or uploaded).

    Attributes
    ----------
    repo_id
        Target dataset repository.
    stores
        ``{slide: local store path}``.
    files
        ``(local path or None, path in repo, bytes)`` of every file sent; ``None`` for the
        generated card and manifest.
    manifest
        The manifest committed as ``manifest.json``.
    card
        The dataset card committed as ``README.md``.
    commits
        Commit URLs (empty for a dry run).
    """

    repo_id: str
    stores: dict[str, Path]
    files: list[tuple[Path | None, str, int]]
    manifest: dict[str, Any]
    card: str
    commits: list[str] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        """Bytes of all files."""
        return sum(n for _, _, n in self.files)

    def describe(self) -> str:
        """One line: stores, files and bytes."""
        return (
            f"{len(self.stores)} store(s), {len(self.files)} file(s), {format_bytes(self.bytes_total)} "
            f"to hf://{REPO_TYPE}s/{self.repo_id}"
        )




def _entry(path: Path) -> tuple[str, dict[str, Any]]:
    from ..io._transaction import is_complete, store_attrs

    if not path.is_dir():
        raise StimageError(f"{path}: no such store")
    if not is_complete(path):
        raise StimageError(f"{path}: not a complete converted store (no completion marker); convert it again")
    a = store_attrs(path)
    slide = str(a.get("slide") or path.stem)
    files = [p for p in path.rglob("*") if p.is_file()]
    entry = {
        "path": f"{slide}.zarr",
        "tech": a.get("tech"),
        "species": a.get("species"),
        "tissue": a.get("tissue"),
        "n_spots": a.get("n_spots", a.get("spot_num")),
        "n_genes": a.get("n_genes", a.get("gene_num")),
        "um_per_px": a.get("um_per_px"),
        "pmid": a.get("pmid"),
        "title": a.get("title"),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "stimage_sd_version": a.get("stimage_sd_version"),
    }
    return slide, entry


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def dataset_card(repo_id: str, manifest: dict[str, Any]) -> str:
    """The ``README.md`` of a published repository: contract, manifest, citations, usage.

    Parameters
    ----------
    repo_id
        The repository the stores are published to (for the usage example).
    manifest
        ``{"slides": {slide: entry}}`` as :func:`publish` builds it.
    """
    slides = manifest["slides"]
    techs = sorted({str(e["tech"]) for e in slides.values() if e.get("tech")})
    species = sorted({str(e["species"]) for e in slides.values() if e.get("species")})
    total = sum(int(e["bytes"]) for e in slides.values())
    lines = [
        "---",
        "tags:",
        "- spatial-transcriptomics",
        "- spatialdata",
        "- zarr",
        "- histopathology",
        "pretty_name: STimage-1K4M SpatialData stores",
        "---",
        "",
        f"# STimage-1K4M as SpatialData stores ({len(slides)} slides)",
        "",
        "Slides of [STimage-1K4M](https://huggingface.co/datasets/jiawennnn/STimage-1K4M) converted to "
        f"[SpatialData](https://spatialdata.scverse.org) Zarr stores by stimage_sd {__version__}: "
        f"{', '.join(techs) or 'no technology recorded'}; species {', '.join(species) or 'unknown'}; "
        f"{format_bytes(total)} in all.",
        "",
        "## Reading a store in place",
        "",
        "```python",
        "import stimage_sd as ssd",
        f'sdata = ssd.io.read("hf://datasets/{repo_id}/{next(iter(slides), "<slide>")}.zarr")',
        "# table and shapes are read; image chunks are fetched only when used",
        f'genes = ssd.io.read_genes("hf://datasets/{repo_id}/{next(iter(slides), "<slide>")}.zarr", ["<GENE>"])',
        "# a few genes for every spot, from the store's gene index: a few chunks, not the table",
        "```",
        "",
        "## Data contract (one store per slide)",
        "",
        _CONTRACT,
        "",
        "## Manifest",
        "",
        "Also in `manifest.json`.",
        "",
        "| slide | tech | species | tissue | spots | genes | µm/px | pmid | size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, e in slides.items():
        lines.append(
            f"| [{_cell(s)}]({e['path']}) | {_cell(e.get('tech'))} | {_cell(e.get('species'))} | "
            f"{_cell(e.get('tissue'))} | {_cell(e.get('n_spots'))} | {_cell(e.get('n_genes'))} | "
            f"{_cell(e.get('um_per_px'))} | {_cell(e.get('pmid'))} | {format_bytes(int(e['bytes']))} |"
        )
    studies: dict[str, dict[str, Any]] = {}
    for s, e in slides.items():
        key = str(e.get("pmid") or e.get("title") or "")
        if key:
            studies.setdefault(key, {"pmid": e.get("pmid"), "title": e.get("title"), "slides": []})["slides"].append(s)
    lines += [
        "",
        "## Citation",
        "",
        "Please cite the STimage-1K4M release:",
        "",
        "```bibtex",
        RELEASE_CITATION,
        "```",
        "",
        "and the studies the slides come from:",
        "",
    ]
    if not studies:
        lines.append("- (no study recorded in the stores)")
    for st in studies.values():
        pmids = [p.strip() for p in str(st["pmid"] or "").split(",") if p.strip()]
        refs = ", ".join(f"[PMID {p}](https://pubmed.ncbi.nlm.nih.gov/{p}/)" for p in pmids) or "no PMID"
        title = _cell(st["title"]) or "untitled"
        lines.append(f"- {title} ({refs}); slides: {', '.join(_cell(x) for x in st['slides'])}")
    lines.append("")
    return "\n".join(lines)


def publish(
    stores: str | Path | Iterable[str | Path],
    repo_id: str,
    *,
    dry_run: bool = False,
    private: bool | None = None,
    create: bool = True,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    progress: bool | None = None,
) -> PublishPlan:
    """Upload converted stores and a dataset card to a Hugging Face dataset repository.

    Each store lands at ``<slide>.zarr`` in the repository, readable in place with
    ``ssd.io.read("hf://datasets/<repo_id>/<slide>.zarr")``. Then ``manifest.json`` and the
    card ``README.md`` (:func:`dataset_card`) are committed. Running it again resumes: files
    already on the Hub with the same content are not sent again.

    Parameters
    ----------
    stores
        Store paths, or folders of ``*.zarr`` stores. Each must be complete (completion
        marker set).
    repo_id
        Target dataset repository (``user/name``).
    dry_run
        List what would be sent (:attr:`PublishPlan.files`), upload nothing.
    private
        Visibility when the repository is created.
    create
        Create the repository when it does not exist.
    revision
        Branch to commit to (default: the main branch).
    endpoint
        Hub URL; ``None`` reads ``HF_ENDPOINT``.
    token
        Write token; ``None`` lets ``huggingface_hub`` find one (``HF_TOKEN``, login). Never logged.
    commit_message
        Message of the store commits.
    progress
        Progress display of the client (``None``: the global setting).

    Returns
    -------
    The :class:`PublishPlan`, with the commit URLs after an upload.

    Raises
    ------
    StimageError
        If a store is incomplete, two stores hold the same slide, or the Hub refuses.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> plan = ssd.hub.publish("stores/", "me/stimage-stores", dry_run=True)
    >>> print(plan.describe())  # doctest: +SKIP
    """
    from .._logging import progress_enabled

    paths = [Path(s) for s in resolve_stores(stores)]
    if not paths:
        raise StimageError("no store to publish")
    entries: dict[str, dict[str, Any]] = {}
    where: dict[str, Path] = {}
    for p in paths:
        slide, entry = _entry(p)
        if slide in where:
            raise StimageError(f"two stores hold slide {slide!r}: {where[slide]} and {p}")
        where[slide], entries[slide] = p, entry
    manifest = {"format_version": 1, "repo_id": repo_id, "stimage_sd_version": __version__, "slides": entries}
    card = dataset_card(repo_id, manifest)
    manifest_bytes = json.dumps(manifest, indent=1, default=str).encode()
    files: list[tuple[Path | None, str, int]] = []
    for slide, p in where.items():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            files.append((f, f"{slide}.zarr/{f.relative_to(p).as_posix()}", f.stat().st_size))
    files.append((None, "manifest.json", len(manifest_bytes)))
    files.append((None, "README.md", len(card.encode())))
    plan = PublishPlan(repo_id=repo_id, stores=where, files=files, manifest=manifest, card=card)
    logger.info("%s", plan.describe())
    if dry_run:
        return plan

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    ep = endpoint_url(endpoint)
    api = HfApi(endpoint=ep, token=token, library_name="stimage_sd")
    quiet = not progress_enabled(progress) and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        with hub_errors(repo_id, ep):
            if create:
                api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
            for slide, p in where.items():
                info = api.upload_folder(
                    repo_id=repo_id,
                    repo_type=REPO_TYPE,
                    folder_path=p,
                    path_in_repo=f"{slide}.zarr",
                    revision=revision,
                    commit_message=commit_message or f"Add {slide}.zarr (stimage_sd {__version__})",
                )
                plan.commits.append(str(getattr(info, "commit_url", info)))
                logger.info("uploaded %s", slide)
            info = api.create_commit(
                repo_id=repo_id,
                repo_type=REPO_TYPE,
                revision=revision,
                operations=[
                    CommitOperationAdd("manifest.json", manifest_bytes),
                    CommitOperationAdd("README.md", card.encode()),
                ],
                commit_message=f"Dataset card and manifest ({len(where)} slides)",
            )
            plan.commits.append(str(getattr(info, "commit_url", info)))
    finally:
        if quiet:
            enable_progress_bars()
    return plan
