"""Fetching exactly the slides asked for from the Hugging Face dataset repository.

The release (~0.5 TB) lives in the dataset repository :data:`REPO_ID`. :func:`download`
lists the repository once, works out the files of the requested slides and parts, reports
their byte total, asks for confirmation above a threshold and then calls the real
``huggingface_hub.snapshot_download`` with ``allow_patterns`` that name exactly those
files (glob characters in slide ids escaped) and ``local_dir=root``, so that ``root``
receives the release layout. Files already complete in ``root`` are not fetched again,
an interrupted transfer is resumed by the client with ranged requests, and every file is
checked afterwards (size, and sha256 or git blob sha1 for the files fetched by the call).

``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are read when a function is called
(not only when ``huggingface_hub`` is imported). The token is passed to the client and
never logged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._constants import TECHS
from .._logging import logger, progress_bar, progress_enabled
from .._utils import hash_file, sha256_file
from ..errors import StimageError
from ..io._layout import PARTS, list_slides, validate_slide_id
from ..io._layout import release_path as repo_path
from ..io._transaction import atomic_write_json
from ._client import (
    REPO_ID,
    REPO_TYPE,
    cache_dir_of,
    endpoint_url,
    escape_glob,
    format_bytes,
    hub_errors,
    is_offline,
    silent_tqdm,
    slide_not_found,
)

if TYPE_CHECKING:
    from ._catalog import Catalog

__all__ = [
    "DEFAULT_CONFIRM_BYTES",
    "PARTS",
    "REPO_ID",
    "REPO_TYPE",
    "DownloadPlan",
    "Listing",
    "RemoteFile",
    "download",
    "escape_glob",
    "format_bytes",
    "list_release",
    "plan_download",
    "repo_path",
]

#: Downloads larger than this many bytes need confirmation (``confirm``; CLI ``--yes``).
DEFAULT_CONFIRM_BYTES = 10 * 1024**3
#: Where :func:`download` keeps the repository listing inside a dataset root.
LISTING_FILE = Path(".stimage_sd") / "listing.json"

_PART_RE = re.compile(
    rf"^(?P<tech>{'|'.join(TECHS)})/(?:image/(?P<image>[^/]+)\.png|coord/(?P<coord>[^/]+)_coord\.csv"
    r"|gene_exp/(?P<counts>[^/]+)_count\.csv)$"
)
_ANNO_RE = re.compile(r"^annotation/(?P<slide>[^/]+)_anno\.csv$")


# --------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class RemoteFile:
    """One file of the repository listing.

    Attributes
    ----------
    path
        Path in the repository (``/``-separated).
    size
        Size in bytes.
    sha256
        sha256 of the content for LFS files, else ``None``.
    blob_id
        Git blob id (sha1 of the file for regular files, of the LFS pointer for LFS files).

    """

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass
class Listing:
    """The files of the repository at one commit, and the slides they hold.

    Attributes
    ----------
    repo_id
        Repository id.
    commit
        Commit sha the listing was taken at (``None`` when unknown).
    files
        Repository files by path.

    """

    repo_id: str
    commit: str | None
    files: dict[str, RemoteFile]
    _index: dict[str, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def index(self) -> dict[str, dict[str, Any]]:
        """Slides found in the listing: ``{slide: {"tech": ..., <part>: path, ...}}``."""
        if self._index is None:
            idx: dict[str, dict[str, Any]] = {}
            annos: dict[str, str] = {}
            for p in self.files:
                if m := _PART_RE.match(p):
                    part = next(k for k in ("image", "coord", "counts") if m[k] is not None)
                    slide = m[part]
                    entry = idx.setdefault(slide, {"tech": m["tech"]})
                    if entry["tech"] != m["tech"]:
                        logger.warning(
                            "slide %r has files under both %s/ and %s/; using %s",
                            slide, entry["tech"], m["tech"], entry["tech"],
                        )
                        continue
                    entry[part] = p
                elif m := _ANNO_RE.match(p):
                    annos[m["slide"]] = p
            for slide, p in annos.items():
                if slide in idx:
                    idx[slide]["annotation"] = p
            self._index = idx
        return self._index

    @property
    def slides(self) -> dict[str, str]:
        """Slide ids found in the listing, mapped to their technology."""
        return {s: e["tech"] for s, e in self.index().items()}

    @property
    def annotated(self) -> set[str]:
        """Slides with an annotation file."""
        return {s for s, e in self.index().items() if "annotation" in e}

    def metadata_files(self) -> list[str]:
        """Paths of the metadata tables (``meta/meta_all_gene*.csv``)."""
        return sorted(p for p in self.files if re.fullmatch(r"meta/meta_all_gene[^/]*\.csv", p))

    def to_json(self) -> dict:
        """JSON-serialisable form."""
        return {
            "format_version": 1,
            "repo_id": self.repo_id,
            "commit": self.commit,
            "files": {
                p: {k: v for k, v in (("size", f.size), ("sha256", f.sha256), ("blob_id", f.blob_id)) if v is not None}
                for p, f in sorted(self.files.items())
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> Listing:
        """Inverse of :meth:`to_json`."""
        files = {
            p: RemoteFile(path=p, size=int(v["size"]), sha256=v.get("sha256"), blob_id=v.get("blob_id"))
            for p, v in data["files"].items()
        }
        return cls(repo_id=data["repo_id"], commit=data.get("commit"), files=files)

    def save(self, root: str | Path) -> Path:
        """Write the listing into ``root`` (atomically) and return its path."""
        path = Path(root) / LISTING_FILE
        return atomic_write_json(path, self.to_json(), indent=0)

    @classmethod
    def load(cls, root: str | Path) -> Listing | None:
        """The listing saved in ``root`` by :func:`download`, or ``None``."""
        path = Path(root) / LISTING_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable listing %s: %s", path, e)
            return None


def list_release(
    repo_id: str = REPO_ID,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> Listing:
    """List every file of the repository (sizes and checksums), at one commit.

    Parameters
    ----------
    repo_id
        Dataset repository.
    revision
        Branch, tag or commit; ``None`` is the default branch.
    endpoint
        Hub URL; ``None`` reads ``HF_ENDPOINT`` (default ``https://huggingface.co``).
    token
        Access token; ``None`` lets ``huggingface_hub`` find one (``HF_TOKEN``, login).

    Raises
    ------
    StimageError
        When the Hub cannot be reached or the repository or revision does not exist.

    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    endpoint = endpoint_url(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, endpoint):
        info = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision)
        commit = info.sha
        files: dict[str, RemoteFile] = {}
        for f in api.list_repo_tree(repo_id, repo_type=REPO_TYPE, revision=commit or revision, recursive=True):
            if isinstance(f, RepoFile):
                files[f.path] = RemoteFile(
                    path=f.path,
                    size=int(f.size),
                    sha256=f.lfs.sha256 if f.lfs is not None else None,
                    blob_id=f.blob_id,
                )
    logger.debug("listed %d files of %s at %s", len(files), repo_id, commit)
    return Listing(repo_id=repo_id, commit=commit, files=files)


# --------------------------------------------------------------------------- plan
@dataclass
class DownloadPlan:
    """What :func:`download` fetches (or fetched).

    Attributes
    ----------
    repo_id, commit
        Repository and the commit the files come from (``None`` offline without listing).
    root
        Local dataset root (release layout).
    slides
        Slide ids, in the order asked for, mapped to their technology.
    files
        Every file that is present in ``root`` once the download is done.
    present
        Paths of ``files`` that were already complete in ``root`` before the call.
    missing
        Parts asked for that the repository lacks, by slide (annotations of
        non-annotated slides are not listed).
    offline
        Whether the plan was made without the network.
    listing
        The repository listing the plan was made from.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> plan = ssd.hub.plan_download(["Human_Breast_Andersson_10142021_ST_A1"], "stimage_root")
    >>> print(plan.describe())  # doctest: +SKIP
    >>> plan.bytes_to_fetch  # doctest: +SKIP
    """

    repo_id: str
    commit: str | None
    root: Path
    slides: dict[str, str]
    files: list[RemoteFile]
    present: set[str] = field(default_factory=set)
    missing: dict[str, list[str]] = field(default_factory=dict)
    offline: bool = False
    listing: Listing | None = field(default=None, repr=False)

    @property
    def bytes_total(self) -> int:
        """Bytes of all planned files."""
        return sum(f.size for f in self.files)

    @property
    def bytes_to_fetch(self) -> int:
        """Bytes of the planned files not yet complete in ``root``."""
        return sum(f.size for f in self.files if f.path not in self.present)

    @property
    def to_fetch(self) -> list[RemoteFile]:
        """Planned files not yet complete in ``root``."""
        return [f for f in self.files if f.path not in self.present]

    def allow_patterns(self) -> list[str]:
        """``snapshot_download`` patterns matching exactly the planned files."""
        return [escape_glob(f.path) for f in self.files]

    def describe(self) -> str:
        """One line: slides, files, bytes in all and to fetch."""
        n_fetch = len(self.to_fetch)
        return (
            f"{len(self.slides)} slide(s), {len(self.files)} file(s), {format_bytes(self.bytes_total)} in all; "
            f"{n_fetch} file(s), {format_bytes(self.bytes_to_fetch)} to download into {self.root}"
        )


def _slide_ids(slides: Iterable[str] | Catalog | str) -> list[str]:
    if isinstance(slides, str):
        slides = [slides]
    ids = list(getattr(slides, "slides", slides))
    seen: set[str] = set()
    out = []
    for s in ids:
        validate_slide_id(s)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _check_parts(parts: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = [p.strip() for p in parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise StimageError(f"unknown part(s) {bad} (expected some of {', '.join(PARTS)})")
    if not parts:
        raise StimageError(f"no parts asked for (expected some of {', '.join(PARTS)})")
    return tuple(dict.fromkeys(parts))


def _local_complete(root: Path, f: RemoteFile) -> bool:
    p = root / f.path
    try:
        return p.is_file() and p.stat().st_size == f.size
    except OSError:
        return False


def plan_download(
    slides: Iterable[str] | Catalog | str,
    root: str | Path,
    *,
    parts: Sequence[str] | str = PARTS,
    metadata: bool = True,
    listing: Listing | None = None,
    repo_id: str = REPO_ID,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
) -> DownloadPlan:
    """Work out the files of ``slides`` to fetch into ``root`` (no file is downloaded).

    Offline, the listing saved in ``root`` by an earlier download is used, or the files
    already in ``root``.

    Parameters
    ----------
    slides
        Slide ids (verbatim), one id, or a :class:`~stimage_sd.hub.Catalog` (its slides).
    root
        Local dataset root the files would be downloaded into (release layout).
    parts
        Which files of each slide: any of ``"image"``, ``"coord"``, ``"counts"``,
        ``"annotation"``; a comma-separated string is accepted.
    metadata
        Also plan ``meta/meta_all_gene*.csv``.
    listing
        A repository listing to reuse (from an earlier plan: ``plan.listing``); ``None``
        lists the repository (or, offline, ``root``).
    repo_id, revision
        Repository (default :data:`REPO_ID`) and branch, tag or commit.
    endpoint
        Hub URL; ``None`` reads ``HF_ENDPOINT``.
    token
        Access token; ``None`` lets ``huggingface_hub`` find one. Never logged.
    offline
        Stay off the network; ``None`` reads ``HF_HUB_OFFLINE``.

    Returns
    -------
    The :class:`DownloadPlan`: files, bytes in all and bytes still to fetch.

    Raises
    ------
    SlideNotFoundError
        If a slide id is not in the repository; the message lists close matches.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> plan = ssd.hub.plan_download("Human_Breast_Andersson_10142021_ST_A1", "stimage_root")
    >>> print(plan.describe())  # doctest: +SKIP
    >>> plan = ssd.hub.plan_download(["GSE144239_GSM4284316"], "stimage_root", parts="coord,counts")
    """
    root = Path(root)
    ids = _slide_ids(slides)
    parts = _check_parts(parts)
    offline = is_offline(offline)
    if listing is None:
        if offline:
            listing = Listing.load(root)
            if listing is None:
                listing = _local_listing(root)
        else:
            listing = list_release(repo_id, revision=revision, endpoint=endpoint, token=token)
    index = listing.index()
    unknown = [s for s in ids if s not in index]
    if unknown:
        where = f"{listing.repo_id}" + (f" at {listing.commit[:10]}" if listing.commit else "")
        if offline:
            where += f" (offline: local copy {root})"
        raise slide_not_found(unknown, index, where)

    files: dict[str, RemoteFile] = {}
    missing: dict[str, list[str]] = {}
    for s in ids:
        entry = index[s]
        for part in parts:
            p = entry.get(part)
            if p is None:
                if part != "annotation":
                    missing.setdefault(s, []).append(part)
                continue
            files[p] = listing.files[p]
    if metadata:
        meta = listing.metadata_files()
        if not meta and not offline:
            logger.warning("the repository has no meta/meta_all_gene*.csv")
        for p in meta:
            files[p] = listing.files[p]
    for s, ps in missing.items():
        logger.warning("slide %r: the repository has no %s file", s, " or ".join(ps))
    plan = DownloadPlan(
        repo_id=listing.repo_id,
        commit=listing.commit,
        root=root,
        slides={s: index[s]["tech"] for s in ids},
        files=list(files.values()),
        missing=missing,
        offline=offline,
        listing=listing,
    )
    plan.present = {f.path for f in plan.files if _local_complete(root, f)}
    return plan


def _local_listing(root: Path) -> Listing:
    """A listing of what is on disk in ``root`` (offline, without a saved listing)."""
    files: dict[str, RemoteFile] = {}
    for slide, tech in list_slides(root).items():
        for part in PARTS:
            rel = repo_path(slide, tech, part)
            p = root / rel
            if p.is_file():
                files[rel] = RemoteFile(path=rel, size=p.stat().st_size)
    meta = root / "meta"
    if meta.is_dir():
        for p in meta.glob("meta_all_gene*.csv"):
            rel = f"meta/{p.name}"
            files[rel] = RemoteFile(path=rel, size=p.stat().st_size)
    return Listing(repo_id=REPO_ID, commit=None, files=files)


# --------------------------------------------------------------------------- download


def _git_blob_sha1(path: Path, size: int, advance) -> str:
    return hash_file(path, hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False), advance)


def _discard(root: Path, rel: str) -> None:
    """Remove a bad file and the client's record of it, so that a re-run fetches it again."""
    (root / rel).unlink(missing_ok=True)
    (root / ".cache" / "huggingface" / "download" / f"{rel}.metadata").unlink(missing_ok=True)


def _verify(plan: DownloadPlan, checksum: Iterable[str], progress: bool | None) -> None:
    root = plan.root
    bad: list[str] = []
    for f in plan.files:
        p = root / f.path
        if not p.is_file():
            bad.append(f"{f.path}: missing")
        elif p.stat().st_size != f.size:
            bad.append(f"{f.path}: {p.stat().st_size} bytes, expected {f.size}")
            _discard(root, f.path)
    checksum = set(checksum)
    todo = [f for f in plan.files if f.path in checksum and (f.sha256 or f.blob_id)]
    total = sum(f.size for f in todo)
    if todo:
        with progress_bar("verifying checksums", total, progress=progress) as advance:
            for f in todo:
                p = root / f.path
                if not p.is_file():
                    continue
                if f.sha256:
                    got, want, kind = sha256_file(p, advance), f.sha256, "sha256"
                else:
                    got, want, kind = _git_blob_sha1(p, f.size, advance), f.blob_id, "git blob sha1"
                if got != want:
                    bad.append(f"{f.path}: {kind} {got[:12]}…, expected {want[:12]}…")
                    _discard(root, f.path)
    if bad:
        raise StimageError(
            f"{len(bad)} file(s) in {root} failed verification and were removed; run the download again: "
            + "; ".join(bad[:5])
            + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        )
    logger.info("verified %d file(s) (%d by checksum)", len(plan.files), len(todo))


def download(
    slides: Iterable[str] | Catalog | str,
    root: str | Path,
    *,
    parts: Sequence[str] | str = PARTS,
    metadata: bool = True,
    repo_id: str = REPO_ID,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    confirm: bool | Callable[[DownloadPlan], bool] | None = None,
    confirm_above: int | None = DEFAULT_CONFIRM_BYTES,
    verify: bool = True,
    dry_run: bool = False,
    max_workers: int = 8,
    progress: bool | None = None,
) -> DownloadPlan:
    """Download the files of the given slides into ``root``, in the release layout.

    Parameters
    ----------
    slides
        Slide ids (verbatim), one id, or a :class:`~stimage_sd.hub.Catalog` (its slides).
    root
        Local dataset root; receives ``<tech>/image/<slide>.png``,
        ``<tech>/coord/<slide>_coord.csv``, ``<tech>/gene_exp/<slide>_count.csv``,
        ``annotation/<slide>_anno.csv`` and ``meta/``. Files already complete there are kept.
    parts
        Which files of each slide: any of ``"image"``, ``"coord"``, ``"counts"``,
        ``"annotation"`` (annotations exist for a few slides only). A comma-separated
        string is accepted.
    metadata
        Also fetch ``meta/meta_all_gene*.csv``, so that ``root`` is a complete release
        root for :class:`~stimage_sd.hub.Catalog` and the converter.
    repo_id, revision
        Repository (default :data:`REPO_ID`) and branch, tag or commit.
    endpoint
        Hub URL; ``None`` reads ``HF_ENDPOINT``.
    token
        Access token; ``None`` lets ``huggingface_hub`` find one (``HF_TOKEN``, login).
        Never logged.
    cache_dir
        ``huggingface_hub`` cache folder (it records the revision there); ``None``:
        ``HF_HUB_CACHE`` or ``HF_HOME/hub`` if set, else the client's default.
    offline
        Stay off the network; ``None`` reads ``HF_HUB_OFFLINE``. Offline, the slides must
        already be complete in ``root`` (a warm cache); they are checked, not fetched.
    confirm
        Permission to fetch more than ``confirm_above`` bytes: ``True``, or a callable that
        receives the :class:`DownloadPlan` and returns whether to go on. ``None``/``False``:
        such a download raises :class:`StimageError` instead of starting.
    confirm_above
        Byte threshold for ``confirm``; ``None`` disables the check.
    verify
        Check the sha256 (LFS files) or git blob sha1 of the files fetched by this call.
        Sizes of all planned files are always checked.
    dry_run
        Plan and report only.
    max_workers
        Parallel file transfers.
    progress
        Progress bars; ``None`` follows :func:`stimage_sd.set_progress` / the terminal.

    Returns
    -------
    The :class:`DownloadPlan` that was carried out.

    Raises
    ------
    SlideNotFoundError
        If a slide id is not in the repository (the message lists close matches).
    StimageError
        If confirmation is needed and not given, the Hub cannot be reached, offline files
        are missing, or a file fails verification (it is then removed).

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> plan = ssd.hub.download(["Human_Breast_Andersson_10142021_ST_A1"], "stimage_root")
    >>> cat = ssd.hub.Catalog.from_hub().filter(tech="Visium", tissue="brain", annotated=True)
    >>> plan = ssd.hub.download(cat, "stimage_root", parts="coord,counts", confirm=True)
    >>> store = ssd.io.convert_slide("stimage_root", "Human_Breast_Andersson_10142021_ST_A1", "my_stores")
    """
    root = Path(root).expanduser()
    endpoint = endpoint_url(endpoint)
    plan = plan_download(
        slides, root, parts=parts, metadata=metadata, repo_id=repo_id, revision=revision,
        endpoint=endpoint, token=token, offline=offline,
    )
    logger.info("%s", plan.describe())
    if plan.offline:
        absent = [f.path for f in plan.to_fetch]
        if absent:
            raise StimageError(
                f"offline mode (HF_HUB_OFFLINE): {len(absent)} file(s) are not in {root}: "
                + ", ".join(absent[:5])
                + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            )
        if not dry_run:
            _verify(plan, checksum=(), progress=progress)
        return plan
    if dry_run:
        return plan
    if not plan.to_fetch:
        _verify(plan, checksum=(), progress=progress)
        _save_listing(plan)
        return plan
    if confirm_above is not None and plan.bytes_to_fetch > confirm_above:
        ok = confirm(plan) if callable(confirm) else bool(confirm)
        if not ok:
            raise StimageError(
                f"refusing to download {format_bytes(plan.bytes_to_fetch)} (more than "
                f"{format_bytes(confirm_above)}) without confirmation; pass confirm=True "
                "(command line: --yes) or narrow the selection"
            )
    _fetch(plan, endpoint=endpoint, token=token, cache_dir=cache_dir, max_workers=max_workers, progress=progress)
    fetched = {f.path for f in plan.to_fetch}
    _verify(plan, checksum=fetched if verify else (), progress=progress)
    _save_listing(plan)
    plan.present = {f.path for f in plan.files}
    return plan


def _save_listing(plan: DownloadPlan) -> None:
    if plan.listing is not None and plan.listing.commit is not None:
        plan.listing.save(plan.root)


def _fetch(
    plan: DownloadPlan,
    *,
    endpoint: str | None,
    token: str | bool | None,
    cache_dir: str | Path | None,
    max_workers: int,
    progress: bool | None,
) -> None:
    from huggingface_hub import snapshot_download

    plan.root.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if not progress_enabled(progress):
        kwargs["tqdm_class"] = silent_tqdm()
    with hub_errors(plan.repo_id, endpoint):
        snapshot_download(
            plan.repo_id,
            repo_type=REPO_TYPE,
            revision=plan.commit,
            local_dir=plan.root,
            cache_dir=cache_dir_of(cache_dir),
            allow_patterns=plan.allow_patterns(),
            endpoint=endpoint,
            token=token,
            max_workers=max_workers,
            library_name="stimage_sd",
            **kwargs,
        )

