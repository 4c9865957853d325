"""One table over many converted slides: the cohort.

:func:`read_cohort` joins the table of each store into one :class:`anndata.AnnData`:

* ``obs``: every spot, with the slide's metadata joined (slide, study, tech, species,
  tissue, µm/px, store), the slide's own QC and annotation columns, and globally unique
  spot ids;
* ``obsm["spatial"]``: pixel coordinates in each slide's own image; ``obs["slide"]`` is the
  key that separates them (squidpy's ``library_key``), and ``uns["spatial"][slide]`` links
  back to the store (squidpy's layout: ``scalefactors`` and ``metadata``);
* ``var``: the harmonised genes (:func:`harmonise_gene_names`), ``var["n_slides"]`` and
  ``varm["measured"]`` (which slide measured which gene);
* ``uns["cohort"]``: how the cohort was assembled.

Two ways to assemble: in memory (``anndata.concat`` of the harmonised per-slide tables),
or on disk in bounded memory (``out=``): each slide is harmonised alone and written to a
temporary Zarr, then :func:`anndata.experimental.concat_on_disk` streams them into
``out``; ``lazy=True`` opens the result with :func:`anndata.experimental.read_lazy`.

Every store is opened through :func:`open_group`, the one place that turns a store
location (a local folder, or any URL the store reader accepts) into a Zarr group.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import INSTANCE_KEY, REGION_KEY, TABLE_KEY, UNS_KEY
from .._logging import logger, track
from ..errors import IncompleteStoreError, StimageError
from ._ids import study_of
from ._remote import is_url
from ._remote import open_group as open_remote_group
from ._transaction import MARKER, atomic_path

if TYPE_CHECKING:
    import zarr
    from anndata import AnnData

__all__ = ["CohortSlide", "harmonise_gene_names", "list_stores", "normalise_symbol", "open_group", "read_cohort"]

#: Key of the cohort's own metadata in ``uns``.
COHORT_KEY = "cohort"
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d+(\.\d+)?$", re.IGNORECASE)
_HUMAN_ORF = re.compile(r"(?<=\d)ORF(?=\d)")
#: Slide metadata joined into ``obs`` (column -> key of ``uns["stimage"]``).
_META_COLUMNS = ("slide", "study", "tech", "species", "tissue", "um_per_px", "store")


# ---------------------------------------------------------------------------------------
# store locations
def open_group(location: str | Path, path: str = "", *, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Open (read-only) the Zarr group ``path`` inside the store at ``location``.

    The single entry point the cohort reader uses to reach a store: a local folder, or an
    fsspec URL (``hf://``, ``s3://``, ``https://``, ``file://``) opened by the remote store
    reader (:func:`stimage_sd.io._remote.open_group`: Hub endpoint and offline mode, clear
    errors on a cut connection). The store's root is opened with its consolidated
    metadata and ``path`` is looked up from there, so that listing a group needs no
    request of its own (plain HTTP cannot list folders).

    Parameters
    ----------
    location
        The store (``<slide>.zarr``), local or a URL.
    path
        Group inside the store (``"tables/table"``); ``""`` for the root.
    storage_options
        fsspec options for a URL (for ``hf://``: :func:`stimage_sd.hub.storage_options`).

    Returns
    -------
    The :class:`zarr.Group`.

    Raises
    ------
    StimageError
        If there is no Zarr group there.
    RemoteReadError
        If a remote read fails (retrying is safe).
    """
    import zarr

    if is_url(location):
        where = str(location).rstrip("/")
        root = open_remote_group(where, storage_options=storage_options)
    else:
        where = str(location)
        if not Path(where).is_dir():
            raise StimageError(f"{where}: no such store")
        try:
            root = zarr.open_group(where, mode="r")
        except Exception as e:  # zarr raises several types for a missing/foreign group
            raise StimageError(f"{where}: not a readable Zarr store ({type(e).__name__}: {e})") from e
    if not path:
        return root
    try:
        return root[path]
    except KeyError:
        raise StimageError(f"{where}: the store has no group {path!r}") from None


def list_stores(stores: str | Path | Iterable[str | Path]) -> list[str | Path]:
    """Store locations named by ``stores``: stores, URLs, or folders holding ``*.zarr`` stores.

    Parameters
    ----------
    stores
        One location or several. A local folder that is not itself a store stands for the
        ``*.zarr`` stores inside it (sorted by name).

    Returns
    -------
    Unique locations in order (local ones as :class:`~pathlib.Path`, URLs as ``str``).
    """
    items = [stores] if isinstance(stores, str | Path) else list(stores)
    out: list[str | Path] = []
    for item in items:
        if is_url(item):
            out.append(str(item))
            continue
        p = Path(item)
        is_store = (p / "zarr.json").is_file() or (p / ".zgroup").is_file()
        if p.is_dir() and not is_store:
            found = sorted(q for q in p.glob("*.zarr") if q.is_dir() and not q.name.startswith("."))
            if not found:
                raise StimageError(f"{p}: a folder without any .zarr store")
            out.extend(found)
        elif not p.exists():
            raise StimageError(f"{p}: no such store or folder")
        else:
            out.append(p)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------
# gene names
def _species_kind(species: str | None) -> str | None:
    s = (species or "").strip().lower()
    if s.startswith(("human", "homo")):
        return "human"
    if s.startswith(("mouse", "mus")):
        return "mouse"
    return None


def normalise_symbol(name: str, species: str | None) -> str:
    """A gene name in its species' official case (HGNC for human, MGI for mouse).

    Only symbols written in the wrong case are changed, and only where the species fixes
    the case: human symbols are upper case (except the ``orf`` of ``C1orf112``); mouse
    symbols are Title case (``Mbp``, ``mt-Nd1``, ``1110008P14Rik``), so a mouse name
    written in upper case is converted and a mixed-case one kept. Ensembl ids and names
    of any other species are kept verbatim (surrounding spaces removed).

    Parameters
    ----------
    name
        Gene name as written in the release.
    species
        The slide's species (``"human"``, ``"Homo sapiens"``, ``"mouse"``, ...).

    Returns
    -------
    The normalised name.

    Examples
    --------
    >>> from stimage_sd.io import normalise_symbol
    >>> normalise_symbol("Gapdh", "human"), normalise_symbol("c1orf112", "human")
    ('GAPDH', 'C1orf112')
    >>> normalise_symbol("MBP", "mouse"), normalise_symbol("MT-ND1", "mouse"), normalise_symbol("Mbp", "mouse")
    ('Mbp', 'mt-Nd1', 'Mbp')
    """
    s = str(name).strip()
    kind = _species_kind(species)
    if kind is None or _ENSEMBL.match(s):
        return s
    if kind == "human":
        return _HUMAN_ORF.sub("orf", s.upper())
    if s != s.upper() or not any(c.isalpha() for c in s):  # mixed case: already MGI style
        return s
    if s.startswith("MT-"):
        rest = s[3:]
        return "mt-" + rest[:1] + rest[1:].lower()
    if s.endswith("RIK") and s[:1].isdigit():
        return s[:-3] + "Rik"
    return s[:1] + s[1:].lower()


def harmonise_gene_names(
    names: Sequence[str], species: str | None, *, normalise_case: bool = True
) -> tuple[list[str], np.ndarray]:
    """Harmonised gene names of one slide and, per column, the name it maps to.

    Parameters
    ----------
    names
        The slide's gene names in column order, duplicates included (as written in the
        release: ``var["gene_name"]`` of a store).
    species
        The slide's species (decides the case, :func:`normalise_symbol`).
    normalise_case
        Apply :func:`normalise_symbol`; ``False`` keeps names verbatim.

    Returns
    -------
    ``(unique, code)``: the distinct harmonised names in order of first appearance, and
    for every column the index of its name in ``unique``. Columns that share a name
    (duplicates in the release, or names equal once the case is normalised) share a code,
    the same rule on every slide.
    """
    norm = [normalise_symbol(n, species) if normalise_case else str(n).strip() for n in names]
    codes, uniques = pd.factorize(pd.Index(norm, dtype=object), sort=False)
    return [str(u) for u in uniques], np.asarray(codes, dtype=np.int64)


# ---------------------------------------------------------------------------------------
@dataclass
class CohortSlide:
    """One store of a cohort: where it is, its metadata and its harmonised genes."""

    location: str | Path
    slide: str
    meta: dict[str, Any]
    genes: list[str]
    codes: np.ndarray = field(repr=False)
    n_spots: int = 0
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The store's location as text (an absolute path when local)."""
        return str(self.location) if is_url(self.location) else str(Path(self.location).resolve())

    @property
    def species(self) -> str:
        return str(self.meta.get("species") or "")

    def value(self, key: str) -> Any:
        """Metadata value joined into ``obs`` (``study``, ``store`` derived)."""
        if key == "study":
            return str(self.meta.get("study") or study_of(self.slide))
        if key == "store":
            return self.where
        if key == "slide":
            return self.slide
        if key == "um_per_px":
            v = self.meta.get("um_per_px")
            return float(v) if v is not None else np.nan
        v = self.meta.get(key)
        return "" if v is None else str(v)


def _attrs(group) -> dict[str, Any]:
    value = group.attrs.asdict().get(UNS_KEY, {})
    return dict(value) if isinstance(value, dict) else {}


def _inspect(
    location: str | Path, table_key: str, normalise_case: bool, storage_options: dict[str, Any] | None = None
) -> CohortSlide:
    """Metadata and gene names of one store, without reading its counts."""
    from anndata.io import read_elem

    root = open_group(location, storage_options=storage_options)
    if not _attrs(root).get(MARKER, False):
        raise IncompleteStoreError(
            f"{location}: store has no completion marker (interrupted or foreign write); convert the slide again"
        )
    if f"tables/{table_key}" not in root:
        raise StimageError(f"{location}: the store has no table {table_key!r}")
    tg = root[f"tables/{table_key}"]
    uns = read_elem(tg["uns"]) if "uns" in tg else {}
    meta = dict(uns.get(UNS_KEY, {})) or _attrs(root)
    var = read_elem(tg["var"])
    names = var["gene_name"].astype(str).tolist() if "gene_name" in var else var.index.astype(str).tolist()
    slide = str(meta.get("slide") or Path(str(location).rstrip("/")).name.removesuffix(".zarr"))
    genes, codes = harmonise_gene_names(names, meta.get("species"), normalise_case=normalise_case)
    return CohortSlide(location=location, slide=slide, meta=meta, genes=genes, codes=codes, n_spots=_n_obs(tg),
                       storage_options=storage_options)


def _n_obs(tg) -> int:
    obs = tg["obs"]
    index = obs.attrs.get("_index", "_index")
    return int(obs[index].shape[0])


def _matches(value: Any, wanted: str | Sequence[str] | None) -> bool:
    if wanted is None:
        return True
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    return str(value).strip().lower() in {w.strip().lower() for w in wanted}


def _select_genes(
    slides: list[CohortSlide], genes: Literal["intersection", "union"] | Sequence[str]
) -> list[str]:
    if isinstance(genes, str):
        if genes not in ("intersection", "union"):
            raise StimageError(f"genes must be 'intersection', 'union' or a list of names, got {genes!r}")
        order = list(dict.fromkeys(g for s in slides for g in s.genes))
        if genes == "union":
            return order
        common = set(slides[0].genes).intersection(*(s.genes for s in slides[1:]))
        chosen = [g for g in order if g in common]
        if not chosen:
            raise StimageError("the stores share no gene name (try genes='union' or check the species)")
        return chosen
    chosen = [str(g) for g in genes]
    dup = pd.Index(chosen)[pd.Index(chosen).duplicated()]
    if len(dup):
        raise StimageError(f"genes: {list(dup)[:5]} listed more than once")
    return chosen


def _gene_map(s: CohortSlide, index: pd.Index) -> sparse.csr_matrix:
    """``(n_columns, n_genes)`` 0/1 matrix: column ``j`` of the slide adds into gene ``k``."""
    target = index.get_indexer(pd.Index(s.genes, dtype=object))[s.codes]
    keep = target >= 0
    rows = np.flatnonzero(keep)
    return sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, target[keep])), shape=(len(s.codes), len(index))
    )


def _first_only(s: CohortSlide) -> np.ndarray:
    """Columns kept by ``duplicates="first"``: the first column of each harmonised name."""
    _, first = np.unique(s.codes, return_index=True)
    mask = np.zeros(len(s.codes), dtype=bool)
    mask[first] = True
    return mask


def _spot_ids(slide: str, ids: pd.Index) -> pd.Index:
    ids = ids.astype(str)
    prefix = f"{slide}_"
    if len(ids) and all(i.startswith(prefix) for i in ids):
        return pd.Index(ids, dtype=object).rename(None)
    return pd.Index([prefix + i for i in ids], dtype=object)


def _slide_table(
    s: CohortSlide, index: pd.Index, table_key: str, duplicates: str, obs_columns: list[str]
) -> AnnData:
    """The slide's table on the cohort's genes, with the slide's metadata in ``obs``."""
    import anndata as ad
    from anndata.io import read_elem

    tg = open_group(s.location, f"tables/{table_key}", storage_options=s.storage_options)
    X = read_elem(tg["X"])
    X = sparse.csr_matrix(X)
    obs = read_elem(tg["obs"])
    spatial = np.asarray(read_elem(tg["obsm"])["spatial"], dtype=np.float64) if "obsm" in tg else None
    if X.shape != (len(obs), len(s.codes)):
        raise StimageError(f"{s.location}: table X is {X.shape}, expected {(len(obs), len(s.codes))}")
    A = _gene_map(s, index)
    if duplicates == "first":
        A = sparse.csr_matrix(sparse.diags(_first_only(s).astype(np.float32)) @ A)
    qc = pd.DataFrame(index=obs.index)
    if "total_counts" not in obs:
        qc["total_counts"] = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    if "n_genes_by_counts" not in obs:
        qc["n_genes_by_counts"] = np.diff(X.indptr).astype(np.int64)
    Xc = sparse.csr_matrix(X @ A.astype(X.dtype))  # reorder, add duplicates, pad missing genes
    Xc.sort_indices()
    out = pd.DataFrame(index=_spot_ids(s.slide, obs.index))
    out["spot"] = obs.index.astype(str).to_numpy()
    for col in _META_COLUMNS:
        out[col] = s.value(col)
    for col in obs.columns:
        if col == REGION_KEY or col in _META_COLUMNS:
            continue
        out[col] = obs[col].to_numpy()
    for col in qc.columns:
        out[col] = qc[col].to_numpy()
    if INSTANCE_KEY in out:
        out[INSTANCE_KEY] = out[INSTANCE_KEY].astype(np.int64)
    if "annotation" in out:
        out["annotation"] = out["annotation"].astype(object)
    out = out.reindex(columns=[c for c in obs_columns if c in out.columns] + [c for c in out.columns if c not in obs_columns])
    adata = ad.AnnData(X=Xc, obs=out, var=pd.DataFrame(index=index.copy()))
    if spatial is not None:
        adata.obsm["spatial"] = spatial
    return adata


def _finalise_obs(obs: pd.DataFrame) -> pd.DataFrame:
    for col in ("slide", "study", "tech", "species", "tissue", "store", "annotation"):
        if col in obs:
            obs[col] = pd.Categorical(obs[col].astype(object).where(obs[col].notna(), None))
    return obs


def _uns(slides: list[CohortSlide], genes_mode: Any, normalise_case: bool, duplicates: str) -> dict[str, Any]:
    spatial = {}
    for s in slides:
        r = s.meta.get("spot_radius_px")
        spatial[s.slide] = {
            "scalefactors": {"spot_diameter_fullres": float(2 * r) if r is not None else np.nan, "tissue_hires_scalef": 1.0},
            "metadata": {
                "store": s.where,
                "image": "he",
                "um_per_px": float(s.value("um_per_px")),
                "tech": s.value("tech"),
                "study": s.value("study"),
            },
        }
    cohort = {
        "slides": [s.slide for s in slides],
        "stores": [s.where for s in slides],
        "genes": genes_mode if isinstance(genes_mode, str) else "list",
        "normalise_case": bool(normalise_case),
        "duplicates": duplicates,
        "library_key": "slide",
    }
    return {"spatial": spatial, COHORT_KEY: cohort}


def _var(slides: list[CohortSlide], index: pd.Index) -> tuple[pd.DataFrame, np.ndarray]:
    measured = np.zeros((len(index), len(slides)), dtype=bool)
    for j, s in enumerate(slides):
        pos = index.get_indexer(pd.Index(s.genes, dtype=object))
        measured[pos[pos >= 0], j] = True
    var = pd.DataFrame(index=index.copy())
    var["n_slides"] = measured.sum(axis=1).astype(np.int64)
    return var, measured


def plan_cohort(
    stores: str | Path | Iterable[str | Path],
    *,
    species: str | Sequence[str] | None = None,
    tissue: str | Sequence[str] | None = None,
    tech: str | Sequence[str] | None = None,
    study: str | Sequence[str] | None = None,
    allow_mixed_species: bool = False,
    normalise_case: bool = True,
    table_key: str = TABLE_KEY,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> list[CohortSlide]:
    """The stores of a cohort after filtering on their metadata (reads no counts).

    Parameters are those of :func:`read_cohort`.
    """
    locations = list_stores(stores)
    if not locations:
        raise StimageError("no store given")
    slides = []
    for loc in track(locations, "reading store metadata", total=len(locations), progress=progress):
        s = _inspect(loc, table_key, normalise_case, storage_options)
        keep = (
            _matches(s.value("species"), species)
            and _matches(s.value("tissue"), tissue)
            and _matches(s.value("tech"), tech)
            and _matches(s.value("study"), study)
        )
        if keep:
            slides.append(s)
    if not slides:
        raise StimageError(
            f"none of the {len(locations)} store(s) matches the filters "
            f"(species={species!r}, tissue={tissue!r}, tech={tech!r}, study={study!r})"
        )
    seen: dict[str, str | Path] = {}
    for s in slides:
        if s.slide in seen:
            raise StimageError(f"slide {s.slide!r} appears twice: {seen[s.slide]} and {s.location}")
        seen[s.slide] = s.location
    kinds = {s.species.strip().lower() for s in slides}
    if len(kinds) > 1 and not allow_mixed_species:
        by = {k: next(str(s.location) for s in slides if s.species.strip().lower() == k) for k in sorted(kinds)}
        raise StimageError(
            "the stores mix species ("
            + ", ".join(f"{k or '<none>'}: e.g. {v}" for k, v in by.items())
            + "); gene names of different species do not match: filter with species=... "
            "or pass allow_mixed_species=True"
        )
    return slides


def read_cohort(
    stores: str | Path | Iterable[str | Path],
    genes: Literal["intersection", "union"] | Sequence[str] = "intersection",
    *,
    species: str | Sequence[str] | None = None,
    tissue: str | Sequence[str] | None = None,
    tech: str | Sequence[str] | None = None,
    study: str | Sequence[str] | None = None,
    allow_mixed_species: bool = False,
    normalise_case: bool = True,
    duplicates: Literal["sum", "first"] = "sum",
    out: str | Path | None = None,
    lazy: bool = False,
    overwrite: bool = False,
    max_loaded_elems: int = 20_000_000,
    table_key: str = TABLE_KEY,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> AnnData:
    """Read the tables of many converted slides as one AnnData (a cohort).

    Parameters
    ----------
    stores
        Stores (``<slide>.zarr``, local or any URL the store reader accepts), or folders
        holding them.
    genes
        ``"intersection"``: genes measured on every slide; ``"union"``: on any slide
        (zeros where a slide did not measure a gene, see ``varm["measured"]``); or a list
        of harmonised names (in that order).
    species, tissue, tech, study
        Keep only stores whose metadata matches (case-insensitive; one value or several).
    allow_mixed_species
        Allow stores of several species; by default mixing raises an error, since gene
        names of different species do not match.
    normalise_case
        Put gene symbols in their species' case (:func:`normalise_symbol`) before matching
        them across slides.
    duplicates
        Columns that share a harmonised name on a slide (duplicated names in the release,
        or names equal once the case is normalised): ``"sum"`` adds their counts,
        ``"first"`` keeps the first column. The same rule applies on every slide.
    out
        Assemble on disk into this Zarr (bounded memory: one slide at a time, then
        :func:`anndata.experimental.concat_on_disk`). ``None``: in memory.
    lazy
        With ``out``: return the result opened lazily
        (:func:`anndata.experimental.read_lazy`: ``X`` is a dask array) instead of loaded.
    overwrite
        Replace an existing ``out``.
    max_loaded_elems
        Non-zero entries ``concat_on_disk`` holds in memory at once.
    table_key
        Table of each store.
    storage_options
        fsspec options for stores given as URLs (for ``hf://``:
        :func:`stimage_sd.hub.storage_options`, which carries the token).
    progress
        Show progress bars.

    Returns
    -------
    The cohort :class:`anndata.AnnData`: counts in ``X`` (genes harmonised), per-spot
    metadata in ``obs`` (``slide``, ``study``, ``tech``, ``species``, ``tissue``,
    ``um_per_px``, ``store``, ``spot``, ``spot_id``, ``annotation`` when annotated, the
    stores' own QC columns, ``total_counts`` and ``n_genes_by_counts`` over all the
    slide's genes), ``obsm["spatial"]`` (pixels of each slide's image),
    ``var["n_slides"]``, ``varm["measured"]`` (gene x slide, in the order of
    ``uns["cohort"]["slides"]``), ``uns["spatial"][slide]`` (squidpy layout, with the store
    path in ``metadata``) and ``uns["cohort"]``.

    Raises
    ------
    StimageError
        No store matches, a slide appears twice, species are mixed, a store has no table.
    RemoteReadError
        A read from a store at a URL failed (reading again is safe).
    IncompleteStoreError
        A store without its completion marker.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> adata = ssd.io.read_cohort("stores", genes="intersection", species="human")
    >>> sorted(adata.obs["slide"].unique())
    ['GSE000001_GSM0000001', 'Human_Breast_Synth_10142021_ST_A1']
    >>> union = ssd.io.read_cohort("stores", genes="union", species="human")
    >>> big = ssd.io.read_cohort("stores", species="human", out="cohort.zarr", lazy=True, overwrite=True)
    """
    import anndata as ad

    if duplicates not in ("sum", "first"):
        raise StimageError(f"duplicates must be 'sum' or 'first', got {duplicates!r}")
    if lazy and out is None:
        raise StimageError("lazy=True needs out= (the Zarr the cohort is assembled into)")
    slides = plan_cohort(
        stores, species=species, tissue=tissue, tech=tech, study=study,
        allow_mixed_species=allow_mixed_species, normalise_case=normalise_case,
        table_key=table_key, storage_options=storage_options, progress=progress,
    )
    index = pd.Index(_select_genes(slides, genes), dtype=object)
    var, measured = _var(slides, index)
    missing = {s.slide: int((~measured[:, j]).sum()) for j, s in enumerate(slides) if (~measured[:, j]).any()}
    if missing:
        logger.info("genes not measured on some slides (zeros there): %s", missing)
    uns = _uns(slides, genes, normalise_case, duplicates)
    obs_columns = ["spot", *_META_COLUMNS]
    logger.info("cohort: %d slides, %d spots, %d genes", len(slides), sum(s.n_spots for s in slides), len(index))

    if out is None:
        parts = [
            _slide_table(s, index, table_key, duplicates, obs_columns)
            for s in track(slides, "reading tables", total=len(slides), progress=progress)
        ]
        adata = ad.concat(parts, join="outer", merge=None)
        adata.obs = _finalise_obs(adata.obs)
        _check_unique(adata.obs_names)
        adata.var = var
        adata.varm["measured"] = measured
        adata.uns.update(uns)
        return adata

    path = _assemble_on_disk(slides, index, var, measured, uns, Path(out), table_key, duplicates,
                             obs_columns, overwrite, max_loaded_elems, progress)
    if lazy:
        from anndata.experimental import read_lazy

        return read_lazy(str(path))
    return ad.read_zarr(path)


def _check_unique(index: pd.Index) -> None:
    if not index.is_unique:
        dup = index[index.duplicated()][:3].tolist()
        raise StimageError(f"spot ids are not unique across the cohort (e.g. {dup})")


def _assemble_on_disk(
    slides, index, var, measured, uns, out: Path, table_key, duplicates, obs_columns, overwrite,
    max_loaded_elems, progress,
) -> Path:
    import zarr
    from anndata.experimental import concat_on_disk
    from anndata.io import read_elem, write_elem

    if out.exists() and not overwrite:
        raise StimageError(f"{out} already exists (use overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts-", dir=out.parent))
    try:
        parts = []
        all_cols: list[str] = []
        for j, s in enumerate(track(slides, "harmonising slides", total=len(slides), progress=progress)):
            a = _slide_table(s, index, table_key, duplicates, obs_columns)
            all_cols.extend(c for c in a.obs.columns if c not in all_cols)
            p = work / f"{j:05d}.zarr"
            a.write_zarr(p)
            parts.append(p)
            del a
        with atomic_path(out) as tmp:
            logger.info("concatenating %d slides on disk into %s", len(parts), out)
            concat_on_disk(parts, tmp, join="outer", max_loaded_elems=max_loaded_elems)
            group = zarr.open_group(str(tmp), mode="r+")
            obs = read_elem(group["obs"])
            _check_unique(obs.index)
            obs = _finalise_obs(obs.reindex(columns=[c for c in all_cols if c in obs.columns]))
            write_elem(group, "obs", obs)
            write_elem(group, "var", var)
            write_elem(group, "varm", {"measured": measured})
            write_elem(group, "uns", uns)
            zarr.consolidate_metadata(group.store)
        # (atomic_path swaps an existing cohort out through a trash sibling once the new one is complete)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
