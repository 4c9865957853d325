"""Expression prediction from embeddings (HEST-Benchmark style), with leak-free folds.

A ridge regression (``solver="lsqr"``, ``fit_intercept=False``,
``alpha = 100 / (n_features * n_targets)``, as HEST-Benchmark's ``train_test_reg``)
predicts the targets of held-out slides from their embeddings, optionally after
``StandardScaler`` + ``PCA(256)`` fitted on the training slides. Folds are groups of
slides (study, patient, ...) from :meth:`stimage_sd.io.Catalog.split`, so no study
sits on both sides. Each gene is scored by the Pearson r of its predictions on the test
slides; a fold's score is the mean over genes (genes constant in the fold's test spots
have no r and are left out), a task's the mean and standard deviation (``ddof=0``) over
folds. Needs scikit-learn and scipy only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StimageError

__all__ = ["ExpressionResult", "fold_splits", "predict_expression"]


@dataclass
class ExpressionResult:
    """Scores of :func:`predict_expression`.

    Attributes
    ----------
    per_gene
        One row per (fold, gene): ``fold``, ``gene``, ``pearson_r``, ``n_train``,
        ``n_test``.
    per_fold
        One row per fold: ``fold``, ``test_slides``, ``n_train``, ``n_test``,
        ``pearson_mean`` (mean r over genes).
    pearson_mean, pearson_std
        Mean and standard deviation (``ddof=0``) of the folds' ``pearson_mean``.
    """

    per_gene: pd.DataFrame
    per_fold: pd.DataFrame
    pearson_mean: float
    pearson_std: float

    def gene_summary(self) -> pd.DataFrame:
        """Per gene: mean and std (``ddof=0``) of Pearson r over folds, best first."""
        g = self.per_gene.groupby("gene", sort=False)["pearson_r"]
        out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0)})
        return out.sort_values("mean", ascending=False)


def fold_splits(
    slides: Sequence[str],
    *,
    by: str = "study",
    folds: int = 5,
    groups: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Leak-free folds of slides: every slide of a group in the same fold.

    Built with :meth:`stimage_sd.io.Catalog.split` on a catalogue of ``slides``.

    Parameters
    ----------
    slides
        Slide ids.
    by
        Grouping column of the catalogue (``"study"``, ``"species"``, ``"tissue"``,
        ``"slide"``, ...), ignored when ``groups`` is given.
    folds
        Number of folds (at most the number of groups).
    groups
        ``{slide: group}``, e.g. patient ids, instead of a catalogue column.
    seed
        Seed of the catalogue's split.

    Returns
    -------
    ``{"fold0": [slides], "fold1": [...], ...}``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> ssd.ml.fold_splits(["GSE1_GSM1", "GSE1_GSM2", "GSE2_GSM3"], folds=2)
    {'fold0': ['GSE1_GSM1', 'GSE1_GSM2'], 'fold1': ['GSE2_GSM3']}
    """
    from ..hub import Catalog

    ids = list(dict.fromkeys(str(s) for s in slides))
    table = pd.DataFrame({"spot_num": np.ones(len(ids), dtype=np.int64)}, index=pd.Index(ids, name="slide"))
    if groups is not None:
        missing = [s for s in ids if s not in groups]
        if missing:
            raise StimageError(f"no group for slide(s) {', '.join(missing[:5])}")
        table["group"] = [str(groups[s]) for s in ids]
        by = "group"
    cat = Catalog(table, source="slides")
    n_groups = len(ids) if by == "slide" else len(cat.counts(by))
    k = min(int(folds), int(n_groups))
    if k < 2:
        raise StimageError(f"the slides form {n_groups} {by} group(s): at least 2 are needed for grouped folds")
    names = [f"fold{i}" for i in range(k)]
    return cat.split(by=by, fractions=[1.0 / k] * k, names=names, seed=seed)


def _as_folds(splits: Mapping[str, Sequence[str]] | str | Path) -> list[tuple[str, list[str], list[str]]]:
    from ._split import load_split

    table = load_split(splits)
    if "train" in table and "test" in table:  # one train/test split (validation slides unused)
        return [("test", list(table["train"]), list(table["test"]))]
    names = list(table)
    if len(names) < 2:
        raise StimageError("need a train/test split or at least two folds")
    out = []
    for name in names:
        train = [s for n in names if n != name for s in table[n]]
        out.append((name, train, list(table[name])))
    return out


def predict_expression(
    embeddings: pd.DataFrame | np.ndarray,
    expression: pd.DataFrame | np.ndarray,
    slides: Sequence[str],
    *,
    splits: Mapping[str, Sequence[str]] | str | Path | None = None,
    by: str = "study",
    folds: int = 5,
    groups: Mapping[str, str] | None = None,
    pca: int | None = None,
    seed: int = 1,
    genes: Sequence[str] | None = None,
) -> ExpressionResult:
    """Predict expression from embeddings with ridge regression on leak-free folds.

    Parameters
    ----------
    embeddings
        ``(spots, features)``.
    expression
        ``(spots, genes)`` targets, e.g. log1p expression of the task's top 50 HVGs (a
        DataFrame's columns name the genes). Rows with a missing target are dropped.
    slides
        The slide id of each row.
    splits
        Folds: a split from :meth:`stimage_sd.io.Catalog.split` (or its file). With
        ``train`` and ``test`` entries it is one fold (validation slides unused);
        otherwise each entry is a fold, held out in turn. ``None``: :func:`fold_splits`
        of the slides (``by``, ``folds``, ``groups``).
    by, folds, groups
        See :func:`fold_splits` (``splits=None`` only).
    pca
        Reduce the embeddings to this many components first (``StandardScaler`` then
        ``PCA``, fitted on the training rows; HEST-Benchmark's option uses 256).
    seed
        ``random_state`` of the ridge solver and PCA (HEST-Benchmark's default seed: 1).
    genes
        Gene names (default: the DataFrame's columns, else ``gene0``, ...).

    Returns
    -------
    :class:`ExpressionResult`.

    Examples
    --------
    >>> import numpy as np, stimage_sd as ssd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(60, 8)); y = x[:, :3] + rng.normal(size=(60, 3)) * 0.1
    >>> slides = np.repeat(["GSE1_GSM1", "GSE2_GSM2", "GSE3_GSM3"], 20)
    >>> res = ssd.ml.predict_expression(x, y, slides, folds=3)
    >>> round(res.pearson_mean, 1)
    1.0
    """
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(embeddings, dtype=np.float64) if not isinstance(embeddings, pd.DataFrame) else embeddings.to_numpy(dtype=np.float64)
    if isinstance(expression, pd.DataFrame):
        gene_names = [str(g) for g in expression.columns] if genes is None else list(genes)
        Y = expression.to_numpy(dtype=np.float64)
    else:
        Y = np.asarray(expression, dtype=np.float64)
        gene_names = list(genes) if genes is not None else [f"gene{i}" for i in range(Y.shape[1])]
    s = np.asarray(slides, dtype=object).astype(str)
    if not (len(X) == len(Y) == len(s)):
        raise StimageError(f"{len(X)} embeddings, {len(Y)} expression rows and {len(s)} slide ids: lengths differ")
    ok = ~np.isnan(Y).any(axis=1) & np.isfinite(X).all(axis=1)
    X, Y, s = X[ok], Y[ok], s[ok]
    fold_list = _as_folds(splits if splits is not None else fold_splits(pd.unique(s), by=by, folds=folds, groups=groups))
    per_gene, per_fold = [], []
    for name, train_slides, test_slides in fold_list:
        tr = np.isin(s, train_slides)
        te = np.isin(s, test_slides)
        if not tr.any() or not te.any():
            continue
        x_tr, x_te = X[tr], X[te]
        if pca is not None:
            pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=min(int(pca), *x_tr.shape), random_state=seed))])
            x_tr, x_te = pipe.fit_transform(x_tr), pipe.transform(x_te)
        alpha = 100 / (x_tr.shape[1] * Y.shape[1])
        reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
        reg.fit(x_tr, Y[tr])
        pred = reg.predict(x_te)
        rs = []
        for j, g in enumerate(gene_names):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant input: r is NaN
                r = float(pearsonr(Y[te, j], pred[:, j])[0])
            rs.append(r)
            per_gene.append({"fold": name, "gene": g, "pearson_r": r, "n_train": int(tr.sum()), "n_test": int(te.sum())})
        per_fold.append({
            "fold": name, "test_slides": ",".join(sorted(set(s[te]))), "n_train": int(tr.sum()),
            "n_test": int(te.sum()), "pearson_mean": float(np.nanmean(rs)) if not np.isnan(rs).all() else float("nan"),
        })
    if not per_fold:
        raise StimageError("no fold has both training and test spots")
    pf = pd.DataFrame(per_fold)
    means = pf["pearson_mean"].to_numpy()
    return ExpressionResult(pd.DataFrame(per_gene), pf, float(np.mean(means)), float(np.std(means)))

