"""Writing and reading converted slides: atomic writes and the completion marker."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._constants import UNS_KEY
from .._errors import IncompleteStoreError, StimageError
from .._logging import logger

__all__ = ["cleanup_partial", "is_complete", "read", "store_attrs", "write"]

MARKER = "complete"
_TMP_TAG = ".tmp-"
_TRASH_TAG = ".trash-"


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
        A ``.zarr`` store folder (it need not exist).

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
    path = Path(path)
    if not path.is_dir():
        return False
    return bool(store_attrs(path).get(MARKER, False))


def _set_marker(path: Path, value: bool) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs.asdict()
    meta = dict(attrs.get(UNS_KEY, {}))
    meta[MARKER] = value
    meta["completed_at"] = datetime.now(UTC).isoformat(timespec="seconds") if value else None
    group.attrs.update({UNS_KEY: meta})


#: Journal of an unfinished table swap in ``attrs["stimage"]`` (see
#: :mod:`stimage_sd.tl._writeback`): the sibling folders it names are not garbage.
PENDING_KEY = "pending_table"


def journaled_siblings(path: str | Path) -> set[str]:
    """Names of the sibling folders that an unfinished table swap of ``path`` still needs."""
    pending = store_attrs(path).get(PENDING_KEY) if Path(path).is_dir() else None
    if not isinstance(pending, dict):
        return set()
    return {str(pending[k]) for k in ("tmp", "trash") if pending.get(k)}


def cleanup_partial(path: str | Path) -> list[Path]:
    """Remove temporary siblings left next to ``path`` by interrupted writes.

    Siblings named in an unfinished table swap's journal are kept (they are needed to
    recover the store). Returns the paths removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    keep = journaled_siblings(path)
    for tag in (_TMP_TAG, _TRASH_TAG):
        for p in path.parent.glob(f".{path.name}{tag}*"):
            if p.name in keep:
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        logger.info("removed %d partial write(s) of %s", len(removed), path.name)
    return removed


def write(sdata: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a SpatialData object atomically, with a completion marker written last.

    The store is written to a temporary sibling (``.<name>.tmp-<id>``); the completion
    marker (``attrs["stimage"]["complete"]``) is set after every element is on disk;
    then the folder is renamed into place. A reader therefore never sees a half-written
    store under ``path``, and a store without the marker is never taken as a result.

    Multiscale images built by the converter (:func:`stimage_sd.io._pyramid.multiscale_image`)
    are written level by level in bounded memory (level 0 from its lazy source, each
    further level from the level written before it); other elements by
    :meth:`spatialdata.SpatialData.write`.

    Parameters
    ----------
    sdata
        The :class:`spatialdata.SpatialData` to write.
    path
        Destination ``.zarr`` folder.
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    ``path``.

    Raises
    ------
    StimageError
        If ``path`` exists and ``overwrite`` is not set.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read_slide(root, "GSE000001_GSM0000001")
    >>> summary = ssd.tl.run_pipeline(sdata, n_domains=3)
    >>> path = ssd.io.write(sdata, "stores/GSE000001_GSM0000001_analysed.zarr", overwrite=True)
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise StimageError(f"{path} already exists (use overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_TAG}{uuid.uuid4().hex[:8]}")
    attrs = dict(sdata.attrs.get(UNS_KEY, {}))
    attrs[MARKER] = False
    sdata.attrs[UNS_KEY] = attrs
    try:
        _write_elements(sdata, tmp)
        _set_marker(tmp, True)
        if path.exists():
            trash = path.with_name(f".{path.name}{_TRASH_TAG}{uuid.uuid4().hex[:8]}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sdata.attrs[UNS_KEY][MARKER] = True
    return path


def _write_elements(sdata: Any, tmp: Path) -> None:
    """Write every element into the new store ``tmp``; chunked pyramids level by level."""
    import spatialdata as sd

    from ._pyramid import consolidate, is_chunked_pyramid, write_multiscale_image

    chunked = {k: v for k, v in sdata.images.items() if is_chunked_pyramid(v)}
    if not chunked:
        sdata.write(tmp, overwrite=False)
        return
    rest = sd.SpatialData(
        images={k: v for k, v in sdata.images.items() if k not in chunked},
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes=dict(sdata.shapes),
        tables=dict(sdata.tables),
        attrs=sdata.attrs,
    )
    rest.write(tmp, overwrite=False, consolidate_metadata=False)
    for name, image in chunked.items():
        write_multiscale_image(tmp, name, image)
    consolidate(tmp)


def read(path: str | Path, *, selection: tuple[str, ...] | None = None, check: bool = True) -> Any:
    """Read a converted slide back.

    Parameters
    ----------
    path
        A ``.zarr`` store written by :func:`stimage_sd.io.convert_slide`.
    selection
        Element types to read (``("images", "shapes", "tables")``), as in
        :func:`spatialdata.read_zarr`.
    check
        Refuse a store without the completion marker.

    Returns
    -------
    The :class:`spatialdata.SpatialData`.

    Raises
    ------
    IncompleteStoreError
        If the store lacks its completion marker (an interrupted write).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    >>> tables = ssd.io.read("stores/GSE000001_GSM0000001.zarr", selection=("tables",))
    """
    import spatialdata as sd

    path = Path(path)
    if not path.is_dir():
        raise StimageError(f"{path}: no such store")
    if check and not is_complete(path):
        raise IncompleteStoreError(
            f"{path}: store has no completion marker (interrupted or foreign write); "
            "convert the slide again"
        )
    return sd.read_zarr(path, selection=selection)
