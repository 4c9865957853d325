"""stimage_sd: the STimage-1K4M dataset as scverse SpatialData.

Namespaces follow scverse conventions::

    import stimage_sd as ssd

    ssd.io        # catalogue, download, readers, conversion to SpatialData Zarr stores
    ssd.pp        # QC and normalisation
    ssd.tl        # spatial graph, domains, spatially variable genes
    ssd.pl        # figures
    ssd.ml        # fixed-scale training patches
    ssd.datasets  # deterministic generator of release-layout slides; the demo sample
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stimage-sd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_SUBMODULES = ("io", "pp", "tl", "pl", "ml", "datasets")
__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
