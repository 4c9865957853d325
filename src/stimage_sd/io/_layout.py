"""Where a slide's files live in the release layout."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._constants import TECHS
from ..errors import SlideNotFoundError, StimageError
from ._ids import validate_slide_id
from ._metadata import read_metadata

__all__ = [
    "PARTS",
    "RELEASE_LAYOUT",
    "SlideFiles",
    "find_metadata",
    "find_slide",
    "list_slides",
    "release_path",
    "validate_slide_id",
]

#: The release layout: where each part of a slide lives, relative to the dataset root (and
#: in the Hugging Face repository). The one table that local paths and hub paths follow.
RELEASE_LAYOUT: dict[str, str] = {
    "image": "{tech}/image/{slide}.png",
    "coord": "{tech}/coord/{slide}_coord.csv",
    "counts": "{tech}/gene_exp/{slide}_count.csv",
    "annotation": "annotation/{slide}_anno.csv",
}
#: The parts of a slide, in the order they are listed.
PARTS = tuple(RELEASE_LAYOUT)


def release_path(slide: str, tech: str, part: str) -> str:
    """Path of one part of a slide inside the release (``/``-separated, relative to the root).

    Parameters
    ----------
    slide
        Slide id, verbatim (checked with :func:`validate_slide_id`).
    tech
        ``"ST"``, ``"Visium"`` or ``"VisiumHD"``.
    part
        ``"image"``, ``"coord"``, ``"counts"`` or ``"annotation"``.

    Returns
    -------
    The relative path, e.g. ``"Visium/coord/<slide>_coord.csv"``.

    Examples
    --------
    >>> from stimage_sd.io._layout import release_path
    >>> release_path("GSE000001_GSM0000001", "Visium", "counts")
    'Visium/gene_exp/GSE000001_GSM0000001_count.csv'
    """
    validate_slide_id(slide)
    try:
        pattern = RELEASE_LAYOUT[part]
    except KeyError:
        raise StimageError(f"unknown part {part!r} (expected one of {', '.join(PARTS)})") from None
    return pattern.format(tech=tech, slide=slide)


@dataclass(frozen=True)
class SlideFiles:
    """Paths of one slide's files in a dataset root.

    Attributes
    ----------
    slide
        The slide id, verbatim.
    tech
        ``"ST"``, ``"Visium"`` or ``"VisiumHD"``.
    root
        The dataset root.
    image, coord, counts
        Paths of ``<tech>/image/<slide>.png``, ``<tech>/coord/<slide>_coord.csv`` and
        ``<tech>/gene_exp/<slide>_count.csv``.
    annotation
        ``annotation/<slide>_anno.csv`` when it exists, else ``None``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "GSE000001_GSM0000001")
    >>> files.tech
    'Visium'
    >>> coords = ssd.io.read_coords(files.coord)
    """

    slide: str
    tech: str
    root: Path
    image: Path
    coord: Path
    counts: Path
    annotation: Path | None = field(default=None)

    @classmethod
    def expected(cls, root: str | Path, slide: str, tech: str) -> SlideFiles:
        """Paths a slide would have, whether or not they exist."""
        validate_slide_id(slide)
        root = Path(root)
        paths = {part: root / release_path(slide, tech, part) for part in PARTS}
        anno = paths.pop("annotation")
        return cls(slide=slide, tech=tech, root=root, **paths, annotation=anno if anno.is_file() else None)

    def required(self) -> dict[str, Path]:
        """The three files every slide must have, by part name."""
        return {"image": self.image, "coord": self.coord, "counts": self.counts}

    def missing(self) -> list[Path]:
        """Required files that do not exist."""
        return [p for p in self.required().values() if not p.is_file()]

    def check(self) -> SlideFiles:
        """Raise :class:`SlideNotFoundError` naming every missing required file."""
        missing = self.missing()
        if missing:
            names = ", ".join(str(p) for p in missing)
            raise SlideNotFoundError(f"slide {self.slide!r} ({self.tech}): missing file(s): {names}")
        return self

    def sizes(self) -> dict[str, int]:
        """Size in bytes of each existing file, by part name."""
        parts = dict(self.required())
        if self.annotation is not None:
            parts["annotation"] = self.annotation
        return {k: p.stat().st_size for k, p in parts.items() if p.is_file()}


def find_metadata(root: str | Path) -> Path | None:
    """The metadata table of a dataset root, preferring the newest dated release.

    Parameters
    ----------
    root
        Dataset root in the release layout.

    Returns
    -------
    Path of the newest ``<root>/meta/meta_all_gene*.csv`` (by the ``MMDDYYYY`` date in its
    name), or ``None`` when there is none.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> meta = ssd.io.read_metadata(ssd.io.find_metadata(root))
    """
    meta = Path(root) / "meta"
    if not meta.is_dir():
        return None
    cands = sorted(meta.glob("meta_all_gene*.csv"))
    if not cands:
        return None

    def key(p: Path) -> tuple[int, str]:
        m = re.search(r"(\d{2})(\d{2})(\d{4})", p.stem)
        return (int(m.group(3) + m.group(1) + m.group(2)) if m else 0, p.name)

    return max(cands, key=key)


def list_slides(root: str | Path) -> dict[str, str]:
    """Slide ids found on disk (by their coordinate files), mapped to their technology.

    Parameters
    ----------
    root
        Dataset root in the release layout.

    Returns
    -------
    Slide id -> ``"ST"``, ``"Visium"`` or ``"VisiumHD"``, for every
    ``<root>/<tech>/coord/<slide>_coord.csv`` (empty when there is none).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> slides = ssd.io.list_slides(root)
    >>> slides["GSE000001_GSM0000001"]
    'Visium'
    """
    out: dict[str, str] = {}
    root = Path(root)
    for tech in TECHS:
        coord_dir = root / tech / "coord"
        if coord_dir.is_dir():
            for p in sorted(coord_dir.glob("*_coord.csv")):
                out[p.name[: -len("_coord.csv")]] = tech
    return out


def find_slide(root: str | Path, slide: str, tech: str | None = None) -> SlideFiles:
    """Locate one slide's files in a dataset root.

    Parameters
    ----------
    root
        Dataset root in the release layout.
    slide
        Slide id, verbatim (``+``, ``.``, ``-`` and typos included).
    tech
        Technology; when ``None`` it is taken from the metadata table when the slide is
        listed there, else from the folder holding its files.

    Returns
    -------
    The slide's :class:`SlideFiles`; all three required files exist.

    Raises
    ------
    SlideNotFoundError
        If the slide or one of its files is missing; the message lists close matches.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> root = ssd.datasets.sample("stimage_sample")
    >>> files = ssd.io.find_slide(root, "Mouse_Brain_Synth_03292024_VIsiumHD")
    >>> files.tech, files.counts.name
    ('VisiumHD', 'Mouse_Brain_Synth_03292024_VIsiumHD_count.csv')
    """
    validate_slide_id(slide)
    root = Path(root)
    if not root.is_dir():
        raise SlideNotFoundError(f"dataset root {root} does not exist or is not a folder")
    if tech is None:
        meta = find_metadata(root)
        if meta is not None:
            table = read_metadata(meta)
            if slide in table.index:
                tech = str(table.at[slide, "tech"])
    if tech is None:
        for t in TECHS:
            if any(
                p.is_file()
                for p in SlideFiles.expected(root, slide, t).required().values()
            ):
                tech = t
                break
    if tech is None:
        known = list(list_slides(root))
        close = [s for s in known if s.strip(" ,") == slide.strip(" ,") and s != slide]
        close += [s for s in difflib.get_close_matches(slide, known, n=5, cutoff=0.6) if s not in close]
        hint = f"; close matches: {', '.join(repr(s) for s in close[:5])}" if close else ""
        raise SlideNotFoundError(f"slide {slide!r} not found under {root}{hint}")
    if tech not in TECHS:
        raise StimageError(f"slide {slide!r}: unknown technology {tech!r} (expected one of {TECHS})")
    files = SlideFiles.expected(root, slide, tech)
    missing = files.missing()
    if missing:
        # the files may sit under another technology's folder (a download into the wrong place)
        elsewhere = []
        for p in missing:
            rel = p.relative_to(root / tech)
            found = [t for t in TECHS if t != tech and (root / t / rel).is_file()]
            if found:
                elsewhere.append(f"{rel} is under {found[0]}/")
        if elsewhere:
            names = ", ".join(str(p) for p in missing)
            raise SlideNotFoundError(
                f"slide {slide!r} ({tech}): missing file(s): {names}; but "
                f"{'; '.join(elsewhere)}: the files are under the wrong technology folder "
                f"(move them to {root / tech}/, or correct the slide's tech in the metadata table)"
            )
    return files.check()
