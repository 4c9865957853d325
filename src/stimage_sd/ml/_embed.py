"""One embedding per spot from any encoder: into a patch store or a slide's ``obsm``.

Batches are read from the patch store as contiguous row blocks (a background thread
reads and decodes the next batches while the encoder runs, or ``workers`` DataLoader
processes do), preprocessed as tensors on the device, and written back in whole
chunks. Progress is recorded after every write, so an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._logging import logger, progress_bar
from ..errors import StimageError
from ._encoders import Encoder, encoder
from ._patchstore import is_patch_store, read_patch_attrs

__all__ = ["embed", "embed_array", "read_embeddings"]

EMB_ATTRS = "stimage_embedding"
_CHUNK_ROWS = 1024


def _device(device: str | None, enc: Encoder) -> str:
    if enc.kind != "torch":
        return "cpu"
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _Blocks:
    """Row blocks of a patch store's ``patches`` (picklable: opens Zarr per process)."""

    def __init__(self, path: Path, start: int, stop: int, batch: int):
        self.path, self.start, self.stop, self.batch = path, start, stop, batch
        self._arr: tuple[int, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._arr is None or self._arr[0] != os.getpid():
            import zarr

            self._arr = (os.getpid(), zarr.open_group(str(self.path), mode="r")["patches"])
        s = self.start + i * self.batch
        return self._arr[1][s : min(s + self.batch, self.stop)]


def _prefetch(blocks: Any, n: int, depth: int = 2) -> Iterator[np.ndarray]:
    """Yield ``blocks[0..n)`` in order, reading ahead in a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for i in range(n):
                if stop.is_set():
                    return
                q.put(("ok", blocks[i]))
        except BaseException as e:  # handed to the consumer
            q.put(("err", e))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        for _ in range(n):
            kind, val = q.get()
            if kind == "err":
                raise val
            yield val
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _loader(blocks: _Blocks, workers: int, pin: bool) -> Iterator[np.ndarray]:
    if workers <= 0:
        yield from _prefetch(blocks, len(blocks))
        return
    from torch.utils.data import DataLoader

    dl = DataLoader(blocks, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin, prefetch_factor=2, persistent_workers=False)
    for b in dl:
        yield b.numpy() if hasattr(b, "numpy") else b


def embed_array(
    images: np.ndarray,
    enc: Any,
    *,
    batch_size: int = 64,
    device: str | None = None,
    amp: bool = False,
    pretrained: bool = True,
) -> np.ndarray:
    """Features of in-memory uint8 images ``(N, H, W, 3)`` as float32 ``(N, D)``.

    Parameters
    ----------
    images
        The patches.
    enc
        Anything :func:`~stimage_sd.ml.encoder` accepts.
    batch_size, device, amp, pretrained
        As in :func:`embed`.

    Returns
    -------
    The features.

    Examples
    --------
    >>> import numpy as np, stimage_sd as ssd
    >>> ssd.ml.embed_array(np.zeros((3, 8, 8, 3), np.uint8), "histogram:8").shape
    (3, 24)
    """
    e = encoder(enc, pretrained=pretrained)
    dev = _device(device, e)
    e.to_device(dev)
    out = [e(images[i : i + batch_size], device=dev, amp=amp) for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)


def _store_embed(path: Path, e: Encoder, key: str, *, batch_size: int, device: str, amp: bool, workers: int, overwrite: bool, progress: bool | None) -> str:
    import zarr

    attrs = read_patch_attrs(path) or {}
    n = int(attrs.get("n", 0))
    g = zarr.open_group(str(path), mode="r+")
    grp = g.require_group("embeddings")
    desc = e.describe()
    arr = grp[key] if key in grp else None
    if arr is not None and overwrite:
        del grp[key]
        arr = None
    done = 0
    if arr is not None:
        rec = dict(arr.attrs.asdict().get(EMB_ATTRS, {}))
        if rec.get("encoder") != desc:
            raise StimageError(
                f"{path}: embeddings {key!r} were made by another encoder ({rec.get('encoder', {}).get('name')}); "
                "use another key or overwrite=True"
            )
        done = min(int(rec.get("n_done", 0)), n)
        if arr.shape[0] != n:
            arr.resize((n, arr.shape[1]))
    if done >= n and arr is not None:
        logger.info("%s: embeddings %r complete (%d rows)", path.name, key, n)
        return key
    blocks = _Blocks(path, done, n, batch_size)
    pin = device.startswith("cuda")
    if e.kind != "torch":
        workers = 0  # no torch for numpy encoders: the read-ahead thread
    pending: list[np.ndarray] = []
    n_pending = 0
    with progress_bar(f"embed {e.name}", total=n - done, progress=progress) as advance:
        for batch in _loader(blocks, workers, pin):
            feats = e(batch, device=device, amp=amp)
            if arr is None:
                arr = grp.create_array(
                    key, shape=(n, feats.shape[1]), dtype=np.float32, chunks=(min(_CHUNK_ROWS, max(n, 1)), feats.shape[1]),
                    fill_value=np.nan, dimension_names=("patch", "feature"),
                )
                arr.attrs[EMB_ATTRS] = {"encoder": desc, "n_done": 0, "dim": int(feats.shape[1])}
            pending.append(feats)
            n_pending += len(feats)
            end = done + n_pending
            if end == n or end // _CHUNK_ROWS > done // _CHUNK_ROWS:
                cut = end if end == n else end // _CHUNK_ROWS * _CHUNK_ROWS
                block = np.concatenate(pending)
                k = cut - done
                arr[done:cut] = block[:k]
                rest = block[k:]
                pending = [rest] if len(rest) else []
                n_pending = len(rest)
                done = cut
                arr.attrs[EMB_ATTRS] = {"encoder": desc, "n_done": int(done), "dim": int(block.shape[1])}
            advance(len(feats))
    return key


def read_embeddings(store: str | Path, key: str) -> pd.DataFrame:
    """Embeddings of a patch store as a DataFrame (rows: patches; index: spot ids).

    Parameters
    ----------
    store
        A patch store.
    key
        Embedding key (as given to :func:`embed`).

    Returns
    -------
    ``(patches, features)`` float32, in patch-store row order, indexed by
    ``(slide, spot_id)``.

    Raises
    ------
    StimageError
        If the store has no complete embeddings ``key``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> emb = ssd.ml.read_embeddings("patches.zarr", "histogram")  # doctest: +SKIP
    """
    import zarr

    path = Path(store)
    attrs = read_patch_attrs(path)
    if attrs is None:
        raise StimageError(f"{path}: not a patch store")
    g = zarr.open_group(str(path), mode="r")
    if "embeddings" not in g or key not in g["embeddings"]:
        have = list(g["embeddings"].array_keys()) if "embeddings" in g else []
        raise StimageError(f"{path}: no embeddings {key!r} (have: {', '.join(have) or 'none'})")
    arr = g["embeddings"][key]
    n = int(attrs.get("n", 0))
    rec = dict(arr.attrs.asdict().get(EMB_ATTRS, {}))
    if int(rec.get("n_done", 0)) < n:
        raise StimageError(f"{path}: embeddings {key!r} are incomplete ({rec.get('n_done', 0)} of {n}); run embed again")
    ids = np.asarray(g["obs/spot_id"][:n], dtype=object)
    codes = g["obs/slide"][:n]
    slides = np.asarray([r["slide"] for r in attrs.get("slides", [])], dtype=object)
    index = pd.MultiIndex.from_arrays([slides[codes] if n else np.array([], dtype=object), ids], names=["slide", "spot_id"])
    return pd.DataFrame(arr[:n], index=index)


def _slides_embed(paths: list[Path], e: Encoder, key: str, *, batch_size: int, device: str, amp: bool, overwrite: bool, progress: bool | None, options: dict[str, Any]) -> list[Path]:
    from ..io import read, replace_table
    from ._dataset import PatchDataset

    obsm_key = f"X_{key}"
    desc = e.describe()
    for p in paths:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
            sdata = read(p, selection=("tables",))
        table = sdata.tables["table"]
        done = dict(table.uns.get("stimage_embeddings", {}))
        if obsm_key in table.obsm and done.get(key, {}).get("encoder") == desc and not overwrite:
            logger.info("%s: obsm[%r] already there; skipped", p.name, obsm_key)
            continue
        ds = PatchDataset(p, **options)
        n = len(ds)
        out = np.empty((n, 0), dtype=np.float32)
        parts = []
        with progress_bar(f"embed {e.name} → {p.name}", total=n, progress=progress) as advance:
            def block(i: int, ds: PatchDataset = ds, n: int = n) -> np.ndarray:
                idx = list(range(i * batch_size, min((i + 1) * batch_size, n)))
                return np.stack([it["image"] for it in ds.__getitems__(idx)])

            class _B:
                def __getitem__(self, i: int) -> np.ndarray:
                    return block(i)

            for imgs in _prefetch(_B(), -(-n // batch_size)):
                parts.append(e(imgs, device=device, amp=amp))
                advance(len(imgs))
        out = np.concatenate(parts) if parts else out
        rows = ds.obs["row"].to_numpy()
        full = np.full((table.n_obs, out.shape[1]), np.nan, dtype=np.float32)
        full[rows] = out
        table.obsm[obsm_key] = full
        done[key] = {"encoder": desc, "patch_options": {k: v for k, v in ds.params.items() if k != "genes"}}
        table.uns["stimage_embeddings"] = done
        replace_table(p, table)
    return paths


def embed(
    source: str | Path | Iterable[str | Path] | Mapping[Any, str | Path],
    enc: Any,
    *,
    key: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    amp: bool = False,
    workers: int = 0,
    pretrained: bool = True,
    overwrite: bool = False,
    progress: bool | None = None,
    **patch_options: Any,
) -> str:
    """Compute one embedding per spot with an image encoder; resumable.

    Parameters
    ----------
    source
        A patch store (:func:`~stimage_sd.ml.export_patches`): embeddings go to its
        ``embeddings/<key>`` array (rows aligned with the patches; read them with
        :func:`read_embeddings`). Or converted slides: patches are cut on the fly
        (``patch_options``) and embeddings go to each slide's table as
        ``obsm["X_<key>"]`` (spots without a patch: NaN).
    enc
        An encoder: a ``torch.nn.Module``, a timm model name, ``"open_clip:NAME[:TAG]"``,
        a TorchScript file, a built-in (``"histogram"``, ``"random-resnet18"``), an
        :class:`~stimage_sd.ml.Encoder` or a callable on uint8 ``(B, H, W, 3)`` batches
        (see :func:`~stimage_sd.ml.encoder`). Its own preprocessing (resize, crop,
        normalisation) is applied to each batch on the device.
    key
        Name of the embeddings (default: the encoder's name, ``/`` and ``:`` replaced).
    batch_size
        Patches per forward pass.
    device
        ``"cuda"``, ``"cpu"``, ... (default: the GPU when there is one, else the CPU).
    amp
        Mixed precision (``torch.autocast``: float16 on GPU, bfloat16 on CPU).
    workers
        DataLoader worker processes reading the patch store, for torch encoders (0: one
        background thread reads ahead, usually enough: reading is much cheaper than the
        encoder).
    pretrained
        Load pretrained weights for named models (downloaded by timm/open_clip).
    overwrite
        Recompute existing embeddings ``key``.
    progress
        Show a progress bar (``None``: the global setting).
    **patch_options
        Over converted slides: the patch options of :class:`~stimage_sd.ml.PatchDataset`
        (``size_um``, ``px``, ``mode``, ...).

    Returns
    -------
    The key.

    Raises
    ------
    StimageError
        On an unknown encoder, or existing embeddings ``key`` made by another encoder.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> key = ssd.ml.embed("patches.zarr", "histogram")  # doctest: +SKIP
    >>> emb = ssd.ml.read_embeddings("patches.zarr", key)  # doctest: +SKIP
    """
    e = encoder(enc, pretrained=pretrained)
    key = key or e.name.replace("/", "_").replace(":", "_")
    if not key or key.startswith(".") or "/" in key:
        raise StimageError(f"bad embedding key {key!r}")
    if batch_size < 1:
        raise StimageError("batch_size must be at least 1")
    dev = _device(device, e)
    e.to_device(dev)
    logger.info("embedding with %s on %s%s", e.name, dev, " (mixed precision)" if amp else "")
    if isinstance(source, str | Path) and is_patch_store(source):
        if patch_options:
            raise StimageError(f"{source} is a patch store: its patch options are fixed ({', '.join(patch_options)} given)")
        return _store_embed(Path(source), e, key, batch_size=batch_size, device=dev, amp=amp, workers=workers, overwrite=overwrite, progress=progress)
    from ._source import resolve_stores

    _slides_embed(resolve_stores(source), e, key, batch_size=batch_size, device=dev, amp=amp, overwrite=overwrite, progress=progress, options=patch_options)
    return key
