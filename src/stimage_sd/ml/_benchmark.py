"""The STimage-1K4M encoder benchmark: embed, then probe, then predict expression.

:func:`benchmark` runs one encoder over converted slides and appends its rows to
``results.csv`` (rows of an encoder already there are replaced), then rewrites the
markdown table and the figure comparing every encoder in the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._logging import logger
from ..errors import StimageError

__all__ = ["TASKS", "benchmark", "write_report"]

TASKS = ("probe", "expression")
RESULT_COLUMNS = ["encoder", "task", "dataset", "metric", "mean", "std", "n_spots", "detail"]


def _patch_store(out: Path, stores: list[Path], *, mode: str, px: int, size_um: float, progress: bool | None) -> Path:
    from ._export import export_patches

    name = f"patches_{mode}_{px}px" + (f"_{size_um:g}um" if mode == "fixed" else "") + ".zarr"
    path = out / name
    export_patches(stores, path, mode=mode, px=px, size_um=size_um, genes="hvg", n_hvg=50, progress=progress)
    return path


def _probe_rows(name: str, emb: pd.DataFrame, labels: np.ndarray, order: str) -> list[dict[str, Any]]:
    from ._probe import DROP_LABELS, linear_probe

    rows = []
    slides = emb.index.get_level_values("slide").to_numpy()
    valid = np.array([bool(lab) and lab not in DROP_LABELS for lab in labels])
    for slide in pd.unique(slides[valid]):
        m = slides == slide
        x = emb[m].droplevel("slide")
        try:
            res = linear_probe(x, pd.Series(labels[m], index=x.index), tasks=[slide] * int(m.sum()), order=order)
        except StimageError as e:
            logger.warning("probe: %s skipped (%s)", slide, e)
            continue
        r = res.iloc[0]
        rows.append({
            "encoder": name, "task": "probe", "dataset": slide, "metric": "macro_f1",
            "mean": r["mean_f1"], "std": r["std_f1"], "n_spots": int(r["n_spots"]),
            "detail": f"best_alpha={r['best_alpha']:g}; classes={int(r['n_classes'])}",
        })
    if not rows:
        logger.warning("probe: no annotated slide to probe")
    return rows


def _expression_rows(
    name: str, emb: pd.DataFrame, stores: list[Path], *, n_genes: int, by: str, folds: int, pca: int | None,
    progress: bool | None,
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    from ._predict import predict_expression
    from ._targets import targets

    t = targets(stores, "overlap-hvg", n_top=n_genes, progress=progress)
    rows, genes = [], []
    for group in sorted(set(t.groups.values())):
        slides = [s for s, g in t.groups.items() if g == group]
        ys = [t[s].set_index(pd.MultiIndex.from_product([[s], t[s].index], names=["slide", "spot_id"])) for s in slides]
        y = pd.concat(ys)
        y = y[y.index.isin(emb.index)]
        x = emb.loc[y.index]
        try:
            res = predict_expression(x, y, y.index.get_level_values("slide"), by=by, folds=folds, pca=pca)
        except StimageError as e:
            logger.warning("expression: %s skipped (%s)", group, e)
            continue
        rows.append({
            "encoder": name, "task": "expression", "dataset": group, "metric": "pearson_r",
            "mean": res.pearson_mean, "std": res.pearson_std, "n_spots": len(y),
            "detail": f"folds={len(res.per_fold)} by {by}; genes={y.shape[1]}" + (f"; pca={pca}" if pca else ""),
        })
        genes.append(res.per_gene.assign(encoder=name, dataset=group))
    if not rows:
        logger.warning("expression: no group of slides spans two %s groups; nothing to predict", by)
    return rows, (pd.concat(genes, ignore_index=True) if genes else pd.DataFrame())


def benchmark(
    stores: str | Path | Iterable[str | Path] | Mapping[Any, str | Path],
    encoder: Any,
    out: str | Path,
    *,
    tasks: Sequence[str] = TASKS,
    name: str | None = None,
    mode: str = "native",
    px: int = 224,
    size_um: float = 112.0,
    batch_size: int = 64,
    device: str | None = None,
    amp: bool = False,
    workers: int = 0,
    input_size: int | None = None,
    pretrained: bool = True,
    n_genes: int = 50,
    by: str = "study",
    folds: int = 5,
    pca: int | None = None,
    order: str = "release",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Benchmark an image encoder on converted slides; add its rows to ``out/results.csv``.

    Steps: patches of every spot (:func:`~stimage_sd.ml.export_patches`, kept in ``out``
    and shared by every encoder), embeddings (:func:`~stimage_sd.ml.embed`, kept in the
    patch store; both resumable), then

    - ``probe``: :func:`~stimage_sd.ml.linear_probe` on each annotated slide (the
      release's protocol): test macro-F1, mean and std over the 5 splits.
    - ``expression``: per group of slides of one species and tissue, the 50 most
      variable shared genes (``targets(..., "overlap-hvg", n_top=n_genes)``) predicted by
      :func:`~stimage_sd.ml.predict_expression` on folds grouped by ``by``: Pearson r,
      mean and std over folds (per-gene scores in ``expression_genes.csv``).

    Parameters
    ----------
    stores
        Converted slides.
    encoder
        Anything :func:`~stimage_sd.ml.encoder` accepts (a name, a model file, a module).
    out
        Results folder: ``results.csv``, ``results.md``, ``results.png``,
        ``expression_genes.csv`` and the patch store.
    tasks
        ``"probe"`` and/or ``"expression"``.
    name
        Encoder name in the results (default: the encoder's).
    mode, px, size_um
        Patches: ``"native"`` (the release's 2r crops, resized to ``px``) or ``"fixed"``
        (``size_um`` µm at ``px`` pixels).
    batch_size, device, amp, workers, pretrained
        See :func:`~stimage_sd.ml.embed`.
    input_size
        Override the encoder's input size (e.g. a small size for a quick test).
    n_genes, by, folds, pca
        Expression task: genes per group, fold grouping column, number of folds, PCA
        components (``None``: none).
    order
        Probing split order (see :func:`~stimage_sd.ml.linear_probe`).
    progress
        Show progress bars.

    Returns
    -------
    This encoder's rows: ``encoder``, ``task``, ``dataset`` (slide or group),
    ``metric``, ``mean``, ``std``, ``n_spots``, ``detail``.

    Examples
    --------
    >>> import stimage_sd as ssd
    >>> rows = ssd.ml.benchmark("stores/", "histogram", "results/")  # doctest: +SKIP
    """
    from ._dataset import PatchDataset
    from ._embed import embed, read_embeddings
    from ._encoders import encoder as make_encoder
    from ._source import resolve_stores, slide_header

    bad = set(tasks) - set(TASKS)
    if bad or not tasks:
        raise StimageError(f"tasks must be among {', '.join(TASKS)}, got {', '.join(tasks) or 'none'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = resolve_stores(stores)
    enc = make_encoder(encoder, pretrained=pretrained, size=input_size)
    label = name or enc.name
    pstore = _patch_store(out, paths, mode=mode, px=px, size_um=size_um, progress=progress)
    key = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    key = key + (f"_in{input_size}" if input_size and enc.kind == "torch" else "")
    embed(pstore, enc, key=key, batch_size=batch_size, device=device, amp=amp, workers=workers, progress=progress)
    emb_all = read_embeddings(pstore, key)
    labels_all = PatchDataset(pstore).obs["label"].to_numpy(dtype=object)
    wanted = {slide_header(p)["slide"] for p in paths}
    keep = np.asarray(emb_all.index.get_level_values("slide").isin(list(wanted)))
    emb, labels = emb_all[keep], labels_all[keep]
    rows: list[dict[str, Any]] = []
    if "probe" in tasks:
        rows += _probe_rows(label, emb, labels, order)
    genes = pd.DataFrame()
    if "expression" in tasks:
        r, genes = _expression_rows(label, emb, paths, n_genes=n_genes, by=by, folds=folds, pca=pca, progress=progress)
        rows += r
    mine = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    csv = out / "results.csv"
    old = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=RESULT_COLUMNS)
    if len(old):
        old = old[~((old["encoder"] == label) & old["task"].isin(list(tasks)))]
    allrows = pd.concat([old, mine], ignore_index=True) if len(old) else mine
    allrows.to_csv(csv, index=False)
    if len(genes):
        gcsv = out / "expression_genes.csv"
        prev = pd.read_csv(gcsv) if gcsv.is_file() else pd.DataFrame()
        if len(prev):
            prev = prev[prev["encoder"] != label]
        pd.concat([prev, genes], ignore_index=True).to_csv(gcsv, index=False)
    (out / "encoders.json").write_text(json.dumps({**_read_json(out / "encoders.json"), label: enc.describe()}, indent=1, default=str))
    write_report(out)
    return mine


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Rewrite ``results.md`` (one column per encoder) and ``results.png`` from ``results.csv``.

    Parameters
    ----------
    out
        A benchmark results folder.

    Returns
    -------
    The markdown and figure paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    csv = out / "results.csv"
    if not csv.is_file():
        raise StimageError(f"{out}: no results.csv")
    df = pd.read_csv(csv)
    encoders = list(dict.fromkeys(df["encoder"]))
    df["row"] = df["task"] + ": " + df["dataset"].astype(str)
    rows = list(dict.fromkeys(df["row"]))
    cell = {(r.row, r.encoder): f"{r.mean:.3f} ± {r.std:.3f}" if not math.isnan(r.mean) else "n/a" for r in df.itertuples()}
    metric = {r.row: r.metric for r in df.itertuples()}
    lines = [
        "# STimage-1K4M benchmark",
        "",
        "probe: test macro-F1 of linear probing (the release's protocol), mean ± std over 5 splits; "
        "expression: Pearson r of ridge predictions of the 50 most variable shared genes, mean ± std over grouped folds.",
        "",
        "| task: dataset | metric | " + " | ".join(encoders) + " |",
        "|---|---|" + "---|" * len(encoders),
    ]
    for r in rows:
        lines.append(f"| {r} | {metric[r]} | " + " | ".join(cell.get((r, e), "") for e in encoders) + " |")
    md = out / "results.md"
    md.write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) * max(1, len(encoders)) * 0.5 + 2), 3.8))
    width = 0.8 / max(1, len(encoders))
    xs = np.arange(len(rows))
    for i, e in enumerate(encoders):
        sub = df[df["encoder"] == e].set_index("row").reindex(rows)
        ax.bar(xs + i * width - 0.4 + width / 2, sub["mean"], width, yerr=sub["std"], capsize=2, label=e)
    ticks = [r if len(r) <= 32 else r[:31] + "…" for r in rows]
    ax.set_xticks(xs, ticks, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("macro-F1 (probe) / Pearson r (expression)")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("encoders on STimage-1K4M tasks")
    fig.tight_layout()
    png = out / "results.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return md, png
