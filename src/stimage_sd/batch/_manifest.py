"""The run manifest (``<out>/manifest.json``), per-slide results and the run lock of a batch."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._constants import TECHS
from .._logging import logger
from ..errors import StimageError
from ..io._layout import SlideFiles
from ..io._transaction import TMP_TAG, TRASH_TAG, atomic_write_json, sibling_stem, store_attrs

#: File name of the run manifest inside the output folder.
MANIFEST_NAME = "manifest.json"
_LOCK_NAME = ".stimage-convert.lock"
_MANIFEST_FORMAT = "stimage_sd.convert-manifest"
_MANIFEST_VERSION = 1
_MAX_RUNS_KEPT = 50

# =====================================================================================
# results and cost estimates
# =====================================================================================


@dataclass
class SlideResult:
    """Outcome of one slide in a batch (one row of the run manifest).

    Attributes
    ----------
    slide
        Slide id.
    status
        ``"converted"``, ``"skipped"`` (already complete) or ``"failed"``.
    path
        Store path (``None`` when failed).
    error
        Error message when failed.
    seconds
        Wall time of the conversion. A skipped slide keeps the figures (``seconds``,
        ``bytes_*``, ``worker``, times) of the run that converted it, when the manifest has
        them.
    info
        ``tech``, ``n_spots``, ``n_genes``, ``um_per_px`` of the store (when it exists).
    tech
        Technology.
    spots, genes
        Shape of the converted table (``None`` when failed).
    bytes_in
        Summed size of the slide's source files.
    bytes_out
        Size of the store on disk.
    um_per_px
        Estimated pixel size, µm per pixel.
    memory_estimate
        Estimated peak memory of the conversion, bytes (see :func:`estimate_cost`).
    worker
        Where the slide was converted (``host:pid``).
    started_at, finished_at
        ISO 8601 UTC times.

    """

    slide: str
    status: str
    path: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    tech: str | None = None
    spots: int | None = None
    genes: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    um_per_px: float | None = None
    memory_estimate: int | None = None
    worker: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The manifest entry of this slide (JSON-safe)."""
        rec = asdict(self)
        rec.pop("info")
        rec.pop("slide")
        rec["path"] = None if self.path is None else str(self.path)
        return rec

    @classmethod
    def from_record(cls, slide: str, rec: dict[str, Any]) -> SlideResult:
        """Rebuild a result from a manifest entry."""
        known = {k: rec.get(k) for k in cls.__dataclass_fields__ if k not in ("slide", "info")}
        res = cls(slide=slide, **{k: v for k, v in known.items() if v is not None})
        if res.path is not None:
            res.path = Path(res.path)
        res.info = res._info()
        return res

    def _info(self) -> dict[str, Any]:
        return {"tech": self.tech, "n_spots": self.spots, "n_genes": self.genes, "um_per_px": self.um_per_px}


# =====================================================================================
# manifest and run lock
# =====================================================================================


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StimageError(f"{path}: cannot read the run manifest ({e}); move it away to start a new one") from e
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT or not isinstance(data.get("slides"), dict):
        raise StimageError(f"{path}: not a stimage_sd run manifest; move it away to start a new one")
    return data


class Manifest:
    """The run manifest of an output folder, rewritten atomically after every change."""

    def __init__(self, out_dir: Path, root: Path, run: dict[str, Any], data: dict[str, Any]) -> None:
        self.path = out_dir / MANIFEST_NAME
        self.slides: dict[str, dict[str, Any]] = dict(data.get("slides", {}))
        self.runs: list[dict[str, Any]] = list(data.get("runs", []))[-(_MAX_RUNS_KEPT - 1) :]
        self.root = str(root)
        self.run = run
        self.runs.append(run)

    def update(self, result: SlideResult) -> None:
        self.slides[result.slide] = result.to_record()
        self.save()

    def save(self) -> None:
        counts: dict[str, int] = {}
        for rec in self.slides.values():
            counts[rec.get("status", "?")] = counts.get(rec.get("status", "?"), 0) + 1
        atomic_write_json(
            self.path,
            {
                "format": _MANIFEST_FORMAT,
                "version": _MANIFEST_VERSION,
                "root": self.root,
                "updated_at": now(),
                "totals": counts,
                "runs": self.runs,
                "slides": self.slides,
            },
            fsync=True,
        )


def read_manifest(out_dir: str | Path):
    """The run manifest of an output folder as a table.

    Parameters
    ----------
    out_dir
        Output folder of :func:`convert_many` (``stimage-sd convert``).

    Returns
    -------
    :class:`pandas.DataFrame` indexed by slide id, one row per slide ever attempted in
    this folder, with columns ``status`` (``converted``, ``skipped``, ``failed``),
    ``error``, ``seconds``, ``tech``, ``spots``, ``genes``, ``bytes_in``, ``bytes_out``,
    ``um_per_px``, ``memory_estimate``, ``worker``, ``started_at``, ``finished_at`` and
    ``path``; the latest outcome of each slide.

    Raises
    ------
    StimageError
        If the folder has no manifest or it is unreadable.

    """
    import pandas as pd

    out_dir = Path(out_dir)
    data = load_manifest(out_dir)
    if not data:
        raise StimageError(f"{out_dir / MANIFEST_NAME}: no run manifest (nothing was converted there yet)")
    cols = [k for k in SlideResult.__dataclass_fields__ if k not in ("slide", "info")]
    df = pd.DataFrame.from_dict(data["slides"], orient="index")
    df = df.reindex(columns=cols)
    df.index.name = "slide"
    return df


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Refuse two runs writing into one folder; take over the lock of a dead run.

    The lock is ``<out>/.stimage-convert.lock`` (:func:`stimage_sd.io._transaction.file_lock`:
    host, pid and process start time, so that a pid reused by an unrelated process does not
    keep the lock alive). A refusal names the other run and the lock file.
    """
    from ..io._transaction import file_lock

    with file_lock(Path(out_dir) / _LOCK_NAME, "a batch conversion", timeout=0, what=str(out_dir)):
        yield


def cleanup_partials(out_dir: Path) -> int:
    """Remove what interrupted writes left: ``.<slide>.zarr.tmp-*``/``.trash-*``, manifest temporaries."""
    import shutil

    from ..io._transaction import LOCK_SUFFIX, journaled_siblings, lock_holder, remove_stale_lock

    n = 0
    stores = {sibling_stem(s): s for s in out_dir.glob("*.zarr")}  # long ids: hashed stems
    for tag in (TMP_TAG, TRASH_TAG):
        for p in out_dir.glob(f".*.zarr{tag}*"):
            stem = p.name[1:].split(tag, 1)[0]
            store = stores.get(stem, out_dir / stem)
            if p.name in journaled_siblings(store):  # an interrupted table swap: recoverable
                continue
            if lock_holder(store) is not None:  # a live run (e.g. an analysis) is writing it
                continue
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    for p in out_dir.glob(f".*.zarr{LOCK_SUFFIX}"):  # the store lock of a dead run
        stem = p.name[1:].removesuffix(LOCK_SUFFIX)
        if remove_stale_lock(stores.get(stem, out_dir / stem)):
            n += 1
    for p in out_dir.glob(f".{MANIFEST_NAME}.tmp-*"):  # a manifest update cut short
        p.unlink(missing_ok=True)
        n += 1
    if n:
        logger.info("removed %d partial write(s) left by an interrupted run in %s", n, out_dir)
    return n


def _store_bytes(path: Path) -> int:
    total = 0
    stack = [str(path)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    return total


def store_result(slide: str, path: Path, status: str, bytes_out: int | None = None, **extra: Any) -> SlideResult:
    a = store_attrs(path)
    res = SlideResult(
        slide=slide,
        status=status,
        path=path,
        tech=a.get("tech"),
        spots=a.get("n_spots"),
        genes=a.get("n_genes"),
        um_per_px=a.get("um_per_px") if isinstance(a.get("um_per_px"), float) else None,
        bytes_out=_store_bytes(path) if bytes_out is None else bytes_out,
        **extra,
    )
    res.info = res._info()
    return res


def skipped_result(root: Path, slide: str, path: Path, previous: dict[str, Any]) -> SlideResult:
    """A complete store left as it is; the figures of the run that converted it are kept."""
    keep = ("seconds", "bytes_in", "bytes_out", "memory_estimate", "worker", "started_at", "finished_at")
    carried = (
        {k: previous[k] for k in keep if previous.get(k) is not None}
        if previous.get("status") in ("converted", "skipped")
        else {}
    )
    res = store_result(slide, path, "skipped", **carried)
    if res.bytes_in is None and res.tech in TECHS:
        res.bytes_in = sum(SlideFiles.expected(root, slide, res.tech).sizes().values())
    return res


