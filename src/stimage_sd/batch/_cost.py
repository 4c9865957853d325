"""Expected memory cost of converting one slide, from the metadata table and the image header."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from .._constants import TECHS
from ..io._layout import SlideFiles

# --- memory model of one slide conversion (bytes) -----------------------------------
# Calibrated by converting generated slides in a fresh process and reading the peak RSS
# (``resource.getrusage``) against the RSS after imports; see docs/cluster.md.
#: Fixed part of a conversion (measured 145-160 MiB: lazily imported modules, buffers).
MEM_BASE = 200 * 2**20
#: Per stored non-zero count: CSR data + indices (8 B) plus the row re-ordering copy
#: (measured 9-11 B).
MEM_PER_NNZ = 12
#: Per image pixel and decoded byte: PNG and JPEG are decoded whole by PIL, which holds the
#: pixels once (regions are copied out chunk by chunk); a TIFF's tiles are read lazily.
MEM_DECODE_COPIES = {"png": 1, "jpeg": 1, "tiff": 1}
#: Per image pixel on top of the decoded bytes: the uint8 RGB array (3 B) and its
#: pyramid (~1 B). Measured totals: 7.1 B/px for an RGB PNG (10.1 when PIL's pixels were
#: also copied into one numpy array), 4 for an RGB TIFF.
MEM_PER_PIXEL_RGB = 4
#: Assumed fraction of non-zero counts (the release's Visium files are 5-15 % non-zero,
#: VisiumHD bins far sparser); the estimate errs on the high side.
DENSITY = {"ST": 0.2, "Visium": 0.15, "VisiumHD": 0.03}
#: Memory of an idle worker process once the converter is imported (measured ~270 MiB).
WORKER_BASE = 300 * 2**20
#: In automatic mode, a run whose inputs are smaller than this is converted in-process:
#: starting a cluster would cost more than it saves.
AUTO_SERIAL_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SlideCost:
    """Expected cost of converting one slide.

    Attributes
    ----------
    slide, tech
        Slide id and technology.
    spots, genes
        From the metadata table (``spot_num``, ``gene_num``), else counted in the files.
    pixels
        Image pixels (from the file header); ``0`` when unreadable.
    bytes_in
        Summed size of the source files.
    memory
        Estimated peak memory of the conversion over an idle worker, bytes:
        ``MEM_BASE + MEM_PER_NNZ * spots * genes * DENSITY[tech] + pixels * (decoded bytes
        per pixel * decode copies + MEM_PER_PIXEL_RGB)``.

    """

    slide: str
    tech: str | None
    spots: int
    genes: int
    pixels: int
    bytes_in: int
    memory: int


def _image_header(path: Path) -> tuple[int, int, str]:
    """(pixels, decoded bytes per pixel, format) read from an image file's header only."""
    from ..io._image import pil_limit, sniff_image_format

    fmt = sniff_image_format(path)
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, axes, itemsize = series.shape, series.axes.upper(), series.dtype.itemsize
        dims = dict(zip(axes, shape, strict=False))
        pixels = int(dims.get("Y", 0)) * int(dims.get("X", 0))
        channels = int(dims.get("S", dims.get("C", 1)))
        return pixels, channels * itemsize, fmt
    from PIL import Image

    with pil_limit(None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
    per_px = {"1": 1, "L": 1, "P": 3, "LA": 2, "PA": 4, "RGB": 3, "RGBA": 4, "CMYK": 4, "I;16": 2, "I": 4, "F": 4}
    return int(w) * int(h), per_px.get(mode, 4), fmt


def _count_header(path: Path) -> int:
    """Number of gene columns in a count file's header (bounded read)."""
    with open(path, "rb") as fh:
        head = fh.readline(64 << 20)
    return head.count(b",")


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return max(0, n - 1)


def estimate_cost(
    root: str | Path,
    slide: str,
    *,
    tech: str | None = None,
    spots: int | None = None,
    genes: int | None = None,
) -> SlideCost:
    """Estimate the cost of converting one slide, from the catalogue and file headers.

    Peak memory is modelled as a fixed part, plus the sparse count matrix (expected
    non-zeros = ``spots * genes * DENSITY[tech]``, at ``MEM_PER_NNZ`` bytes each), plus
    the decoded image (pixels x decoded bytes per pixel x decoder copies, plus the RGB
    array and its pyramid). The constants were calibrated on generated slides (module
    constants ``MEM_*``); the estimate is meant to err on the high side.

    Parameters
    ----------
    root
        Dataset root.
    slide
        Slide id.
    tech
        Technology (default: found on disk).
    spots, genes
        ``spot_num`` and ``gene_num`` from the metadata table; counted from the files
        when ``None``.

    Returns
    -------
    :class:`SlideCost`. Never raises for a damaged slide: unreadable parts count as zero
    (the conversion itself will report the error).

    """
    root = Path(root)
    if tech is None:
        tech = next((t for t in TECHS if (root / t / "coord" / f"{slide}_coord.csv").is_file()), None)
    files = SlideFiles.expected(root, slide, tech or "Visium")
    bytes_in = sum(files.sizes().values())
    try:
        if spots is None:
            spots = _count_lines(files.coord)
        if genes is None:
            genes = _count_header(files.counts)
    except OSError:
        spots, genes = spots or 0, genes or 0
    try:
        pixels, px_bytes, fmt = _image_header(files.image)
    except Exception:  # missing or undecodable header: the conversion will say why
        pixels, px_bytes, fmt = 0, 3, "png"
    density = DENSITY.get(tech or "", max(DENSITY.values()))
    memory = (
        MEM_BASE
        + int(MEM_PER_NNZ * spots * genes * density)
        + pixels * (px_bytes * MEM_DECODE_COPIES.get(fmt, 2) + MEM_PER_PIXEL_RGB)
    )
    return SlideCost(slide, tech, int(spots), int(genes), int(pixels), int(bytes_in), int(memory))


