"""Converted stores on the Hub, read in place: ``hf://`` URLs with our endpoint, token and offline handling.

:func:`stimage_sd.io.read` opens any fsspec URL; this module supplies what the
``hf://`` filesystem (:class:`huggingface_hub.HfFileSystem`) needs from the Hub side:
the endpoint (``HF_ENDPOINT`` read now, not at import), the token, and a clear refusal in
offline mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import StimageError
from ._client import REPO_TYPE, endpoint_url, is_offline

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read_store", "storage_options", "store_url"]


def storage_options(
    *, endpoint: str | None = None, token: str | bool | None = None, offline: bool | None = None
) -> dict[str, Any]:
    """Filesystem options (fsspec) for ``hf://`` URLs: pass them to :func:`stimage_sd.io.read`.

    Parameters
    ----------
    endpoint
        Hub URL; ``None`` reads ``HF_ENDPOINT`` now (default ``https://huggingface.co``).
    token
        Access token; ``None`` lets ``huggingface_hub`` find one (``HF_TOKEN``, login).
        It goes to the filesystem only and is never logged.
    offline
        ``None`` reads ``HF_HUB_OFFLINE``.

    Raises
    ------
    StimageError
        In offline mode: a remote store cannot be read without the network.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> opts = ssd.hub.storage_options(token="hf_...")  # doctest: +SKIP
    >>> sdata = ssd.io.read("hf://datasets/me/stores/GSE144239_GSM4284316.zarr", storage_options=opts)  # doctest: +SKIP
    """
    if is_offline(offline):
        raise StimageError("offline mode (HF_HUB_OFFLINE): stores on the Hub cannot be read in place")
    opts: dict[str, Any] = {}
    ep = endpoint_url(endpoint)
    if ep:
        opts["endpoint"] = ep
    if token is not None:
        opts["token"] = token
    return opts


def store_url(slide: str, repo_id: str, *, revision: str | None = None, prefix: str = "") -> str:
    """``hf://datasets/<repo_id>[@<revision>]/<prefix>/<slide>.zarr``: where :func:`~stimage_sd.hub.publish` puts a slide.

    Parameters
    ----------
    slide
        Slide id (verbatim).
    repo_id
        Dataset repository the stores were published to.
    revision
        Branch, tag or commit (default: the main branch).
    prefix
        Folder inside the repository.

    Returns
    -------
    The ``hf://`` URL, for :func:`stimage_sd.io.read`.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.hub.store_url("GSE144239_GSM4284316", "me/stimage-stores")
    'hf://datasets/me/stimage-stores/GSE144239_GSM4284316.zarr'
    """
    from ..io._ids import validate_slide_id

    validate_slide_id(slide)
    rev = f"@{revision}" if revision else ""
    folder = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"hf://{REPO_TYPE}s/{repo_id}{rev}/{folder}{slide}.zarr"


def read_store(
    slide_or_url: str,
    repo_id: str | None = None,
    *,
    selection: tuple[str, ...] | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
) -> SpatialData:
    """Open a converted store on the Hub lazily (table and shapes read, image chunks on access).

    Parameters
    ----------
    slide_or_url
        An ``hf://`` URL, or a slide id (then ``repo_id`` names the repository the stores
        were published to).
    repo_id, revision
        Repository and revision, for a slide id.
    selection
        Element types to read, as in :func:`stimage_sd.io.read`.
    endpoint, token, offline
        See :func:`storage_options`.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> sdata = ssd.hub.read_store("GSE144239_GSM4284316", "me/stimage-stores")  # doctest: +SKIP
    """
    from ..io._store import read

    if slide_or_url.startswith("hf://"):
        url = slide_or_url
    else:
        if repo_id is None:
            raise StimageError(f"{slide_or_url!r} is not an hf:// URL: give the repository (repo_id) it was published to")
        url = store_url(slide_or_url, repo_id, revision=revision)
    opts = storage_options(endpoint=endpoint, token=token, offline=offline)
    return read(url, selection=selection, storage_options=opts)
