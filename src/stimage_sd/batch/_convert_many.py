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
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._logging import logger, progress_enabled
from .._utils import cpu_count
from ..errors import StimageError
from ..io._convert import finish_table_swap, store_path
from ..io._layout import find_metadata, list_slides
from ..io._transaction import WRITE_BACK_OPERATIONS, is_complete, lock_holder
from ._cost import AUTO_SERIAL_BYTES, WORKER_BASE, SlideCost, estimate_cost
from ._manifest import (
    MANIFEST_NAME,
    Manifest,
    SlideResult,
    cleanup_partials,
    load_manifest,
    now,
    run_lock,
    skipped_result,
)
from ._workers import (
    check_workers_see,
    local_client,
    remote_client,
    result_of,
    run_dask,
    run_progress,
    run_serial,
    usable_memory,
    workers_info,
)

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
        from ..io._metadata import read_metadata

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
        Passed to :func:`convert_slide` (``checksums``, ``gene_index``, ``max_pixels``, ...).

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
    if out_dir.exists() and not out_dir.is_dir():
        raise StimageError(f"{out_dir}: the output path exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    with run_lock(out_dir):
        data = load_manifest(out_dir)
        previous = data.get("slides", {})
        if retry_failed:
            if not (out_dir / MANIFEST_NAME).is_file():
                raise StimageError(f"{out_dir / MANIFEST_NAME}: no run manifest, so no failed slides to retry")
            failed = [s for s, r in previous.items() if r.get("status") == "failed"]
            ids = [s for s in select_slides(root, list(slides)) if s in set(failed)] if slides is not None else failed
            logger.info("retrying %d failed slide(s)", len(ids))
        else:
            ids = select_slides(root, list(slides) if slides is not None else None)
        run = {"started_at": now(), "host": socket.gethostname(), "pid": os.getpid(), "n_selected": len(ids)}
        manifest = Manifest(out_dir, root, run, data)
        cleanup_partials(out_dir)

        meta_rows = _catalogue_rows(root)
        results: dict[str, SlideResult] = {}
        plan: list[SlideCost] = []
        for slide in ids:
            try:
                dest = store_path(out_dir, slide)
            except StimageError as e:
                results[slide] = SlideResult(slide, "failed", error=str(e), finished_at=now())
                manifest.slides[slide] = results[slide].to_record()
                continue
            holder = None if overwrite else lock_holder(dest)
            if holder is not None and holder.get("operation") in WRITE_BACK_OPERATIONS:
                # an analysis is writing its results into this (complete) store: leave it
                logger.info("%s: being written by %s; skipped", slide, holder.get("command") or holder.get("operation"))
                res = skipped_result(root, slide, dest, previous.get(slide, {}))
                results[slide] = res
                manifest.slides[slide] = res.to_record()
                continue
            if not overwrite and holder is None:
                finish_table_swap(dest)
            if not overwrite and is_complete(dest):
                res = skipped_result(root, slide, dest, previous.get(slide, {}))
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
                    stream = run_serial(root, out_dir, plan, kwargs)
                else:
                    slots = budget_eff = None
                    threads = threads_per_worker or 1
                    if mode == "local":
                        n = workers or max(1, min(cpu_count(), len(plan)))
                        threads = threads_per_worker or max(1, cpu_count() // n)
                        machine = usable_memory() - n * WORKER_BASE
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
                        cl = stack.enter_context(local_client(n, int(per_worker), threads))
                        slots = n
                        run.update(workers=n, memory_limit=int(per_worker), memory_budget=int(budget_eff))
                    else:
                        cl = client if client is not None else stack.enter_context(remote_client(scheduler))
                        check_workers_see(cl, [root, out_dir])
                        if budget is not None:
                            budget_eff = budget
                            slots = max(1, sum(int(w.get("nthreads", 1)) for w in workers_info(cl).values()))
                        run.update(scheduler=str(cl.scheduler.address), memory_budget=budget_eff)
                    run.update(threads_per_worker=threads)
                    manifest.save()
                    stream = run_dask(cl, root, out_dir, plan, kwargs, slots=slots, budget=budget_eff, threads=threads)
                advance = stack.enter_context(run_progress(len(plan), total_in, progress_enabled(progress)))
                for rec in stream:
                    res = result_of(rec)
                    results[res.slide] = res
                    manifest.update(res)
                    advance(res.bytes_in or 0)
                    if res.status == "failed":
                        logger.error("%s: %s", res.slide, res.error)
                    else:
                        logger.info("%s: converted in %.1f s", res.slide, res.seconds)

        run.update(
            finished_at=now(),
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
    from ..io._metadata import read_metadata

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
    if workers is None and (len(plan) <= 1 or cpu_count() <= 1 or total_in < AUTO_SERIAL_BYTES):
        return "serial"
    return "local"
