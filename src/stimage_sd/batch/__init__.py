"""Converting many slides at once: on a laptop, a workstation or a dask cluster.

:func:`convert_many` runs one task per slide on ``dask.distributed`` (a local cluster or
an existing scheduler), schedules slides by their expected memory (:func:`estimate_cost`),
keeps a run manifest (:func:`read_manifest`) and a lock on the output folder, and resumes
where a killed run stopped. ``stimage-sd convert`` is a thin layer over it.
"""

from ._convert_many import convert_many, select_slides
from ._cost import SlideCost, estimate_cost
from ._manifest import MANIFEST_NAME, SlideResult, read_manifest

__all__ = [
    "MANIFEST_NAME",
    "SlideCost",
    "SlideResult",
    "convert_many",
    "estimate_cost",
    "read_manifest",
    "select_slides",
]
