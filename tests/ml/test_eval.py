"""Linear probing and expression prediction against oracle re-implementations.

The probing oracle re-implements the loop of the release's
``code_reproducibility/evaluation/01-linear_probling.py``; the prediction oracle the
ridge/PCA steps of HEST-Benchmark (``train_test_reg`` and its PCA pipeline), both with
sklearn/scipy directly. Neither path needs torch.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stimage_sd.errors import StimageError
from stimage_sd.ml import fold_splits, linear_probe, predict_expression

pytestmark = pytest.mark.slow


def _annotated(n: int = 240, d: int = 12, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    ids = [f"Slide_A_{i:04d}-1" for i in range(n)]
    classes = np.array(["L1", "L2", "WM", "", "undetermined", "Exclude", None], dtype=object)
    lab = classes[rng.choice(len(classes), n, p=[0.3, 0.25, 0.25, 0.05, 0.05, 0.05, 0.05])]
    centre = {"L1": 0.0, "L2": 1.0, "WM": 2.0}
    x = rng.normal(size=(n, d)) + np.array([centre.get(v, 0.5) if isinstance(v, str) else 0.5 for v in lab])[:, None]
    return pd.DataFrame(x, index=ids), pd.Series(lab, index=ids, dtype=object)


def _release_probe(embedding_all: pd.DataFrame, anno: pd.Series) -> dict:
    """The release's loop for one annotation table (column V2), its seeds and alpha grid."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import LabelEncoder

    anno_temp = pd.DataFrame({"V2": anno})
    anno_temp = anno_temp[anno_temp.V2 != ""]
    anno_temp = anno_temp[anno_temp.V2.notnull()]
    anno_temp = anno_temp[anno_temp.V2 != "undetermined"]
    anno_temp = anno_temp[anno_temp.V2 != "Exclude"]
    index_keep = anno_temp.index.intersection(embedding_all.index)
    embedding = embedding_all.loc[index_keep]
    anno_temp = anno_temp.loc[index_keep]
    anno_temp["mapped_y"] = LabelEncoder().fit_transform(anno_temp.V2)
    records = []
    for k in range(5):
        np.random.seed(k)  # noqa: NPY002 - the release seeds the legacy global generator
        train_index = np.random.choice(anno_temp.index, int(0.8 * anno_temp.shape[0]), replace=False)  # noqa: NPY002
        test_index = np.random.choice(list(set(anno_temp.index) - set(train_index)), int(0.1 * anno_temp.shape[0]), replace=False)  # noqa: NPY002
        val_index = list(set(anno_temp.index) - set(train_index) - set(test_index))
        sets = {
            "train": (embedding.loc[train_index].to_numpy(), anno_temp.loc[train_index].mapped_y.to_numpy()),
            "test": (embedding.loc[test_index].to_numpy(), anno_temp.loc[test_index].mapped_y.to_numpy()),
            "val": (embedding.loc[val_index].to_numpy(), anno_temp.loc[val_index].mapped_y.to_numpy()),
        }
        for alpha in [1.0, 0.1, 0.01, 0.001, 0.0001]:
            clf = SGDClassifier(random_state=1, loss="log_loss", alpha=alpha, verbose=0, penalty="l2", max_iter=10000, class_weight="balanced")
            clf.fit(*sets["train"])
            rec = {f"{s}_f1": f1_score(y, clf.predict(x), average="macro") for s, (x, y) in sets.items()}
            records.append({**rec, "alpha": alpha, "test_on": f"split{k}"})
    df = pd.DataFrame(records)
    best_alpha = df.groupby("alpha")["val_f1"].mean().idxmax()
    return {
        "best_alpha": best_alpha,
        "mean_wf1": df[df["alpha"] == best_alpha]["test_f1"].mean(),
        "std_wf1": df[df["alpha"] == best_alpha]["test_f1"].std(),
        "n": len(anno_temp),
    }


@pytest.mark.filterwarnings("ignore")
def test_linear_probe_equals_the_release_script():
    emb, lab = _annotated()
    ref = _release_probe(emb, lab)
    ours, runs = linear_probe(emb, lab, tasks=["slide_a"] * len(emb), return_runs=True)
    row = ours.iloc[0]
    assert row["task"] == "slide_a" and row["n_spots"] == ref["n"] and row["n_classes"] == 3
    assert row["best_alpha"] == ref["best_alpha"]
    assert row["mean_f1"] == ref["mean_wf1"]
    assert row["std_f1"] == ref["std_wf1"]
    assert len(runs) == 25 and set(runs["alpha"]) == {1.0, 0.1, 0.01, 0.001, 0.0001}
    # a separable problem is probed well above chance (3 classes: 0.33)
    assert row["mean_f1"] > 0.6


@pytest.mark.filterwarnings("ignore")
def test_linear_probe_per_task_and_stable_order_is_hash_seed_free(tmp_path):
    emb, lab = _annotated()
    emb2, lab2 = _annotated(seed=1)
    emb2.index = [i.replace("Slide_A", "Slide_B") for i in emb2.index]
    both = linear_probe(pd.concat([emb, emb2]), pd.concat([lab, lab2]), tasks=["a"] * len(emb) + ["b"] * len(emb2))
    assert list(both["task"]) == ["a", "b"]
    alone = linear_probe(emb2, lab2)
    assert both.iloc[1]["mean_f1"] == alone.iloc[0]["mean_f1"]
    # order="stable" gives the same numbers under two different hash seeds
    emb.to_csv(tmp_path / "e.csv")
    lab.to_csv(tmp_path / "l.csv")
    code = (
        "import pandas as pd, warnings; warnings.simplefilter('ignore');"
        "from stimage_sd.ml import linear_probe;"
        f"e = pd.read_csv(r'{tmp_path / 'e.csv'}', index_col=0);"
        f"l = pd.read_csv(r'{tmp_path / 'l.csv'}', index_col=0, keep_default_na=False).iloc[:, 0];"
        "print(repr(linear_probe(e, l, order='stable').iloc[0]['mean_f1']))"
    )
    import os

    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1


def test_linear_probe_refuses_too_few_labels():
    emb, lab = _annotated(n=8)
    with pytest.raises(StimageError, match="task 'all': too few labelled spots"):
        linear_probe(emb, lab)


def _hest_reg(x_tr, x_te, y_tr, y_te, seed=1, pca=None):
    """HEST-Benchmark's PCA pipeline and train_test_reg (ridge branch)."""
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if pca:
        pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=pca, random_state=seed))])
        x_tr, x_te = pipe.fit_transform(x_tr), pipe.transform(x_te)
    alpha = 100 / (x_tr.shape[1] * y_tr.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    reg.fit(x_tr, y_tr)
    pred = reg.predict(x_te)
    return [pearsonr(y_te[:, t], pred[:, t])[0] for t in range(y_te.shape[1])]


@pytest.mark.parametrize("pca", [None, 6])
def test_predict_expression_equals_hest_ridge_on_grouped_folds(pca):
    rng = np.random.default_rng(0)
    slides = np.repeat(["GSE1_GSM1", "GSE1_GSM2", "GSE2_GSM3", "GSE3_GSM4"], 50)
    x = rng.normal(size=(200, 10))
    y = x[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(200, 5))
    splits = fold_splits(slides, by="study", folds=3)
    # leak-free: both slides of study GSE1 are in one fold
    assert sum({"GSE1_GSM1", "GSE1_GSM2"} <= set(v) for v in splits.values()) == 1
    res = predict_expression(x, pd.DataFrame(y, columns=list("ABCDE")), slides, splits=splits, pca=pca)
    assert len(res.per_fold) == 3
    ref_means = []
    for name, test_slides in splits.items():
        te = np.isin(slides, test_slides)
        r = _hest_reg(x[~te], x[te], y[~te], y[te], pca=pca)
        got = res.per_gene[res.per_gene["fold"] == name]
        assert list(got["gene"]) == list("ABCDE")
        np.testing.assert_array_equal(got["pearson_r"].to_numpy(), np.asarray(r))
        ref_means.append(np.mean(r))
    assert res.pearson_mean == np.mean(ref_means) and res.pearson_std == np.std(ref_means)
    assert res.pearson_mean > 0.5
    assert list(res.gene_summary().columns) == ["mean", "std"]


def test_predict_expression_with_a_catalogue_train_test_split(sample_root):
    from stimage_sd.hub import Catalog

    cat = Catalog.from_root(sample_root)
    split = cat.split(by="study", fractions=(0.5, 0.5), names=["train", "test"], seed=0)
    slides_all = [s for v in split.values() for s in v]
    rng = np.random.default_rng(1)
    slides = np.repeat(slides_all, 30)
    x = rng.normal(size=(len(slides), 6))
    y = x[:, :2] + 0.1 * rng.normal(size=(len(slides), 2))
    res = predict_expression(x, y, slides, splits=split)
    assert list(res.per_fold["fold"]) == ["test"]
    assert set(res.per_fold["test_slides"].iloc[0].split(",")) == set(split["test"])
    te = np.isin(slides, split["test"])
    np.testing.assert_array_equal(res.per_gene["pearson_r"].to_numpy(), np.asarray(_hest_reg(x[~te], x[te], y[~te], y[te])))


def test_one_group_cannot_make_folds():
    with pytest.raises(StimageError, match="at least 2 are needed"):
        fold_splits(["GSE1_GSM1", "GSE1_GSM2"], by="study")


def test_probing_and_prediction_do_not_import_torch():
    code = (
        "import sys, numpy as np; import stimage_sd as ssd;"
        "x = np.random.default_rng(0).normal(size=(60, 4)); y = np.repeat(['a','b'], 30);"
        "ssd.ml.linear_probe(x, y); ssd.ml.predict_expression(x, x[:, :2], np.repeat(['GSE1_G1','GSE2_G2','GSE3_G3'], 20));"
        "ssd.ml.embed_array(np.zeros((2, 8, 8, 3), np.uint8), 'histogram');"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
