"""Slide ids: kept verbatim, refused when they could address a file outside their folder."""

from __future__ import annotations

import re

from ..errors import StimageError

__all__ = ["study_of", "validate_slide_id"]

_BAD_ID = re.compile(r"[/\\\x00-\x1f]")
_GEO = re.compile(r"^(GSE\d+)_GSM\d+")


def validate_slide_id(slide: str) -> str:
    """Check that a slide id is safe to use as a file-name component.

    Real ids contain ``+``, ``.`` and ``-`` and are kept verbatim; ids with path
    separators, control characters (NUL included) or made only of dots are rejected, so
    that no id read from metadata or the hub can address a file outside its folder.

    Parameters
    ----------
    slide
        The slide id to check.

    Returns
    -------
    ``slide``, unchanged.

    Raises
    ------
    StimageError
        If the id is unsafe.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.io.validate_slide_id("Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm")
    'Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm'
    >>> ssd.io.validate_slide_id("../etc/passwd")  # raises StimageError  # doctest: +SKIP
    """
    if not isinstance(slide, str) or not slide:
        raise StimageError(f"invalid slide id {slide!r}: empty")
    if _BAD_ID.search(slide) or set(slide) == {"."}:
        raise StimageError(
            f"invalid slide id {slide!r}: contains a path separator or control character, "
            "or is made only of dots"
        )
    return slide


def study_of(slide: str) -> str:
    """The study a slide belongs to (the unit that must not straddle a train/test split).

    Parameters
    ----------
    slide
        Slide id.

    Returns
    -------
    ``GSE<n>`` for GEO ids (``GSE<n>_GSM<m>``), else the first four ``_``-separated
    fields (``Species_Tissue_Author_MMDDYYYY``), or the whole id when it has fewer.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.hub.study_of("GSE144239_GSM4284316")
    'GSE144239'
    >>> ssd.hub.study_of("Human_Breast_Andersson_10142021_ST_A1")
    'Human_Breast_Andersson_10142021'
    """
    m = _GEO.match(slide)
    if m:
        return m.group(1)
    return "_".join(slide.split("_")[:4])
