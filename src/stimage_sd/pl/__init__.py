"""Plotting: spots over the H&E image, QC figures, joint domains of a cohort, the napari viewer."""

from ._cohort import cohort_domains
from ._qc import qc
from ._spatial import spatial
from ._view import view

__all__: list[str] = ["cohort_domains", "qc", "spatial", "view"]
