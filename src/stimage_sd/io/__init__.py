"""Reading the STimage-1K4M release and writing SpatialData stores.

Readers of single release files (:func:`read_coords`, :func:`read_counts`,
:func:`read_image`, :func:`read_annotation`, :func:`read_metadata`), the slide-level
converter (:func:`read_slide`, :func:`convert_slide`), store I/O (:func:`write`,
:func:`read`, :func:`read_genes`, :func:`is_complete`, :func:`validate`), the cohort table over many
stores (:func:`read_cohort`) and the crash-safe table swap
(:func:`replace_table`, :func:`recover_store`).

The catalogue and downloads moved to :mod:`stimage_sd.hub`, batch conversion to
:mod:`stimage_sd.batch` (the old names here still work for one release, with a
``FutureWarning``).
"""

from .._deprecation import moved_names
from ._annotation import read_annotation
from ._build import build_sdata, read_slide
from ._cohort import harmonise_gene_names, normalise_symbol, read_cohort
from ._convert import convert_slide, store_path
from ._coords import read_coords
from ._counts import Counts, read_counts
from ._gene_index import read_genes
from ._header import ImageHeader, read_image_header
from ._ids import study_of
from ._image import read_image, sniff_image_format, to_rgb8
from ._layout import SlideFiles, find_metadata, find_slide, list_slides, validate_slide_id
from ._legacy import to_legacy_anndata
from ._metadata import read_metadata
from ._scale import PixelSize, estimate_pixel_size
from ._store import read, write
from ._transaction import is_complete, recover_store, replace_table
from ._validate import Problem, ValidationReport, validate

__all__ = [
    "Counts",
    "ImageHeader",
    "PixelSize",
    "Problem",
    "SlideFiles",
    "ValidationReport",
    "build_sdata",
    "convert_slide",
    "estimate_pixel_size",
    "find_metadata",
    "find_slide",
    "harmonise_gene_names",
    "is_complete",
    "list_slides",
    "normalise_symbol",
    "read",
    "read_annotation",
    "read_cohort",
    "read_coords",
    "read_counts",
    "read_genes",
    "read_image",
    "read_image_header",
    "read_metadata",
    "read_slide",
    "recover_store",
    "replace_table",
    "sniff_image_format",
    "store_path",
    "study_of",
    "to_legacy_anndata",
    "to_rgb8",
    "validate",
    "validate_slide_id",
    "write",
]

__getattr__ = moved_names(
    __name__,
    {
        "Catalog": "stimage_sd.hub:Catalog",
        "REPO_ID": "stimage_sd.hub:REPO_ID",
        "DownloadPlan": "stimage_sd.hub:DownloadPlan",
        "download": "stimage_sd.hub:download",
        "plan_download": "stimage_sd.hub:plan_download",
        "SlideCost": "stimage_sd.batch:SlideCost",
        "SlideResult": "stimage_sd.batch:SlideResult",
        "convert_many": "stimage_sd.batch:convert_many",
        "estimate_cost": "stimage_sd.batch:estimate_cost",
        "read_manifest": "stimage_sd.batch:read_manifest",
    },
)
