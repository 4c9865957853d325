"""Reading the STimage-1K4M release and writing SpatialData stores.

Readers of single release files (:func:`read_coords`, :func:`read_counts`,
:func:`read_image`, :func:`read_annotation`, :func:`read_metadata`), the slide-level
converter (:func:`read_slide`, :func:`convert_slide`) and store I/O (:func:`write`,
:func:`read`, :func:`is_complete`).
"""

from ._annotation import read_annotation
from ._batch import SlideCost, SlideResult, convert_many, estimate_cost, read_manifest
from ._build import build_sdata, read_slide
from ._catalog import Catalog, study_of
from ._convert import convert_slide, store_path
from ._coords import read_coords
from ._counts import Counts, read_counts
from ._hub import REPO_ID, DownloadPlan, download, plan_download
from ._image import read_image, sniff_image_format, to_rgb8
from ._layout import SlideFiles, find_metadata, find_slide, list_slides, validate_slide_id
from ._legacy import to_legacy_anndata
from ._metadata import read_metadata
from ._scale import PixelSize, estimate_pixel_size
from ._store import is_complete, read, write
from ._validate import Problem, ValidationReport, validate

__all__ = [
    "REPO_ID",
    "Catalog",
    "Counts",
    "DownloadPlan",
    "PixelSize",
    "Problem",
    "SlideCost",
    "SlideFiles",
    "SlideResult",
    "ValidationReport",
    "build_sdata",
    "convert_many",
    "convert_slide",
    "download",
    "estimate_cost",
    "estimate_pixel_size",
    "find_metadata",
    "find_slide",
    "is_complete",
    "list_slides",
    "plan_download",
    "read",
    "read_annotation",
    "read_coords",
    "read_counts",
    "read_image",
    "read_manifest",
    "read_metadata",
    "read_slide",
    "sniff_image_format",
    "store_path",
    "study_of",
    "to_legacy_anndata",
    "to_rgb8",
    "validate",
    "validate_slide_id",
    "write",
]
