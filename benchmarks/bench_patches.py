"""Benchmark of training-patch export (``stimage_sd.ml.export_patches``) against the release recipe.

Generates one slide per technology at realistic resolutions (``stimage_sd.datasets``),
converts them, then in one run times, slide by slide:

- ``release 2r PNG`` (the baseline the issue names, as the release documentation does it):
  ``PIL.Image.open`` of the release image, then for every spot of the coordinate CSV
  ``img.crop((x - r, y - r, x + r, y + r)).save("<spot>.png")``: native 2r crops whose
  physical size differs by technology;
- ``PIL 112 µm PNG``: the same recipe producing what our export produces, the 112 µm box
  cropped, resized to 224 px (``.crop(...).resize((224, 224), BILINEAR)``) and saved as
  one PNG per spot (µm/px given for free). It is slow, so on slides with more than
  ``--max-png-spots`` spots it cuts that many evenly spaced spots and extrapolates its
  loop time and output size to all of them (the image decode is timed in full);
- ``ours``: ``export_patches(store, out, size_um=112, px=224)`` into a patch store (read
  from the converted store; conversion time reported separately), with the default
  thread count and with ``workers=1``;
- ``ours native``: ``export_patches(..., mode="native", px=round(2r))``, the release's
  own crops into a patch store.

Every method starts with a cold Python-level state for the slide (image opened/decoded
inside the timing). Prints a markdown table: patches/s, output bytes per patch, and the
ratios of ours to the baselines; plus the load average, since other processes sharing
the cores skew timings.

Example::

    python benchmarks/bench_patches.py            # ~1,100 ST/Visium spots + ~14,000 HD bins
    python benchmarks/bench_patches.py --small    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

SIZE_UM, PX = 112.0, 224


def _specs(small: bool):
    from stimage_sd.datasets import SlideSpec

    k = 0.5 if small else 1.0
    return [
        # legacy ST at 0.91 µm/px (the real A1 slide): 2r ≈ 110 px
        SlideSpec("Human_Breast_Bench_01012020_ST_A1", "ST", grid=(int(24 * k), int(24 * k)), um_per_px=0.91,
                  image_format="png", n_genes=1000, seed=11),
        # Visium full-resolution image, 0.5 µm/px: 2r = 130 px
        SlideSpec("Human_Brain_Bench_01012020_Visium_full", "Visium", grid=(int(26 * k), int(26 * k)), um_per_px=0.5,
                  image_format="jpeg", n_genes=1000, seed=12),
        # Visium 'hires' image only (many GEO slides), 3.4 µm/px: 2r ≈ 19 px
        SlideSpec("GSE999999_GSM9999999", "Visium", grid=(int(78 * k), int(64 * k)), um_per_px=3.4,
                  image_format="png", n_genes=1000, seed=13),
        # VisiumHD 8 µm bins at 0.5 µm/px: 2r = 16 px
        SlideSpec("Mouse_Brain_Bench_03292024_VisiumHD", "VisiumHD", grid=(int(120 * k), int(120 * k)), um_per_px=0.5,
                  image_format="tiff", n_genes=500, seed=14),
    ]


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _release_recipe(
    root: Path, slide: str, tech: str, out: Path, *, fixed_um_per_px: float | None, max_spots: int | None = None
) -> tuple[int, float]:
    """The per-spot PIL recipe; returns (patches, seconds).

    With ``max_spots``, only that many spots (evenly spaced) are cut and the loop time is
    extrapolated to all spots (the image is opened and decoded once either way).
    """
    import pandas as pd
    from PIL import Image

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    Image.MAX_IMAGE_PIXELS = None
    coords = pd.read_csv(root / tech / "coord" / f"{slide}_coord.csv", index_col=0)
    img = Image.open(root / tech / "image" / f"{slide}.png").convert("RGB")
    t_open = time.perf_counter() - t0
    total = len(coords)
    if max_spots is not None and total > max_spots:
        coords = coords.iloc[:: -(-total // max_spots)]
    n = 0
    for spot, y, x, r in coords[["yaxis", "xaxis", "r"]].itertuples():
        if fixed_um_per_px is None:  # the release documentation: a 2r crop per spot
            patch = img.crop((x - r, y - r, x + r, y + r))
        else:  # the same recipe for 112 µm at 224 px
            h = SIZE_UM / fixed_um_per_px / 2
            patch = img.crop((x - h, y - h, x + h, y + h)).resize((PX, PX), Image.Resampling.BILINEAR)
        patch.save(out / f"{spot}.png")
        n += 1
    t_loop = time.perf_counter() - t0 - t_open
    return total, t_open + t_loop * total / n


def _ours(store: Path, out: Path, **kw) -> tuple[int, float]:
    from stimage_sd.ml import export_patches, read_patch_attrs

    t0 = time.perf_counter()
    export_patches(store, out, progress=False, genes="hvg", n_hvg=128, **kw)
    dt = time.perf_counter() - t0
    return int((read_patch_attrs(out) or {})["n"]), dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="quarter-size slides, for a quick look")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument(
        "--max-png-spots", type=int, default=1500,
        help="cut at most this many (evenly spaced) spots per slide with the slow 112 µm PNG recipe and "
        "extrapolate its time and size to all spots (0: all spots)",
    )
    args = ap.parse_args(argv)
    args.max_png_spots = args.max_png_spots or None

    import logging

    from stimage_sd.batch import convert_many
    from stimage_sd.datasets import make_release
    from stimage_sd.ml._source import highly_variable_genes  # noqa: F401  (import scanpy before timing)

    logging.getLogger("stimage_sd").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench_patches_")) if args.workdir is None else args.workdir
    tmp.mkdir(parents=True, exist_ok=True)
    specs = _specs(args.small)
    try:
        root = tmp / ("release_small" if args.small else "release")
        if not (root / ".done").exists():
            t0 = time.perf_counter()
            make_release(root, specs)
            (root / ".done").write_text("ok")
            print(f"generated {len(specs)} slides in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        res = convert_many(root, tmp / "stores", progress=False, checksums=False)
        conv_s = time.perf_counter() - t0
        stores = {r.slide: r.path for r in res}
        runs = tmp / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        # warm-up (imports, numba caches) on the smallest slide, not timed
        first = specs[0]
        _release_recipe(root, first.slide, first.tech, runs / "warm" / "png", fixed_um_per_px=first.um_per_px)
        _ours(stores[first.slide], runs / "warm" / "ours.zarr", size_um=SIZE_UM, px=PX)
        shutil.rmtree(runs, ignore_errors=True)
        load0 = os.getloadavg()
        rows = []
        for spec in specs:
            s, tech = spec.slide, spec.tech
            row: dict = {"slide": s, "tech": tech, "um_per_px": spec.um_per_px}
            n, dt = _release_recipe(root, s, tech, runs / "png2r" / s, fixed_um_per_px=None)
            row["png2r"] = (n, dt, _du(runs / "png2r" / s))
            n, dt = _release_recipe(
                root, s, tech, runs / "png112" / s, fixed_um_per_px=spec.um_per_px, max_spots=args.max_png_spots
            )
            k = len(list((runs / "png112" / s).iterdir()))
            row["png112"] = (n, dt, _du(runs / "png112" / s) * n / k)
            n, dt = _ours(stores[s], runs / "ours" / f"{s}.zarr", size_um=SIZE_UM, px=PX)
            row["ours"] = (n, dt, _du(runs / "ours" / f"{s}.zarr"))
            n, dt = _ours(stores[s], runs / "ours1" / f"{s}.zarr", size_um=SIZE_UM, px=PX, workers=1)
            row["ours1"] = (n, dt, _du(runs / "ours1" / f"{s}.zarr"))
            r2 = round(2 * spec.radius_um / spec.um_per_px)
            n, dt = _ours(stores[s], runs / "native" / f"{s}.zarr", mode="native", px=r2)
            row["native"] = (n, dt, _du(runs / "native" / f"{s}.zarr"))
            row["crop_px"] = r2
            rows.append(row)
            for kind in ("png2r", "png112", "ours", "ours1", "native"):
                shutil.rmtree(runs / kind, ignore_errors=True)  # keep the disk footprint small
            print(f"{s}: done", file=sys.stderr)
        load1 = os.getloadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    def rate(v):
        return v[0] / v[1]

    print(f"\npatch export, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"load average {load0[0]:.1f} → {load1[0]:.1f}; conversion of the {len(specs)} slides took {conv_s:.1f} s (not counted)\n")
    print("| slide (tech, µm/px, 2r px) | patches | release 2r PNG /s | PIL 112 µm PNG /s | ours /s | ours 1 thread /s "
          "| ours native 2r /s | ours ÷ 2r PNG | ours ÷ 112 µm PNG | ours native ÷ 2r PNG | KB/patch: 2r PNG / 112 µm PNG / ours / ours native |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    tot = {k: [0, 0.0, 0] for k in ("png2r", "png112", "ours", "ours1", "native")}
    for r in rows:
        for k in tot:
            for i in range(3):
                tot[k][i] += r[k][i]
        kb = " / ".join(f"{r[k][2] / r[k][0] / 1e3:.1f}" for k in ("png2r", "png112", "ours", "native"))
        print(f"| {r['tech']} ({r['um_per_px']}, {r['crop_px']}) | {r['ours'][0]} | {rate(r['png2r']):.0f} | {rate(r['png112']):.0f} "
              f"| {rate(r['ours']):.0f} | {rate(r['ours1']):.0f} | {rate(r['native']):.0f} | {rate(r['ours']) / rate(r['png2r']):.1f}x "
              f"| {rate(r['ours']) / rate(r['png112']):.1f}x | {rate(r['native']) / rate(r['png2r']):.1f}x | {kb} |")
    kb = " / ".join(f"{tot[k][2] / tot[k][0] / 1e3:.1f}" for k in ("png2r", "png112", "ours", "native"))
    print(f"| **all** | {tot['ours'][0]} | {rate(tot['png2r']):.0f} | {rate(tot['png112']):.0f} | {rate(tot['ours']):.0f} "
          f"| {rate(tot['ours1']):.0f} | {rate(tot['native']):.0f} | {rate(tot['ours']) / rate(tot['png2r']):.1f}x "
          f"| {rate(tot['ours']) / rate(tot['png112']):.1f}x | {rate(tot['native']) / rate(tot['png2r']):.1f}x | {kb} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "total": tot, "load": [load0, load1], "conversion_s": conv_s}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
