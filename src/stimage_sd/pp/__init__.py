"""Preprocessing of converted slides: quality control, normalisation, binning."""

from ._binning import bin_hd
from ._normalize import normalize
from ._qc import filter, filter_spots, qc

__all__: list[str] = ["bin_hd", "filter", "filter_spots", "normalize", "qc"]
