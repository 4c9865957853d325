"""Writing whole Zarr v3 shards directly, for arrays of many small chunks.

Zarr-python encodes every inner chunk of a shard through its asynchronous codec
pipeline, which costs as much as compressing the chunk itself when chunks are single
patches. For the common case of a patch store (a local store, ``sharding_indexed`` with
``bytes`` + optional ``zstd`` or ``blosc`` inner codecs and ``bytes`` + ``crc32c`` index codecs at the
end), a whole shard is encoded here instead, following the sharding specification
(https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/v1.0.html):
the encoded inner chunks one after the other, then the index of ``(offset, nbytes)``
``uint64`` little-endian pairs in C order of the inner-chunk grid, then the CRC32C of the
index. The file is written to a temporary name and renamed into place. Zarr reads the
result like any shard; anything else falls back to a normal Zarr write.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from ..io._transaction import atomic_path

__all__ = ["shard_writer"]


def shard_writer(arr: Any) -> Callable[[int, np.ndarray, Executor | None], None] | None:
    """A function writing whole shards of ``arr``, or ``None`` if ``arr`` is not supported.

    The function takes ``(shard index, data of exactly one shard, executor)``; the
    executor (optional) compresses inner chunks in parallel.
    """
    try:
        import google_crc32c
        from numcodecs import Blosc, Zstd
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr layout changed
        return None
    try:
        codecs = arr.metadata.codecs
        store = arr.store_path.store
    except AttributeError:  # pragma: no cover - not a zarr v3 array
        return None
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or not isinstance(store, LocalStore):
        return None
    sc = codecs[0]
    if getattr(sc.index_location, "value", sc.index_location) != "end":
        return None
    idx = list(sc.index_codecs)
    if not (
        len(idx) == 2
        and isinstance(idx[0], BytesCodec)
        and getattr(idx[0].endian, "value", idx[0].endian) == "little"
        and isinstance(idx[1], Crc32cCodec)
    ):
        return None
    inner = list(sc.codecs)
    if not inner or not isinstance(inner[0], BytesCodec):
        return None
    endian = getattr(inner[0].endian, "value", inner[0].endian)
    if len(inner) == 1:
        compress = None
    elif len(inner) == 2 and isinstance(inner[1], ZstdCodec):
        compress = Zstd(level=inner[1].level, checksum=inner[1].checksum).encode
    elif len(inner) == 2 and isinstance(inner[1], BloscCodec):
        b = inner[1]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        compress = Blosc(
            cname=getattr(b.cname, "value", b.cname),
            clevel=b.clevel,
            shuffle=shuffle[getattr(b.shuffle, "value", b.shuffle)],
            blocksize=b.blocksize,
        ).encode
    else:
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.itemsize > 1:
        if endian not in ("little", "big"):
            return None
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    chunk_shape = tuple(sc.chunk_shape)
    shard_shape = tuple(arr.metadata.chunk_grid.chunk_shape)
    if any(s % c for s, c in zip(shard_shape, chunk_shape, strict=True)) or any(
        c != s for c, s in zip(chunk_shape[1:], shard_shape[1:], strict=True)
    ):
        return None  # only arrays chunked along the first axis
    k = chunk_shape[0]
    n_inner = shard_shape[0] // k
    root = Path(store.root) / arr.store_path.path

    def encode(block: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(block, dtype=dtype)
        return bytes(raw.data) if compress is None else bytes(compress(raw))

    def write(shard: int, data: np.ndarray, executor: Executor | None = None) -> None:
        if data.shape != shard_shape:
            raise ValueError(f"expected one whole shard {shard_shape}, got {data.shape}")
        blocks = [data[i * k : (i + 1) * k] for i in range(n_inner)]
        parts = list(executor.map(encode, blocks)) if executor is not None else [encode(b) for b in blocks]
        lengths = np.array([len(p) for p in parts], dtype="<u8")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("<u8")
        index = np.stack([offsets, lengths], axis=1).astype("<u8").tobytes()
        crc = np.array([google_crc32c.value(index)], dtype="<u4").tobytes()
        key = arr.metadata.encode_chunk_key((shard,) + (0,) * (len(shard_shape) - 1))
        path = root / key
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            for p in parts:
                fh.write(p)
            fh.write(index)
            fh.write(crc)

    return write
