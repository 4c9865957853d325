"""Exporting fixed-physical-scale training patches of converted slides into one patch store."""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import logger, progress_bar
from .._utils import cpu_count
from ..errors import StimageError
from ._image import FILTERS, PatchGeometry, cut_patches, tissue_fraction
from ._patchstore import (
    EDGE,
    NO_TISSUE,
    PatchWriter,
    check_compression,
    is_patch_store,
    read_patch_attrs,
)
from ._source import (
    MODES,
    TARGETS,
    GenePanel,
    SlideSource,
    make_geometry,
    resolve_stores,
    slide_header,
)

if TYPE_CHECKING:
    from ._targets import Targets

__all__ = ["export_patches"]

#: Patches cut per task (one image region read per task).
GROUP = 64
#: Outside fraction above which a patch counts as leaving the image.
_OUTSIDE_EPS = 1e-9


def _params(
    *, size_um: float, px: int, mode: str, genes: Any, n_hvg: int, target: str, resample: str,
    pyramid: bool, edge: str, min_tissue: float,
) -> dict[str, Any]:
    return {
        "size_um": float(size_um) if mode == "fixed" else None,
        "px": int(px),
        "mode": mode,
        "genes": _panel_kind(genes),
        "n_hvg": int(n_hvg) if genes == "hvg" else None,
        "target": target,
        "resample": resample,
        "pyramid": bool(pyramid),
        "edge": edge,
        "min_tissue": float(min_tissue),
    }


def _panel_kind(genes: Any) -> str:
    """The ``genes`` parameter as recorded in a store: a kind or recipe name, or ``"list"``."""
    from ._targets import Targets

    if isinstance(genes, Targets):
        return genes.recipe
    return genes if isinstance(genes, str) else "list"


def check_genes_target(genes: Any, target: str) -> None:
    """Recipes define their own transform: ``target`` must stay ``"log1p"``."""
    from ._targets import RECIPE_SIZE, Targets

    if (isinstance(genes, Targets) or (isinstance(genes, str) and genes in RECIPE_SIZE)) and target != "log1p":
        raise StimageError(f"target={target!r} cannot be combined with a target recipe (genes={_panel_kind(genes)!r})")


def check_options(
    *, size_um: float, px: int, mode: str, target: str, resample: str, edge: str, min_tissue: float,
) -> None:
    """Validate export/dataset options (raises :class:`StimageError`)."""
    if mode not in MODES:
        raise StimageError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "fixed" and not (size_um and size_um > 0):
        raise StimageError(f"size_um must be positive, got {size_um!r}")
    if not (isinstance(px, int | np.integer) and px >= 1):
        raise StimageError(f"px must be a positive integer, got {px!r}")
    if target not in TARGETS:
        raise StimageError(f"target must be one of {TARGETS}, got {target!r}")
    if resample not in FILTERS:
        raise StimageError(f"resample must be one of {tuple(FILTERS)}, got {resample!r}")
    if edge not in ("pad", "drop"):
        raise StimageError(f"edge must be 'pad' or 'drop', got {edge!r}")
    if not 0 <= min_tissue <= 1:
        raise StimageError(f"min_tissue must be in [0, 1], got {min_tissue!r}")


def export_patches(
    stores: str | Path | Iterable[str | Path] | Mapping[Any, str | Path],
    out: str | Path,
    *,
    size_um: float = 112.0,
    px: int = 224,
    mode: str = "fixed",
    genes: str | Sequence[str] | Targets = "hvg",
    n_hvg: int = 128,
    target: str = "log1p",
    resample: str = "bilinear",
    pyramid: bool = True,
    edge: str = "pad",
    min_tissue: float = 0.1,
    shard: int | None = None,
    compression: str = "zstd",
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Export one image patch and one expression target per spot into a patch store.

    Each patch is centred on its spot and covers ``size_um`` µm at ``px`` pixels, i.e.
    ``size_um / px`` µm per pixel whatever the technology and image resolution: the
    store's pixel-size estimate (``uns["stimage"]["um_per_px"]``) converts µm to image
    pixels and the region is resampled with ``resample`` (PIL, antialiased when
    downsampling; see :mod:`stimage_sd.ml` for the exact geometry). Slides are appended
    one by one and each is recorded only once complete, so an interrupted export
    resumes where it stopped when called again with the same arguments.

    Parameters
    ----------
    stores
        Converted slides (``<slide>.zarr``): a path, a folder of stores, a list, or a
        ``{slide: path}`` dict.
    out
        The patch store to create or append to (a Zarr group, e.g. ``patches.zarr``).
    size_um
        Side of a patch in µm (``mode="fixed"``).
    px
        Side of a patch in pixels.
    mode
        ``"fixed"``: fixed physical size (``size_um``). ``"native"``: the release's own
        crop, ``2r`` pixels around the spot with PIL's rounding, resized to ``px`` (an
        exact copy when ``2r`` rounds to ``px``), for comparison with the usual recipe.
    genes
        Expression target panel: ``"intersection"`` (genes present in every slide of
        this call, in the first slide's order), ``"hvg"`` (each slide's own ``n_hvg``
        highly variable genes; recorded per slide), a list of gene names, or a target
        recipe of :func:`~stimage_sd.ml.targets`: ``"stimage-hvg128"`` or
        ``"stimage-overlap-hvg100"`` (the release's own targets, value for value; the
        overlap recipe groups the slides of this call by species and tissue), or a
        precomputed :class:`~stimage_sd.ml.Targets`. Genes of the panel that a slide
        lacks, and spots a recipe filters out, get ``NaN`` targets.
    n_hvg
        Genes per slide when ``genes="hvg"``.
    target
        ``"log1p"`` (``normalize_total`` to 10,000 over all genes, then ``log1p``) or
        ``"counts"`` (raw counts). Target recipes define their own (``log1p``).
    resample
        Filter: ``"bilinear"`` (default), ``"bicubic"``, ``"lanczos"``, ``"hamming"``,
        ``"box"`` or ``"nearest"``.
    pyramid
        When a patch is reduced by 2x or more, read pyramid level ``floor(log2(reduction))``
        (2^k block means of level 0) instead of level 0: faster, and equal to the level-0
        result up to the small difference between block-mean and filter antialiasing.
    edge
        Patches that leave the image: ``"pad"`` (white padding, flagged ``edge``) or
        ``"drop"`` (not exported; counted in the slide record).
    min_tissue
        Patches whose tissue fraction is below this are flagged ``no_tissue`` (kept).
    shard
        Patches per shard file; default about 32 MiB of patches. Within a shard, chunks
        (the unit a random read decodes) hold one patch from 210 px up, several smaller
        ones below (about 128 KiB).
    compression
        Patch codec: ``"zstd"`` (level 1), ``"zstd:N"`` (level N: smaller, slower),
        ``"lz4"`` (Blosc; faster, larger) or ``"none"``.
    workers
        Threads cutting patches (default: up to 4, at most the CPU count).
    overwrite
        Delete an existing store at ``out`` first.
    progress
        Show a progress bar (``None``: the global setting).

    Returns
    -------
    ``out``.

    Raises
    ------
    StimageError
        On a bad option, an input that is not a complete converted slide, a slide without
        a pixel-size estimate (fixed mode), or an existing store written with other
        parameters.
    """
    out = Path(out)
    check_options(size_um=size_um, px=px, mode=mode, target=target, resample=resample, edge=edge, min_tissue=min_tissue)
    check_compression(compression)
    check_genes_target(genes, target)
    if shard is not None and shard < 1:
        raise StimageError("shard must be at least 1")
    paths = resolve_stores(stores)
    headers = [slide_header(p) for p in paths]
    for p, h in zip(paths, headers, strict=True):
        if mode == "fixed" and not (h["um_per_px"] > 0):
            raise StimageError(f"{p}: slide {h['slide']!r} has no pixel-size estimate; use mode='native'")
    seen: dict[str, Path] = {}
    for p, h in zip(paths, headers, strict=True):
        if h["slide"] in seen:
            raise StimageError(f"slide {h['slide']!r} is given twice: {seen[h['slide']]} and {p}")
        seen[h["slide"]] = p
    params = _params(
        size_um=size_um, px=px, mode=mode, genes=genes, n_hvg=n_hvg, target=target,
        resample=resample, pyramid=pyramid, edge=edge, min_tissue=min_tissue,
    )

    if overwrite and out.exists():
        shutil.rmtree(out)
    if out.exists():
        writer = _reopen(out, params, genes)
        panel = _stored_panel(writer, params, genes, paths)
    else:
        if out.is_file():
            raise StimageError(f"{out} is a file")
        panel = GenePanel.build(genes, paths, n_hvg=n_hvg)
        writer = PatchWriter.create(
            out, px=px, n_targets=panel.size, genes=panel.genes, params=params, shard=shard, compression=compression,
        )
    todo = [(p, h) for p, h in zip(paths, headers, strict=True) if h["slide"] not in writer.done]
    if len(todo) < len(paths):
        logger.info("%s: %d slide(s) already exported; skipped", out.name, len(paths) - len(todo))
    n_workers = workers or max(1, min(4, cpu_count()))
    total = sum(h["n_spots"] for _, h in todo)
    with progress_bar(f"patches → {out.name}", total=total, progress=progress) as advance:
        with ThreadPoolExecutor(n_workers) as pool:
            for p, _h in todo:
                _export_slide(p, writer, panel, params, pool, n_workers, advance)
    return out


def _reopen(out: Path, params: dict[str, Any], genes: Any) -> PatchWriter:
    if not is_patch_store(out):
        raise StimageError(f"{out} exists and is not a patch store (choose another path or overwrite=True)")
    attrs = read_patch_attrs(out) or {}
    old = attrs.get("params", {})
    diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: store {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise StimageError(f"{out} was written with other parameters ({what}); use another path or overwrite=True")
    writer = PatchWriter(out)
    if params["genes"] == "list":
        stored = _read_genes(writer)
        if stored != [str(g) for g in genes]:
            raise StimageError(f"{out} was written with another gene list; use another path or overwrite=True")
    return writer


def _read_genes(writer: PatchWriter) -> list[str] | None:
    if "genes" not in writer.group:
        return None
    return [str(g) for g in writer.group["genes"][:]]


def _stored_panel(writer: PatchWriter, params: dict[str, Any], genes: Any, paths: list[Path]) -> GenePanel:
    from ._targets import RECIPE_SIZE, Targets

    kind = params["genes"]
    if kind == "hvg" and not isinstance(genes, Targets):
        return GenePanel("hvg", None, int(params["n_hvg"]))
    if isinstance(genes, Targets) or kind in RECIPE_SIZE:
        # recipes are recomputed over the slides of this call (or taken as given)
        panel = GenePanel.build(genes, paths)
        if panel.size != int(writer.attrs.get("n_targets", panel.size)):
            raise StimageError(
                f"{writer.path} holds {writer.attrs.get('n_targets')} targets per patch, these targets {panel.size}; "
                "use another path or overwrite=True"
            )
        return panel
    return GenePanel(kind, _read_genes(writer))


def _export_slide(
    path: Path,
    writer: PatchWriter,
    panel: GenePanel,
    params: dict[str, Any],
    pool: ThreadPoolExecutor,
    n_workers: int,
    advance: Any,
) -> None:
    t0 = time.perf_counter()
    src = SlideSource.open(path)
    geom = make_geometry(
        src, mode=params["mode"], size_um=params["size_um"], px=params["px"],
        resample=params["resample"], pyramid=params["pyramid"],
    )
    gene_names, cols = panel.columns(src)
    edge_mask = geom.outside > _OUTSIDE_EPS
    order = geom.order()
    n_dropped = 0
    if params["edge"] == "drop":
        order = order[~edge_mask[order]]
        n_dropped = src.n - len(order)
        if n_dropped:
            advance(n_dropped)
    code = writer.next_code
    writer.begin(len(order))
    counts = {"edge": 0, "no_tissue": 0}
    for idx, patches, tissue in _cut_groups(geom, order, pool, n_workers):
        flags = np.where(edge_mask[idx], EDGE, 0).astype(np.uint8)
        flags |= np.where(tissue < params["min_tissue"], NO_TISSUE, 0).astype(np.uint8)
        counts["edge"] += int((flags & EDGE).astype(bool).sum())
        counts["no_tissue"] += int((flags & NO_TISSUE).astype(bool).sum())
        obs = {
            "slide": np.full(len(idx), code, dtype=np.int32),
            "row": idx.astype(np.int64),
            "spot_id": src.spot_ids[idx].astype(str),
            "label": (src.labels[idx] if src.labels is not None else np.full(len(idx), "")).astype(str),
            "x": src.xy[idx, 0],
            "y": src.xy[idx, 1],
            "flags": flags,
            "tissue_fraction": tissue,
            "outside_fraction": geom.outside[idx],
        }
        writer.write(patches, panel.targets(src, idx, cols, params["target"]), obs)
        advance(len(idx))
    record: dict[str, Any] = {
        "slide": src.slide,
        "tech": src.tech,
        "store": str(path),
        "n_spots": int(src.n),
        "n_dropped": int(n_dropped),
        "n_edge": counts["edge"],
        "n_no_tissue": counts["no_tissue"],
        "um_per_px": float(src.um_per_px) if src.um_per_px > 0 else None,
        "spot_radius_px": float(src.radius_px) if src.radius_px > 0 else None,
        "source_px": float(geom.scale0 * geom.px),
        "reduction": float(geom.scale0),
        "level": int(geom.level),
        "resampled": bool(not _is_copy(geom)),
        "n_genes_missing": int((cols < 0).sum()),
        "labelled": src.labels is not None,
    }
    if panel.per_slide:
        record["genes"] = gene_names
    rec = writer.commit(record)
    logger.info(
        "%s: %d patches (rows %d-%d, level %d, %.2f source px per output px) in %.1f s",
        src.slide, rec["stop"] - rec["start"], rec["start"], rec["stop"], geom.level, geom.scale0,
        time.perf_counter() - t0,
    )


def _is_copy(geom: PatchGeometry) -> bool:
    b = geom.boxes
    if not len(b):
        return True
    return bool(np.all(b == np.round(b)) and np.all(b[:, 2] - b[:, 0] == geom.px) and np.all(b[:, 3] - b[:, 1] == geom.px))


def _cut_groups(
    geom: PatchGeometry, order: np.ndarray, pool: ThreadPoolExecutor, n_workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cut patches in groups of :data:`GROUP` on the thread pool, yielding groups in order."""

    def task(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        patches = cut_patches(geom, idx)
        return idx, patches, tissue_fraction(patches)

    groups = (order[i : i + GROUP] for i in range(0, len(order), GROUP))
    pending: deque = deque()
    for g in groups:
        pending.append(pool.submit(task, g))
        if len(pending) >= 2 * n_workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
