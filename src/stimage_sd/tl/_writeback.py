"""Writing analysis results back into a converted store: crash-safe table replacement.

Only the table changes after analysis, and images can be gigabytes, so the store is not
rewritten: the table element is replaced by a swap of directories, journaled in the
store's completion marker, so that a crash at any point (including SIGKILL) leaves the
store either complete and correct (old or new table) or detectably incomplete and
repairable by :func:`recover_store`.

Protocol for ``S = <slide>.zarr`` and its element ``S/tables/table``:

1. Write the new table as a complete SpatialData store in a temporary sibling
   ``.<slide>.zarr.tmp-table-<id>`` (its element ``tables/table``). A crash here leaves
   ``S`` untouched (still complete, old table); the sibling is garbage.
2. Journal: in ``S``'s root attributes, set ``stimage.complete = False`` and record
   ``stimage.pending_table = {table, tmp, trash}`` (one atomic rewrite of ``zarr.json``;
   zarr writes it to a temporary file and renames it).
3. Rename ``S/tables/table`` to the sibling ``.<slide>.zarr.trash-table-<id>``, then the
   new element into ``S/tables/table`` (two atomic renames on one file system).
4. Re-consolidate ``S``'s Zarr metadata (atomic rewrite of ``zarr.json``), then set
   ``complete = True`` and drop the journal (atomic rewrite), then delete the trash.

Between 2 and 4 the store has no completion marker, so :func:`stimage_sd.io.read`
refuses it and :func:`stimage_sd.io.is_complete` is false. :func:`recover_store` then
finishes the swap from the journal: if ``tables/table`` is missing it moves the new
table in (it was complete before the journal was written) or, failing that, the old one
back; then it re-consolidates and restores the marker. ``stimage-sd analyze`` calls it
on every store before reading. Interrupted writes leave siblings named like those of
:func:`stimage_sd.io.write` (``.<name>.tmp-*``, ``.<name>.trash-*``), which
:func:`stimage_sd.io._store.cleanup_partial` and :func:`recover_store` remove.

One writer per store at a time is assumed (no lock).
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

from .._constants import TABLE_KEY, UNS_KEY
from .._errors import IncompleteStoreError, StimageError
from .._logging import logger
from ..io._store import MARKER, PENDING_KEY, is_complete, store_attrs

__all__ = ["PENDING_KEY", "recover_store", "replace_table"]


def _update_root_attrs(path: Path, changes: dict[str, Any]) -> None:
    """Update ``attrs["stimage"]`` of the store's root group (one atomic ``zarr.json`` write)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs.asdict().get(UNS_KEY, {}))
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    group.attrs.update({UNS_KEY: meta})


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        zarr.consolidate_metadata(group.store)


def _write_table_store(table: Any, dest: Path, table_key: str) -> None:
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd.SpatialData(tables={table_key: table}).write(dest, overwrite=False, consolidate_metadata=False)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-table-{uuid.uuid4().hex[:8]}")


def _remove_stale_siblings(path: Path, keep: set[str]) -> None:
    for tag in ("tmp", "trash"):
        for p in path.parent.glob(f".{path.name}.{tag}-table-*"):
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)


def recover_store(path: str | Path) -> str:
    """Finish or undo an interrupted :func:`replace_table` on a store.

    Parameters
    ----------
    path
        A ``.zarr`` store.

    Returns
    -------
    ``"ok"`` (nothing to do), ``"rolled_forward"`` (the new table is in place),
    ``"rolled_back"`` (the previous table is back) or ``"finished"`` (the swap had
    happened; marker restored).

    Raises
    ------
    StimageError
        If ``path`` is not a directory.
    IncompleteStoreError
        If the store is incomplete for another reason (an interrupted conversion), or
        neither table can be found.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> ssd.tl.recover_store(store)
    'ok'
    """
    path = Path(path)
    if not path.is_dir():
        raise StimageError(f"{path}: no such store")
    meta = store_attrs(path)
    pending = meta.get(PENDING_KEY)
    if not pending:
        _remove_stale_siblings(path, set())
        if meta.get(MARKER):
            return "ok"
        raise IncompleteStoreError(f"{path}: store has no completion marker (interrupted conversion?); convert again")
    table_key = pending.get("table", TABLE_KEY)
    element = path / "tables" / table_key
    tmp = path.parent / pending["tmp"]
    trash = path.parent / pending["trash"]
    new = tmp / "tables" / table_key
    outcome = "finished"
    if not element.exists():
        if new.is_dir():
            os.replace(new, element)
            outcome = "rolled_forward"
        elif trash.is_dir():
            os.replace(trash, element)
            outcome = "rolled_back"
        else:
            raise IncompleteStoreError(f"{path}: table {table_key!r} is missing and cannot be recovered")
    _consolidate(path)
    _update_root_attrs(path, {MARKER: True, PENDING_KEY: None})
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_siblings(path, set())
    logger.warning("%s: interrupted table replacement repaired (%s)", path.name, outcome)
    return outcome


def replace_table(path: str | Path, table: Any, *, table_key: str = TABLE_KEY) -> Path:
    """Replace the table element of a complete store, crash-safely.

    See the module documentation for the protocol and its guarantees.

    Parameters
    ----------
    path
        A complete ``.zarr`` store (:func:`stimage_sd.io.convert_slide`).
    table
        The new :class:`anndata.AnnData` (a valid SpatialData ``TableModel``, as read from
        the store and modified by :mod:`stimage_sd.pp` / :mod:`stimage_sd.tl`).
    table_key
        Name of the table element.

    Returns
    -------
    ``path``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> table = ssd.io.read(store)["table"]
    >>> ssd.pp.qc(table)
    >>> path = ssd.tl.replace_table(store, table)
    """
    from datetime import UTC, datetime

    from .. import __version__

    path = Path(path)
    if store_attrs(path).get(PENDING_KEY):
        recover_store(path)
    if not is_complete(path):
        raise IncompleteStoreError(f"{path}: store has no completion marker; refusing to modify it")
    if not (path / "tables").is_dir():
        raise StimageError(f"{path}: not a SpatialData store with tables")
    _remove_stale_siblings(path, set())
    tmp = _sibling(path, "tmp")
    trash = _sibling(path, "trash")
    element = path / "tables" / table_key
    try:
        _write_table_store(table, tmp, table_key)  # 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        journal = {"table": table_key, "tmp": tmp.name, "trash": trash.name}
        _update_root_attrs(path, {MARKER: False, PENDING_KEY: journal})  # 2
        if element.exists():  # 3
            os.replace(element, trash)
        os.replace(tmp / "tables" / table_key, element)
        _consolidate(path)  # 4
        _update_root_attrs(
            path,
            {
                MARKER: True,
                PENDING_KEY: None,
                "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "table_replaced_by": f"stimage_sd {__version__}",
            },
        )
    except Exception:
        # an ordinary error (disk full, ...): finish or undo now rather than leave it
        if store_attrs(path).get(PENDING_KEY):
            recover_store(path)
        raise
    finally:
        if not store_attrs(path).get(PENDING_KEY):
            shutil.rmtree(trash, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    return path
