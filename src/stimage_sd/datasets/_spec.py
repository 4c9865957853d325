"""Specification and ground truth of a synthetic slide."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .._constants import GEOMETRY, TECHS
from ..errors import StimageError
from ..io._layout import SlideFiles, validate_slide_id

__all__ = ["DEFAULT_GRID", "DEFAULT_UM_PER_PX", "SlideSpec", "SlideTruth"]

#: Default (rows, cols) of the spot/bin array per technology (a full Visium capture area
#: has 78 rows of 64 spots, a legacy ST array 35 rows of 33 spots).
DEFAULT_GRID: dict[str, tuple[int, int]] = {
    "ST": (35, 33),
    "Visium": (78, 64),
    "VisiumHD": (120, 120),
}
#: Default true pixel size (µm per pixel) of the written image per technology.
DEFAULT_UM_PER_PX: dict[str, float] = {"ST": 0.91, "Visium": 3.4, "VisiumHD": 0.5}

_IMAGE_FORMATS = ("png", "jpeg", "tiff")
_IMAGE_MODES = ("RGB", "RGBA", "L", "RGB16")
_LAYOUTS = ("layers", "blobs", "curved_layers", "varied_blobs")


@dataclass
class SlideSpec:
    """What to generate for one synthetic slide.

    Parameters
    ----------
    slide
        Slide id, verbatim; may contain ``+``, ``.`` and ``-`` like the real ids.
    tech
        ``"ST"``, ``"Visium"`` or ``"VisiumHD"``.
    grid
        ``(rows, cols)`` of the spot/bin array; spots whose centre falls outside the
        (irregular) tissue are not written, as in the release. ``None``: the technology's
        default (:data:`DEFAULT_GRID`).
    n_genes
        Number of gene columns (duplicated names included).
    um_per_px
        True pixel size of the written image, µm per pixel. ``None``: the technology's
        default (:data:`DEFAULT_UM_PER_PX`).
    n_domains
        Number of spatial domains (each has its own marker genes).
    domain_layout
        ``"layers"`` (curved cortical-like bands), ``"blobs"`` (tumour/immune islands in
        stroma; domain 0 is the stroma), ``"curved_layers"`` (strongly folded bands, every
        other one thin: a few spots across on Visium) or ``"varied_blobs"`` (like
        ``"blobs"``, with one more island per compartment and island areas spread from
        ~0.2x to ~3x their mean). The last two, with weak markers (``marker_fold`` 1.5-2.5),
        are the layouts that tell spatial-domain methods apart (``benchmarks/bench_domains.py``).
    domain_names
        Label of each domain in the annotation file; ``None``: ``L1``, ``L2``, ..., ``WM``
        for layers and ``Stroma``, ``Tumor``, ``TLS``, ... for blobs.
    n_markers
        Marker genes per domain (strongly up-regulated there).
    marker_fold
        Fold change of a marker gene in its own domain.
    marker_mean
        Mean count of a marker gene in its own domain at the median library size;
        ``None``: 10 (ST), 6 (Visium), 1.5 (VisiumHD), at most 2.5 % of the median
        library size.
    species
        ``"human"`` (``MT-``, ``RPS``/``RPL``, ``ENSG`` ids, upper-case symbols) or anything
        else for mouse-style names (``mt-``, ``Rps``/``Rpl``, ``ENSMUSG``, ``Gm`` genes).
    tissue
        Tissue written to the metadata table.
    image_format
        ``"png"``, ``"jpeg"`` or ``"tiff"``: the real encoding; the file is always named
        ``<slide>.png``.
    image_mode
        ``"RGB"``, ``"RGBA"``, ``"L"`` (grayscale) or ``"RGB16"`` (16-bit, TIFF only).
    tiff_tile
        Tile side of a tiled TIFF (multiple of 16); ``None`` writes strips.
    tiff_compression
        ``None`` or ``"zlib"`` (tiled TIFFs only).
    jpeg_quality
        JPEG quality.
    integer_counts
        Write counts as ``3`` instead of ``3.0`` (most studies write floats).
    shuffle_rows
        Write count rows in a different order than coordinate rows.
    duplicate_genes
        How many gene names appear twice in the header.
    depth
        Multiplier of the sequencing depth (library sizes); higher means denser counts.
    density
        Target fraction of non-zero counts; when set, the depth is calibrated to reach
        it (approximately) and ``depth`` is ignored. ``None``: the technology's typical
        depth (Visium ~5-15 % non-zero, ST denser, VisiumHD ~1-3 %).
    annotate
        Also write ``annotation/<slide>_anno.csv``.
    label_column
        Name of the label column of the annotation file.
    margin_px
        Image margin around the spot array, pixels; ``None``: about 1.5 spot pitches.
    tissue_fraction
        Rough fraction of the array covered by tissue (an irregular blob); ``1.0`` keeps
        every array position.
    spot_dropout
        Fraction of the on-tissue spots removed at random (seeded), as after heavy QC
        filtering or on a sparsely sampled array; ``0`` keeps them all.
    seed
        Random seed; the same spec and seed give byte-identical files.
    study
        Name of a study the slide belongs to. Slides of one study share their gene panel
        (names, markers, header order) and the expression profile of each domain, as
        serial sections of one experiment do (their tissue layout, library sizes and
        noise stay per slide). ``None``: everything is drawn for this slide alone.
    batch_effect
        Standard deviation of slide-specific, gene-wise log-normal factors multiplying
        every domain profile (a technical batch effect: capture efficiency per gene and
        slide); ``0`` adds none. Combine with ``depth`` for per-slide depth differences.
    cancer, pmid, title, abstract, keywords
        Metadata fields (``None`` leaves the field empty, except ``title``/``abstract``
        which then get a generated text).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> spec = ssd.datasets.SlideSpec("Human_Brain_Synth_01012025_Visium_A1", "Visium", grid=(20, 20))
    >>> truth = ssd.datasets.make_slide("synthetic_root", spec)
    >>> hd = ssd.datasets.SlideSpec("Mouse_Brain_Synth_01012025_VisiumHD", "VisiumHD", species="mouse", seed=1)
    """

    slide: str
    tech: str
    grid: tuple[int, int] | None = None
    n_genes: int = 2000
    um_per_px: float | None = None
    n_domains: int = 4
    domain_layout: str = "layers"
    domain_names: list[str] | None = None
    n_markers: int = 8
    marker_fold: float = 12.0
    marker_mean: float | None = None
    species: str = "human"
    tissue: str = "brain"
    image_format: str = "png"
    image_mode: str = "RGB"
    tiff_tile: int | None = None
    tiff_compression: str | None = None
    jpeg_quality: int = 90
    integer_counts: bool = False
    shuffle_rows: bool = True
    duplicate_genes: int = 2
    depth: float = 1.0
    density: float | None = None
    annotate: bool = False
    label_column: str = "V2"
    margin_px: int | None = None
    tissue_fraction: float = 0.85
    spot_dropout: float = 0.0
    seed: int = 0
    study: str | None = None
    batch_effect: float = 0.0
    cancer: bool = False
    pmid: str | None = None
    title: str | None = None
    abstract: str | None = None
    keywords: str | None = None

    def __post_init__(self) -> None:
        validate_slide_id(self.slide)
        if self.tech not in TECHS:
            raise StimageError(f"slide {self.slide!r}: unknown tech {self.tech!r} (expected one of {TECHS})")
        if self.grid is None:
            self.grid = DEFAULT_GRID[self.tech]
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        if min(self.grid) < 2:
            raise StimageError(f"slide {self.slide!r}: grid must be at least 2 x 2, got {self.grid}")
        if self.um_per_px is None:
            self.um_per_px = DEFAULT_UM_PER_PX[self.tech]
        if not self.um_per_px > 0:
            raise StimageError(f"slide {self.slide!r}: um_per_px must be positive")
        if self.image_format not in _IMAGE_FORMATS:
            raise StimageError(f"image_format must be one of {_IMAGE_FORMATS}, got {self.image_format!r}")
        if self.image_mode not in _IMAGE_MODES:
            raise StimageError(f"image_mode must be one of {_IMAGE_MODES}, got {self.image_mode!r}")
        if self.image_mode == "RGB16" and self.image_format != "tiff":
            raise StimageError("image_mode 'RGB16' needs image_format 'tiff'")
        if self.image_format == "jpeg" and self.image_mode not in ("RGB", "L"):
            raise StimageError("a JPEG image must be 'RGB' or 'L'")
        if self.tiff_tile is not None and self.tiff_tile % 16:
            raise StimageError("tiff_tile must be a multiple of 16")
        if self.domain_layout not in _LAYOUTS:
            raise StimageError(f"domain_layout must be one of {_LAYOUTS}, got {self.domain_layout!r}")
        if not 0.0 <= self.spot_dropout < 1.0:
            raise StimageError(f"slide {self.slide!r}: spot_dropout must be in [0, 1), got {self.spot_dropout}")
        if self.density is not None and not 0.0 < self.density < 1.0:
            raise StimageError("density must be between 0 and 1")
        if not self.depth > 0:
            raise StimageError("depth must be positive")
        if not self.batch_effect >= 0:
            raise StimageError("batch_effect must be >= 0")
        if self.n_domains < 1:
            raise StimageError("n_domains must be >= 1")
        if self.domain_names is not None and len(self.domain_names) != self.n_domains:
            raise StimageError("domain_names must have n_domains entries")
        n_special = 13 + 8 + self.n_domains * self.n_markers + self.duplicate_genes
        if self.n_genes < n_special + 10:
            raise StimageError(f"n_genes must be at least {n_special + 10} for this spec")

    @property
    def panel_key(self) -> tuple[int, str]:
        """``(seed, name)`` that draws the gene panel and domain profiles (shared by a study)."""
        return (0, f"study:{self.study}") if self.study is not None else (self.seed, self.slide)

    @property
    def pitch_um(self) -> float:
        """Centre-to-centre spacing of neighbouring spots, µm."""
        return GEOMETRY[self.tech].pitch_um

    @property
    def radius_um(self) -> float:
        """Physical size the written radius ``r`` corresponds to, µm."""
        return GEOMETRY[self.tech].radius_um


@dataclass
class SlideTruth:
    """Ground truth of a generated slide.

    Attributes
    ----------
    slide, tech
        Slide id and technology.
    um_per_px
        True pixel size of the image.
    radius_px
        Radius ``r`` written in the coordinate file.
    pitch_px
        Nearest-neighbour spacing of spots, pixels.
    image_shape
        ``(height, width)`` of the image.
    domains
        Spot id -> domain index (int), for every spot, in coordinate-file order.
    domain_names
        Label text of each domain (as written in the annotation file).
    markers
        Domain -> its marker gene names (as written in the header).
    genes
        Header gene names, verbatim, duplicates included.
    files
        Paths of the slide's files.
    spec
        The spec it was generated from.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> truth = ssd.datasets.sample_truth()["GSE000001_GSM0000001"]
    >>> truth.tech
    'Visium'
    >>> domain_of_spot = truth.domains
    """

    slide: str
    tech: str
    um_per_px: float
    radius_px: float
    pitch_px: float
    image_shape: tuple[int, int]
    domains: pd.Series
    domain_names: list[str]
    markers: dict[int, list[str]]
    genes: list[str]
    files: SlideFiles
    spec: SlideSpec | None = field(default=None, repr=False)

    @property
    def n_spots(self) -> int:
        """Number of spots (rows of the coordinate file)."""
        return len(self.domains)
