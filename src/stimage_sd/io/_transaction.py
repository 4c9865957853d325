"""The store transaction protocol: how a converted slide is written and changed safely.

Everything that writes a store, or a file next to one, goes through this module, so that a
reader never mistakes a half-written result for a complete one, and an interrupted write
is either finished, undone or cleaned up by the next run.

Sibling naming
    A store ``S = <out>/<slide>.zarr`` is written into a temporary sibling
    ``.<slide>.zarr.tmp-<id>`` and renamed into place; a replaced store is first renamed to
    ``.<slide>.zarr.trash-<id>``. A table swap uses ``.<slide>.zarr.tmp-table-<id>`` and
    ``.<slide>.zarr.trash-table-<id>``. Plain files (manifests, listings, summaries) are
    written to ``.<name>.tmp-<id>`` and renamed (:func:`atomic_write`).
Completion marker
    ``attrs["stimage"]["complete"]`` in the store's root group, set last
    (:func:`set_marker`); :func:`is_complete` is the only test of a finished store.
Journaled table swap
    :func:`replace_table` / :func:`recover_store` (below).
Consolidation
    Zarr metadata are re-consolidated after elements are added or swapped
    (:func:`consolidate`).
Clean-up
    :func:`cleanup_partial` removes the siblings of interrupted writes, except those that
    an unfinished table swap still needs (:func:`journaled_siblings`).

Table swap
----------
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
   The table's gene index (``S/gene_index/table``, :mod:`stimage_sd.io._gene_index`) is kept
   as it is when the new table's raw counts may be a subset of it (spots or genes filtered:
   the reader aligns by spot id and gene name). Otherwise a new index was written in step 1
   next to the new table, the journal says so (``index``, ``trash_index``), and the old
   index is renamed to ``.<slide>.zarr.trash-index-<id>`` and the new one into place here,
   after the table (or the old one only moved away, when the new raw counts are not CSR).
4. Re-consolidate ``S``'s Zarr metadata (atomic rewrite of ``zarr.json``), then set
   ``complete = True`` and drop the journal (atomic rewrite), then delete the trash.

Between 2 and 4 the store has no completion marker, so :func:`stimage_sd.io.read`
refuses it and :func:`stimage_sd.io.is_complete` is false. :func:`recover_store` then
finishes the swap from the journal: if ``tables/table`` is missing it moves the new
table in (it was complete before the journal was written) or, failing that, the old one
back; it does the same for a journaled gene index (new index with the new table, old index
with the old table); then it re-consolidates and restores the marker. ``stimage-sd analyze`` calls it
on every store before reading. Interrupted writes leave siblings named like those of
:func:`stimage_sd.io.write` (``.<name>.tmp-*``, ``.<name>.trash-*``), which
:func:`cleanup_partial` and :func:`recover_store` remove.

Store lock
----------
Every operation that writes a store — conversion (:func:`stimage_sd.io.convert_slide`,
:func:`stimage_sd.io.write`), the table swap (:func:`replace_table`, :func:`recover_store`)
and a whole analysis (:func:`stimage_sd.workflows.analyze_store`: read, analyse, write back)
— holds the store's lock, the file ``.<slide>.zarr.lock`` next to the store
(:func:`store_lock`). It is created exclusively (``O_CREAT | O_EXCL``) and holds the
holder's host, pid, process start time, operation and command line. A lock is stale when
its holder ran on this host and its pid is gone or now belongs to another process (a
different start time: the pid was reused); a stale lock is taken over. A live holder makes
the next writer wait (``timeout``) or refuse with :class:`~stimage_sd.errors.LockedError`
naming the other run and the lock file. A lock held on another host cannot be checked: it is
never taken over (the message says to delete the file if that run is gone). The locks are
re-entrant within a process. Clean-up of temporary siblings skips stores locked by a live
run (:func:`cleanup_partial`), so a conversion never deletes the temporary table of a
running analysis.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._constants import TABLE_KEY, UNS_KEY
from .._logging import logger
from ..errors import IncompleteStoreError, LockedError, StimageError
from ._checksums import CHECKSUM_KEY, SCHEME, table_record
from ._gene_index import GENE_INDEX, index_mismatch, write_gene_index

__all__ = [
    "MARKER",
    "PENDING_KEY",
    "TMP_TAG",
    "TRASH_TAG",
    "WRITE_BACK_OPERATIONS",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "cleanup_partial",
    "consolidate",
    "is_complete",
    "journaled_siblings",
    "lock_holder",
    "lock_path",
    "recover_store",
    "remove_stale_lock",
    "replace_table",
    "set_marker",
    "sibling_stem",
    "store_attrs",
    "store_lock",
    "temp_sibling",
]

#: Key of the completion marker in ``attrs["stimage"]``.
MARKER = "complete"
#: Tags of temporary and trash siblings (``.<name>.tmp-<id>``, ``.<name>.trash-<id>``).
TMP_TAG = ".tmp-"
TRASH_TAG = ".trash-"


def temp_sibling(path: str | Path, tag: str = TMP_TAG, kind: str = "") -> Path:
    """A fresh, unique sibling name of ``path``: ``.<name><tag>[<kind>-]<id>``.

    Parameters
    ----------
    path
        The final path.
    tag
        :data:`TMP_TAG` or :data:`TRASH_TAG`.
    kind
        Optional infix (``"table"`` for a table swap).

    Returns
    -------
    The sibling path (not created).

    Examples
    --------
    >>> from stimage_sd.io._transaction import temp_sibling
    >>> temp_sibling("out/a.zarr").name.startswith(".a.zarr.tmp-")
    True
    """
    path = Path(path)
    infix = f"{kind}-" if kind else ""
    return path.with_name(f".{sibling_stem(path)}{tag}{infix}{os.getpid()}-{uuid.uuid4().hex[:8]}")


#: Longest name of a sibling: NAME_MAX (255 bytes) on Linux and macOS file systems.
_NAME_MAX = 255
#: Bytes a sibling adds to its stem: "." + ".trash-" + "table-" + pid + "-" + 8 hex digits.
_SIBLING_EXTRA = 1 + len(".trash-") + len("table-") + 10 + 1 + 8


def sibling_stem(path: str | Path) -> str:
    """The part of ``path``'s name its temporary siblings start with (after the dot).

    The name itself when the longest sibling fits in 255 bytes (``NAME_MAX``); for longer
    names (a 240-character slide id), the name cut to fit plus ``~`` and 16 hex digits of
    its SHA-256, keeping the suffix (``.zarr``): deterministic, so that cleanups find the
    siblings again.
    """
    name = Path(path).name
    if len(name.encode()) + _SIBLING_EXTRA <= _NAME_MAX:
        return name
    import hashlib

    suffix = ".zarr" if name.endswith(".zarr") else ""
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    budget = _NAME_MAX - _SIBLING_EXTRA - len(suffix) - 1 - len(digest)
    head = name.encode()[:budget].decode("utf-8", "ignore")
    return f"{head}~{digest}{suffix}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` and rename it onto ``path`` if the block succeeds.

    Works for a file or a folder written at the yielded path. An existing folder at
    ``path`` is first renamed to a trash sibling (``.<name>.trash-<id>``; two renames on one
    file system) and removed after the new one is in place. On an exception the temporary
    is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        The final path; its parent folder is created.

    Examples
    --------
    >>> from pathlib import Path
    >>> from stimage_sd.io._transaction import atomic_path
    >>> with atomic_path("out/hello.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> Path("out/hello.txt").read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            trash = temp_sibling(path, TRASH_TAG)
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write text or bytes to ``path`` atomically (temporary sibling, then rename).

    Parameters
    ----------
    path
        Destination file.
    data
        Text (written as UTF-8) or bytes.
    fsync
        Flush the file to disk before the rename (for journals that must survive a power cut).

    Returns
    -------
    ``path``.
    """
    from .._utils import naming_path

    path = Path(path)
    with atomic_path(path) as tmp, naming_path(path):
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return path


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1, fsync: bool = False) -> Path:
    """Write ``obj`` as JSON (strict: no NaN) to ``path`` atomically; see :func:`atomic_write`."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False, default=str)
    return atomic_write(path, text, fsync=fsync)


def consolidate(store: str | Path) -> None:
    """Rewrite the consolidated metadata of a Zarr store (after elements were added or swapped)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
        group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
        zarr.consolidate_metadata(group.store)


def store_attrs(path: str | Path) -> dict[str, Any]:
    """The ``stimage`` attributes of a store's root group (empty dict if none)."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a zarr group at all
        return {}
    attrs = group.attrs.asdict()
    value = attrs.get(UNS_KEY, {})
    return dict(value) if isinstance(value, dict) else {}


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a store whose completion marker is present.

    Parameters
    ----------
    path
        A ``.zarr`` store folder (it need not exist), or its fsspec URL (one metadata read).

    Returns
    -------
    ``True`` when ``path`` is a folder whose ``attrs["stimage"]["complete"]`` is set
    (written last by :func:`~stimage_sd.io.write`); ``False`` otherwise, for a missing
    path or an interrupted write.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> ssd.io.is_complete(store)
    True
    """
    from ._remote import is_url, remote_is_complete

    if is_url(path):
        return remote_is_complete(str(path))
    path = Path(path)
    if not path.is_dir():
        return False
    return bool(store_attrs(path).get(MARKER, False))


def set_marker(path: Path, value: bool) -> None:
    """Set or clear the completion marker of the store at ``path`` (one atomic metadata write)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs.asdict()
    meta = dict(attrs.get(UNS_KEY, {}))
    meta[MARKER] = value
    meta["completed_at"] = datetime.now(UTC).isoformat(timespec="seconds") if value else None
    group.attrs.update({UNS_KEY: meta})


#: Journal of an unfinished table swap in ``attrs["stimage"]`` (see
#: :func:`replace_table`): the sibling folders it names are not garbage.
PENDING_KEY = "pending_table"


def journaled_siblings(path: str | Path) -> set[str]:
    """Names of the sibling folders that an unfinished table swap of ``path`` still needs."""
    pending = store_attrs(path).get(PENDING_KEY) if Path(path).is_dir() else None
    if not isinstance(pending, dict):
        return set()
    return {str(pending[k]) for k in ("tmp", "trash", "trash_index") if pending.get(k)}


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters escaped (slide ids may hold ``[``)."""
    import glob

    return glob.escape(name)


def cleanup_partial(path: str | Path) -> list[Path]:
    """Remove temporary siblings left next to ``path`` by interrupted writes.

    Siblings named in an unfinished table swap's journal are kept (they are needed to
    recover the store), and nothing is removed while another live run holds the store's
    lock (:func:`store_lock`). Returns the paths removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    holder = lock_holder(path)
    if holder is not None:  # another live run is writing this store: its siblings are not debris
        logger.info("%s: partial writes kept: %s", path.name, _describe(holder, lock_path(path)))
        return removed
    if remove_stale_lock(path):
        removed.append(lock_path(path))
    keep = journaled_siblings(path)
    for tag in (TMP_TAG, TRASH_TAG):
        for p in path.parent.glob(f".{glob_escape(sibling_stem(path))}{tag}*"):
            if p.name in keep:
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        logger.info("removed %d partial write(s) of %s", len(removed), path.name)
    return removed


def _remove_stale_table_siblings(path: Path, keep: frozenset[str] = frozenset()) -> None:
    for tag in (TMP_TAG, TRASH_TAG):
        for kind in ("table", "index"):
            for p in path.parent.glob(f".{glob_escape(sibling_stem(path))}{tag}{kind}-*"):
                if p.name not in keep:
                    shutil.rmtree(p, ignore_errors=True)


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


def _write_table_store(table: Any, dest: Path, table_key: str) -> None:
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd.SpatialData(tables={table_key: table}).write(dest, overwrite=False, consolidate_metadata=False)


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
    >>> ssd.io.recover_store(store)
    'ok'
    """
    path = Path(path)
    if not path.is_dir():
        raise StimageError(f"{path}: no such store")
    with store_lock(path, "recover"):
        return _recover(path)


def _recover(path: Path) -> str:
    meta = store_attrs(path)
    pending = meta.get(PENDING_KEY)
    if not pending:
        _remove_stale_table_siblings(path)
        if meta.get(MARKER):
            return "ok"
        raise IncompleteStoreError(f"{path}: store has no completion marker (interrupted conversion?); convert again")
    table_key = pending.get("table", TABLE_KEY)
    element = path / "tables" / table_key
    tmp = path.parent / pending["tmp"]
    trash = path.parent / pending["trash"]
    new = tmp / "tables" / table_key
    outcome = "finished"
    swapped = not new.is_dir()  # the new table left the sibling: it is the element now
    if not element.exists():
        if new.is_dir():
            os.replace(new, element)
            outcome, swapped = "rolled_forward", True
        elif trash.is_dir():
            os.replace(trash, element)
            outcome = "rolled_back"
        else:
            raise IncompleteStoreError(f"{path}: table {table_key!r} is missing and cannot be recovered")
    trash_index = path.parent / pending["trash_index"] if pending.get("trash_index") else None
    if pending.get("index") and trash_index is not None:
        if outcome != "rolled_back" and swapped:  # the new table is in place: its index too
            _swap_index(path, table_key, tmp, trash_index, str(pending["index"]))
        elif not (path / GENE_INDEX / table_key).exists() and trash_index.is_dir():
            os.replace(trash_index, path / GENE_INDEX / table_key)  # the old table's index back
    consolidate(path)
    changes: dict[str, Any] = {MARKER: True, PENDING_KEY: None}
    if outcome != "rolled_back" and swapped and isinstance(pending.get("checksums"), dict):
        changes[CHECKSUM_KEY] = pending["checksums"]  # the new table is in place
    _update_root_attrs(path, changes)
    shutil.rmtree(trash, ignore_errors=True)
    if trash_index is not None:
        shutil.rmtree(trash_index, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_table_siblings(path)
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

    Raises
    ------
    LockedError
        If another live run holds the store's lock (:func:`store_lock`).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> table = ssd.io.read(store)["table"]
    >>> ssd.pp.qc(table)
    >>> path = ssd.io.replace_table(store, table)
    """
    path = Path(path)
    with store_lock(path, "replace_table"):
        return _replace_table(path, table, table_key)


def _replace_table(path: Path, table: Any, table_key: str) -> Path:
    from .. import __version__

    if store_attrs(path).get(PENDING_KEY):
        recover_store(path)
    if not is_complete(path):
        raise IncompleteStoreError(f"{path}: store has no completion marker; refusing to modify it")
    if not (path / "tables").is_dir():
        raise StimageError(f"{path}: not a SpatialData store with tables")
    _remove_stale_table_siblings(path)
    tmp = temp_sibling(path, TMP_TAG, "table")
    trash = temp_sibling(path, TRASH_TAG, "table")
    trash_index = temp_sibling(path, TRASH_TAG, "index")
    element = path / "tables" / table_key
    try:
        _write_table_store(table, tmp, table_key)  # 1
        entry = table_record(table, tmp / "tables" / table_key)
        index_plan, index_entry = _index_plan(path, table, table_key, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        journal = {"table": table_key, "tmp": tmp.name, "trash": trash.name}
        checksums = dict(store_attrs(path).get(CHECKSUM_KEY) or {})
        tables = dict(checksums.get("tables") or {})
        if entry is None:
            tables.pop(table_key, None)
        else:
            tables[table_key] = entry
        checksums.update({"scheme": checksums.get("scheme", SCHEME), "tables": tables})
        if index_plan is not None:
            journal.update({"index": index_plan, "trash_index": trash_index.name})
            indexes = dict(checksums.get("gene_index") or {})
            if index_entry is None:
                indexes.pop(table_key, None)
            else:
                indexes[table_key] = index_entry
            checksums["gene_index"] = indexes
        journal["checksums"] = checksums  # recover_store records them when it rolls forward
        _update_root_attrs(path, {MARKER: False, PENDING_KEY: journal})  # 2
        if element.exists():  # 3
            os.replace(element, trash)
        os.replace(tmp / "tables" / table_key, element)
        if index_plan is not None:
            _swap_index(path, table_key, tmp, trash_index, index_plan)
        consolidate(path)  # 4
        _update_root_attrs(
            path,
            {
                MARKER: True,
                PENDING_KEY: None,
                CHECKSUM_KEY: checksums,
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
            shutil.rmtree(trash_index, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _index_plan(path: Path, table: Any, table_key: str, tmp: Path) -> tuple[str | None, dict | None]:
    """What a table swap does with the table's gene index, and the new index's checksum entry.

    ``None`` (keep it: the new raw counts may be a subset of it), ``"rewrite"`` (a new index
    was written into ``tmp``) or ``"drop"`` (the new raw counts are not CSR: no index).
    """
    from .._utils import raw_counts

    index_dir = path / GENE_INDEX / table_key
    if not index_dir.is_dir():
        return None, None
    counts = raw_counts(table)
    why = index_mismatch(index_dir, counts, table.obs_names, table.var_names)
    if why is None:
        return None, None
    entry = write_gene_index(tmp, table_key, counts, table.obs_names, table.var_names)
    logger.warning("%s: the gene index does not hold the new table's raw counts (%s); %s", path.name, why,
                   "writing a new one with the table" if entry is not None else "removing it")
    return ("rewrite" if entry is not None else "drop"), entry


def _swap_index(path: Path, table_key: str, tmp: Path, trash_index: Path, plan: str) -> None:
    """Step 3 for the gene index: the old one to ``trash_index``, the new one (``plan == "rewrite"``) in."""
    index_dir = path / GENE_INDEX / table_key
    new = tmp / GENE_INDEX / table_key
    if plan == "rewrite" and not new.is_dir():
        return  # already moved in
    if index_dir.exists() and not trash_index.exists():
        os.replace(index_dir, trash_index)
    if plan == "rewrite":
        os.replace(new, index_dir)


# --------------------------------------------------------------------------- locks

#: Suffix of a store's lock file: ``.<slide>.zarr.lock``.
LOCK_SUFFIX = ".lock"
#: Lock operations that write into a complete store (its table), rather than convert it.
WRITE_BACK_OPERATIONS = frozenset({"analyze", "replace_table", "recover"})
#: A lock file that is still empty this long after its creation is the debris of a crash.
_EMPTY_LOCK_GRACE_S = 10.0
_held: dict[str, int] = {}  # lock paths held by this process -> depth (re-entrancy)
_held_guard = threading.Lock()


def lock_path(store: str | Path) -> Path:
    """The lock file of a store: ``.<name>.lock`` next to it."""
    store = Path(store)
    return store.with_name(f".{sibling_stem(store)}{LOCK_SUFFIX}")


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return None
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # alive, owned by someone else
        return -1.0


def _me(operation: str) -> dict[str, Any]:
    import socket
    import sys

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_started": _process_start(os.getpid()),
        "operation": operation,
        "command": " ".join(sys.argv)[:300],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's record; ``{}`` if unreadable or empty; ``None`` if there is no lock."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        rec = json.loads(text)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _is_live(rec: dict[str, Any], path: Path) -> bool:
    """Whether the run that wrote ``rec`` may still be running."""
    import socket

    if not rec:  # created but not yet written, or written by a crash: live for a moment
        try:
            return time.time() - path.stat().st_mtime < _EMPTY_LOCK_GRACE_S
        except OSError:
            return False
    pid, host = rec.get("pid"), rec.get("host")
    if host != socket.gethostname():
        return True  # cannot be checked from here
    if not isinstance(pid, int):
        return False
    started = _process_start(pid)
    if started is None:
        return False  # no such process
    recorded = rec.get("process_started")
    if started >= 0 and isinstance(recorded, int | float) and abs(started - float(recorded)) > 1.0:
        return False  # the pid now belongs to another process
    return True


def _describe(rec: dict[str, Any], path: Path) -> str:
    if not rec:
        return f"a run that is starting (lock file {path})"
    what = rec.get("operation", "a run")
    cmd = f" `{rec['command']}`" if rec.get("command") else ""
    return (f"{what}{cmd} (pid {rec.get('pid')} on {rec.get('host')}, started {rec.get('started_at')}; "
            f"lock file {path})")


def lock_holder(store: str | Path) -> dict[str, Any] | None:
    """The record of the live run holding ``store``'s lock, or ``None`` (no lock, stale, or this process)."""
    path = lock_path(store)
    rec = _read_lock(path)
    if rec is None or str(path) in _held:
        return None
    return rec if _is_live(rec, path) else None


def remove_stale_lock(store: str | Path) -> bool:
    """Remove the lock file of ``store`` if its holder is gone; return whether one was removed."""
    path = lock_path(store)
    rec = _read_lock(path)
    if rec is None or str(path) in _held or _is_live(rec, path):
        return False
    _take_over(path, rec)
    return True


def _take_over(path: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock, unless another run replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_lock(aside) or {}
    if stale and moved.get("token") != stale.get("token"):  # a fresh lock: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


@contextmanager
def file_lock(path: str | Path, operation: str, *, timeout: float | None = 0, what: str = "") -> Iterator[Path]:
    """Hold the lock file ``path`` (see the module documentation), re-entrant in a process.

    Parameters
    ----------
    path
        The lock file.
    operation
        What the holder does (``"convert"``, ``"analyze"``, ...), shown to a waiting run.
    timeout
        Seconds to wait for a live holder; ``0``: refuse at once; ``None``: wait forever.
    what
        What is locked, for messages (default: the lock file's folder).

    Raises
    ------
    LockedError
        If a live run holds the lock after ``timeout``.
    """
    path = Path(path)
    key = str(path)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    me = _me(operation)
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read_lock(path)
            if other is None:
                continue  # released meanwhile
            if not _is_live(other, path):
                logger.warning("taking over the stale lock %s of %s", path, _describe(other, path))
                _take_over(path, other)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                hint = "" if other.get("host") in (None, me["host"]) else (
                    "; if that run is no longer running, delete the lock file and start again")
                raise LockedError(f"{what or path.parent}: {_describe(other, path)} is writing it; "
                                  f"{operation} refused{hint}") from None
            if not announced:
                logger.warning("%s: waiting for %s", what or path.parent, _describe(other, path))
                announced = True
            time.sleep(0.2)
            continue
        try:
            from .._utils import naming_path

            with naming_path(path), os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
        except BaseException:  # e.g. a full disk: leave no empty lock behind
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        break
    with _held_guard:
        _held[key] = 1
    try:
        yield path
    finally:
        with _held_guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            if (_read_lock(path) or {}).get("token") == me["token"]:
                path.unlink()


@contextmanager
def store_lock(store: str | Path, operation: str, *, timeout: float | None = 0) -> Iterator[Path]:
    """Hold ``store``'s lock (``.<name>.lock``) while writing it; see the module documentation.

    Parameters
    ----------
    store
        The ``.zarr`` store (need not exist; its folder is created).
    operation
        ``"convert"``, ``"analyze"``, ``"write"``, ``"replace_table"``, ``"recover"``.
    timeout
        Seconds to wait for another live writer (``0``: refuse at once, ``None``: wait).

    Raises
    ------
    LockedError
        If another live run holds the lock after ``timeout``; the message names that run
        and the lock file.

    Examples
    --------
    >>> from stimage_sd.io._transaction import store_lock
    >>> with store_lock("stores/a.zarr", "convert"):
    ...     pass
    """
    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(store), operation, timeout=timeout, what=str(store)) as p:
        yield p
