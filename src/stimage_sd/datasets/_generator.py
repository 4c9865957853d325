"""Generate synthetic slides in the exact STimage-1K4M release layout."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from .._logging import logger
from ..io._layout import SlideFiles
from ..io._transaction import atomic_path
from ._counts_writer import write_counts
from ._genes import GenePanel, build_genes
from ._geometry import Layout, build_layout
from ._image import write_image
from ._spec import SlideSpec, SlideTruth
from ._tables import (
    default_domain_names,
    metadata_row,
    write_annotation,
    write_coords,
    write_metadata_rows,
)

__all__ = ["make_release", "make_slide", "slide_truth", "write_metadata"]

METADATA_FILENAME = "meta_all_gene02122025.csv"


def _truth(root: Path, spec: SlideSpec, layout: Layout, genes: GenePanel) -> SlideTruth:
    return SlideTruth(
        slide=spec.slide,
        tech=spec.tech,
        um_per_px=float(spec.um_per_px),  # type: ignore[arg-type]
        radius_px=float(layout.radius_px),
        pitch_px=float(layout.pitch_px),
        image_shape=(layout.height, layout.width),
        domains=pd.Series(layout.domain.astype(int), index=pd.Index(layout.ids.astype(str), name="spot"), name="domain"),
        domain_names=default_domain_names(spec),
        markers=genes.markers,
        genes=list(genes.names),
        files=SlideFiles.expected(root, spec.slide, spec.tech),
        spec=spec,
    )


def slide_truth(root: str | Path, spec: SlideSpec) -> SlideTruth:
    """Ground truth of a spec without writing anything (cheap: no image, no counts).

    ``files`` points where :func:`make_slide` writes (or wrote) the slide under ``root``.

    Parameters
    ----------
    root
        Dataset root the slide is (or would be) written to.
    spec
        The slide's :class:`SlideSpec`.

    Returns
    -------
    The :class:`SlideTruth` that :func:`make_slide` returns for the same spec.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> spec = ssd.datasets.SlideSpec("Human_Brain_Synth_01012025_Visium_A1", "Visium", grid=(20, 20))
    >>> truth = ssd.datasets.slide_truth("synthetic_root", spec)
    >>> n_spots = len(truth.domains)
    """
    return _truth(Path(root), spec, build_layout(spec), build_genes(spec))


def make_slide(root: str | Path, spec: SlideSpec, *, progress: bool | None = False) -> SlideTruth:
    """Write one synthetic slide (image, coordinates, counts, optional annotation).

    Parameters
    ----------
    root
        Dataset root; files go to ``<root>/<tech>/{image,coord,gene_exp}/`` and
        ``<root>/annotation/`` exactly as in the release.
    spec
        What to generate.
    progress
        Show a progress bar while writing counts.

    Returns
    -------
    The slide's :class:`SlideTruth` (domains, markers, geometry, file paths).

    Notes
    -----
    Files are written to temporary siblings and renamed when complete. The same spec
    (seed included) always gives byte-identical files.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> spec = ssd.datasets.SlideSpec("Human_Brain_Synth_01012025_Visium_A1", "Visium", grid=(20, 20))
    >>> truth = ssd.datasets.make_slide("synthetic_root", spec)
    >>> sdata = ssd.io.read_slide("synthetic_root", spec.slide)
    """
    root = Path(root)
    files = SlideFiles.expected(root, spec.slide, spec.tech)
    layout = build_layout(spec)
    genes = build_genes(spec)
    logger.info("generating %s (%s): %d spots, %d genes, image %dx%d",
                spec.slide, spec.tech, len(layout.ids), len(genes.names), layout.width, layout.height)
    with atomic_path(files.image) as tmp:
        write_image(tmp, spec, layout)
    with atomic_path(files.coord) as tmp:
        write_coords(tmp, layout)
    with atomic_path(files.counts) as tmp:
        write_counts(tmp, spec, layout, genes, progress=progress)
    anno = root / "annotation" / f"{spec.slide}_anno.csv"
    if spec.annotate:
        with atomic_path(anno) as tmp:
            write_annotation(tmp, spec, layout, default_domain_names(spec))
    elif anno.exists():
        anno.unlink()
    return _truth(root, spec, layout, genes)


def write_metadata(
    root: str | Path,
    specs: Iterable[SlideSpec | SlideTruth],
    *,
    sep: str = ",",
    filename: str = METADATA_FILENAME,
) -> Path:
    r"""Write the metadata catalogue ``<root>/meta/<filename>``.

    Parameters
    ----------
    root
        Dataset root.
    specs
        Slides to list (specs, or truths returned by :func:`make_slide`).
    sep
        ``","`` (current release) or ``"\t"`` (the older tab-separated variant).
    filename
        File name inside ``meta/``.

    Returns
    -------
    Path of the written file. Every field is quoted; abstracts span several lines.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> spec = ssd.datasets.SlideSpec("Human_Brain_Synth_01012025_Visium_A1", "Visium", grid=(20, 20))
    >>> truth = ssd.datasets.make_slide("synthetic_root", spec)
    >>> path = ssd.datasets.write_metadata("synthetic_root", [truth])
    >>> path.name
    'meta_all_gene02122025.csv'
    """
    rows = []
    for s in specs:
        if isinstance(s, SlideTruth):
            spec = s.spec
            if spec is None:
                raise ValueError(f"truth of {s.slide!r} carries no spec")
            n = s.n_spots
        else:
            spec, n = s, len(build_layout(s).ids)
        rows.append(metadata_row(spec, n))
    path = Path(root) / "meta" / filename
    with atomic_path(path) as tmp:
        write_metadata_rows(tmp, rows, sep=sep)
    return path


def make_release(
    root: str | Path,
    specs: Iterable[SlideSpec],
    *,
    metadata: bool = True,
    sep: str = ",",
    progress: bool | None = False,
    on_slide: Callable[[SlideTruth], None] | None = None,
) -> dict[str, SlideTruth]:
    """Write several slides and the metadata table: a small release.

    Parameters
    ----------
    root
        Dataset root.
    specs
        Slides to generate (ids must be unique).
    metadata
        Also write ``meta/meta_all_gene02122025.csv``.
    sep
        Delimiter of the metadata table.
    progress
        Show progress bars.
    on_slide
        Called with each slide's truth once it is written.

    Returns
    -------
    Slide id -> :class:`SlideTruth`, in the order of ``specs``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> specs = [
    ...     ssd.datasets.SlideSpec("Human_Brain_Synth_01012025_Visium_A1", "Visium", grid=(20, 20)),
    ...     ssd.datasets.SlideSpec("Human_Breast_Synth_01012025_ST_A1", "ST", annotate=True, seed=1),
    ... ]
    >>> truths = ssd.datasets.make_release("synthetic_root", specs)
    >>> cat = ssd.hub.Catalog.from_root("synthetic_root")
    """
    specs = list(specs)
    ids = [s.slide for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError("slide ids must be unique")
    out: dict[str, SlideTruth] = {}
    for spec in specs:
        out[spec.slide] = t = make_slide(root, spec, progress=progress)
        if on_slide is not None:
            on_slide(t)
    if metadata:
        write_metadata(root, out.values(), sep=sep)
    return out
