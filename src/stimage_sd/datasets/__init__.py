"""Synthetic slides in the exact STimage-1K4M release layout, and the built-in sample.

:func:`make_slide` writes one slide (image, coordinates, counts, optional annotation)
from a :class:`SlideSpec` and returns its :class:`SlideTruth` (spatial domains, marker
genes, true pixel size); :func:`make_release` writes several plus the metadata table;
:func:`sample` writes the small sample used by ``stimage-sd demo`` and the tests.
"""

from ._generator import make_release, make_slide, slide_truth, write_metadata
from ._memory import make_table
from ._sample import DEFAULT_SAMPLE_DIR, SAMPLE_SPECS, sample, sample_truth
from ._spec import DEFAULT_GRID, DEFAULT_UM_PER_PX, SlideSpec, SlideTruth

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_SAMPLE_DIR",
    "DEFAULT_UM_PER_PX",
    "SAMPLE_SPECS",
    "SlideSpec",
    "SlideTruth",
    "make_release",
    "make_slide",
    "make_table",
    "sample",
    "sample_truth",
    "slide_truth",
    "write_metadata",
]
