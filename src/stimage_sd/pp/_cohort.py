"""Preprocessing across slides: batch-aware highly variable genes and Harmony integration."""

from __future__ import annotations

import importlib
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._keys import Key
from .._logging import logger
from ..errors import StimageError
from ._utils import quiet, table_to_modify

__all__ = ["highly_variable_genes", "integrate"]


def _batch_column(adata, batch_key: str):
    if batch_key not in adata.obs:
        raise StimageError(
            f"obs has no column {batch_key!r} (a cohort from stimage_sd.io.read_cohort has 'slide')"
        )
    return adata.obs[batch_key]


def highly_variable_genes(
    data: Any,
    n_top_genes: int = 2000,
    *,
    batch_key: str | None = "slide",
    flavor: Literal["seurat", "cell_ranger", "seurat_v3"] = "seurat",
    table_key: str = "table",
    copy: bool = False,
) -> Any:
    """Highly variable genes of a cohort, selected within each slide and then combined.

    :func:`scanpy.pp.highly_variable_genes` with ``batch_key``: genes are ranked in each
    batch separately and those variable in the most batches are kept, so a gene that only
    differs *between* slides (a batch effect) is not selected.

    Parameters
    ----------
    data
        A cohort (:func:`stimage_sd.io.read_cohort`) normalised by
        :func:`stimage_sd.pp.normalize` (``"seurat"``/``"cell_ranger"`` use the log data in
        ``X``, ``"seurat_v3"`` the counts in ``layers["counts"]``), or a SpatialData.
    n_top_genes
        Number of genes to keep.
    batch_key
        ``obs`` column of the batches (``"slide"``); ``None``: one batch.
    flavor
        Scanpy's flavour.
    table_key
        Table of a SpatialData.
    copy
        Work on a copy and return it.

    Returns
    -------
    The table when ``copy``, else ``None``. Writes scanpy's columns
    (``var["highly_variable"]``, ``highly_variable_nbatches``, ...), ``uns["hvg"]``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> cohort = ssd.io.read_cohort("stores", species="human")
    >>> ssd.pp.normalize(cohort, n_top_genes=None)
    >>> ssd.pp.highly_variable_genes(cohort, n_top_genes=100, batch_key="slide")
    """
    import scanpy as sc

    adata = table_to_modify(data, table_key, copy)
    if flavor != "seurat_v3" and Key.uns.log1p not in adata.uns:
        raise StimageError(f"flavor={flavor!r} needs log-normalised X: run stimage_sd.pp.normalize first")
    layer = None
    if flavor == "seurat_v3":
        if Key.layers.counts not in adata.layers:
            raise StimageError("flavor='seurat_v3' needs raw counts in layers['counts'] (stimage_sd.pp.normalize keeps them)")
        layer = "counts"
    if batch_key is not None:
        _batch_column(adata, batch_key)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=int(min(n_top_genes, adata.n_vars)), flavor=flavor, batch_key=batch_key, layer=layer
    )
    adata.uns[Key.uns.hvg] = {"flavor": flavor, "batch_key": batch_key or ""}
    logger.info("%d highly variable genes (%s, batch_key=%s)", int(adata.var[Key.var.highly_variable].sum()), flavor, batch_key)
    return adata if copy else None


def integrate(
    data: Any,
    batch_key: str = "slide",
    *,
    method: Literal["harmony", "scvi"] = "harmony",
    use_rep: str = "X_pca",
    key_added: str | None = None,
    theta: float = 2.0,
    max_iter: int = 20,
    n_latent: int = 10,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    seed: int = 0,
    progress: bool | None = None,
    table_key: str = "table",
    copy: bool = False,
) -> Any:
    """Remove batch effects across slides: Harmony on an embedding, or scVI on the counts.

    ``method="harmony"`` (default; Korsunsky et al., *Nat Methods* 2019) runs
    :func:`harmonypy.run_harmony` on ``obsm[use_rep]``. (This replaces
    :func:`scanpy.external.pp.harmony_integrate`, whose result is transposed with
    harmonypy >= 2.)

    ``method="scvi"`` (Lopez et al., *Nat Methods* 2018) trains
    :class:`scvi.model.SCVI` on the raw counts (``layers["counts"]``, kept by
    :func:`stimage_sd.pp.normalize`) of the highly variable genes, with ``batch_key`` as
    its batch, and stores its latent representation. It needs the ``scvi`` extra
    (``pip install 'stimage-sd[scvi]'``); it trains on the GPU when there is one.

    Parameters
    ----------
    data
        A cohort AnnData (or a SpatialData): with ``obsm[use_rep]`` for Harmony, with
        ``layers["counts"]`` for scVI.
    batch_key
        ``obs`` column of the batches (``"slide"``).
    method
        ``"harmony"`` or ``"scvi"``.
    use_rep
        Embedding to correct with Harmony (``"X_pca"``: run :func:`scanpy.pp.pca` first).
    key_added
        ``obsm`` key of the result; default ``f"{use_rep}_harmony"`` (Harmony) or
        ``"X_scVI"`` (scVI, scvi-tools' name).
    theta
        Harmony's diversity penalty (higher: stronger mixing of batches).
    max_iter
        Harmony iterations.
    n_latent
        scVI: dimensions of the latent space.
    max_epochs
        scVI: training epochs; ``None``: scvi-tools' default (about 400 for 1,000 spots,
        fewer for large cohorts).
    accelerator
        scVI: Lightning's accelerator (``"auto"``: the GPU when there is one, else the CPU).
    seed
        Random seed (``scvi.settings.seed`` for scVI).
    progress
        scVI: show the training progress bar (default: on in a terminal; see
        :func:`stimage_sd.set_progress`).
    table_key
        Table of a SpatialData.
    copy
        Work on a copy and return it.

    Returns
    -------
    The table when ``copy``, else ``None``. Writes ``obsm[key_added]`` and
    ``uns["harmony"]`` (batch_key, use_rep, theta, iterations) or ``uns["scvi"]``
    (batch_key, genes used, n_latent, epochs trained, final training loss).

    Examples
    --------
    >>> import scanpy as sc
    >>> import stimage_sd as ssd
    >>> cohort = ssd.io.read_cohort("stores", species="human")
    >>> ssd.pp.normalize(cohort, n_top_genes=None)
    >>> sc.pp.pca(cohort, n_comps=10)
    >>> ssd.pp.integrate(cohort, batch_key="slide")
    >>> cohort.obsm["X_pca_harmony"].shape == cohort.obsm["X_pca"].shape
    True
    """
    adata = table_to_modify(data, table_key, copy)
    if method == "scvi":
        _scvi(adata, batch_key, key_added=key_added or Key.obsm.scvi, n_latent=n_latent, max_epochs=max_epochs,
              accelerator=accelerator, seed=seed, progress=progress)
        return adata if copy else None
    if method != "harmony":
        raise ValueError(f"method must be 'harmony' or 'scvi', got {method!r}")
    if use_rep not in adata.obsm:
        raise StimageError(f"obsm has no {use_rep!r}: compute the embedding first (e.g. scanpy.pp.pca)")
    _batch_column(adata, batch_key)
    corrected = harmonize(np.asarray(adata.obsm[use_rep]), adata.obs[batch_key].to_numpy(), theta=theta,
                          max_iter=max_iter, seed=seed)
    key = key_added or f"{use_rep}_harmony"
    adata.obsm[key] = corrected
    adata.uns[Key.uns.harmony] = {"batch_key": batch_key, "use_rep": use_rep, "key_added": key, "theta": float(theta),
                            "max_iter": int(max_iter), "seed": int(seed)}
    return adata if copy else None


def _scvi(adata, batch_key: str, *, key_added: str, n_latent: int, max_epochs: int | None, accelerator: str,
          seed: int, progress: bool | None) -> None:
    """Train scVI on the raw counts of the highly variable genes; write its latent space."""
    from .._logging import progress_enabled

    try:
        # the distribution is scvi-tools (the scvi extra); its import name differs
        scvi = importlib.import_module("scvi")
    except ImportError as err:  # the optional extra
        raise StimageError("method='scvi' needs scvi-tools: pip install 'stimage-sd[scvi]'") from err
    if Key.layers.counts not in adata.layers:
        raise StimageError("method='scvi' needs raw counts in layers['counts'] (stimage_sd.pp.normalize keeps them)")
    batches = _batch_column(adata, batch_key)
    hv = adata.var[Key.var.highly_variable].to_numpy(bool) if Key.var.highly_variable in adata.var else None
    sub = adata[:, hv].copy() if hv is not None and hv.any() else adata.copy()
    sub.obs = pd.DataFrame({batch_key: pd.Categorical(batches.astype(str))}, index=adata.obs_names)
    with quiet("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(sub, layer=Key.layers.counts, batch_key=batch_key)
        model = scvi.model.SCVI(sub, n_latent=n_latent)
        model.train(max_epochs=max_epochs, accelerator=accelerator, enable_progress_bar=progress_enabled(progress),
                    enable_model_summary=False)
        adata.obsm[key_added] = np.asarray(model.get_latent_representation(), dtype=np.float32)
    loss = model.history.get("train_loss")
    adata.uns[Key.uns.scvi] = {
        "batch_key": batch_key, "key_added": key_added, "n_genes": int(sub.n_vars), "n_latent": int(n_latent),
        "epochs": len(loss) if loss is not None else 0,
        "train_loss": float(loss.iloc[-1, 0]) if loss is not None and len(loss) else float("nan"),
        "seed": int(seed), "scvi_tools": str(scvi.__version__),
    }
    logger.info("scVI: %d genes, %d latent dimensions, %d epochs", sub.n_vars, n_latent, adata.uns[Key.uns.scvi]["epochs"])


def harmonize(x: np.ndarray, batches: np.ndarray, *, theta: float = 2.0, max_iter: int = 20, seed: int = 0) -> np.ndarray:
    """Harmony-corrected ``(n, d)`` embedding ``x`` for the batch of each row.

    One batch: returned unchanged (nothing to correct).
    """
    import harmonypy
    import pandas as pd

    x = np.asarray(x, dtype=np.float64)
    meta = pd.DataFrame({"batch": pd.Categorical(np.asarray(batches).astype(str))})
    if meta["batch"].cat.categories.size < 2:
        return x.astype(np.float32)
    out = harmonypy.run_harmony(x, meta, ["batch"], theta=theta, max_iter_harmony=max_iter,
                                random_state=seed, verbose=False)
    z = np.asarray(out.Z_corr)
    if z.shape != x.shape:  # harmonypy < 2 returns (d, n)
        z = z.T
    return z.astype(np.float32)
