"""Preprocessing: quality control, normalisation, binning; batch-aware HVGs and Harmony across slides."""

from ._binning import bin_hd
from ._cohort import highly_variable_genes, integrate
from ._normalize import normalize
from ._qc import filter, filter_spots, qc

__all__: list[str] = ["bin_hd", "filter", "filter_spots", "highly_variable_genes", "integrate", "normalize", "qc"]
