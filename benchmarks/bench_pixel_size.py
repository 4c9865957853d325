"""Pixel size on the real 10x Visium sample: error of each estimate per geometry (issue 17).

Builds the release-layout coordinates from ``../shared/real-data/visium_mouse_brain`` as
the release writes them (``yaxis = pxl_row_in_fullres * s``, ``xaxis = pxl_col_in_fullres
* s``, ``r = spot_diameter_fullres / 2 * s``) at the lowres and hires scale factors and
prints, per geometry, the relative error against the truth ``65 / (spot_diameter_fullres
* s)`` of: the old nearest-neighbour-median estimate (baseline), the radius, and
``estimate_pixel_size`` (with the release radius, and with a radius 1.5x too large), with
the decision taken and the time of the estimate.

Run: ``PYTHONPATH=src python benchmarks/bench_pixel_size.py`` from the repository root.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from stimage_sd.io._scale import estimate_pixel_size, nearest_neighbour_spacing

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "real-data" / "visium_mouse_brain"


def main() -> int:
    if not ROOT.is_dir():
        print(f"real 10x sample not available: {ROOT} is absent")
        return 0
    pos = pd.read_csv(ROOT / "spatial" / "tissue_positions_list.csv", header=None,
                      names=["bc", "in_tissue", "row", "col", "py", "px"]).set_index("bc")
    sf = json.loads((ROOT / "spatial" / "scalefactors_json.json").read_text())
    with h5py.File(ROOT / "filtered_feature_bc_matrix.h5", "r") as f:
        subset = [b.decode() for b in f["matrix"]["barcodes"][:]]
    rng = np.random.default_rng(17)
    variants = {
        "full": pos,
        "in_tissue": pos[pos["in_tissue"] == 1],
        "qc_thinned_40%": pos.iloc[np.sort(rng.choice(len(pos), round(0.6 * len(pos)), replace=False))],
        "partial": pos[(pos["row"] < 30) & (pos["col"] < 60)],
        "sparse_100": pos.loc[subset],
        "single_row": pos[pos["row"] == 20],
        "single_column": pos[pos["col"] == 40],
    }
    print(f"{'image':6} {'geometry':15} {'spots':>5} {'NN-median':>9} {'radius':>7} {'ours':>7} {'decision':9} "
          f"{'ours r*1.5':>10} {'decision':9} {'ms':>6}")
    for scale in ("tissue_lowres_scalef", "tissue_hires_scalef"):
        s = sf[scale]
        truth = 65.0 / (sf["spot_diameter_fullres"] * s)
        r = sf["spot_diameter_fullres"] / 2 * s
        for name, v in variants.items():
            xy = v[["px", "py"]].to_numpy(float) * s
            t0 = time.perf_counter()
            est = estimate_pixel_size(xy, r, "Visium", log=False)
            ms = 1000 * (time.perf_counter() - t0)
            bad = estimate_pixel_size(xy, 1.5 * r, "Visium", log=False)
            nn = 100.0 / nearest_neighbour_spacing(xy)
            print(f"{scale[7:12]:6} {name:15} {len(v):5d} {nn / truth - 1:+9.2%} {est.radius_um_per_px / truth - 1:+7.2%} "
                  f"{est.um_per_px / truth - 1:+7.2%} {est.decision:9} {bad.um_per_px / truth - 1:+10.2%} "
                  f"{bad.decision:9} {ms:6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
