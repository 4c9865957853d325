"""Benchmark of the cohort table (``stimage_sd.io.read_cohort``): time and peak memory.

Builds N converted Visium stores, then assembles them into one table three ways, each in
a fresh subprocess that reports its wall time, CPU time and peak RSS (``VmHWM``, the
whole process: Python and the imports included; the RSS before the call is printed too):

- ``anndata.concat``: the baseline, every store's table read into memory
  (``anndata.read_zarr`` of ``<store>/tables/table``) then ``anndata.concat``;
- ``read_cohort``: :func:`stimage_sd.io.read_cohort` in memory (genes harmonised, slide
  metadata joined);
- ``read_cohort-on-disk``: ``read_cohort(out=..., lazy=True)``, assembled on disk with
  ``anndata.experimental.concat_on_disk`` (bounded memory), opened lazily.

Store generation is kept cheap: ``--distinct`` slides are generated with
:mod:`stimage_sd.datasets` (small images: ``--um-per-px``) and converted with the real
converter; the other stores are copies of those with a new slide id (written into the
copy's metadata), so that N stores of realistic size exist without generating N slides.
Counts, sparsity and sizes are those of the generated slides, so time and memory of the
assembly are those of N distinct slides (the content repeats; compression ratios do not
depend on it).

Example::

    python benchmarks/bench_cohort.py --slides 100 --spots 2350 --genes 20000 --distinct 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("anndata.concat", "read_cohort", "read_cohort-on-disk")


def _peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _grid_for(spots: int) -> tuple[int, int]:
    # the generator keeps ~85 % of the array (irregular tissue), Visium arrays are ~78 x 64
    side = (spots / 0.85 / (78 * 64)) ** 0.5
    return max(4, round(78 * side)), max(4, round(64 * side))


def make_stores(folder: Path, n: int, distinct: int, spots: int, genes: int, um_per_px: float) -> list[Path]:
    import zarr
    from anndata.io import read_elem, write_elem

    from stimage_sd.datasets import SlideSpec, make_release
    from stimage_sd.io import convert_slide

    root, out = folder / "release", folder / "stores"
    specs = [
        SlideSpec(f"Human_Brain_Bench_01012025_Visium_{i:03d}", "Visium", grid=_grid_for(spots), n_genes=genes,
                  um_per_px=um_per_px, study="bench", seed=i, annotate=True)
        for i in range(min(distinct, n))
    ]
    t = time.perf_counter()
    make_release(root, specs)
    base = [convert_slide(root, s.slide, out, checksums=False) for s in specs]
    print(f"generated and converted {len(base)} slide(s) in {time.perf_counter() - t:.0f} s", flush=True)
    stores = list(base)
    for i in range(len(base), n):
        src = base[i % len(base)]
        slide = f"Human_Brain_Bench_01012025_Visium_{i:03d}"
        dst = out / f"{slide}.zarr"
        shutil.copytree(src, dst)
        g = zarr.open_group(str(dst / "tables" / "table"), mode="r+")
        uns = read_elem(g["uns"])
        uns["stimage"]["slide"] = slide
        write_elem(g, "uns", uns)
        root_g = zarr.open_group(str(dst), mode="r+", use_consolidated=False)
        attrs = dict(root_g.attrs["stimage"])
        attrs["slide"] = slide
        root_g.attrs["stimage"] = attrs
        zarr.consolidate_metadata(root_g.store)
        stores.append(dst)
    return stores


def run_method(method: str, stores: list[str], out: str) -> dict:
    import anndata as ad

    import stimage_sd as ssd

    before = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "anndata.concat":
        tables = [ad.read_zarr(Path(s) / "tables" / "table") for s in stores]
        adata = ad.concat(tables, join="inner", keys=[Path(s).stem for s in stores], index_unique="-")
        del tables
    elif method == "read_cohort":
        adata = ssd.io.read_cohort(stores, progress=False)
    else:
        adata = ssd.io.read_cohort(stores, out=out, lazy=True, overwrite=True, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"method": method, "wall_s": wall, "cpu_s": cpu, "peak_mb": _peak_mb(), "rss_before_mb": before,
            "n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=100)
    ap.add_argument("--spots", type=int, default=2350, help="spots per slide (approximately)")
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--distinct", type=int, default=4, help="slides actually generated; the rest are copies")
    ap.add_argument("--um-per-px", type=float, default=20.0, help="pixel size of the generated images (large: small images)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    ap.add_argument("--workdir", type=Path, default=Path("bench_cohort_work"))
    ap.add_argument("--keep", action="store_true", help="keep the stores (reused by a later run with the same sizes)")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--stores", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:  # child process: one method, JSON on the last line
        print(json.dumps(run_method(args.run, args.stores, args.out)))
        return

    key = f"{args.slides}x{args.spots}x{args.genes}-d{args.distinct}"
    folder = args.workdir / key
    stores_dir = folder / "stores"
    if stores_dir.is_dir() and len(list(stores_dir.glob("*.zarr"))) == args.slides:
        stores = sorted(stores_dir.glob("*.zarr"))
        print(f"reusing {len(stores)} stores in {stores_dir}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
        stores = make_stores(folder, args.slides, args.distinct, args.spots, args.genes, args.um_per_px)
    size = sum(f.stat().st_size for s in stores for f in (s / "tables").rglob("*") if f.is_file())
    print(f"{len(stores)} stores, tables {size / 1e6:.0f} MB on disk; load average {os.getloadavg()}", flush=True)
    results = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--run", method, "--out", str(folder / "cohort.zarr"), "--stores", *map(str, stores)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "STIMAGE_SD_NO_PROGRESS": "1"})
        if proc.returncode:
            print(f"{method}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if not results:
        return
    base = next((r for r in results if r["method"] == "anndata.concat"), results[0])
    print(f"\n{results[0]['n_obs']:,} spots x {results[0]['n_vars']:,} genes from {args.slides} stores "
          f"({args.distinct} generated); load average after {os.getloadavg()}\n")
    print("| method | wall (s) | CPU (s) | peak RSS (MB) | RSS before call (MB) | wall vs concat | peak RSS vs concat |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_mb']:,.0f} | {r['rss_before_mb']:,.0f} "
              f"| {r['wall_s'] / base['wall_s']:.2f}x | {r['peak_mb'] / base['peak_mb']:.2f}x |")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
