"""A synthetic slide's table generated in memory (no files): for benchmarks and quick tests."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import UNS_KEY
from ._counts_writer import _BLOCK_CELLS, CountModel
from ._genes import build_genes
from ._geometry import build_layout
from ._noise import rng_for
from ._spec import SlideSpec

__all__ = ["make_table"]


def make_table(spec: SlideSpec):
    """The slide's count table, generated in memory without writing any file.

    The counts are exactly those :func:`make_slide` writes to the count file for the same
    spec (same random streams, same row order of generation); rows are in coordinate-file
    order. Much faster than writing and converting a slide (no image, no CSV), so the
    benchmarks use it to score methods on many layouts.

    Parameters
    ----------
    spec
        The slide's :class:`SlideSpec`.

    Returns
    -------
    :class:`anndata.AnnData` with sparse integer counts in ``X`` (float32), ``obs_names``
    the spot ids, ``obs["domain"]`` (true domain index, categorical), ``obsm["spatial"]``
    (pixel centres ``[x, y]``), unique ``var_names`` (duplicated names get ``-1``
    suffixes, as the converter does) with the header names in ``var["gene_name"]``, and
    ``uns["stimage"]`` with the slide id, tech, radius and true µm per pixel.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> spec = ssd.datasets.SlideSpec("Human_Brain_Synth_01012025_Visium_A1", "Visium", grid=(20, 20))
    >>> adata = ssd.datasets.make_table(spec)
    >>> bool((adata.obs["domain"].astype(int) == ssd.datasets.slide_truth("root", spec).domains.to_numpy()).all())
    True
    """
    import anndata as ad
    from anndata.utils import make_index_unique

    layout = build_layout(spec)
    genes = build_genes(spec)
    n, G = len(layout.ids), len(genes.names)
    # the same streams and block order as write_counts
    order = rng_for(spec.seed, spec.slide, "order").permutation(n) if spec.shuffle_rows else np.arange(n)
    model = CountModel(spec, layout, genes)
    rng = rng_for(spec.seed, spec.slide, "counts")
    rows_per_block = max(1, min(n, _BLOCK_CELLS // max(G, 1)))
    r_all: list[np.ndarray] = []
    c_all: list[np.ndarray] = []
    v_all: list[np.ndarray] = []
    for b0 in range(0, n, rows_per_block):
        rows = order[b0 : b0 + rows_per_block]
        codes, vals = model.block(rows, rng)
        r_all.append(rows[codes // G])
        c_all.append(codes % G)
        v_all.append(vals)
    X = sparse.csr_matrix(
        (np.concatenate(v_all).astype(np.float32), (np.concatenate(r_all), np.concatenate(c_all))), shape=(n, G)
    )
    names = pd.Index(genes.names)
    if names.has_duplicates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            names = make_index_unique(names)
    var = pd.DataFrame({"gene_name": np.asarray(genes.names, dtype=object)}, index=names)
    obs = pd.DataFrame(
        {"domain": pd.Categorical(layout.domain.astype(int))}, index=pd.Index(layout.ids.astype(str))
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = np.column_stack([layout.x, layout.y]).astype(np.float64)
    adata.uns[UNS_KEY] = {
        "slide": spec.slide,
        "tech": spec.tech,
        "spot_radius_px": float(layout.radius_px),
        "um_per_px": float(spec.um_per_px),  # type: ignore[arg-type]
        "n_spots": int(n),
        "n_genes": int(G),
    }
    return adata
