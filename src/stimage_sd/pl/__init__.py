"""Plotting: spots over the H&E image, QC figures, the napari viewer."""

from ._qc import qc
from ._spatial import spatial
from ._view import view

__all__: list[str] = ["qc", "spatial", "view"]
