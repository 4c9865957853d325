"""stimage_sd: the STimage-1K4M dataset as scverse SpatialData.

Namespaces follow scverse conventions::

    import stimage_sd as ssd

    ssd.io        # release readers, conversion to SpatialData Zarr stores, store read/write/validate
    ssd.hub       # the release's catalogue and downloads from the Hugging Face Hub
    ssd.batch     # converting many slides (dask.distributed), run manifest
    ssd.workflows # analyse stores: read, run tools, write back, report
    ssd.errors    # exceptions (also at the top level: ssd.StimageError, ...)
    ssd.pp        # QC and normalisation
    ssd.tl        # spatial graph, domains, spatially variable genes
    ssd.pl        # figures
    ssd.ml        # fixed-scale training patches
    ssd.datasets  # deterministic generator of release-layout slides; the demo sample
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from .errors import FormatError, IncompleteStoreError, SlideNotFoundError, StimageError

try:
    __version__ = version("stimage-sd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_SUBMODULES = ("io", "pp", "tl", "pl", "ml", "datasets", "hub", "batch", "workflows", "errors")
__all__ = [
    "FormatError",
    "IncompleteStoreError",
    "SlideNotFoundError",
    "StimageError",
    "__version__",
    *_SUBMODULES,
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
