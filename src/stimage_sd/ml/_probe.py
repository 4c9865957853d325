"""Linear probing of embeddings on annotated spots: the release's protocol, exactly.

Reproduces ``code_reproducibility/evaluation/01-linear_probling.py`` of the release
repository (itself adopted from PLIP): per task (an annotated slide), labels that are
empty, missing, ``undetermined`` or ``Exclude`` are dropped; five random 80/10/10
train/test/validation draws with ``numpy.random.seed(k)``, ``k = 0..4``; an
``SGDClassifier(loss="log_loss", penalty="l2", class_weight="balanced",
max_iter=10000, random_state=1)`` per alpha in {1, 0.1, 0.01, 0.001, 0.0001}; the alpha
with the best mean validation macro-F1 is kept and the mean and standard deviation
(``ddof=1``) of its five test macro-F1 are reported. Needs scikit-learn only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StimageError

__all__ = ["ALPHAS", "DROP_LABELS", "linear_probe"]

#: Regularisation strengths tried (the release's grid, in its order).
ALPHAS: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001, 0.0001)
#: Labels that are not classes (besides empty and missing ones).
DROP_LABELS: tuple[str, ...] = ("undetermined", "Exclude")


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


def _probe_one(emb: pd.DataFrame, labels: pd.Series, alphas: Sequence[float], seeds: Sequence[int], order: str) -> tuple[dict[str, Any], pd.DataFrame]:
    from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import LabelEncoder

    lab = labels[labels.notna()].astype(str)
    lab = lab[(lab != "") & ~lab.isin(DROP_LABELS)]
    keep = lab.index.intersection(emb.index)
    x_all = emb.loc[keep]
    lab = lab.loc[keep]
    y_all = pd.Series(LabelEncoder().fit_transform(lab.to_numpy()), index=lab.index)
    n = len(lab)
    if n < 10 or y_all.nunique() < 2:
        raise StimageError(f"too few labelled spots to probe ({n} spots, {y_all.nunique()} class(es))")
    ids = lab.index
    runs = []
    for k in seeds:
        rng = np.random.RandomState(k)  # the stream of np.random.seed(k); np.random.choice(...)
        train = rng.choice(ids, int(0.8 * n), replace=False)
        rest = set(ids) - set(train)
        pool = list(rest) if order == "release" else sorted(rest, key=ids.get_loc)
        test = rng.choice(pool, int(0.1 * n), replace=False)
        val = list(rest - set(test)) if order == "release" else sorted(rest - set(test), key=ids.get_loc)
        xs = {s: x_all.loc[idx].to_numpy() for s, idx in (("train", train), ("test", test), ("val", val))}
        ys = {s: y_all.loc[idx].to_numpy() for s, idx in (("train", train), ("test", test), ("val", val))}
        for alpha in alphas:
            clf = SGDClassifier(
                random_state=1, loss="log_loss", alpha=alpha, verbose=0, penalty="l2",
                max_iter=10000, class_weight="balanced",
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                clf.fit(xs["train"], ys["train"])
                f1 = {s: _macro_f1(ys[s], clf.predict(xs[s])) for s in ("train", "test", "val")}
            runs.append({"split": k, "alpha": alpha, "train_f1": f1["train"], "test_f1": f1["test"], "val_f1": f1["val"]})
    df = pd.DataFrame(runs)
    best = df.groupby("alpha")["val_f1"].mean().idxmax()
    at = df.loc[df["alpha"] == best, "test_f1"]
    summary = {
        "n_spots": n,
        "n_classes": int(y_all.nunique()),
        "best_alpha": float(best),
        "mean_f1": float(at.mean()),
        "std_f1": float(at.std()),
    }
    return summary, df


def linear_probe(
    embeddings: pd.DataFrame | np.ndarray,
    labels: pd.Series | Sequence[Any],
    *,
    tasks: pd.Series | Sequence[Any] | None = None,
    alphas: Sequence[float] = ALPHAS,
    seeds: Sequence[int] = range(5),
    order: str = "release",
    return_runs: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Linear probing of spot embeddings on annotation labels (the release's protocol).

    Parameters
    ----------
    embeddings
        ``(spots, features)``: a DataFrame indexed by spot id, or an array (rows are
        then numbered ``0..n-1``).
    labels
        One label per row of ``embeddings`` (empty, missing, ``"undetermined"`` and
        ``"Exclude"`` are dropped).
    tasks
        One task name per row (e.g. the slide id): each task is probed on its own.
        ``None``: one task, ``"all"``.
    alphas, seeds
        The alpha grid and the split seeds (the release: :data:`ALPHAS`, ``0..4``).
    order
        ``"release"``: the test and validation spots are drawn from
        ``list(set(spots) - set(train))``, as the release script does. Python's set order
        of string ids depends on the interpreter's hash seed (``PYTHONHASHSEED``), so
        those draws are reproducible only with a fixed hash seed (the release script has
        the same property), and equal the script's run in the same interpreter.
        ``"stable"``: the remaining spots in their input order instead: reproducible
        everywhere (the training draw is the same in both).
    return_runs
        Also return every (split, alpha) run.

    Returns
    -------
    One row per task: ``task``, ``n_spots``, ``n_classes``, ``best_alpha``, ``mean_f1``
    and ``std_f1`` (test macro-F1 at the best alpha over the splits, std with
    ``ddof=1``); with ``return_runs``, also a frame of every run (``task``, ``split``,
    ``alpha``, ``train_f1``, ``test_f1``, ``val_f1``).

    Raises
    ------
    StimageError
        If a task has fewer than 10 labelled spots or a single class, or the lengths
        disagree.

    Examples
    --------
    >>> import numpy as np, stimage_sd as ssd
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["a", "b"], 50)
    >>> x = rng.normal(size=(100, 4)) + (y == "a")[:, None]
    >>> ssd.ml.linear_probe(x, y)[["task", "best_alpha"]].shape
    (1, 2)
    """
    if order not in ("release", "stable"):
        raise StimageError(f"order must be 'release' or 'stable', got {order!r}")
    emb = embeddings if isinstance(embeddings, pd.DataFrame) else pd.DataFrame(np.asarray(embeddings))
    lab = labels if isinstance(labels, pd.Series) else pd.Series(list(labels), dtype=object)
    if len(lab) != len(emb):
        raise StimageError(f"{len(lab)} labels for {len(emb)} embeddings")
    lab = pd.Series(lab.to_numpy(dtype=object), index=emb.index)
    if not emb.index.is_unique:
        raise StimageError("embedding row ids (spot ids) must be unique")
    task = pd.Series("all", index=emb.index, dtype=object) if tasks is None else pd.Series(np.asarray(tasks, dtype=object), index=emb.index)
    if len(task) != len(emb):
        raise StimageError(f"{len(task)} task names for {len(emb)} embeddings")
    rows, runs = [], []
    for name in pd.unique(task):
        m = (task == name).to_numpy()
        try:
            summary, df = _probe_one(emb[m], lab[m], alphas, seeds, order)
        except StimageError as e:
            raise StimageError(f"task {name!r}: {e}") from None
        rows.append({"task": name, **summary})
        runs.append(df.assign(task=name))
    out = pd.DataFrame(rows)
    if return_runs:
        allruns = pd.concat(runs, ignore_index=True)
        return out, allruns[["task", "split", "alpha", "train_f1", "test_f1", "val_f1"]]
    return out
