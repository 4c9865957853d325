"""Converted stores read straight from an object store: ``hf://``, ``s3://``, ``https://``, ``file://``.

:func:`read_remote` opens a store through `fsspec <https://filesystem-spec.readthedocs.io>`_
and zarr v3's :class:`zarr.storage.FsspecStore`. Group metadata (consolidated in the root
``zarr.json``), the table and the shapes are read when the store is opened; images stay
lazy (dask arrays over the remote chunks), so a patch fetches only the chunks it covers.

This module knows nothing about the Hugging Face client: ``hf://`` works because
``huggingface_hub`` registers :class:`huggingface_hub.HfFileSystem` as fsspec's ``hf``
protocol. Endpoint and token come in ``storage_options`` (see
:func:`stimage_sd.hub.storage_options`); without them, ``HF_ENDPOINT`` is read from the
environment and ``HF_HUB_OFFLINE`` refuses the read with a clear message.

spatialdata 0.7.3's :func:`spatialdata.read_zarr` reads local stores only (its table and
shapes readers re-open the elements by local path), so the elements are read here with
the same element formats: images from their OME-NGFF ``multiscales``, tables with
:func:`anndata.io.read_zarr` on the zarr group, shapes from their GeoParquet file.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import TYPE_CHECKING, Any

from .._constants import UNS_KEY
from ..errors import IncompleteStoreError, RemoteReadError, StimageError
from ._transaction import MARKER

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["RemoteReadError", "is_url", "open_group", "read_remote", "remote_attrs", "remote_is_complete"]

_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]+)://")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None and not re.match(r"^[a-zA-Z]:[\\/]", path)


def _scheme(url: str) -> str:
    m = _URL.match(url)
    return m["scheme"].lower() if m else ""


def _options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Filesystem options for ``url``: the given ones, else (``hf://``) the endpoint from ``HF_ENDPOINT``."""
    opts = dict(storage_options or {})
    if _scheme(url) == "hf":
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        if offline.strip().upper() in _TRUE:
            raise StimageError(f"{url}: cannot read a store from the Hub in offline mode (HF_HUB_OFFLINE is set)")
        if "endpoint" not in opts and os.environ.get("HF_ENDPOINT"):
            opts["endpoint"] = os.environ["HF_ENDPOINT"].rstrip("/")
    return opts


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _clear_store(url: str, store: Any) -> Any:
    """Wrap a zarr store so that transfer errors become :class:`RemoteReadError` naming the key."""
    from zarr.storage import WrapperStore

    missing = (FileNotFoundError, IsADirectoryError, NotADirectoryError, KeyError)

    def _fail(key: str, e: BaseException) -> RemoteReadError:
        return RemoteReadError(
            f"{url}: reading {key!r} failed ({type(e).__name__}: {_first_line(e)}); the connection was cut or "
            "the server failed; reading again is safe and fetches only what is missing"
        )

    class _ClearErrors(WrapperStore):
        async def get(self, key, prototype, byte_range=None):
            try:
                return await self._store.get(key, prototype, byte_range)
            except missing:
                raise
            except StimageError:
                raise
            except Exception as e:
                raise _fail(key, e) from e

        async def get_partial_values(self, prototype, key_ranges):
            try:
                return await self._store.get_partial_values(prototype, key_ranges)
            except missing:
                raise
            except Exception as e:
                raise _fail(",".join(k for k, _ in key_ranges), e) from e

        async def exists(self, key):
            try:
                return await self._store.exists(key)
            except Exception as e:
                raise _fail(key, e) from e

    return _ClearErrors(store)


def open_group(url: str, *, storage_options: dict[str, Any] | None = None, path: str = "") -> Any:
    """The root (or ``path``) zarr group of the store at ``url``, read-only.

    Parameters
    ----------
    url
        fsspec URL of the ``.zarr`` folder.
    storage_options
        Options for the fsspec filesystem (``token``, ``endpoint``, credentials...).
    path
        A group inside the store.

    Raises
    ------
    StimageError
        If nothing is at ``url`` or it is not a zarr group.
    """
    import zarr
    from zarr.storage import FsspecStore

    opts = _options(url, storage_options)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message=".*asynchronous.*")
            store = FsspecStore.from_url(url.rstrip("/"), storage_options=opts, read_only=True)
    except (ImportError, ValueError) as e:
        raise StimageError(f"{url}: cannot open this URL with fsspec ({_first_line(e)})") from e
    store = _clear_store(url, store)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
            return zarr.open_group(store, mode="r", path=path or None)
    except RemoteReadError:
        raise
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as e:
        raise StimageError(f"{url}: no zarr store there ({_first_line(e)})") from e
    except Exception as e:  # transport errors of any fsspec backend
        raise RemoteReadError(f"{url}: cannot open the store ({type(e).__name__}: {_first_line(e)})") from e


def remote_attrs(url: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``stimage`` attributes of a remote store's root group (empty dict if none)."""
    try:
        group = open_group(url, storage_options=storage_options)
    except RemoteReadError:
        raise
    except StimageError:
        return {}
    value = group.attrs.asdict().get(UNS_KEY, {})
    return dict(value) if isinstance(value, dict) else {}


def remote_is_complete(url: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the remote store at ``url`` carries the completion marker (one metadata read)."""
    return bool(remote_attrs(url, storage_options=storage_options).get(MARKER, False))


# --------------------------------------------------------------------------- element readers
def _transformations(attrs: dict[str, Any]) -> dict[str, Any]:
    from .._compat import transformations_from_ngff

    return transformations_from_ngff(attrs.get("coordinateTransformations", []))


def _read_image(group: Any) -> Any:
    """A multiscale image element (``DataTree`` of lazy dask levels) from its zarr group."""
    import dask.array as da
    import xarray as xr

    from .._compat import compute_coordinates, set_transformations

    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    ms = ome["multiscales"][0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms["axes"]]
    channels = [c.get("label") for c in ome.get("omero", {}).get("channels", [])] or None
    coords = {"c": channels} if channels is not None and "c" in axes else {}
    levels = {}
    for i, ds in enumerate(ms["datasets"]):
        arr = da.from_zarr(group[ds["path"]])
        levels[f"scale{i}"] = xr.Dataset({"image": xr.DataArray(arr, dims=axes, coords=coords)})
    tree = xr.DataTree.from_dict(levels)
    set_transformations(tree, _transformations(ms))
    return compute_coordinates(tree)


def _read_table(group: Any) -> Any:
    import numpy as np
    from anndata.io import read_zarr

    table = read_zarr(group)
    attrs = table.uns.get("spatialdata_attrs")
    if isinstance(attrs, dict):
        for k in ("region", "region_key", "instance_key"):
            attrs.setdefault(k, None)
        if isinstance(attrs.get("region"), np.ndarray):
            attrs["region"] = attrs["region"].tolist()
    return table


def _read_shapes(group: Any, fs: Any, root: str) -> Any:
    import geopandas as gpd

    attrs = group.attrs.asdict()
    path = f"{root.rstrip('/')}/{group.path}/shapes.parquet"
    if not fs.exists(path):
        raise StimageError(f"{path}: shapes element without a GeoParquet file (unsupported shapes format)")
    with fs.open(path, "rb") as fh:
        gdf = gpd.read_parquet(fh)
    from .._compat import set_transformations

    set_transformations(gdf, _transformations(attrs))
    return gdf


def read_remote(
    url: str,
    *,
    selection: tuple[str, ...] | None = None,
    check: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> SpatialData:
    """Open a converted store at an fsspec URL: table and shapes read, images lazy.

    See :func:`stimage_sd.io.read`, which calls this for URLs.
    """
    import fsspec
    import spatialdata as sd

    root = open_group(url, storage_options=storage_options)
    attrs = root.attrs.asdict()
    if check and not dict(attrs.get(UNS_KEY, {}) or {}).get(MARKER, False):
        raise IncompleteStoreError(
            f"{url}: store has no completion marker (interrupted or foreign upload); publish the slide again"
        )
    fs, base = fsspec.url_to_fs(url.rstrip("/"), **_options(url, storage_options))
    wanted = set(selection or ("images", "labels", "points", "shapes", "tables"))
    elements: dict[str, dict[str, Any]] = {"images": {}, "shapes": {}, "tables": {}}
    unsupported = [k for k in ("labels", "points") if k in wanted and k in root and len(list(root[k].group_keys()))]
    if unsupported:
        raise StimageError(f"{url}: remote reading of {', '.join(unsupported)} elements is not supported")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        for kind, reader in (("images", _read_image), ("tables", _read_table), ("shapes", None)):
            if kind not in wanted or kind not in root:
                continue
            for name, group in root[kind].groups():
                try:
                    if kind == "shapes":
                        elements[kind][name] = _read_shapes(group, fs, base)
                    else:
                        elements[kind][name] = reader(group)
                except StimageError:
                    raise
                except Exception as e:  # report which element of which store
                    if isinstance(e.__cause__, StimageError):
                        raise e.__cause__ from e
                    raise RemoteReadError(
                        f"{url}: reading {kind}/{name} failed ({type(e).__name__}: {_first_line(e)}); "
                        "reading again is safe"
                    ) from e
    sdata = sd.SpatialData(
        images=elements["images"], shapes=elements["shapes"], tables=elements["tables"], attrs=attrs
    )
    return sdata
