"""The gene index of a store: a gene-major copy of the raw counts, for reading a few genes cheaply.

A table's raw counts are CSR (spot-major, see :doc:`/data_contract`): one gene — a column —
is spread over every row, so reading it needs all of ``indices`` and ``data``: the whole
matrix. The gene index is the same counts stored gene-major (CSC), so a gene is one
contiguous run of values, and :func:`read_genes` reads only the bytes that hold it.

Layout (``<store>/gene_index/<table>/``, an AnnData in anndata's own on-disk encoding, which
:func:`anndata.io.read_zarr` reads as it is)::

    gene_index/table/             attrs["stimage_gene_index"]: version, shape, name digests
        X/                        csc_matrix: indptr (int64), indices (int32), data (raw dtype)
        obs/                      index: the converted slide's spot ids; total_counts
        var/                      index: the table's unique gene names; total_counts

- It sits *beside* the SpatialData elements (``images``, ``shapes``, ``tables``), which
  :func:`spatialdata.read_zarr` and :func:`stimage_sd.io.read` read; they never open it, so
  no in-memory read of a store costs more than before.
- ``indices`` and ``data`` are Zarr v3 arrays of :data:`INDEX_CHUNK`-value chunks inside
  :data:`INDEX_SHARD`-value shard files (the sharding codec, index at the start of each
  shard): a gene is read with a few ranged reads of small chunks, while the store holds a
  few files per 4 M values (what the Hub and object stores like).
- Rows are the spots of the slide *as converted* and stay so: a table written back after
  :func:`stimage_sd.pp.filter_spots` or a gene filter is a subset, and the reader aligns the
  index to the current table by spot id and gene name. A table whose raw counts are not a
  subset of the index (new spots, other values: checked from the per-spot and per-gene totals)
  gets a new index in the same journaled swap (:func:`stimage_sd.io.replace_table`).
- Content checksums are recorded like the table's (``attrs["stimage"]["checksums"]
  ["gene_index"]``, :class:`~stimage_sd.io._checksums.SparseDigest`) and
  :func:`stimage_sd.io.validate` checks them and the values against the table.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._logging import logger
from ..errors import RemoteReadError, StimageError
from ._checksums import SparseDigest, stored_chunks

__all__ = [
    "GENE_INDEX",
    "INDEX_ATTRS",
    "INDEX_CHUNK",
    "INDEX_SHARD",
    "index_mismatch",
    "index_record",
    "names_digest",
    "read_genes",
    "write_gene_index",
]

#: Group of the gene indexes in a store (one subgroup per table).
GENE_INDEX = "gene_index"
#: Key of the index's own attributes on its group.
INDEX_ATTRS = "stimage_gene_index"
#: Values per chunk of ``indices``/``data`` (the unit of a ranged read: 64 KiB of int32).
INDEX_CHUNK = 1 << 14
#: Values per shard file of ``indices``/``data`` (one file on disk per 4 Mi values).
INDEX_SHARD = 1 << 22
#: Non-zero values handled at a time while the index is written (bounded memory: a block
#: is ~12 bytes per value in CSR and again in CSC).
WRITE_BLOCK = 1 << 22
VERSION = 1


def names_digest(names: Sequence[str] | Any) -> str:
    """SHA-256 of a list of names (spot ids or genes), in order."""
    h = hashlib.sha256(f"{len(names)}\n".encode())
    for i in range(0, len(names), 1 << 16):
        h.update("\x00".join(map(str, names[i : i + (1 << 16)])).encode("utf-8", "surrogatepass"))
        h.update(b"\x01")
    return h.hexdigest()


def _codec() -> tuple[Any, ...]:
    """Codecs of ``indices``, ``data`` and ``indptr``: Blosc-zstd with byte shuffle, then CRC-32C.

    Byte shuffle: sorted row ids compress ~2.4x better than with zstd alone. The CRC-32C of
    each chunk makes a damaged chunk fail to decode instead of reading as other counts. Both
    are codecs of the Zarr v3 specification: any Zarr v3 reader decodes them.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    return (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec())


def _sharded_array(group: Any, name: str, n: int, dtype: Any) -> Any:
    chunk = max(1, min(INDEX_CHUNK, n))
    shard = max(chunk, min(INDEX_SHARD, -(-n // chunk) * chunk))
    return group.create_array(
        name,
        shape=(n,),
        dtype=dtype,
        chunks=(chunk,),
        shards={"shape": (shard,), "index_location": "start"},
        compressors=_codec(),
        fill_value=0,
    )


class _ShardWriter:
    """Appends values to a sharded 1-d array, writing whole shards only (no read-modify-write)."""

    def __init__(self, arr: Any):
        self.arr, self.pos = arr, 0
        self.shard = int(arr.shards[0]) if arr.shards else int(arr.chunks[0])
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def append(self, values: np.ndarray) -> None:
        self.pending.append(values)
        self.n_pending += values.size
        if self.n_pending >= self.shard:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.n_pending:
            return
        buf = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = buf.size if final else (buf.size // self.shard) * self.shard
        if n:
            self.arr[self.pos : self.pos + n] = buf[:n]
            self.pos += n
        rest = buf[n:]
        self.pending = [rest] if rest.size else []
        self.n_pending = int(rest.size)

    def close(self) -> None:
        self._flush(final=True)


def write_gene_index(store: str | Path, table_key: str, counts: Any, obs_names: Any, var_names: Any) -> dict | None:
    """Write ``<store>/gene_index/<table_key>`` from a table's raw counts (CSR, in memory).

    Written gene block by gene block (:data:`WRITE_BLOCK` values at a time), so the extra
    memory is bounded whatever the size of the slide. An existing index of that table is
    replaced. The caller makes the write atomic (a temporary store renamed into place, or the
    journaled table swap).

    Parameters
    ----------
    store
        The store folder (a temporary sibling while it is written).
    table_key
        The table the index belongs to.
    counts
        The raw counts (CSR; ``None`` or another format: nothing is written).
    obs_names, var_names
        Spot ids and unique gene names, in the matrix's order.

    Returns
    -------
    The checksum entry (``{"digest", "chunks"}``), or ``None`` when nothing was written.
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import zarr

    if counts is None or not sp.issparse(counts) or counts.format != "csr":
        return None
    X = counts
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    n, g = X.shape
    if n >= 2**31:
        raise StimageError(f"{store}: {n} spots do not fit the gene index's int32 row indices")
    per_gene = np.bincount(X.indices, minlength=g).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_gene)]).astype(np.int64)
    nnz = int(indptr[-1])
    root = zarr.open_group(str(store), mode="r+")
    parent = root.require_group(GENE_INDEX)
    if table_key in parent:
        del parent[table_key]
    group = parent.create_group(table_key)
    mx = group.create_group("X")
    mx.attrs.update({"encoding-type": "csc_matrix", "encoding-version": "0.1.0", "shape": [int(n), int(g)]})
    indices_w = _ShardWriter(_sharded_array(mx, "indices", nnz, np.int32))
    data_w = _ShardWriter(_sharded_array(mx, "data", nnz, X.data.dtype))
    digest = SparseDigest("csc", (n, g), X.data.dtype)
    g0 = 0
    while g0 < g:
        # the next genes up to WRITE_BLOCK values (at least one gene)
        g1 = int(np.searchsorted(indptr, indptr[g0] + WRITE_BLOCK, side="right")) - 1
        g1 = min(g, max(g1, g0 + 1))
        block = X[:, g0:g1].tocsc()
        block.sort_indices()
        rows = block.indices.astype(np.int32, copy=False)
        indices_w.append(rows)
        data_w.append(block.data)
        digest.add(rows, block.data)
        g0 = g1
    indices_w.close()
    data_w.close()
    ip = mx.create_array("indptr", shape=indptr.shape, dtype=np.int64, chunks=(max(1, min(1 << 16, indptr.size)),),
                         compressors=_codec())
    ip[...] = indptr
    spot_totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    gene_totals = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    obs = pd.DataFrame({"total_counts": spot_totals}, index=pd.Index(np.asarray(obs_names, dtype=str), dtype=object))
    var = pd.DataFrame({"total_counts": gene_totals}, index=pd.Index(np.asarray(var_names, dtype=str), dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ad.io.write_elem(group, "obs", obs, dataset_kwargs={"shards": None})
        # small chunks: read_genes reads the totals of the genes it reads back
        ad.io.write_elem(group, "var", var, dataset_kwargs={"shards": None, "chunks": (4096,)})
    group.attrs.update({
        "encoding-type": "anndata",
        "encoding-version": "0.1.0",
        INDEX_ATTRS: {
            "version": VERSION,
            "table": table_key,
            "shape": [int(n), int(g)],
            "nnz": nnz,
            "obs_digest": names_digest(obs.index),
            "var_digest": names_digest(var.index),
        },
    })
    return index_record(Path(store) / GENE_INDEX / table_key, digest.digest(indptr))


def index_record(index_dir: Path, digest: str) -> dict[str, Any]:
    """The checksum entry of a gene index: digest and the number of files of each array."""
    chunks: dict[str, int] = {}
    for part in ("data", "indices", "indptr"):
        found = stored_chunks(index_dir / "X" / part)
        if found is not None:
            chunks[part] = len(found)
    return {"digest": digest, "chunks": chunks}


def _read_totals(index_dir: Path) -> tuple[Any, Any]:
    import zarr
    from anndata.io import read_elem

    group = zarr.open_group(str(index_dir), mode="r")
    return read_elem(group["obs"])["total_counts"], read_elem(group["var"])["total_counts"]


def index_mismatch(index_dir: str | Path, counts: Any, obs_names: Any, var_names: Any) -> str | None:
    """Why a table's raw counts cannot be a subset of the index's (``None``: they may be).

    A cheap test from the names and the per-spot and per-gene totals recorded in the index
    (counts are non-negative, so a subset's totals are at most the index's, and equal where
    nothing along that axis was dropped); :func:`stimage_sd.io.validate` compares every value.
    """
    import scipy.sparse as sp

    index_dir = Path(index_dir)
    if counts is None or not sp.issparse(counts):
        return "the raw counts are not sparse"
    try:
        spots, genes = _read_totals(index_dir)
    except Exception as e:
        return f"the index cannot be read ({type(e).__name__}: {e})"
    rows = spots.index.get_indexer(obs_names)
    cols = genes.index.get_indexer(var_names)
    if (rows < 0).any():
        return f"{int((rows < 0).sum())} spot(s) of the table are not in it"
    if (cols < 0).any():
        return f"{int((cols < 0).sum())} gene(s) of the table are not in it"
    X = counts.tocsr() if counts.format != "csr" else counts
    got_spots = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    got_genes = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    want_spots, want_genes = spots.to_numpy()[rows], genes.to_numpy()[cols]

    def off(got: np.ndarray, want: np.ndarray, exact: bool) -> np.ndarray:
        tol = 1e-6 * np.maximum(np.abs(want), 1.0)
        return np.abs(got - want) > tol if exact else got > want + tol

    if (off(got_spots, want_spots, exact=len(cols) == len(genes))).any():
        return "per-spot totals of the raw counts differ from the index's"
    if (off(got_genes, want_genes, exact=len(rows) == len(spots))).any():
        return "per-gene totals of the raw counts differ from the index's"
    return None


# --------------------------------------------------------------------------- reading
def _open_root(path: str | Path, storage_options: dict | None) -> tuple[Any, str]:
    import zarr

    from ._remote import is_url, open_group

    if is_url(path):
        url = str(path).rstrip("/")
        opts = dict(storage_options or {})
        if url.lower().startswith("hf://"):
            # HfFileSystem reads a byte range through a read-ahead buffer of block_size
            # (5 MiB by default): a ranged read of one 64 KiB chunk would fetch megabytes
            opts.setdefault("block_size", 1)
        return open_group(url, storage_options=opts), url
    p = Path(path)
    if not p.is_dir():
        raise StimageError(f"{p}: no such store")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
        return zarr.open_group(str(p), mode="r"), str(p)


def _as_list(genes: str | Sequence[str]) -> list[str]:
    return [genes] if isinstance(genes, str) else [str(g) for g in genes]


def read_genes(
    path: str | Path,
    genes: str | Sequence[str],
    *,
    table_key: str = "table",
    spatial: bool = False,
    check: bool = True,
    storage_options: dict | None = None,
) -> Any:
    """Raw counts of a few genes for every spot of a store's table, without reading the table's matrix.

    Reads the table's ``obs`` and ``var`` and, from the store's gene index (a gene-major copy
    of the raw counts written at conversion, see :doc:`/data_contract`), only the values of
    the requested genes: for a remote store (``hf://``, ``s3://``, ``https://``) a few ranged
    reads, a small fraction of the store (see :doc:`/remote`). The rows follow the current
    table (a table filtered and written back still works). A store without a gene index
    (converted before stimage_sd wrote one, or with ``gene_index=False``) is read the slow
    way, from the table's whole matrix, with a logged message.

    Parameters
    ----------
    path
        A ``.zarr`` store written by :func:`stimage_sd.io.convert_slide`, or its URL.
    genes
        A gene name (``var_names`` of the table) or a list of them.
    table_key
        The table.
    spatial
        Also read ``obsm["spatial"]`` (pixel centres ``[x, y]``).
    check
        Refuse a store without the completion marker.
    storage_options
        fsspec options for a URL (see :func:`stimage_sd.io.read`).

    Returns
    -------
    :class:`anndata.AnnData` of ``n_obs x len(genes)``: ``X`` the raw counts (CSR, the
    table's raw dtype, whatever ``X`` holds after normalisation), ``obs`` the table's, ``var``
    the table's rows of those genes, in the order asked.

    Raises
    ------
    StimageError
        If a gene is not in the table, there is no such table, or (``check``) the store lacks
        its completion marker.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> store = ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores")
    >>> genes = ssd.io.read(store)["table"].var_names[:2].tolist()
    >>> adata = ssd.io.read_genes(store, genes)
    >>> adata.shape[1]
    2
    >>> remote = ssd.io.read_genes("hf://datasets/<user>/<repo>/GSE000001_GSM0000001.zarr", "GFAP")  # doctest: +SKIP
    """
    import anndata as ad
    import scipy.sparse as sp
    from anndata.io import read_elem

    from .._constants import UNS_KEY
    from ..errors import IncompleteStoreError
    from ._remote import is_url
    from ._transaction import MARKER

    wanted = _as_list(genes)
    if not wanted:
        raise StimageError("read_genes: no gene asked for")
    root, where = _open_root(path, storage_options)
    attrs = dict(root.attrs.asdict().get(UNS_KEY, {}) or {})
    if check and not attrs.get(MARKER, False):
        raise IncompleteStoreError(f"{where}: store has no completion marker (interrupted or foreign write)")
    try:
        tg = root[f"tables/{table_key}"]
    except KeyError:
        raise StimageError(f"{where}: no table {table_key!r}") from None
    try:
        obs = read_elem(tg["obs"])
        var = read_elem(tg["var"])
        obsm = {"spatial": read_elem(tg["obsm/spatial"])} if spatial and "obsm/spatial" in tg else {}
    except RemoteReadError:
        raise
    except Exception as e:
        raise StimageError(f"{where}: cannot read table {table_key!r} ({type(e).__name__}: {e})") from e
    missing = [g for g in wanted if g not in var.index]
    if missing:
        shown = ", ".join(repr(g) for g in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StimageError(f"{where}: gene(s) {shown} not in table {table_key!r}")
    X = None
    index_path = f"{GENE_INDEX}/{table_key}"
    if index_path not in root or (not is_url(path) and not (Path(path) / index_path / "X").is_dir()):
        logger.info("%s: no gene index (converted without one); reading the whole table to get %d gene(s)",
                    where, len(wanted))
    else:
        try:
            X = _from_index(root[index_path], obs.index, var.index, wanted, where)
        except RemoteReadError:
            raise
        except Exception as e:  # a damaged index: the table still has the values
            logger.warning("%s: the gene index cannot be read (%s: %s); reading the whole table instead "
                           "(stimage-sd validate names the damage)", where, type(e).__name__, e)
    if X is None:
        X = _from_table(tg, var.index, wanted)
    X = sp.csr_matrix(X)
    adata = ad.AnnData(X=X, obs=obs, var=var.loc[wanted].copy())
    for k, v in obsm.items():
        adata.obsm[k] = np.asarray(v)
    return adata


class _Damaged(Exception):
    """The gene index read back is not what was written (e.g. a missing shard file read as zeros)."""


def _from_index(group: Any, obs_names: Any, var_names: Any, wanted: list[str], where: str) -> Any:
    """The requested genes' columns (table row order) from the index; ``None`` if it cannot serve them.

    Raises :class:`_Damaged` when what was read contradicts the index's own record: ``indptr``
    not ending at the recorded number of values, row ids not increasing within a gene, or a
    gene's counts not summing to its recorded total (Zarr reads a missing chunk file as
    zeros, so a deleted shard would otherwise pass for zero counts).
    """
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import read_elem

    meta = dict(group.attrs.asdict().get(INDEX_ATTRS, {}) or {})
    if meta.get("version") != VERSION:
        logger.warning("%s: gene index version %r unknown; reading the whole table", where, meta.get("version"))
        return None
    n, g = (int(v) for v in meta["shape"])
    if meta.get("var_digest") == names_digest(var_names):
        index_genes = pd.Index(var_names)
    else:
        index_genes = read_elem(group["var"]).index
    cols = index_genes.get_indexer(wanted)
    if (cols < 0).any():
        logger.warning("%s: %d gene(s) of the table are not in its gene index (the table was written after "
                       "conversion with other genes); reading the whole table", where, int((cols < 0).sum()))
        return None
    if meta.get("obs_digest") == names_digest(obs_names):
        rows = None  # the table holds the converted spots, in order
    else:
        rows = read_elem(group["obs"]).index.get_indexer(obs_names)
        if (rows < 0).any():
            logger.warning("%s: %d spot(s) of the table are not in its gene index (the table was written after "
                           "conversion with other spots); reading the whole table", where, int((rows < 0).sum()))
            return None
    indptr = np.asarray(group["X/indptr"][...], dtype=np.int64)
    if indptr.shape != (g + 1,) or indptr[0] != 0 or indptr[-1] != int(meta["nnz"]) or (np.diff(indptr) < 0).any():
        raise _Damaged(f"indptr does not match the {meta['nnz']} values recorded")
    starts, stops = indptr[cols], indptr[cols + 1]
    lengths = stops - starts
    positions = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)] or [np.zeros(0, np.int64)])
    if positions.size:
        indices = np.asarray(group["X/indices"].oindex[positions])
        data = np.asarray(group["X/data"].oindex[positions])
    else:
        indices = np.zeros(0, np.int32)
        data = np.zeros(0, group["X/data"].dtype)
    sub_ptr = np.concatenate([[0], np.cumsum(lengths)])
    if indices.size:
        step = np.diff(indices.astype(np.int64)) > 0
        inner = np.ones(indices.size - 1, dtype=bool)
        firsts = sub_ptr[1:-1]
        inner[firsts[(firsts > 0) & (firsts < indices.size)] - 1] = False  # a new gene may start anywhere
        if (~step & inner).any() or indices.min() < 0 or indices.max() >= n:
            raise _Damaged("row ids are not increasing within a gene")
    sub = sp.csc_matrix((data, indices, sub_ptr), shape=(n, len(cols)))
    totals = np.asarray(group["var/total_counts"].oindex[cols], dtype=np.float64)
    sums = np.asarray(sub.sum(axis=0), dtype=np.float64).ravel()
    if (np.abs(sums - totals) > 1e-6 * np.maximum(np.abs(totals), 1.0)).any():
        raise _Damaged("counts do not sum to the recorded per-gene totals")
    if rows is not None:
        sub = sub[rows, :]
    logger.debug("%s: %d gene(s) read from the gene index", where, len(wanted))
    return sub


def _from_table(tg: Any, var_names: Any, wanted: list[str]) -> Any:
    from anndata.io import read_elem

    loc = "layers/counts" if "layers/counts" in tg else "X"
    X = read_elem(tg[loc])
    return X[:, var_names.get_indexer(wanted)]
