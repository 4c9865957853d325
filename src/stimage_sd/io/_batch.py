"""Converting many slides: skipping finished ones, recording failures, going on."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import StimageError
from .._logging import logger, track
from ._convert import convert_slide, store_path
from ._layout import find_metadata, list_slides
from ._store import is_complete

__all__ = ["SlideResult", "convert_many", "select_slides"]


@dataclass
class SlideResult:
    """Outcome of one slide in a batch.

    Attributes
    ----------
    slide
        Slide id.
    status
        ``"converted"``, ``"skipped"`` (already complete) or ``"failed"``.
    path
        Store path (``None`` when failed).
    error
        Error message when failed.
    seconds
        Wall time spent on the slide.
    info
        Extra figures (spots, genes, µm/px) when converted.
    """

    slide: str
    status: str
    path: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def select_slides(root: str | Path, slides: Sequence[str] | None = None, techs: Sequence[str] | None = None) -> list[str]:
    """Slide ids of a root: the given ones, or all listed in the metadata table / on disk.

    Parameters
    ----------
    root
        Dataset root.
    slides
        Explicit slide ids (returned as given, in order, de-duplicated).
    techs
        Keep only these technologies (when ``slides`` is ``None``).
    """
    if slides:
        return list(dict.fromkeys(slides))
    on_disk = list_slides(root)
    meta = find_metadata(root)
    if meta is not None:
        from ._metadata import read_metadata

        table = read_metadata(meta)
        ids = [s for s in table.index if s in on_disk]
        tech_of = {s: str(table.at[s, "tech"]) for s in ids}
        ids += [s for s in on_disk if s not in tech_of]
        tech_of.update({s: t for s, t in on_disk.items() if s not in tech_of})
    else:
        ids, tech_of = list(on_disk), on_disk
    if techs:
        ids = [s for s in ids if tech_of[s] in set(techs)]
    return ids


def convert_many(
    root: str | Path,
    out_dir: str | Path,
    slides: Iterable[str] | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    **kwargs: Any,
) -> list[SlideResult]:
    """Convert several slides, one after another, going on after failures.

    Parameters
    ----------
    root
        Dataset root.
    out_dir
        Output folder; each slide goes to ``<out_dir>/<slide>.zarr``.
    slides
        Slide ids; default every slide of the root.
    overwrite
        Re-convert complete stores.
    progress
        Show a progress bar over slides.
    **kwargs
        Passed to :func:`convert_slide`.

    Returns
    -------
    One :class:`SlideResult` per slide, in order.
    """
    ids = select_slides(root, list(slides) if slides is not None else None)
    results: list[SlideResult] = []
    for slide in track(ids, "converting", total=len(ids), progress=progress):
        t0 = time.perf_counter()
        try:
            dest = store_path(out_dir, slide)
            if is_complete(dest) and not overwrite:
                results.append(SlideResult(slide, "skipped", dest))
                continue
            dest = convert_slide(root, slide, out_dir, overwrite=True, progress=False, **kwargs)
            results.append(SlideResult(slide, "converted", dest, seconds=time.perf_counter() - t0, info=_info(dest)))
        except (StimageError, OSError) as e:
            logger.error("%s: %s", slide, e)
            results.append(SlideResult(slide, "failed", error=str(e), seconds=time.perf_counter() - t0))
    return results


def _info(path: Path) -> dict[str, Any]:
    from ._store import store_attrs

    a = store_attrs(path)
    return {k: a.get(k) for k in ("tech", "n_spots", "n_genes", "um_per_px")}
