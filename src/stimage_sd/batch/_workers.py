"""The per-slide task, admission control by expected memory, dask clusters and the progress display."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._logging import logger
from ..errors import StimageError
from ..io._convert import convert_slide, store_path
from ..io._transaction import cleanup_partial
from ._cost import SlideCost
from ._manifest import SlideResult, now, store_result

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
    started, t0 = now(), time.perf_counter()
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
        res = store_result(slide, dest, "converted", **extra)
    except Exception as e:  # one bad slide must not stop the run
        res = SlideResult(slide, "failed", error=_describe(e), **extra)
    res.seconds = round(time.perf_counter() - t0, 3)
    res.finished_at = now()
    rec = res.to_record()
    rec["slide"] = slide
    return rec


def result_of(rec: dict[str, Any]) -> SlideResult:
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


def usable_memory() -> int:
    import psutil

    vm = psutil.virtual_memory()
    return int(min(vm.total * 0.9, vm.available * 0.95))


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
def local_client(n_workers: int, memory_limit: int, threads: int = 1) -> Iterator[Any]:
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
def remote_client(scheduler: str) -> Iterator[Any]:
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


def workers_info(client: Any) -> dict[str, dict[str, Any]]:
    return dict(client.scheduler_info(n_workers=-1).get("workers", {}))


def check_workers_see(client: Any, paths: Sequence[Path]) -> None:
    """Fail early when the workers cannot see the dataset root (no shared file system)."""
    if not workers_info(client):
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


def run_serial(root: Path, out_dir: Path, plan: list[SlideCost], kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for cost in plan:
        yield _convert_task(str(root), cost.slide, str(out_dir), kwargs, cost.bytes_in, cost.memory, False)


def run_dask(
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

    mem_of_worker = [float(w.get("resources", {}).get("MEM", 0)) for w in workers_info(client).values()]
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
                "memory_estimate": cost.memory, "finished_at": now(),
            }
        finally:
            fut.release()


# =====================================================================================
# progress
# =====================================================================================


@contextlib.contextmanager
def run_progress(n_slides: int, n_bytes: int, enabled: bool) -> Iterator[Any]:
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


