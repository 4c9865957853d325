"""Geometry of the technologies in STimage-1K4M.

Values are the physical layouts documented by the vendors and summarised in
``STIMAGE_FORMAT.md``: Visium spots are 55 µm across on a 100 µm centre-to-centre
hexagonal grid, but the release's Visium radius follows Space Ranger's
``spot_diameter_fullres``, i.e. a *theoretical 65 µm* spot; legacy ST spots are 100 µm
across on a 200 µm square grid; VisiumHD bins in the release are 8 µm squares.
"""

from __future__ import annotations

from dataclasses import dataclass

TECHS = ("ST", "Visium", "VisiumHD")


@dataclass(frozen=True)
class TechGeometry:
    """Known geometry of one technology.

    Attributes
    ----------
    pitch_um
        Centre-to-centre distance of nearest neighbouring spots, in µm.
    radius_um
        The physical size that the release's radius ``r`` corresponds to, in µm
        (half of the diameter that ``2r`` pixels span).
    grid
        ``"hex"`` or ``"square"``.
    shape
        ``"circle"`` or ``"square"``: how spots are drawn in the ``spots`` element.
    """

    pitch_um: float
    radius_um: float
    grid: str
    shape: str


GEOMETRY: dict[str, TechGeometry] = {
    "ST": TechGeometry(pitch_um=200.0, radius_um=50.0, grid="square", shape="circle"),
    "Visium": TechGeometry(pitch_um=100.0, radius_um=32.5, grid="hex", shape="circle"),
    "VisiumHD": TechGeometry(pitch_um=8.0, radius_um=4.0, grid="square", shape="square"),
}

#: Name of the image, shapes and table elements of a converted slide.
IMAGE_KEY = "he"
SHAPES_KEY = "spots"
TABLE_KEY = "table"
REGION_KEY = "region"
INSTANCE_KEY = "spot_id"
UNS_KEY = "stimage"
#: Coordinate systems.
PIXEL_CS = "global"
MICRON_CS = "micron"
#: Relative disagreement between the pitch- and radius-based pixel size that is warned about.
SCALE_DISAGREEMENT_WARN = 0.10
