"""Benchmark of spatial domains (``stimage_sd.tl.domains``) against baselines and peers.

Generates slides with known domains (``stimage_sd.datasets.make_table``: the counts the
generator writes, in memory) on layouts that tell methods apart, normalises them once
(``stimage_sd.pp.normalize`` defaults: log1p + 2,000 seurat_v3 HVGs) and scores every
method against the truth (ARI and NMI, scikit-learn).

Layouts (weak markers: 1.5-2x up in their domain, shallow counts):

- ``layers_weak``: Visium, 6 curved layers, markers 1.5x (the issue's case);
- ``curved_thin``: Visium, 7 strongly folded layers, every other one thin, markers 2x;
- ``blobs_varied``: Visium, 5 compartments, islands of very different sizes, markers 1.5x;
- ``st_sparse``: legacy ST array with 30 % of the spots missing, 4 compartments, 1.5x;
- ``hd_bins``: VisiumHD 8 µm bins, 5 layers, markers 2x.

Methods:

- ``ours``: ``tl.domains(adata, n_domains)`` with its defaults;
- ``ours_v0``: the previous default (λ = 0.8 on unscaled blocks, Leiden), for reference
  (not in ``--quick``);
- ``expr_leiden``: ``tl.domains(..., spatial_weight=0)`` (non-spatial baseline);
- ``smooth_kmeans``: the simple baseline: 30 PCs averaged over the spatial neighbours
  (6 on Visium) twice, then KMeans with ``k = n_domains``;
- ``banksy_l0.2_leiden`` / ``banksy_l0.8_gmm``: banksy-py 0.0.7 (the BANKSY matrix with
  its defaults: 15 neighbours, scaled Gaussian decay, AGF m = 1; 20 PCs) then its own
  Leiden with the resolution search to ``n_domains``, or a tied Gaussian mixture
  (scikit-learn; BANKSY's mclust needs R);
- ``cellcharter``: CellCharter 0.3 (30 PCs aggregated over 3 neighbour layers of the same
  spatial graph, then its GMM, ``k = n_domains``).

Peers run when they import; GraphST is not run (about 8 minutes per slide on CPU).

Install the peers (banksy-py 0.0.7 pins numpy 1.22 / scanpy 1.9 / anndata 0.8, so pip would
fall back to 0.0.1; the code of the two wheels is identical)::

    pip install --no-deps banksy-py==0.0.7 ipython
    pip install leidenalg umap-learn          # banksy-py's imports
    pip install torch==2.13.0 cellcharter==0.3.7

Examples
--------
Full run (6 seeds, all layouts, peers included: the peers take 1-6 minutes per slide on
2 busy cores, two hours or more in all; ``--no-peers``: ~5 minutes)::

    python benchmarks/bench_domains.py

Quick run (1 seed, smaller slides, no ``ours_v0``, no peers; a few minutes; add
``--with-peers`` to run the peers on ``layers_weak``)::

    python benchmarks/bench_domains.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("STIMAGE_SD_NO_PROGRESS", "1")

#: name -> (SlideSpec keywords, quick grid)
LAYOUTS: dict[str, tuple[dict, tuple[int, int]]] = {
    "layers_weak": (
        dict(tech="Visium", grid=(78, 64), tissue_fraction=0.75, domain_layout="layers", n_domains=6,
             marker_fold=1.5),
        (48, 48),
    ),
    "curved_thin": (
        dict(tech="Visium", grid=(78, 64), tissue_fraction=0.75, domain_layout="curved_layers", n_domains=7,
             marker_fold=2.0),
        (56, 56),
    ),
    "blobs_varied": (
        dict(tech="Visium", grid=(64, 64), domain_layout="varied_blobs", n_domains=5, marker_fold=1.5),
        (48, 48),
    ),
    "st_sparse": (
        dict(tech="ST", grid=(35, 33), domain_layout="blobs", n_domains=4, marker_fold=1.5, spot_dropout=0.3),
        (35, 33),
    ),
    "hd_bins": (
        dict(tech="VisiumHD", grid=(100, 100), domain_layout="layers", n_domains=5, marker_fold=2.0),
        (64, 64),
    ),
}


def make(name: str, seed: int, quick: bool):
    import stimage_sd as ssd

    kw, quick_grid = LAYOUTS[name]
    kw = dict(kw)
    if quick:
        kw["grid"] = quick_grid
    tag = name.replace("_", "")
    spec = ssd.datasets.SlideSpec(f"Human_Brain_Bench_01012025_{kw['tech']}_{tag}", n_genes=2000, seed=seed, **kw)
    adata = ssd.datasets.make_table(spec)
    ssd.pp.normalize(adata)
    ssd.tl.spatial_graph(adata)
    return adata, spec.n_domains


# --- methods ------------------------------------------------------------------------------
def ours(adata, k, seed):
    import stimage_sd as ssd

    a = adata.copy()
    ssd.tl.domains(a, k, seed=seed)
    return a.obs["domain"].to_numpy()


def expr_leiden(adata, k, seed):
    import stimage_sd as ssd

    a = adata.copy()
    ssd.tl.domains(a, k, spatial_weight=0.0, method="leiden", seed=seed)
    return a.obs["domain"].to_numpy()


def _pcs(adata, n, seed):
    import scanpy as sc

    a = adata.copy()
    sc.pp.pca(a, n_comps=n, mask_var=a.var["highly_variable"].to_numpy(), svd_solver="arpack", random_state=seed)
    return a.obsm["X_pca"].astype(np.float64)


def _mean_operator(adata):
    from scipy import sparse

    adj = sparse.csr_matrix(adata.obsp["spatial_connectivities"], dtype=np.float64)
    adj.setdiag(0)
    adj.eliminate_zeros()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    deg = np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1)
    return sparse.diags(1.0 / deg) @ adj


def smooth_kmeans(adata, k, seed):
    from sklearn.cluster import KMeans

    P = _mean_operator(adata)
    m = P @ (P @ _pcs(adata, 30, seed))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(m)


def ours_v0(adata, k, seed):
    """The previous default: [sqrt(0.2) Z, sqrt(0.8) P^h Z] without block scaling, Leiden."""
    import anndata as ad

    from stimage_sd.tl._domains import DEFAULT_HOPS, _knn_graph, _leiden_to_k

    z = _pcs(adata, 30, seed)
    P = _mean_operator(adata)
    m = z
    for _ in range(DEFAULT_HOPS[adata.uns["stimage"]["tech"]]):
        m = P @ m
    f = np.hstack([np.sqrt(0.2) * z, np.sqrt(0.8) * m]).astype(np.float32)
    a = ad.AnnData(np.zeros((f.shape[0], 1), dtype=np.float32))
    conn, dist = _knn_graph(f, 15, seed)
    a.obsp["k_connectivities"], a.obsp["k_distances"] = conn, dist
    a.uns["k"] = {"connectivities_key": "k_connectivities", "distances_key": "k_distances", "params": {}}
    return _leiden_to_k(a, k, seed, "k")[0]


def _banksy_pcs(adata, lam, seed):
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy
    from banksy_utils.umap_pca import pca_umap

    a = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    a.X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    a.obs["xcoord"], a.obs["ycoord"] = a.obsm["spatial"][:, 0], a.obsm["spatial"][:, 1]
    a.obsm["coord_xy"] = a.obsm["spatial"]
    np.random.seed(seed)  # noqa: NPY002 - banksy-py samples from the global state
    with contextlib.redirect_stdout(io.StringIO()):
        bd = initialize_banksy(a, ("xcoord", "ycoord", "coord_xy"), 15, "scaled_gaussian", 1,
                               plt_edge_hist=False, plt_nbr_weights=False, plt_agf_angles=False, plt_theta=False)
        bd, _ = generate_banksy_matrix(a, bd, [lam], 1, verbose=False)
        pca_umap(bd, pca_dims=[20], plt_remaining_var=False, add_umap=False)
    return bd


def banksy_leiden(lam):
    def run(adata, k, seed):
        from banksy.cluster_methods import run_Leiden_partition

        bd = _banksy_pcs(adata, lam, seed)
        with contextlib.redirect_stdout(io.StringIO()):
            res, _ = run_Leiden_partition(bd, [], num_nn=50, num_iterations=-1, partition_seed=1234 + seed,
                                          match_labels=False, max_labels=k)
        lab = res["labels"].iloc[0]
        return np.asarray(lab.dense)

    return run


def banksy_gmm(lam):
    def run(adata, k, seed):
        from sklearn.mixture import GaussianMixture

        bd = _banksy_pcs(adata, lam, seed)
        pcs = bd["scaled_gaussian"][lam]["adata"].obsm["reduced_pc_20"]
        return GaussianMixture(k, covariance_type="tied", n_init=3, random_state=seed).fit_predict(pcs)

    return run


def cellcharter(adata, k, seed):
    import cellcharter as cc

    a = adata.copy()
    a.obsm["X_pca"] = _pcs(adata, 30, seed).astype(np.float32)
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(name).propagate = False
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cc.gr.aggregate_neighbors(a, n_layers=3, use_rep="X_pca", connectivity_key="spatial_connectivities")
        model = cc.tl.Cluster(n_clusters=k, random_state=seed, trainer_params={"accelerator": "cpu",
                                                                               "enable_progress_bar": False})
        model.fit(a, use_rep="X_cellcharter")
        return model.predict(a, use_rep="X_cellcharter").to_numpy()


def _importable(mod: str) -> bool:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            __import__(mod)
        return True
    except Exception:  # a peer that does not import is skipped
        return False


def methods(quick: bool, peers: bool = True) -> dict[str, Callable]:
    out: dict[str, Callable] = {"ours": ours, "expr_leiden": expr_leiden, "smooth_kmeans": smooth_kmeans}
    if not quick:
        out["ours_v0"] = ours_v0
    if not peers:
        return out
    if _importable("banksy.cluster_methods") and _importable("banksy_utils.umap_pca"):
        out["banksy_l0.2_leiden"] = banksy_leiden(0.2)
        out["banksy_l0.8_gmm"] = banksy_gmm(0.8)
    else:
        print("banksy-py not importable: skipped", file=sys.stderr)
    if _importable("cellcharter"):
        out["cellcharter"] = cellcharter
    else:
        print("cellcharter not importable: skipped", file=sys.stderr)
    return out


BASELINES = ("expr_leiden", "smooth_kmeans")
#: With --quick --with-peers, peers (slow: 1-6 minutes per slide on a busy 2-core machine)
#: run on these layouts only; plain --quick skips them.
QUICK_PEER_LAYOUTS = ("layers_weak",)
PEERS = ("banksy_l0.2_leiden", "banksy_l0.8_gmm", "cellcharter")


def _paired(rows: list[tuple], layout: str, other: str | None) -> str:
    """``mean ± SE [wins/seeds]`` of ours minus ``other`` over the seeds both ran."""
    if other is None:
        return "n/a"
    a = {r[1]: r[3] for r in rows if r[0] == layout and r[2] == "ours"}
    b = {r[1]: r[3] for r in rows if r[0] == layout and r[2] == other}
    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])
    if not len(d):
        return "n/a"
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} ± {se:.3f} [{int((d >= 0).sum())}/{len(d)}]"


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, smaller slides")
    p.add_argument("--seeds", type=int, default=None, help="seeds per layout (default 6, quick 1)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated layouts")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--no-peers", action="store_true", help="skip banksy-py and CellCharter")
    p.add_argument("--with-peers", action="store_true", help="with --quick: run the peers on layers_weak")
    args = p.parse_args(argv)
    logging.getLogger("stimage_sd").setLevel(logging.ERROR)
    n_seeds = args.seeds or (1 if args.quick else 6)
    meth = methods(args.quick, peers=not args.no_peers)
    if args.methods:
        meth = {k: v for k, v in meth.items() if k in args.methods.split(",")}
    rows = []
    print("| layout | seed | spots | method | ARI | NMI | s |\n|---|---|---|---|---|---|---|", flush=True)
    for name in args.layouts.split(","):
        for seed in range(args.first_seed, args.first_seed + n_seeds):
            adata, k = make(name, seed, args.quick)
            y = adata.obs["domain"].to_numpy()
            for mname, fn in meth.items():
                if args.quick and mname in PEERS and (not args.with_peers or name not in QUICK_PEER_LAYOUTS):
                    continue
                t = time.perf_counter()
                lab = np.asarray(fn(adata, k, seed)).astype(str)
                dt = time.perf_counter() - t
                ari, nmi = adjusted_rand_score(y, lab), normalized_mutual_info_score(y, lab)
                rows.append((name, seed, mname, ari, nmi))
                print(f"| {name} | {seed} | {adata.n_obs} | {mname} | {ari:.3f} | {nmi:.3f} | {dt:.1f} |", flush=True)
    # summary: mean over seeds
    print("\nMean ARI over seeds (NMI in brackets); checks: ours >= best baseline, ours >= best peer - 0.01;")
    print("± is the standard error of the paired per-seed difference, [w/n] the seeds where ours is ahead\n")
    names = [m for m in meth if any(r[2] == m for r in rows)]  # the methods that ran
    print("| layout | " + " | ".join(names) + " | ours - best baseline | ours - best peer |")
    print("|---" * (len(names) + 3) + "|")
    ok = True
    for name in args.layouts.split(","):
        def avg(col: int, m: str, name: str = name) -> float:
            v = [r[col] for r in rows if r[0] == name and r[2] == m]
            return float(np.mean(v)) if v else float("nan")

        mean = {m: avg(3, m) for m in names}
        nmi = {m: avg(4, m) for m in names}
        base = max((mean[m] for m in BASELINES if m in mean and not np.isnan(mean[m])), default=np.nan)
        peer = max((mean[m] for m in PEERS if m in mean and not np.isnan(mean[m])), default=np.nan)
        d_base, d_peer = mean["ours"] - base, mean["ours"] - peer
        ok &= bool(d_base >= 0 or np.isnan(d_base)) and bool(d_peer >= -0.01 or np.isnan(d_peer))
        cells = " | ".join(f"{mean[m]:.3f} ({nmi[m]:.3f})" for m in names)
        best_base = next((m for m in BASELINES if m in mean and mean[m] == base), None)
        best_peer = next((m for m in PEERS if m in mean and mean[m] == peer), None)
        print(f"| {name} | {cells} | {_paired(rows, name, best_base)} | {_paired(rows, name, best_peer)} |")
    print(f"\nall checks pass: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
