"""Every private or version-dependent third-party API we use, in one place.

Each helper names the library versions it was written against; ``tests/test_compat.py``
exercises each one on the installed versions, so an upgrade that breaks one fails there
with a clear message instead of deep inside a conversion.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "click_exception_classes",
    "compute_coordinates",
    "get_channel_names",
    "get_ome_zarr_format",
    "get_valid_axes",
    "hub_network_errors",
    "overwrite_coordinate_transformations_raster",
    "raster_format",
    "set_transformations",
    "transformations_from_ngff",
]


def get_valid_axes(axes: list[str], fmt: Any) -> Any:
    """``ome_zarr.writer._get_valid_axes`` (ome-zarr ≥ 0.10): axes metadata of a multiscale image."""
    from ome_zarr.writer import _get_valid_axes

    return _get_valid_axes(axes=axes, fmt=fmt)


def overwrite_coordinate_transformations_raster(**kwargs: Any) -> None:
    """``spatialdata._io._utils.overwrite_coordinate_transformations_raster`` (spatialdata ≥ 0.4)."""
    from spatialdata._io._utils import overwrite_coordinate_transformations_raster as f

    f(**kwargs)


def raster_format() -> Any:
    """Spatialdata's current raster format object (``spatialdata._io.format.CurrentRasterFormat()``)."""
    from spatialdata._io.format import CurrentRasterFormat

    return CurrentRasterFormat()


def get_ome_zarr_format(*args: Any, **kwargs: Any) -> Any:
    """``spatialdata._io.format.get_ome_zarr_format``: the OME-Zarr format matching a raster format."""
    from spatialdata._io.format import get_ome_zarr_format as f

    return f(*args, **kwargs)


def get_channel_names(element: Any) -> list[Any]:
    """``spatialdata.models._utils.get_channel_names``: channel names of an image element."""
    from spatialdata.models._utils import get_channel_names as f

    return list(f(element))


def compute_coordinates(element: Any) -> Any:
    """``spatialdata.transformations._utils.compute_coordinates``: attach pixel coordinates."""
    from spatialdata.transformations._utils import compute_coordinates as f

    return f(element)


def transformations_from_ngff(encoded: list[dict[str, Any]]) -> dict[str, Any]:
    """``spatialdata._io._utils._get_transformations_from_ngff_dict`` (spatialdata 0.7).

    Stored ``coordinateTransformations`` -> ``{coordinate system: transformation}``.
    """
    from spatialdata._io._utils import _get_transformations_from_ngff_dict as f

    return f(encoded)


def set_transformations(element: Any, transformations: dict[str, Any]) -> None:
    """``spatialdata.transformations._utils._set_transformations`` (spatialdata 0.7).

    Sets every transformation of an element (a multiscale ``DataTree``: on each level) in memory.
    """
    from spatialdata.transformations._utils import _set_transformations as f

    f(element, transformations)


def hub_network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub could not be reached", whatever HTTP client it uses.

    ``huggingface_hub.errors.HTTPError`` is the base HTTP error of the client library that
    the installed ``huggingface_hub`` is built on (requests before 1.0, httpx in 1.x, httpx2
    from 2.0); its transport-level errors (connection refused, reset, time-out) are
    ``RequestError``/``TransportError`` (httpx, httpx2) or ``RequestException`` (requests).
    """
    from huggingface_hub.errors import HTTPError

    client = importlib.import_module(HTTPError.__module__.split(".")[0])
    extra = tuple(
        c
        for c in (getattr(client, n, None) for n in ("RequestError", "TransportError", "RequestException"))
        if isinstance(c, type) and issubclass(c, BaseException)
    )
    return (HTTPError, *extra, ConnectionError, TimeoutError)


def click_exception_classes(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception class ``name`` (``"ClickException"``, ``"Abort"``, ``"Exit"``) as raised by typer.

    typer ≥ 0.26 vendors its own copy of click (``typer._click``), whose exceptions are not
    click's; older typer raises click's own. Both are returned where both exist.
    """
    found: list[type[BaseException]] = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)
