"""Writing and reading converted slides (see :mod:`stimage_sd.io._transaction` for the protocol)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._constants import UNS_KEY
from ..errors import IncompleteStoreError, StimageError
from ._checksums import CHECKSUM_KEY, SCHEME, table_record
from ._transaction import (
    MARKER,
    _update_root_attrs,
    atomic_path,
    consolidate,
    is_complete,
    set_marker,
    store_lock,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read", "resolve_stores", "write"]


def write(sdata: SpatialData, path: str | Path, *, overwrite: bool = False, gene_index: bool = True) -> Path:
    """Write a SpatialData object atomically, with a completion marker written last.

    The store is written to a temporary sibling (``.<name>.tmp-<id>``); with ``gene_index``
    each table whose raw counts are CSR also gets its gene index, a gene-major copy of the
    raw counts beside the SpatialData elements (``gene_index/<table>``, read by
    :func:`~stimage_sd.io.read_genes`; :mod:`stimage_sd.io._gene_index`); content checksums
    of the raw counts of each table, of each gene index and of every level of the
    converter's images are recorded in ``attrs["stimage"]["checksums"]``
    (:mod:`stimage_sd.io._checksums`), which :func:`~stimage_sd.io.validate` checks; the completion
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
    gene_index
        Write the gene index of each table (about as many bytes again as the table's raw
        counts; see :doc:`/remote`).

    Returns
    -------
    ``path``.

    Raises
    ------
    StimageError
        If ``path`` exists and ``overwrite`` is not set.
    LockedError
        If another live run holds the store's lock
        (:func:`stimage_sd.io._transaction.store_lock`).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> sdata = ssd.io.read_slide(root, "GSE000001_GSM0000001")
    >>> summary = ssd.tl.run_pipeline(sdata, n_domains=3)
    >>> path = ssd.io.write(sdata, "analysed/GSE000001_GSM0000001.zarr", overwrite=True)
    """
    path = Path(path)
    with store_lock(path, "write"):
        return _write(sdata, path, overwrite, gene_index)


def _write(sdata: SpatialData, path: Path, overwrite: bool, gene_index: bool = True) -> Path:
    if path.exists() and not overwrite:
        raise StimageError(f"{path} already exists (use overwrite=True to replace it)")
    attrs = dict(sdata.attrs.get(UNS_KEY, {}))
    attrs[MARKER] = False
    sdata.attrs[UNS_KEY] = attrs
    with atomic_path(path) as tmp:  # an existing store is swapped out through a trash sibling
        record = _write_elements(sdata, tmp)
        if gene_index:
            _write_gene_indexes(record, sdata, tmp)
        _update_root_attrs(tmp, {CHECKSUM_KEY: record})
        set_marker(tmp, True)
    sdata.attrs[UNS_KEY][MARKER] = True
    return path


def _write_elements(sdata: SpatialData, tmp: Path) -> dict:
    """Write every element into the new store ``tmp``; chunked pyramids level by level.

    Returns the content checksums of what was written (:mod:`stimage_sd.io._checksums`).
    """
    import spatialdata as sd

    from ._pyramid import is_chunked_pyramid, write_multiscale_image

    record: dict = {"scheme": SCHEME, "tables": {}, "images": {}}
    chunked = {k: v for k, v in sdata.images.items() if is_chunked_pyramid(v)}
    if not chunked:
        sdata.write(tmp, overwrite=False)
        _record_tables(record, sdata, tmp)
        return record
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
        record["images"][name] = write_multiscale_image(tmp, name, image)
    consolidate(tmp)
    _record_tables(record, sdata, tmp)
    return record


def _write_gene_indexes(record: dict, sdata: SpatialData, store: Path) -> None:
    """Write the gene index of every table with CSR raw counts, then re-consolidate the metadata."""
    from .._utils import raw_counts
    from ._gene_index import write_gene_index

    written = {}
    for key, table in sdata.tables.items():
        entry = write_gene_index(store, key, raw_counts(table), table.obs_names, table.var_names)
        if entry is not None:
            written[key] = entry
    if written:
        record["gene_index"] = written
        consolidate(store)


def _record_tables(record: dict, sdata: SpatialData, store: Path) -> None:
    for key, table in sdata.tables.items():
        entry = table_record(table, store / "tables" / key)
        if entry is not None:
            record["tables"][key] = entry


def read(
    path: str | Path,
    *,
    selection: tuple[str, ...] | None = None,
    check: bool = True,
    storage_options: dict | None = None,
) -> SpatialData:
    """Read a converted slide back, from a folder or from any fsspec URL.

    A URL (``hf://datasets/<repo>/<slide>.zarr``, ``s3://...``, ``https://...``,
    ``file://...``) is opened lazily: the table and the shapes are read, image chunks are
    fetched when a computation touches them (see :doc:`/remote`).

    Parameters
    ----------
    path
        A ``.zarr`` store written by :func:`stimage_sd.io.convert_slide`, or its URL.
    selection
        Element types to read (``("images", "shapes", "tables")``), as in
        :func:`spatialdata.read_zarr`.
    check
        Refuse a store without the completion marker.
    storage_options
        fsspec filesystem options for a URL (credentials, ``endpoint``, ``token``); for
        ``hf://`` use :func:`stimage_sd.hub.storage_options`. ``None``: fsspec's defaults
        (``hf://``: ``HF_ENDPOINT``/``HF_TOKEN`` from the environment).

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
    >>> remote = ssd.io.read("hf://datasets/<user>/<repo>/GSE000001_GSM0000001.zarr")  # doctest: +SKIP
    """
    import spatialdata as sd

    from ._remote import is_url, read_remote

    if is_url(path):
        return read_remote(str(path), selection=selection, check=check, storage_options=storage_options)
    path = Path(path)
    if not path.is_dir():
        raise StimageError(f"{path}: no such store")
    if check and not is_complete(path):
        raise IncompleteStoreError(
            f"{path}: store has no completion marker (interrupted or foreign write); "
            "convert the slide again"
        )
    return sd.read_zarr(path, selection=selection)


def resolve_stores(stores: str | Path | Iterable[str | Path] | Mapping[Any, str | Path]) -> list[Path]:
    """Store paths from a path, a folder of ``*.zarr`` stores, a list, or a ``{slide: path}`` dict.

    Store URLs (``hf://``, ``s3://``, ``https://``...) are kept as strings. Duplicates are
    removed, order is kept.
    """
    from ._remote import is_url

    if isinstance(stores, Mapping):
        items: list[Any] = list(stores.values())
    elif isinstance(stores, str | Path):
        items = [stores]
    else:
        items = list(stores)
    out: list[Path] = []
    for item in items:
        if is_url(item):
            out.append(str(item).rstrip("/"))
            continue
        p = Path(item)
        if p.is_dir() and p.suffix != ".zarr" and not (p / "zarr.json").exists() and not (p / ".zgroup").exists():
            children = sorted(c for c in p.iterdir() if c.suffix == ".zarr" and c.is_dir() and not c.name.startswith("."))
            if not children:
                raise StimageError(f"{p}: not a store and holds no <slide>.zarr stores")
            out.extend(children)
        else:
            out.append(p)
    return list(dict.fromkeys(out))
