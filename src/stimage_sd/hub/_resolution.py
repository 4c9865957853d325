"""The resolution index: µm per pixel, spot pitch, field of view and magnification of every slide.

The release ships no pixel size, but each slide's coordinate file (a few kB to a few MB)
gives it: :func:`stimage_sd.io.estimate_pixel_size` on the spot centres. The image size
comes from the image *header*: a ranged read of its first bytes (more on demand, e.g. for
a TIFF whose first IFD lies further in), never the whole image. Together they give the
physical field of view and the effective magnification.

**Magnification convention**: ``magnification = 10 / µm_per_px``, i.e. 0.25 µm/px ≈ 40x,
0.5 µm/px ≈ 20x, 1 µm/px ≈ 10x (the usual whole-slide-scanner convention; the objective
actually used may differ).

Results are cached in ``<root>/.stimage_sd/resolution.json``, keyed by the size and
checksum of the coordinate file and image they came from, so a re-run recomputes only
changed or new slides.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._logging import logger, progress_bar
from ..errors import StimageError
from ..io._layout import release_path
from ..io._transaction import atomic_write_json
from ._client import (
    REPO_ID,
    REPO_TYPE,
    cache_dir_of,
    endpoint_url,
    first_line,
    hub_errors,
    is_offline,
)

if TYPE_CHECKING:
    from ._catalog import Catalog

__all__ = ["RESOLUTION_COLUMNS", "magnification", "resolution_index"]

#: Catalogue columns added by :meth:`Catalog.with_resolution <stimage_sd.hub.Catalog.with_resolution>`.
RESOLUTION_COLUMNS = (
    "um_per_px",
    "scale_method",
    "spot_pitch_px",
    "image_width",
    "image_height",
    "image_format",
    "fov_width_mm",
    "fov_height_mm",
    "magnification",
)
CACHE_FILE = Path(".stimage_sd") / "resolution.json"
#: 2: µm/px from the lattice fit (issue 17; version 1 used the nearest-neighbour median,
#: wrong on sparse slides), so version-1 caches are recomputed.
_FORMAT_VERSION = 2


def magnification(um_per_px: float) -> float:
    """Effective magnification of a pixel size: ``10 / µm_per_px`` (0.25 µm/px ≈ 40x, 0.5 ≈ 20x).

    Parameters
    ----------
    um_per_px
        Micrometres per pixel.

    Returns
    -------
    The magnification, ``nan`` for a missing or non-positive pixel size.

    Examples
    --------
    >>> from stimage_sd.hub import magnification
    >>> magnification(0.25), magnification(0.5)
    (40.0, 20.0)
    """
    return 10.0 / um_per_px if um_per_px and np.isfinite(um_per_px) and um_per_px > 0 else math.nan


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP ``Range`` requests (each read fetches what it needs)."""

    def __init__(self, url: str, headers: dict[str, str], name: str) -> None:
        super().__init__()
        from huggingface_hub.utils import get_session

        self._session = get_session()
        self.url, self._headers, self.name = url, headers, name
        self._pos = 0
        self.size: int | None = None
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            if self.size is None:
                self._fetch(0, 0)
            offset += self.size or 0
        elif whence == io.SEEK_CUR:
            offset += self._pos
        self._pos = max(0, offset)
        return self._pos

    def _fetch(self, start: int, end: int) -> bytes:
        from huggingface_hub.utils import hf_raise_for_status

        if self.size is not None and start >= self.size:
            return b""
        r = self._session.get(self.url, headers={**self._headers, "Range": f"bytes={start}-{end}"})
        if r.status_code == 416:
            return b""
        hf_raise_for_status(r)
        data = r.content
        if r.status_code == 200:  # server ignored the range
            self.size = len(data)
            data = data[start : end + 1]
        else:
            total = r.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit():
                self.size = int(total)
        self.bytes_read += len(data)
        return data

    def readinto(self, b) -> int:
        n = len(b)
        if n == 0:
            return 0
        data = self._fetch(self._pos, self._pos + n - 1)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _remote_header(url: str, headers: dict[str, str], name: str) -> tuple[Any, int]:
    from ..io._header import read_image_header

    raw = _RangeFile(url, headers, name)
    fh = io.BufferedReader(raw, buffer_size=16 * 1024)
    return read_image_header(fh, name=name), raw.bytes_read


def _pixel_size(coord_path: Path, tech: str, slide: str) -> tuple[float, str, float, int]:
    from ..io._coords import read_coords
    from ..io._scale import estimate_pixel_size

    coords = read_coords(coord_path)
    xy = coords[["x", "y"]].to_numpy()
    size = estimate_pixel_size(xy, float(coords["r"].median()), tech, spot_ids=coords.index, source=slide)
    return float(size.um_per_px), str(size.method), float(size.pitch_px), len(coords)


def _load_cache(root: Path) -> dict[str, Any]:
    path = root / CACHE_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") == _FORMAT_VERSION:
            return dict(data.get("slides", {}))
    except FileNotFoundError:
        pass
    except (ValueError, TypeError, AttributeError) as e:
        logger.warning("ignoring unreadable resolution cache %s: %s", path, e)
    return {}


def _key(size: int | None, digest: str | None) -> str:
    return f"{size}:{digest or ''}"


def default_root(repo_id: str = REPO_ID, cache_dir: str | Path | None = None) -> Path:
    """Where the coordinate files and the index are kept for a hub catalogue."""
    from huggingface_hub import constants

    base = Path(cache_dir_of(cache_dir) or constants.HF_HUB_CACHE)
    return base / "stimage_sd" / f"datasets--{repo_id.replace('/', '--')}"


def resolution_index(
    catalog: Catalog,
    *,
    root: str | Path | None = None,
    images: bool = True,
    refresh: bool = False,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """µm/px, spot pitch, image size, field of view and magnification of the catalogue's slides.

    See :meth:`Catalog.with_resolution <stimage_sd.hub.Catalog.with_resolution>`.

    Returns
    -------
    One row per slide (index = slide id) with :data:`RESOLUTION_COLUMNS` plus ``n_spots``.
    """
    from ._download import download

    t = catalog.table
    slides = list(t.index)
    local = catalog.root is not None
    if local:
        root = Path(catalog.root)
    else:
        if catalog.source.startswith("hf://") and repo_id is None:
            repo_id = catalog.source[len("hf://") :] or REPO_ID
        repo_id = repo_id or REPO_ID
        root = Path(root) if root is not None else default_root(repo_id)
    cache = {} if refresh else _load_cache(root)
    techs = {s: str(t.at[s, "tech"]) for s in slides}

    # where each slide's coordinate file and image are, with the key their values are cached under
    coord_of: dict[str, Path] = {}
    coord_key: dict[str, str] = {}
    image_of: dict[str, str] = {}
    image_key: dict[str, str] = {}
    listing = None
    if local:
        for s in slides:
            for part, out, keys in (("coord", coord_of, coord_key), ("image", image_of, image_key)):
                p = root / release_path(s, techs[s], part)
                if p.is_file():
                    st = p.stat()
                    out[s] = p if part == "coord" else str(p)
                    keys[s] = _key(st.st_size, str(st.st_mtime_ns))
    else:
        plan = download(
            slides, root, parts="coord", metadata=False,
            repo_id=repo_id, revision=revision, endpoint=endpoint, token=token, offline=offline,
            confirm=True, verify=True, progress=progress,
        )
        listing = plan.listing
        index = listing.index() if listing is not None else {}
        for s in slides:
            entry = index.get(s, {})
            if "coord" in entry:
                f = listing.files[entry["coord"]]
                coord_of[s] = root / f.path
                coord_key[s] = _key(f.size, f.sha256 or f.blob_id)
            if "image" in entry:
                f = listing.files[entry["image"]]
                image_of[s] = f.path
                image_key[s] = _key(f.size, f.sha256 or f.blob_id)

    rows: dict[str, dict[str, Any]] = {}
    header_bytes = 0
    http_headers: dict[str, str] = {}
    commit = listing.commit if listing is not None else revision
    fetch_headers = images and (local or not is_offline(offline))
    if images and not local and fetch_headers:
        from huggingface_hub.utils import build_hf_headers

        http_headers = build_hf_headers(token=token, library_name="stimage_sd")
    ep = endpoint_url(endpoint)
    with progress_bar("resolution index", len(slides), progress=progress) as advance:
        for s in slides:
            old = cache.get(s, {})
            row: dict[str, Any] = {}
            if s in coord_of and old.get("coord_key") == coord_key[s] and "um_per_px" in old:
                row.update({k: old[k] for k in ("um_per_px", "scale_method", "spot_pitch_px", "n_spots") if k in old})
            elif s in coord_of:
                try:
                    um, method, pitch, n = _pixel_size(coord_of[s], techs[s], s)
                    row.update(um_per_px=um, scale_method=method, spot_pitch_px=pitch, n_spots=n)
                except StimageError as e:
                    logger.warning("%s: no pixel size (%s)", s, e)
            row["coord_key"] = coord_key.get(s)
            if images and s in image_of:
                if old.get("image_key") == image_key[s] and "image_width" in old:
                    row.update({k: old[k] for k in ("image_width", "image_height", "image_format")})
                elif fetch_headers:
                    try:
                        if local:
                            from ..io._header import read_image_header

                            h = read_image_header(image_of[s])
                        else:
                            from huggingface_hub import hf_hub_url

                            url = hf_hub_url(repo_id, image_of[s], repo_type=REPO_TYPE, revision=commit, endpoint=ep)
                            with hub_errors(repo_id, ep):
                                h, n = _remote_header(url, http_headers, image_of[s])
                            header_bytes += n
                        row.update(image_width=h.width, image_height=h.height, image_format=h.format)
                    except StimageError as e:
                        logger.warning("%s: no image size (%s)", s, first_line(e))
                row["image_key"] = image_key[s]
            rows[s] = row
            advance(1)
    if header_bytes:
        logger.info("read %d image header(s): %d bytes", len(slides), header_bytes)
    merged = {**cache, **rows}
    try:
        atomic_write_json(root / CACHE_FILE, {"format_version": _FORMAT_VERSION, "slides": merged}, indent=0)
    except OSError as e:
        logger.warning("cannot write the resolution cache into %s: %s", root, e)
    return _frame(rows, slides)


def _frame(rows: dict[str, dict[str, Any]], slides: Iterable[str]) -> pd.DataFrame:
    slides = list(slides)
    df = pd.DataFrame.from_dict(rows, orient="index").reindex(slides)
    out = pd.DataFrame(index=pd.Index(slides, name=None))
    um = pd.to_numeric(df.get("um_per_px"), errors="coerce") if "um_per_px" in df else pd.Series(np.nan, index=df.index)
    out["um_per_px"] = um.astype("float64")
    out["scale_method"] = pd.array(df.get("scale_method", pd.Series(pd.NA, index=df.index)), dtype="string")
    out["spot_pitch_px"] = pd.to_numeric(df.get("spot_pitch_px", pd.Series(np.nan, index=df.index)), errors="coerce").astype("float64")
    for c in ("image_width", "image_height"):
        out[c] = pd.array(pd.to_numeric(df.get(c, pd.Series(pd.NA, index=df.index)), errors="coerce"), dtype="Int64")
    out["image_format"] = pd.array(df.get("image_format", pd.Series(pd.NA, index=df.index)), dtype="string")
    out["fov_width_mm"] = out["image_width"].astype("float64") * out["um_per_px"] / 1000.0
    out["fov_height_mm"] = out["image_height"].astype("float64") * out["um_per_px"] / 1000.0
    out["magnification"] = 10.0 / out["um_per_px"].where(out["um_per_px"] > 0)
    return out
