"""The patch store: one Zarr group of patches, targets and per-patch metadata.

See :mod:`stimage_sd.ml` for the layout. Appending is per slide and atomic: arrays are
grown and filled first, and the slide is recorded in the group's attributes last. On
open, rows past the last recorded slide (an interrupted append) are cut off.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._logging import logger
from .._utils import cpu_count
from ..errors import StimageError
from ..io._transaction import atomic_path
from ._shards import shard_writer

__all__ = [
    "ATTRS_KEY",
    "EDGE",
    "FLAGS",
    "NO_TISSUE",
    "OBS_COLUMNS",
    "PatchWriter",
    "is_patch_store",
    "read_patch_attrs",
]

#: Root-group attribute holding the store's parameters and its per-slide records.
ATTRS_KEY = "stimage_patches"
FORMAT_VERSION = 1
#: Flag bits of ``obs/flags``.
EDGE = 1
NO_TISSUE = 2
FLAGS: dict[str, int] = {"edge": EDGE, "no_tissue": NO_TISSUE}
#: Per-patch metadata arrays under ``obs/`` and their dtypes.
OBS_COLUMNS: dict[str, Any] = {
    "slide": np.int32,
    "row": np.int64,
    "spot_id": str,
    "label": str,
    "x": np.float64,
    "y": np.float64,
    "flags": np.uint8,
    "tissue_fraction": np.float32,
    "outside_fraction": np.float32,
}
_OBS_CHUNK = 1 << 16
#: Target size of one patch chunk (the unit read for random access) and of one shard file.
_PATCH_CHUNK_BYTES = 128 << 10
_SHARD_BYTES = 32 << 20
_TARGET_CHUNK_BYTES = 16 << 10


def chunking(px: int, shard: int | None = None) -> tuple[int, int]:
    """Patches per chunk and per shard for ``px``-pixel patches.

    A chunk (what a random read decodes) holds ``max(1, 128 KiB // patch bytes)`` patches:
    one patch from 210 px up, more for small patches so that per-chunk overhead stays
    small. A shard (one file) holds about 32 MiB, or ``shard`` patches rounded up to a
    whole number of chunks.
    """
    nbytes = px * px * 3
    chunk = max(1, _PATCH_CHUNK_BYTES // nbytes)
    if shard is None:
        n_chunks = max(1, round(_SHARD_BYTES / (chunk * nbytes)))
    else:
        n_chunks = max(1, math.ceil(int(shard) / chunk))
    return chunk, chunk * n_chunks


def _put(arr: Any, fast: Any, s: int, e: int, data: np.ndarray, pool: Any) -> None:
    """Write rows ``[s, e)``: whole shards with ``fast`` (when given), the rest through Zarr."""
    S = int(arr.shards[0]) if arr.shards else int(arr.chunks[0])
    head = min(e, -(-s // S) * S)
    if head > s:
        arr[s:head] = data[: head - s]
    full_end = head + (e - head) // S * S
    if fast is not None:
        for sh in range(head // S, full_end // S):
            fast(sh, data[sh * S - s : (sh + 1) * S - s], pool)
    elif full_end > head:
        arr[head:full_end] = data[head - s : full_end - s]
    if e > full_end:
        arr[full_end:e] = data[full_end - s :]


def _each(fn: Any, items: list[Any]) -> None:
    """Run ``fn`` on every item on a few threads (Zarr metadata and small writes are I/O-bound)."""
    if len(items) <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, len(items))) as pool:
        list(pool.map(fn, items))


def _divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of ``n`` that is at most ``k``."""
    for d in range(min(n, k), 0, -1):
        if n % d == 0:
            return d
    return 1


def _codec(name: str):
    """The Zarr codec of a compression name: ``zstd`` (level 1), ``zstd:N``, ``lz4``, ``none``."""
    from zarr.codecs import BloscCodec, ZstdCodec

    kind, _, level = name.partition(":")
    if kind == "zstd":
        try:
            return ZstdCodec(level=int(level) if level else 1)
        except ValueError:
            pass
    elif name == "lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
    elif name == "none":
        return None
    raise StimageError(f"compression must be 'zstd', 'zstd:LEVEL', 'lz4' or 'none', got {name!r}")


def check_compression(name: str) -> Any:
    """Validate a compression name (raises :class:`StimageError`); returns its codec."""
    return _codec(name)


def read_patch_attrs(path: str | Path) -> dict[str, Any] | None:
    """The patch-store attributes of a folder.

    Parameters
    ----------
    path
        A folder, normally written by :func:`stimage_sd.ml.export_patches`.

    Returns
    -------
    The parameters and per-slide completion records of the store, or ``None`` when
    ``path`` is no patch store.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> attrs = ssd.ml.read_patch_attrs("patches.zarr")  # doctest: +SKIP
    """
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception:
        return None
    a = g.attrs.asdict().get(ATTRS_KEY)
    return dict(a) if isinstance(a, dict) else None


def is_patch_store(path: str | Path) -> bool:
    """Whether a folder is a patch store written by :func:`stimage_sd.ml.export_patches`.

    Parameters
    ----------
    path
        The folder to check.

    Returns
    -------
    ``True`` when ``path`` is a folder with patch-store attributes.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.ml.is_patch_store("patches.zarr")  # doctest: +SKIP
    """
    return Path(path).is_dir() and read_patch_attrs(path) is not None


class PatchWriter:
    """Creates, reopens and appends to a patch store (single writer)."""

    def __init__(self, path: Path):
        import zarr

        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r+")
        attrs = read_patch_attrs(self.path)
        if attrs is None:
            raise StimageError(f"{self.path}: not a patch store")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StimageError(f"{self.path}: patch store format {attrs.get('format_version')} is not supported")
        self.attrs = attrs
        self.patches = self.group["patches"]
        self.targets = self.group["targets"]
        self.obs = {k: self.group[f"obs/{k}"] for k in OBS_COLUMNS}
        self._fast = (shard_writer(self.patches), shard_writer(self.targets))
        self._end = self.n_rows
        self._start = self.n_rows
        self._reset_buffers()
        self._truncate(self.n_rows)

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        px: int,
        n_targets: int,
        genes: list[str] | None,
        params: dict[str, Any],
        shard: int | None = None,
        compression: str = "zstd",
    ) -> PatchWriter:
        """Create an empty store (in a temporary sibling, renamed into place when complete).

        See :func:`chunking` for the chunk and shard sizes.
        """
        import zarr

        chunk, shard = chunking(px, shard)
        t_chunk = _divisor_at_most(shard, max(1, _TARGET_CHUNK_BYTES // (4 * max(n_targets, 1))))
        path = Path(path)
        if path.exists():
            raise StimageError(f"{path} already exists")
        codec = check_compression(compression)
        comp = {"compressors": codec} if codec is not None else {"compressors": None}
        with atomic_path(path) as tmp:
            g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            g.create_array(
                "patches",
                shape=(0, px, px, 3),
                dtype=np.uint8,
                chunks=(chunk, px, px, 3),
                shards=(shard, px, px, 3),
                dimension_names=("patch", "y", "x", "c"),
                **comp,
            )
            g.create_array(
                "targets",
                shape=(0, n_targets),
                dtype=np.float32,
                chunks=(t_chunk, max(n_targets, 1)),
                shards=(shard, max(n_targets, 1)),
                fill_value=np.nan,
                dimension_names=("patch", "gene"),
                compressors=_codec("zstd"),
            )
            obs = g.create_group("obs")
            for name, dtype in OBS_COLUMNS.items():
                obs.create_array(name, shape=(0,), dtype=dtype, chunks=(_OBS_CHUNK,), dimension_names=("patch",))
            if genes is not None:
                arr = g.create_array("genes", shape=(len(genes),), dtype=str, chunks=(max(len(genes), 1),))
                arr[:] = np.asarray(genes, dtype=object).astype(str)
            g.attrs[ATTRS_KEY] = {
                "format_version": FORMAT_VERSION,
                "stimage_sd_version": __version__,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "params": params,
                "px": int(px),
                "n_targets": int(n_targets),
                "shard": int(shard),
                "chunk": int(chunk),
                "compression": compression,
                "n": 0,
                "slides": [],
            }
        return cls(path)

    # ------------------------------------------------------------------ state
    @property
    def n_rows(self) -> int:
        """Rows of committed (recorded) slides."""
        return int(self.attrs.get("n", 0))

    @property
    def slides(self) -> list[dict[str, Any]]:
        """Per-slide records, in order of appending."""
        return list(self.attrs.get("slides", []))

    @property
    def done(self) -> set[str]:
        """Slide ids already in the store."""
        return {r["slide"] for r in self.slides}

    def _arrays(self) -> list[Any]:
        return [self.patches, self.targets, *self.obs.values()]

    def _truncate(self, n: int) -> None:
        longer = [a for a in self._arrays() if a.shape[0] != n]
        if longer and self.patches.shape[0] > n:
            logger.info("%s: removing %d row(s) of an interrupted append", self.path.name, self.patches.shape[0] - n)
        _each(lambda a: a.resize((n, *a.shape[1:])), longer)
        self._end = n

    # ------------------------------------------------------------------ appending
    def begin(self, n_max: int) -> None:
        """Start a slide of at most ``n_max`` rows (arrays grown once, cut at :meth:`commit`)."""
        self._truncate(self.n_rows)
        self._reset_buffers()
        self._start = self.n_rows
        total = self._start + int(n_max)
        _each(lambda a: a.resize((total, *a.shape[1:])), self._arrays())

    def write(self, patches: np.ndarray, targets: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """Add rows at the end of the current slide.

        Patches and targets are buffered and written in whole shards (a partial shard
        would be rewritten on every call); per-patch metadata is written at :meth:`commit`.
        """
        if not len(patches):
            return
        self._buf.append((patches, targets))
        self._nbuf += len(patches)
        for name in OBS_COLUMNS:
            self._obs_buf[name].append(np.asarray(obs[name]))
        shard = int(self.attrs.get("shard", 256))
        upto = (self._end + self._nbuf) // shard * shard
        if upto > self._end:
            self._flush(upto - self._end)

    def _flush(self, k: int | None = None) -> None:
        if not self._nbuf:
            return
        p = np.concatenate([b[0] for b in self._buf]) if len(self._buf) > 1 else self._buf[0][0]
        t = np.concatenate([b[1] for b in self._buf]) if len(self._buf) > 1 else self._buf[0][1]
        k = len(p) if k is None else k
        s, e = self._end, self._end + k
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(4, cpu_count()))) as pool:
            _put(self.patches, self._fast[0], s, e, p[:k], pool)
            _put(self.targets, self._fast[1], s, e, t[:k], pool)
        self._end = e
        rest = len(p) - k
        self._buf = [(p[k:], t[k:])] if rest else []
        self._nbuf = rest

    def commit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write what is buffered, cut the arrays to the slide's rows, then record the slide.

        The record is written last, so a slide is either entirely in the store or, after
        an interruption, cut off when the store is next opened.
        """
        self._flush()
        n_obs = sum(len(a) for a in self._obs_buf["slide"])
        start, end = self._start, self._end

        def _obs(name: str) -> None:
            arr = self.obs[name]
            if n_obs:
                arr[start : start + n_obs] = np.concatenate(self._obs_buf[name])
            if arr.shape[0] != end:
                arr.resize((end,))

        _each(_obs, list(self.obs))
        _each(lambda a: a.resize((end, *a.shape[1:])), [a for a in (self.patches, self.targets) if a.shape[0] != end])
        record = {
            **record,
            "code": len(self.slides),
            "start": int(self._start),
            "stop": int(self._end),
            "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        attrs = dict(self.attrs)
        attrs["slides"] = [*self.slides, record]
        attrs["n"] = int(self._end)
        self.group.attrs[ATTRS_KEY] = attrs
        self.attrs = attrs
        self._reset_buffers()
        return record

    def _reset_buffers(self) -> None:
        self._buf: list[tuple[np.ndarray, np.ndarray]] = []
        self._nbuf = 0
        self._obs_buf: dict[str, list[np.ndarray]] = {k: [] for k in OBS_COLUMNS}

    @property
    def next_code(self) -> int:
        """Slide code (``obs/slide``) of the slide being appended."""
        return len(self.slides)
