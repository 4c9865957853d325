"""Converting many slides: in parallel on dask.distributed, resumable, with a run manifest.

One task per slide. Slides whose store is already complete are skipped; partial outputs
of killed runs are removed; every finished slide is recorded at once in
``<out_dir>/manifest.json`` (written atomically), so that a run killed at any point and
started again converts only what is left. A slide that fails is recorded with its error
and the run goes on.

Scheduling by expected cost
---------------------------
Before the run, the peak memory of each slide's conversion is estimated from the metadata
table (``spot_num`` x ``gene_num``) and the image header (pixels, channels, bit depth),
with the model of :func:`estimate_cost`. Slides are submitted largest first. Then

- on a local cluster (the default) the driver admits a slide only while the estimates of
  the slides in flight fit in the memory budget (the machine's available memory, or
  ``memory_budget``), and at most one slide per worker thread; a slide larger than the
  budget runs alone. Each local worker may use the whole budget (``memory_limit``), so
  that a lone large slide is not killed;
- on an existing cluster, workers started with a ``MEM`` resource (``dask worker
  --resources MEM=64e9``) receive tasks that each claim their estimated memory from it, so
  a worker with several threads runs only as many slides at once as fit in its memory; a
  slide larger than every worker claims a whole worker. Without ``MEM`` resources the
  cluster schedules by thread count only (pass ``memory_budget`` to also cap the total).

See ``docs/cluster.md`` for cluster recipes (SLURM with dask-jobqueue, an existing
scheduler).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._constants import TECHS
from .._errors import StimageError
from .._logging import logger, progress_enabled
from ._convert import convert_slide, finish_table_swap, store_path
from ._layout import SlideFiles, find_metadata, list_slides
from ._store import _TMP_TAG, _TRASH_TAG, cleanup_partial, is_complete, store_attrs

__all__ = [
    "MANIFEST_NAME",
    "SlideCost",
    "SlideResult",
    "convert_many",
    "estimate_cost",
    "read_manifest",
    "select_slides",
]

#: File name of the run manifest inside the output folder.
MANIFEST_NAME = "manifest.json"
_LOCK_NAME = ".stimage-convert.lock"
_MANIFEST_FORMAT = "stimage_sd.convert-manifest"
_MANIFEST_VERSION = 1
_MAX_RUNS_KEPT = 50

# --- memory model of one slide conversion (bytes) -----------------------------------
# Calibrated by converting generated slides in a fresh process and reading the peak RSS
# (``resource.getrusage``) against the RSS after imports; see docs/cluster.md.
#: Fixed part of a conversion (measured 145-160 MiB: lazily imported modules, buffers).
MEM_BASE = 200 * 2**20
#: Per stored non-zero count: CSR data + indices (8 B) plus the row re-ordering copy
#: (measured 9-11 B).
MEM_PER_NNZ = 12
#: Per image pixel and decoded byte: decoders that copy (PIL: its own buffer and the numpy
#: array) hold the decoded pixels twice, tifffile once.
MEM_DECODE_COPIES = {"png": 2, "jpeg": 2, "tiff": 1}
#: Per image pixel on top of the decoded bytes: the uint8 RGB array (3 B) and its
#: pyramid (~1 B). Measured totals: 9.1 B/px for RGB PNG, 9.7 for RGBA PNG, 4 for RGB TIFF.
MEM_PER_PIXEL_RGB = 4
#: Assumed fraction of non-zero counts (the release's Visium files are 5-15 % non-zero,
#: VisiumHD bins far sparser); the estimate errs on the high side.
DENSITY = {"ST": 0.2, "Visium": 0.15, "VisiumHD": 0.03}
#: Memory of an idle worker process once the converter is imported (measured ~270 MiB).
WORKER_BASE = 300 * 2**20
#: In automatic mode, a run whose inputs are smaller than this is converted in-process:
#: starting a cluster would cost more than it saves.
AUTO_SERIAL_BYTES = 64 * 2**20


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


@dataclass(frozen=True)
class SlideCost:
    """Expected cost of converting one slide.

    Attributes
    ----------
    slide, tech
        Slide id and technology.
    spots, genes
        From the metadata table (``spot_num``, ``gene_num``), else counted in the files.
    pixels
        Image pixels (from the file header); ``0`` when unreadable.
    bytes_in
        Summed size of the source files.
    memory
        Estimated peak memory of the conversion over an idle worker, bytes:
        ``MEM_BASE + MEM_PER_NNZ * spots * genes * DENSITY[tech] + pixels * (decoded bytes
        per pixel * decode copies + MEM_PER_PIXEL_RGB)``.

    """

    slide: str
    tech: str | None
    spots: int
    genes: int
    pixels: int
    bytes_in: int
    memory: int


def _image_header(path: Path) -> tuple[int, int, str]:
    """(pixels, decoded bytes per pixel, format) read from an image file's header only."""
    from ._image import _pil_limit, sniff_image_format

    fmt = sniff_image_format(path)
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, axes, itemsize = series.shape, series.axes.upper(), series.dtype.itemsize
        dims = dict(zip(axes, shape, strict=False))
        pixels = int(dims.get("Y", 0)) * int(dims.get("X", 0))
        channels = int(dims.get("S", dims.get("C", 1)))
        return pixels, channels * itemsize, fmt
    from PIL import Image

    with _pil_limit(None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
    per_px = {"1": 1, "L": 1, "P": 3, "LA": 2, "PA": 4, "RGB": 3, "RGBA": 4, "CMYK": 4, "I;16": 2, "I": 4, "F": 4}
    return int(w) * int(h), per_px.get(mode, 4), fmt


def _count_header(path: Path) -> int:
    """Number of gene columns in a count file's header (bounded read)."""
    with open(path, "rb") as fh:
        head = fh.readline(64 << 20)
    return head.count(b",")


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return max(0, n - 1)


def estimate_cost(
    root: str | Path,
    slide: str,
    *,
    tech: str | None = None,
    spots: int | None = None,
    genes: int | None = None,
) -> SlideCost:
    """Estimate the cost of converting one slide, from the catalogue and file headers.

    Peak memory is modelled as a fixed part, plus the sparse count matrix (expected
    non-zeros = ``spots * genes * DENSITY[tech]``, at ``MEM_PER_NNZ`` bytes each), plus
    the decoded image (pixels x decoded bytes per pixel x decoder copies, plus the RGB
    array and its pyramid). The constants were calibrated on generated slides (module
    constants ``MEM_*``); the estimate is meant to err on the high side.

    Parameters
    ----------
    root
        Dataset root.
    slide
        Slide id.
    tech
        Technology (default: found on disk).
    spots, genes
        ``spot_num`` and ``gene_num`` from the metadata table; counted from the files
        when ``None``.

    Returns
    -------
    :class:`SlideCost`. Never raises for a damaged slide: unreadable parts count as zero
    (the conversion itself will report the error).

    """
    root = Path(root)
    if tech is None:
        tech = next((t for t in TECHS if (root / t / "coord" / f"{slide}_coord.csv").is_file()), None)
    files = SlideFiles.expected(root, slide, tech or "Visium")
    bytes_in = sum(files.sizes().values())
    try:
        if spots is None:
            spots = _count_lines(files.coord)
        if genes is None:
            genes = _count_header(files.counts)
    except OSError:
        spots, genes = spots or 0, genes or 0
    try:
        pixels, px_bytes, fmt = _image_header(files.image)
    except Exception:  # missing or undecodable header: the conversion will say why
        pixels, px_bytes, fmt = 0, 3, "png"
    density = DENSITY.get(tech or "", max(DENSITY.values()))
    memory = (
        MEM_BASE
        + int(MEM_PER_NNZ * spots * genes * density)
        + pixels * (px_bytes * MEM_DECODE_COPIES.get(fmt, 2) + MEM_PER_PIXEL_RGB)
    )
    return SlideCost(slide, tech, int(spots), int(genes), int(pixels), int(bytes_in), int(memory))


# =====================================================================================
# slide selection
# =====================================================================================


def select_slides(root: str | Path, slides: Sequence[str] | None = None, techs: Sequence[str] | None = None) -> list[str]:
    """Slide ids of a root: the given ones, or all listed in the metadata table / on disk.

    Parameters
    ----------
    root
        Dataset root.
    slides
        Explicit slide ids (returned as given, in order, de-duplicated).
    techs
        Keep only these technologies (when ``slides`` is ``None``).

    """
    if slides:
        return list(dict.fromkeys(slides))
    on_disk = list_slides(root)
    meta = find_metadata(root)
    if meta is not None:
        from ._metadata import read_metadata

        table = read_metadata(meta)
        ids = [s for s in table.index if s in on_disk]
        tech_of = {s: str(table.at[s, "tech"]) for s in ids}
        ids += [s for s in on_disk if s not in tech_of]
        tech_of.update({s: t for s, t in on_disk.items() if s not in tech_of})
    else:
        ids, tech_of = list(on_disk), on_disk
    if techs:
        ids = [s for s in ids if tech_of[s] in set(techs)]
    return ids


# =====================================================================================
# manifest and run lock
# =====================================================================================


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, ensure_ascii=False, allow_nan=False, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_manifest(out_dir: Path) -> dict[str, Any]:
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


class _Manifest:
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
        _atomic_write_json(
            self.path,
            {
                "format": _MANIFEST_FORMAT,
                "version": _MANIFEST_VERSION,
                "root": self.root,
                "updated_at": _now(),
                "totals": counts,
                "runs": self.runs,
                "slides": self.slides,
            },
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
    data = _load_manifest(out_dir)
    if not data:
        raise StimageError(f"{out_dir / MANIFEST_NAME}: no run manifest (nothing was converted there yet)")
    cols = [k for k in SlideResult.__dataclass_fields__ if k not in ("slide", "info")]
    df = pd.DataFrame.from_dict(data["slides"], orient="index")
    df = df.reindex(columns=cols)
    df.index.name = "slide"
    return df


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> Iterator[None]:
    """Refuse two runs writing into one folder; take over the lock of a dead run."""
    path = out_dir / _LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                other = {}
            host, pid = other.get("host"), other.get("pid")
            if host == me["host"] and isinstance(pid, int) and pid != me["pid"] and _pid_alive(pid):
                raise StimageError(
                    f"{out_dir}: another conversion (pid {pid}, started {other.get('started_at')}) is "
                    "writing to this folder; wait for it or stop it"
                ) from None
            if host not in (None, me["host"]):
                raise StimageError(
                    f"{out_dir}: a conversion on host {host} (pid {pid}) holds {path}; if it is no "
                    "longer running, delete that file and start again"
                ) from None
            logger.info("taking over the lock of an interrupted run (pid %s)", pid)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:  # pragma: no cover - lost a race twice
        raise StimageError(f"{out_dir}: cannot take the run lock {path}")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == me["pid"]:
                path.unlink()


def _cleanup_partials(out_dir: Path) -> int:
    """Remove what interrupted writes left: ``.<slide>.zarr.tmp-*``/``.trash-*``, manifest temporaries."""
    import shutil

    from ._store import journaled_siblings

    n = 0
    for tag in (_TMP_TAG, _TRASH_TAG):
        for p in out_dir.glob(f".*.zarr{tag}*"):
            store = out_dir / p.name[1:].split(tag, 1)[0]
            if p.name in journaled_siblings(store):  # an interrupted table swap: recoverable
                continue
            shutil.rmtree(p, ignore_errors=True)
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


def _store_result(slide: str, path: Path, status: str, bytes_out: int | None = None, **extra: Any) -> SlideResult:
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


def _skipped_result(root: Path, slide: str, path: Path, previous: dict[str, Any]) -> SlideResult:
    """A complete store left as it is; the figures of the run that converted it are kept."""
    keep = ("seconds", "bytes_in", "bytes_out", "memory_estimate", "worker", "started_at", "finished_at")
    carried = (
        {k: previous[k] for k in keep if previous.get(k) is not None}
        if previous.get("status") in ("converted", "skipped")
        else {}
    )
    res = _store_result(slide, path, "skipped", **carried)
    if res.bytes_in is None and res.tech in TECHS:
        res.bytes_in = sum(SlideFiles.expected(root, slide, res.tech).sizes().values())
    return res


# =====================================================================================
# the task (runs on a dask worker, or in this process)
# =====================================================================================


def _describe(e: BaseException) -> str:
    if isinstance(e, StimageError):
        return str(e)
    return f"{type(e).__name__}: {e}"


#: Library warnings that say nothing to a user of the converter (one per written array).
_NOISE = "zarr v3 autosharding"


def _setup_worker_process(threads: int) -> None:
    """Warnings of the converter on a worker's stderr, formatted; library noise silenced.

    Zarr encodes chunks in a pool of (cores + 4) threads by default: capped to the
    task's thread budget (before the first Zarr I/O of the process).
    """
    import logging

    import zarr

    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s [worker %(process)d] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    warnings.filterwarnings("ignore", message=_NOISE, category=UserWarning)
    if zarr.config.get("threading.max_workers", None) != threads:
        zarr.config.set({"threading.max_workers": threads})


def _task_dask_config(threads: int) -> dict[str, Any]:
    """Dask settings inside a task: its arrays computed in this process, on ``threads``.

    A slide's dask collections (image pyramid) must not go back to the cluster; with one
    thread they are computed in the task's own thread.
    """
    if threads == 1:
        return {"scheduler": "synchronous"}
    return {"scheduler": "threads", "num_workers": threads}


def _convert_task(
    root: str,
    slide: str,
    out_dir: str,
    kwargs: dict[str, Any],
    bytes_in: int,
    memory: int,
    on_worker: bool,
    threads: int | None = None,
) -> dict[str, Any]:
    """Convert one slide; never raises: returns the manifest record of the outcome.

    On a worker, the conversion uses ``threads`` threads (count parser, image pyramid,
    Zarr codecs; default 1); in this process (``on_worker=False``) the defaults apply.
    """
    import dask

    if on_worker:
        threads = threads or 1
        _setup_worker_process(threads)
    started, t0 = _now(), time.perf_counter()
    where = f"{socket.gethostname()}:{os.getpid()}"
    extra = {"bytes_in": bytes_in, "memory_estimate": memory, "worker": where, "started_at": started}
    try:
        with contextlib.ExitStack() as stack:
            if on_worker:
                stack.enter_context(dask.config.set(_task_dask_config(threads)))
            else:
                stack.enter_context(warnings.catch_warnings())
                warnings.filterwarnings("ignore", message=_NOISE, category=UserWarning)
            if threads:
                kwargs = {"count_workers": threads, **kwargs}
            dest = convert_slide(root, slide, out_dir, overwrite=True, progress=False, **kwargs)
        res = _store_result(slide, dest, "converted", **extra)
    except Exception as e:  # one bad slide must not stop the run
        res = SlideResult(slide, "failed", error=_describe(e), **extra)
    res.seconds = round(time.perf_counter() - t0, 3)
    res.finished_at = _now()
    rec = res.to_record()
    rec["slide"] = slide
    return rec


def _result_of(rec: dict[str, Any]) -> SlideResult:
    rec = dict(rec)
    return SlideResult.from_record(rec.pop("slide"), rec)


# =====================================================================================
# admission control and executors
# =====================================================================================


def _admit(pending: Sequence[SlideCost], in_flight: Iterable[int], slots: int | None, budget: int | None) -> int | None:
    """Index of the next slide to submit, or ``None`` to wait for one to finish.

    ``pending`` is sorted largest first. A slide is admitted while fewer than ``slots``
    slides are in flight and the memory estimates in flight plus its own fit in
    ``budget``; the largest pending slide that fits goes first (smaller ones back-fill);
    when nothing is in flight the largest goes alone, whatever its size.
    """
    if not pending:
        return None
    in_flight = list(in_flight)
    if not in_flight:
        return 0
    if slots is not None and len(in_flight) >= slots:
        return None
    if budget is None:
        return 0
    free = budget - sum(in_flight)
    for i, cost in enumerate(pending):
        if cost.memory <= free:
            return i
    return None


def _usable_memory() -> int:
    import psutil

    vm = psutil.virtual_memory()
    return int(min(vm.total * 0.9, vm.available * 0.95))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _worker_env(threads: int) -> dict[str, str]:
    """Environment of local worker processes: native thread pools sized to ``threads``."""
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "NUMBA_NUM_THREADS": n,
        "BLOSC_NTHREADS": n,
        "STIMAGE_SD_NO_PROGRESS": "1",
    }


def _dashboard_message(link: str | None) -> str:
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return "dask dashboard unavailable (install bokeh>=3.1 to get it at the scheduler's /status page)"
    return f"dask dashboard: {link}"


@contextlib.contextmanager
def _local_client(n_workers: int, memory_limit: int, threads: int = 1) -> Iterator[Any]:
    import logging

    import dask
    from distributed import Client, LocalCluster

    cfg = {
        # a worker that dies twice on one slide fails it (the run goes on)
        "distributed.scheduler.allowed-failures": 1,
        # dask's default MALLOC_TRIM_THRESHOLD_=65536 disables glibc's adaptive mmap
        # threshold: every large buffer is then mmap'ed and page-faulted afresh, which made
        # a conversion ~35 % slower (measured, see docs/cluster.md)
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    with dask.config.set(cfg):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":8787",
            silence_logs=logging.ERROR,
            env=_worker_env(threads),
        )
    try:
        client = Client(cluster, set_as_default=False)
        try:
            logger.info(
                "local dask cluster: %d worker process(es), one slide at a time on %d thread(s) and a "
                "%.1f GiB memory limit each", n_workers, threads, memory_limit / 2**30,
            )
            logger.info("%s", _dashboard_message(cluster.dashboard_link))
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


@contextlib.contextmanager
def _remote_client(scheduler: str) -> Iterator[Any]:
    from distributed import Client

    try:
        if scheduler.endswith(".json") and Path(scheduler).is_file():
            client = Client(scheduler_file=scheduler, set_as_default=False, timeout="30s")
        else:
            client = Client(scheduler, set_as_default=False, timeout="30s")
    except OSError as e:
        raise StimageError(f"cannot connect to the dask scheduler at {scheduler}: {e}") from e
    try:
        logger.info("connected to dask scheduler %s", client.scheduler.address)
        logger.info("%s", _dashboard_message(client.dashboard_link))
        yield client
    finally:
        client.close()


def _workers_info(client: Any) -> dict[str, dict[str, Any]]:
    return dict(client.scheduler_info(n_workers=-1).get("workers", {}))


def _check_workers_see(client: Any, paths: Sequence[Path]) -> None:
    """Fail early when the workers cannot see the dataset root (no shared file system)."""
    if not _workers_info(client):
        return
    probe = [str(p.resolve()) for p in paths]
    seen = client.run(lambda ps: [os.path.isdir(p) for p in ps], probe)
    blind = {w: [p for p, ok in zip(probe, oks, strict=True) if not ok] for w, oks in seen.items()}
    blind = {w: ps for w, ps in blind.items() if ps}
    if blind:
        w, ps = next(iter(blind.items()))
        raise StimageError(
            f"{len(blind)} dask worker(s) cannot see {', '.join(ps)} (e.g. {w}); the dataset root and "
            "the output folder must be on a file system shared by every worker, at the same path"
        )


def _run_serial(root: Path, out_dir: Path, plan: list[SlideCost], kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for cost in plan:
        yield _convert_task(str(root), cost.slide, str(out_dir), kwargs, cost.bytes_in, cost.memory, False)


def _run_dask(
    client: Any,
    root: Path,
    out_dir: Path,
    plan: list[SlideCost],
    kwargs: dict[str, Any],
    *,
    slots: int | None,
    budget: int | None,
    threads: int = 1,
) -> Iterator[dict[str, Any]]:
    from distributed import as_completed

    mem_of_worker = [float(w.get("resources", {}).get("MEM", 0)) for w in _workers_info(client).values()]
    max_mem = max(mem_of_worker, default=0.0)
    if max_mem > 0:
        logger.info("workers declare MEM resources (largest %.1f GiB): slides claim their estimated memory", max_mem / 2**30)
    pending = list(plan)
    running: dict[Any, SlideCost] = {}
    ac = as_completed(loop=client.loop)
    token = uuid.uuid4().hex[:8]
    while pending or running:
        while (i := _admit(pending, (c.memory for c in running.values()), slots, budget)) is not None:
            cost = pending.pop(i)
            resources = {"MEM": min(float(cost.memory), max_mem)} if max_mem > 0 else None
            fut = client.submit(
                _convert_task,
                str(root), cost.slide, str(out_dir), kwargs, cost.bytes_in, cost.memory, True, threads,
                key=f"stimage-convert-{token}-{cost.slide}",
                pure=False,
                resources=resources,
            )
            running[fut] = cost
            ac.add(fut)
        fut = next(ac)
        cost = running.pop(fut)
        try:
            yield fut.result()
        except Exception as e:  # the task never raises: the worker died (memory?) or was lost
            msg = _describe(e)
            if type(e).__name__ == "KilledWorker":
                msg = (
                    "the worker process converting this slide died, twice (dask KilledWorker); most likely "
                    f"it ran out of memory (estimated peak {cost.memory / 2**30:.2f} GiB): raise the worker "
                    "memory limit (--memory-limit) or run fewer slides at once (--workers)"
                )
                cleanup_partial(store_path(out_dir, cost.slide))  # what the dead worker left
            yield {
                "slide": cost.slide, "status": "failed", "error": msg, "bytes_in": cost.bytes_in,
                "memory_estimate": cost.memory, "finished_at": _now(),
            }
        finally:
            fut.release()


# =====================================================================================
# progress
# =====================================================================================


@contextlib.contextmanager
def _run_progress(n_slides: int, n_bytes: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield lambda nbytes: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
    ) as bar:
        slides = bar.add_task("slides", total=n_slides)
        size = bar.add_task("MB input", total=max(1, round(n_bytes / 1e6)))
        done = [0]

        def advance(nbytes: int) -> None:
            done[0] += nbytes
            bar.advance(slides, 1)
            bar.update(size, completed=round(done[0] / 1e6))

        yield advance


# =====================================================================================
# the public entry point
# =====================================================================================


def convert_many(
    root: str | Path,
    out_dir: str | Path,
    slides: Iterable[str] | None = None,
    *,
    client: Any | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: int | str | None = None,
    memory_budget: int | str | None = None,
    threads_per_worker: int | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    progress: bool | None = None,
    **kwargs: Any,
) -> list[SlideResult]:
    """Convert many slides in parallel, resumably, recording every outcome in a manifest.

    One task per slide on dask.distributed: a :class:`distributed.LocalCluster` started
    for the run (one worker process per core; see ``threads_per_worker``), an existing cluster given
    by ``client`` or ``scheduler`` address (a SLURM or Kubernetes dask cluster works
    unchanged, provided the workers see ``root`` and ``out_dir`` at the same paths), or
    this process alone (``workers=0``).

    - Slides whose store is complete are skipped unless ``overwrite``; temporary siblings
      of interrupted writes are removed; a run killed at any point and started again
      converts only the slides left.
    - ``<out_dir>/manifest.json`` is rewritten atomically as each slide finishes: per slide
      its status (``converted``, ``skipped``, ``failed``), error, seconds, spots, genes,
      bytes in and out, µm/px, memory estimate, worker and times (see
      :func:`read_manifest`).
    - A slide that fails is recorded and the run goes on.
    - Slides are scheduled largest first by estimated peak memory (:func:`estimate_cost`);
      see the module documentation for how memory is kept in bounds.

    Parameters
    ----------
    root
        Dataset root in the release layout.
    out_dir
        Output folder; each slide goes to ``<out_dir>/<slide>.zarr``.
    slides
        Slide ids; default every slide of the root.
    client
        A :class:`distributed.Client` to run on (left open).
    workers
        Worker processes of the local cluster. ``None`` (default): one per CPU core, at
        most one per slide to convert; the run stays in this process when only one slide
        needs converting or its inputs total less than 64 MiB. ``0``: in this process.
    scheduler
        Address of a running dask scheduler (``tcp://host:8786``) or path of its scheduler
        file (``.json``).
    memory_limit
        Memory limit of each local worker (bytes or text such as ``"8GB"``); the worker is
        restarted above it. Default: the memory budget, so that a lone large slide may use
        the whole machine.
    memory_budget
        Total memory the slides in flight may claim (their summed estimates). Default for
        a local cluster: the machine's available memory less the workers' own footprint
        (capped at ``workers x memory_limit``); for an existing cluster: no cap (use
        ``MEM`` worker resources, see the module documentation).
    threads_per_worker
        Threads one slide's conversion may use on a worker (count parser, image pyramid,
        Zarr codecs); each worker converts one slide at a time per dask thread. Default:
        on a local cluster the cores divided among the workers (as
        :class:`distributed.LocalCluster` does: one thread each with a worker per core),
        on an existing cluster 1 (a worker runs as many slides at once as it has threads).
        Not used by ``workers=0``, which uses every core for one slide after another.
    overwrite
        Re-convert complete stores.
    retry_failed
        Convert only the slides recorded as failed in the manifest (within ``slides``
        when given).
    progress
        Show a progress bar over slides and input bytes (``None``: the global setting).
    **kwargs
        Passed to :func:`convert_slide` (``checksums``, ``max_pixels``, ...).

    Returns
    -------
    One :class:`SlideResult` per slide, in the order of ``slides``. The run succeeded when
    no result has status ``"failed"``.

    Raises
    ------
    StimageError
        If another run is writing to ``out_dir``, ``retry_failed`` is set and there is no
        manifest, the scheduler cannot be reached, or the workers cannot see ``root``.

    """
    from dask.utils import parse_bytes

    if sum(x is not None for x in (client, scheduler, workers)) > 1:
        raise ValueError("give at most one of client, scheduler and workers")
    if workers is not None and workers < 0:
        raise ValueError("workers must be >= 0")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ValueError("threads_per_worker must be >= 1")
    # absolute paths: the tasks may run in other processes or on other machines
    root, out_dir = Path(root).absolute(), Path(out_dir).absolute()
    if not root.is_dir():
        raise StimageError(f"dataset root {root} does not exist or is not a folder")
    limit = parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit
    budget = parse_bytes(memory_budget) if isinstance(memory_budget, str) else memory_budget
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    with _run_lock(out_dir):
        data = _load_manifest(out_dir)
        previous = data.get("slides", {})
        if retry_failed:
            if not (out_dir / MANIFEST_NAME).is_file():
                raise StimageError(f"{out_dir / MANIFEST_NAME}: no run manifest, so no failed slides to retry")
            failed = [s for s, r in previous.items() if r.get("status") == "failed"]
            ids = [s for s in select_slides(root, list(slides)) if s in set(failed)] if slides is not None else failed
            logger.info("retrying %d failed slide(s)", len(ids))
        else:
            ids = select_slides(root, list(slides) if slides is not None else None)
        run = {"started_at": _now(), "host": socket.gethostname(), "pid": os.getpid(), "n_selected": len(ids)}
        manifest = _Manifest(out_dir, root, run, data)
        _cleanup_partials(out_dir)

        meta_rows = _catalogue_rows(root)
        results: dict[str, SlideResult] = {}
        plan: list[SlideCost] = []
        for slide in ids:
            try:
                dest = store_path(out_dir, slide)
            except StimageError as e:
                results[slide] = SlideResult(slide, "failed", error=str(e), finished_at=_now())
                manifest.slides[slide] = results[slide].to_record()
                continue
            if not overwrite:
                finish_table_swap(dest)
            if not overwrite and is_complete(dest):
                res = _skipped_result(root, slide, dest, previous.get(slide, {}))
                results[slide] = res
                manifest.slides[slide] = res.to_record()
                continue
            row = meta_rows.get(slide, {})
            plan.append(estimate_cost(root, slide, tech=row.get("tech"), spots=row.get("spot_num"), genes=row.get("gene_num")))
        n_skipped = sum(r.status == "skipped" for r in results.values())
        if n_skipped:
            logger.info("%d slide(s) already converted: skipped (use overwrite to redo them)", n_skipped)
        plan.sort(key=lambda c: (-c.memory, -c.bytes_in, c.slide))
        total_in = sum(c.bytes_in for c in plan)
        mode = _choose_mode(plan, client, scheduler, workers, total_in)
        run.update(mode=mode, n_to_convert=len(plan))
        manifest.save()

        if plan:
            logger.info(
                "converting %d slide(s), %.1f MB of input, largest estimated peak memory %.2f GiB",
                len(plan), total_in / 1e6, plan[0].memory / 2**30,
            )
            with contextlib.ExitStack() as stack:
                if mode == "serial":
                    stream = _run_serial(root, out_dir, plan, kwargs)
                else:
                    slots = budget_eff = None
                    threads = threads_per_worker or 1
                    if mode == "local":
                        n = workers or max(1, min(_cpu_count(), len(plan)))
                        threads = threads_per_worker or max(1, _cpu_count() // n)
                        machine = _usable_memory() - n * WORKER_BASE
                        budget_eff = budget if budget is not None else max(machine, 1)
                        per_worker = limit if limit is not None else max(budget_eff, WORKER_BASE + plan[0].memory)
                        budget_eff = min(budget_eff, n * per_worker) if limit is not None else budget_eff
                        big = [c.slide for c in plan if c.memory + WORKER_BASE > per_worker]
                        if big:
                            logger.warning(
                                "%d slide(s) are estimated to need more than the %.1f GiB worker memory limit "
                                "(largest %s, %.1f GiB); they may be killed",
                                len(big), per_worker / 2**30, big[0], plan[0].memory / 2**30,
                            )
                        cl = stack.enter_context(_local_client(n, int(per_worker), threads))
                        slots = n
                        run.update(workers=n, memory_limit=int(per_worker), memory_budget=int(budget_eff))
                    else:
                        cl = client if client is not None else stack.enter_context(_remote_client(scheduler))
                        _check_workers_see(cl, [root, out_dir])
                        if budget is not None:
                            budget_eff = budget
                            slots = max(1, sum(int(w.get("nthreads", 1)) for w in _workers_info(cl).values()))
                        run.update(scheduler=str(cl.scheduler.address), memory_budget=budget_eff)
                    run.update(threads_per_worker=threads)
                    manifest.save()
                    stream = _run_dask(cl, root, out_dir, plan, kwargs, slots=slots, budget=budget_eff, threads=threads)
                advance = stack.enter_context(_run_progress(len(plan), total_in, progress_enabled(progress)))
                for rec in stream:
                    res = _result_of(rec)
                    results[res.slide] = res
                    manifest.update(res)
                    advance(res.bytes_in or 0)
                    if res.status == "failed":
                        logger.error("%s: %s", res.slide, res.error)
                    else:
                        logger.info("%s: converted in %.1f s", res.slide, res.seconds)

        run.update(
            finished_at=_now(),
            seconds=round(time.perf_counter() - t_start, 3),
            **{f"n_{s}": sum(r.status == s for r in results.values()) for s in ("converted", "skipped", "failed")},
        )
        manifest.save()
    return [results[s] for s in ids]


def _catalogue_rows(root: Path) -> dict[str, dict[str, Any]]:
    """``tech``, ``spot_num``, ``gene_num`` per slide from the metadata table (if any)."""
    meta = find_metadata(root)
    if meta is None:
        return {}
    from ._metadata import read_metadata

    try:
        table = read_metadata(meta)
    except StimageError as e:
        logger.warning("metadata table unreadable, cost estimates come from the files: %s", e)
        return {}
    out: dict[str, dict[str, Any]] = {}
    for slide, row in table[["tech", "spot_num", "gene_num"]].iterrows():
        rec: dict[str, Any] = {}
        for k, v in row.items():
            try:
                if v is not None and v == v:  # not NA
                    rec[str(k)] = str(v) if k == "tech" else int(v)
            except (TypeError, ValueError):
                continue
        out[str(slide)] = rec
    return out


def _choose_mode(plan: list[SlideCost], client: Any, scheduler: str | None, workers: int | None, total_in: int) -> str:
    if client is not None or scheduler is not None:
        return "cluster"
    if workers == 0:
        return "serial"
    if workers is None and (len(plan) <= 1 or _cpu_count() <= 1 or total_in < AUTO_SERIAL_BYTES):
        return "serial"
    return "local"
