"""Workflows over stores: read a converted slide, run the tools, write the results back, draw figures.

Workflows sit above :mod:`stimage_sd.tl`, :mod:`stimage_sd.pl` and :mod:`stimage_sd.io`: the
tools themselves do no I/O. ``stimage-sd analyze`` is a thin layer over
:func:`analyze_store`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._constants import TABLE_KEY
from .._logging import logger
from ..errors import StimageError
from ..io._store import read
from ..io._transaction import recover_store, replace_table, store_lock
from ..io._validate import structure_problems
from ..pl._qc import qc as plot_qc
from ..pl._spatial import spatial
from ..tl._pipeline import run_pipeline

__all__ = ["analyze_store"]


def analyze_store(
    path: str | Path,
    *,
    n_domains: int | None = None,
    seed: int = 0,
    report_dir: str | Path | None = None,
    table_key: str = TABLE_KEY,
    lock_timeout: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Analyse one converted store and write the results back into it.

    Repairs an interrupted earlier write (:func:`stimage_sd.io.recover_store`), reads
    the store, runs :func:`run_pipeline`, replaces the store's table crash-safely
    (:func:`stimage_sd.io.replace_table`) and, with ``report_dir``, writes
    ``<slide>_domains.png`` (domains over the H&E image), ``<slide>_qc.png`` and
    ``<slide>_svg.png`` (the top spatially variable gene) there.

    Parameters
    ----------
    path
        A ``.zarr`` store written by :func:`stimage_sd.io.convert_slide`.
    n_domains, seed, kwargs
        See :func:`run_pipeline`.
    report_dir
        Folder for the figures (created if needed).
    table_key
        Table element.
    lock_timeout
        Seconds to wait while another run writes the store (its lock
        ``.<slide>.zarr.lock``, see :func:`stimage_sd.io._transaction.store_lock`), then
        :class:`~stimage_sd.errors.LockedError` naming it; ``None`` (default) waits.

    Returns
    -------
    :func:`run_pipeline`'s summary plus ``store`` and ``figures`` (paths).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> summary = ssd.workflows.analyze_store(store, n_domains=3, report_dir="report")
    >>> sdata = ssd.io.read(store)
    """
    path = Path(path)
    # the whole read -> analyse -> write back holds the store's lock: a second analysis
    # waits (the first one's result is not lost), a conversion does not touch the live
    # temporary table
    with store_lock(path, "analyze", timeout=lock_timeout):
        return _analyze(path, n_domains=n_domains, seed=seed, report_dir=report_dir, table_key=table_key, **kwargs)


def _analyze(
    path: Path, *, n_domains: int | None, seed: int, report_dir: str | Path | None, table_key: str, **kwargs: Any
) -> dict[str, Any]:
    recover_store(path)
    damage = structure_problems(path)  # never hand a damaged matrix to native code
    if damage:
        raise StimageError(f"{path}: the store is damaged ({damage[0]}"
                           f"{f'; and {len(damage) - 1} more' if len(damage) > 1 else ''}); "
                           "run stimage-sd validate on it, then convert the slide again")
    sdata = read(path)
    t0 = time.perf_counter()
    summary = run_pipeline(sdata, n_domains=n_domains, seed=seed, table_key=table_key, **kwargs)
    t_write = time.perf_counter()
    replace_table(path, sdata.tables[table_key], table_key=table_key)
    summary["seconds"]["write"] = round(time.perf_counter() - t_write, 3)
    summary["store"] = str(path)
    if not summary["slide"]:
        summary["slide"] = path.name.removesuffix(".zarr")
    figures: list[str] = []
    if report_dir is not None:
        report = Path(report_dir)
        report.mkdir(parents=True, exist_ok=True)
        stem = summary["slide"]
        t_fig = time.perf_counter()
        if "domains" not in summary.get("skipped", {}):
            out = report / f"{stem}_domains.png"
            spatial(sdata, "domain", save=out, table_key=table_key, title=f"{stem}: spatial domains")
            figures.append(str(out))
        out = report / f"{stem}_qc.png"
        plot_qc(sdata, save=out, table_key=table_key)
        figures.append(str(out))
        if summary["top_svg"]:
            gene = summary["top_svg"][0]
            out = report / f"{stem}_svg.png"
            spatial(sdata, gene, save=out, table_key=table_key, cmap="magma", title=f"{stem}: {gene} (top Moran's I)")
            figures.append(str(out))
        summary["seconds"]["figures"] = round(time.perf_counter() - t_fig, 3)
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    summary["figures"] = figures
    logger.info("%s: analysed (%d domains%s) in %.1fs", summary["slide"], summary["n_domains"],
                f"; skipped {', '.join(summary['skipped'])}" if summary.get("skipped") else "", summary["seconds"]["total"])
    return summary
