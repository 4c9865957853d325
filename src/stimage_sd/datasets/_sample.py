"""The small built-in sample release used by ``stimage-sd demo`` and the tests."""

from __future__ import annotations

import json
from pathlib import Path

from .._logging import logger
from ..errors import StimageError
from ..io._layout import SlideFiles
from ._generator import METADATA_FILENAME, make_release, slide_truth
from ._spec import SlideSpec, SlideTruth

__all__ = ["DEFAULT_SAMPLE_DIR", "SAMPLE_SPECS", "sample", "sample_truth"]

#: Where :func:`sample` writes when no path is given (relative to the working directory).
DEFAULT_SAMPLE_DIR = Path("stimage_sample")
#: Bumped whenever the sample's content changes, so stale copies are regenerated.
SAMPLE_VERSION = 1
_MARKER = ".stimage_sd_sample.json"

SAMPLE_SPECS: list[SlideSpec] = [
    # 1. Visium, id with '+' and '.', mouse (mt- genes), JPEG named .png, annotated layers
    SlideSpec(
        slide="Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm",
        tech="Visium",
        grid=(32, 36),
        um_per_px=2.2,
        n_genes=1500,
        n_domains=5,
        domain_layout="layers",
        species="mouse",
        tissue="brain",
        image_format="jpeg",
        annotate=True,
        label_column="V2",
        seed=1,
        pmid="36914212",
        keywords="Keywords 1: spatial transcriptomics; cortex; synthetic data",
    ),
    # 2. GEO-style Visium, RGBA PNG, tumour/stroma islands, study-specific label column
    SlideSpec(
        slide="GSE000001_GSM0000001",
        tech="Visium",
        grid=(30, 34),
        um_per_px=2.5,
        n_genes=1800,
        n_domains=3,
        domain_layout="blobs",
        domain_names=["NO_TLS", "Tumor", "TLS"],
        species="human",
        tissue="breast",
        cancer=True,
        image_format="png",
        image_mode="RGBA",
        annotate=True,
        label_column="TLS_2_cat",
        seed=2,
        pmid="32579974,38037084",
        title="Title 1: Synthetic tertiary lymphoid structures in breast cancer. "
        "Title 2: A framework for visualising synthetic spatial data.",
        abstract="Abstract 1: Tertiary lymphoid structures (TLS) were mapped on synthetic sections.\n"
        "Tumour islands sit in a stroma with lymphoid aggregates.\n"
        "Abstract 2: We describe how such data are laid out on disk.",
        keywords=None,
    ),
    # 3. legacy ST, TIFF named .png, integer counts
    SlideSpec(
        slide="Human_Breast_Synth_10142021_ST_A1",
        tech="ST",
        grid=(22, 24),
        um_per_px=3.0,
        n_genes=1500,
        n_domains=3,
        domain_layout="blobs",
        species="human",
        tissue="breast",
        cancer=True,
        image_format="tiff",
        integer_counts=True,
        seed=3,
        pmid="34650042",
    ),
    # 4. small VisiumHD with the typo of the real id kept, empty paper fields
    SlideSpec(
        slide="Mouse_Brain_Synth_03292024_VIsiumHD",
        tech="VisiumHD",
        grid=(60, 60),
        um_per_px=0.5,
        n_genes=1000,
        n_domains=3,
        domain_layout="layers",
        species="mouse",
        tissue="brain",
        image_format="tiff",
        tiff_tile=256,
        tissue_fraction=0.95,
        seed=4,
        title="",
        abstract="",
    ),
]


def _resolve(path: str | Path | None) -> Path:
    return Path(path) if path is not None else DEFAULT_SAMPLE_DIR


def _is_current(root: Path) -> bool:
    marker = root / _MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("version") != SAMPLE_VERSION:
        return False
    for s in SAMPLE_SPECS:
        if SlideFiles.expected(root, s.slide, s.tech).missing():
            return False
    return (root / "meta" / METADATA_FILENAME).is_file()


def sample(path: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the built-in sample release (4 small slides + metadata) and return its root.

    The sample has a mouse Visium slide whose id contains ``+`` and ``.`` (JPEG image named
    ``.png``, annotated cortical layers), a GEO-style Visium slide (RGBA PNG, tumour/stroma
    islands, label column ``TLS_2_cat``), a legacy ST slide (TIFF named ``.png``, integer
    counts) and a 60 x 60-bin VisiumHD slide whose id keeps the real ``VIsiumHD`` typo.
    Their ground truth is available from :func:`sample_truth` without regenerating.

    Parameters
    ----------
    path
        Dataset root to write; ``None`` writes ``./stimage_sample`` (in the current
        working directory).
    overwrite
        Regenerate even if an up-to-date sample is already there.

    Returns
    -------
    The dataset root.

    Raises
    ------
    StimageError
        If ``path`` is a non-empty folder that does not hold a sample (nothing is
        overwritten unless ``overwrite=True``).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> slides = ssd.io.list_slides(root)
    >>> sdata = ssd.io.read(ssd.io.convert_slide(root, "GSE000001_GSM0000001", "stores"))
    """
    root = _resolve(path)
    if not overwrite and _is_current(root):
        logger.info("sample already present at %s", root)
        return root
    if root.exists() and not root.is_dir():
        raise StimageError(f"{root} exists and is not a folder")
    if not overwrite and root.is_dir() and any(root.iterdir()) and not (root / _MARKER).exists():
        raise StimageError(f"{root} is a non-empty folder that does not hold the sample; pass overwrite=True to write into it")
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).unlink(missing_ok=True)
    make_release(root, SAMPLE_SPECS)
    (root / _MARKER).write_text(json.dumps({"version": SAMPLE_VERSION, "slides": [s.slide for s in SAMPLE_SPECS]}))
    return root


def sample_truth(path: str | Path | None = None) -> dict[str, SlideTruth]:
    """Ground truth of the sample's slides (domains, markers, geometry), without writing.

    Parameters
    ----------
    path
        The sample's root (only used for the ``files`` paths); ``None``: the default.

    Returns
    -------
    Slide id -> :class:`SlideTruth`, for the 4 slides of :func:`sample`.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> truths = ssd.datasets.sample_truth("stimage_sample")
    >>> truth = truths["GSE000001_GSM0000001"]
    >>> truth.um_per_px, truth.domain_names  # doctest: +SKIP
    """
    root = _resolve(path)
    return {s.slide: slide_truth(root, s) for s in SAMPLE_SPECS}
