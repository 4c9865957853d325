"""Converting slides of a local dataset root into SpatialData Zarr stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._logging import logger
from ._build import read_slide
from ._layout import validate_slide_id
from ._store import write
from ._transaction import (
    cleanup_partial,
    is_complete,
    journaled_siblings,
    recover_store,
    store_lock,
)

__all__ = ["convert_slide", "store_path"]


def store_path(out_dir: str | Path, slide: str) -> Path:
    """Where :func:`convert_slide` writes a slide: ``<out_dir>/<slide>.zarr``.

    Parameters
    ----------
    out_dir
        Output folder of the conversion.
    slide
        Slide id, verbatim (checked with :func:`validate_slide_id`).

    Returns
    -------
    ``<out_dir>/<slide>.zarr`` (whether or not it exists).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.io.store_path("stores", "GSE000001_GSM0000001").as_posix()
    'stores/GSE000001_GSM0000001.zarr'
    """
    validate_slide_id(slide)
    return Path(out_dir) / f"{slide}.zarr"


def finish_table_swap(dest: Path) -> None:
    """Finish a table swap that an interrupted ``stimage-sd analyze`` left in ``dest``.

    Such a store is incomplete only until the journaled swap is rolled forward or back
    (:func:`stimage_sd.io.recover_store`); reconverting it would throw the analysis away.
    """
    if journaled_siblings(dest):
        recover_store(dest)


def convert_slide(
    root: str | Path,
    slide: str,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    lock_timeout: float | None = 600.0,
    gene_index: bool = True,
    **kwargs: Any,
) -> Path:
    """Convert one slide into ``<out_dir>/<slide>.zarr``.

    The store is written atomically (temporary sibling, completion marker written last,
    then renamed into place). A store that is already complete is left as it is unless
    ``overwrite`` is set; an incomplete one (from an interrupted run) is replaced.

    Parameters
    ----------
    root
        Dataset root in the release layout.
    slide
        Slide id, verbatim.
    out_dir
        Output folder (created if needed).
    overwrite
        Re-convert and replace an existing complete store.
    lock_timeout
        Seconds to wait while another live run (e.g. ``stimage-sd analyze``) holds the
        store's lock (``.<slide>.zarr.lock``); then :class:`~stimage_sd.errors.LockedError`
        naming that run. ``None`` waits as long as it runs.
    gene_index
        Also write the gene index, a gene-major copy of the raw counts that lets
        :func:`stimage_sd.io.read_genes` read a few genes without the whole table (remote
        stores above all); it costs about as many bytes again as the table's counts
        (:doc:`/remote` gives measured figures). Without it the store still reads everywhere.
    **kwargs
        Passed to :func:`stimage_sd.io.read_slide` (``tech``, ``shape``, ``max_pixels``,
        ``checksums``, ``progress``, ...).

    Returns
    -------
    Path of the store.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> sdata = ssd.io.read(store)
    >>> st = ssd.io.convert_slide(root, "Human_Breast_Synth_10142021_ST_A1", "stores", checksums=False)
    """
    dest = store_path(out_dir, slide)
    # one writer per store: an analysis writing it back makes this wait (or, after
    # lock_timeout, refuse naming it) instead of deleting its temporary table
    with store_lock(dest, "convert", timeout=lock_timeout):
        if not overwrite:
            finish_table_swap(dest)
        cleanup_partial(dest)
        if is_complete(dest) and not overwrite:
            logger.info("%s: already converted (%s); skipped", slide, dest)
            return dest
        sdata = read_slide(root, slide, **kwargs)
        write(sdata, dest, overwrite=True, gene_index=gene_index)
    logger.info("%s: written to %s", slide, dest)
    return dest
