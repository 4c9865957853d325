"""Benchmark of the synthetic release generator (``stimage_sd.datasets``).

Measures, in one run, and prints a markdown table with ratios against baselines
measured in the same run:

- ``counts``: ``write_counts`` of a VisiumHD-like slide (``--bins`` bins x ``--genes``
  genes, ~1-2 % non-zero), in ns per matrix cell and MB/s; baselines: ``pandas``
  (``DataFrame.to_csv`` of the same values for the first ``--pandas-rows`` rows, i.e. what
  a naive generator would do) and ``disk`` (writing the same number of bytes of a
  preformatted buffer: the I/O floor);
- ``image``: a tiled TIFF of about ``--image-side`` pixels a side, in ns per pixel and
  peak RSS; baseline ``disk``: ``tifffile`` writing random tiles of the same shape (the
  I/O and TIFF-container floor);
- ``sample``: ``stimage_sd.datasets.sample()`` end to end.

Each measurement runs in a fresh subprocess that reports its own peak RSS, so memory
numbers are per task. Extrapolations to the full-size VisiumHD slide (400,000 bins x
18,085 genes, 20,000 x 20,000 px) are printed from the measured rates.

Examples
--------
Default (a few minutes on 2 cores)::

    python benchmarks/bench_datasets.py

Closer to full size::

    python benchmarks/bench_datasets.py --bins 100000 --image-side 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1e6
FULL_CELLS = 400_000 * 18_085
FULL_PX = 20_000 * 20_000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hd_spec(bins: int, genes: int, side_px: int | None = None):
    from stimage_sd.datasets import SlideSpec

    side = math.ceil(math.sqrt(bins))
    ump = 0.5
    if side_px is not None:  # choose the grid so that the image is ~side_px wide
        side = max(2, int(side_px * ump / 8.0))
    return SlideSpec("Mouse_Bench_Synth_03292024_VisiumHD", "VisiumHD", grid=(side, side), n_genes=genes,
                     um_per_px=ump, tissue_fraction=1.0, image_format="tiff", tiff_tile=1024,
                     domain_layout="blobs", n_domains=5)


def task_counts(work: Path, bins: int, genes: int) -> dict:
    from stimage_sd.datasets._counts_writer import write_counts
    from stimage_sd.datasets._genes import build_genes
    from stimage_sd.datasets._geometry import build_layout

    spec = _hd_spec(bins, genes)
    layout, panel = build_layout(spec), build_genes(spec)
    out = work / "counts.csv"
    tiny = dataclasses.replace(spec, grid=(3, 3))
    write_counts(work / "warm.csv", tiny, build_layout(tiny), build_genes(tiny))  # load the compiled kernel
    t0 = time.perf_counter()
    write_counts(out, spec, layout, panel)
    dt = time.perf_counter() - t0
    size = out.stat().st_size
    with open(out, "rb") as fh:
        fh.readline()
        nnz_line = fh.readline().decode()
    vals = np.array(nnz_line.rstrip("\n").split(",")[1:], dtype=float)
    out.unlink()
    cells = len(layout.ids) * genes
    return {"seconds": dt, "cells": cells, "bytes": size, "ns_per_cell": dt / cells * 1e9,
            "mb_s": size / MB / dt, "nnz_first_row": float((vals > 0).mean()), "peak_rss_mb": _rss_mb()}


def task_pandas(work: Path, rows: int, genes: int) -> dict:
    import pandas as pd

    rng = np.random.default_rng(0)
    vals = rng.poisson(0.02, size=(rows, genes)).astype(float)
    df = pd.DataFrame(vals, index=[f"spot_{i}" for i in range(rows)], columns=[f"G{j}" for j in range(genes)])
    t0 = time.perf_counter()
    df.to_csv(work / "pandas.csv")
    dt = time.perf_counter() - t0
    size = (work / "pandas.csv").stat().st_size
    (work / "pandas.csv").unlink()
    return {"seconds": dt, "cells": rows * genes, "bytes": size, "ns_per_cell": dt / (rows * genes) * 1e9,
            "mb_s": size / MB / dt, "peak_rss_mb": _rss_mb()}


def task_disk(work: Path, nbytes: int) -> dict:
    buf = np.frombuffer((b",0.0" * (1 << 20)), dtype=np.uint8)
    t0 = time.perf_counter()
    with open(work / "disk.bin", "wb") as fh:
        left = nbytes
        while left > 0:
            n = min(left, len(buf))
            fh.write(memoryview(buf)[:n])
            left -= n
    dt = time.perf_counter() - t0
    (work / "disk.bin").unlink()
    return {"seconds": dt, "bytes": nbytes, "mb_s": nbytes / MB / dt, "peak_rss_mb": _rss_mb()}


def task_image(work: Path, side_px: int) -> dict:
    from stimage_sd.datasets._geometry import build_layout
    from stimage_sd.datasets._image import write_image

    spec = _hd_spec(4, 100, side_px=side_px)
    layout = build_layout(spec)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    write_image(work / "img.png", spec, layout)
    dt = time.perf_counter() - t0
    size = (work / "img.png").stat().st_size
    (work / "img.png").unlink()
    px = layout.width * layout.height
    return {"seconds": dt, "pixels": px, "bytes": size, "ns_per_px": dt / px * 1e9,
            "shape": [layout.height, layout.width], "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def task_tiff_floor(work: Path, side_px: int) -> dict:
    import tifffile

    spec = _hd_spec(4, 100, side_px=side_px)
    from stimage_sd.datasets._geometry import build_layout

    layout = build_layout(spec)
    h, w, t = layout.height, layout.width, 1024
    tile = np.random.default_rng(0).integers(0, 255, size=(t, t, 3), dtype=np.uint8)
    n = math.ceil(h / t) * math.ceil(w / t)
    t0 = time.perf_counter()
    tifffile.imwrite(work / "floor.tif", (tile for _ in range(n)), shape=(h, w, 3), dtype=np.uint8, tile=(t, t),
                     photometric="rgb")
    dt = time.perf_counter() - t0
    (work / "floor.tif").unlink()
    return {"seconds": dt, "pixels": h * w, "ns_per_px": dt / (h * w) * 1e9, "peak_rss_mb": _rss_mb()}


def task_sample(work: Path) -> dict:
    from stimage_sd import datasets

    t0 = time.perf_counter()
    datasets.sample(work / "sample")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb()}


def run(task: str, work: Path, **kw) -> dict:
    cmd = [sys.executable, __file__, "--_task", task, "--_work", str(work), "--_kw", json.dumps(kw)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bins", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=18_085)
    p.add_argument("--pandas-rows", type=int, default=1_000)
    p.add_argument("--image-side", type=int, default=8_000)
    p.add_argument("--_task")
    p.add_argument("--_work")
    p.add_argument("--_kw")
    a = p.parse_args()
    if a._task:
        res = globals()[f"task_{a._task}"](Path(a._work), **json.loads(a._kw))
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(prefix="bench_datasets_", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        counts = run("counts", work, bins=a.bins, genes=a.genes)
        pandas = run("pandas", work, rows=a.pandas_rows, genes=a.genes)
        disk = run("disk", work, nbytes=counts["bytes"])
        image = run("image", work, side_px=a.image_side)
        floor = run("tiff_floor", work, side_px=a.image_side)
        smp = run("sample", work)
    load = os.getloadavg()
    print(f"## stimage_sd.datasets generator ({os.cpu_count()} CPUs, load avg {load[0]:.1f})\n")
    print("| task | size | time (s) | rate | vs baseline | peak RSS (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| counts CSV (ours) | {counts['cells'] / 1e6:,.0f} M cells, {counts['bytes'] / MB:,.0f} MB | "
          f"{counts['seconds']:.1f} | {counts['ns_per_cell']:.1f} ns/cell, {counts['mb_s']:.0f} MB/s | "
          f"{pandas['ns_per_cell'] / counts['ns_per_cell']:.1f}x faster than pandas | {counts['peak_rss_mb']:.0f} |")
    print(f"| counts CSV (pandas to_csv) | {pandas['cells'] / 1e6:,.0f} M cells | {pandas['seconds']:.1f} | "
          f"{pandas['ns_per_cell']:.1f} ns/cell, {pandas['mb_s']:.0f} MB/s | 1.0x | {pandas['peak_rss_mb']:.0f} |")
    print(f"| disk write floor | {disk['bytes'] / MB:,.0f} MB | {disk['seconds']:.1f} | {disk['mb_s']:.0f} MB/s | "
          f"ours at {counts['mb_s'] / disk['mb_s']:.2f}x of the floor | {disk['peak_rss_mb']:.0f} |")
    print(f"| tiled TIFF image (ours) | {image['shape'][1]:,} x {image['shape'][0]:,} px | {image['seconds']:.1f} | "
          f"{image['ns_per_px']:.0f} ns/px | {image['ns_per_px'] / floor['ns_per_px']:.1f}x the TIFF-writing floor | "
          f"{image['peak_rss_mb']:.0f} (before: {image['rss_before_mb']:.0f}) |")
    print(f"| tiled TIFF floor (random tiles) | same | {floor['seconds']:.1f} | {floor['ns_per_px']:.0f} ns/px | 1.0x | "
          f"{floor['peak_rss_mb']:.0f} |")
    print(f"| sample() (4 slides + metadata) | - | {smp['seconds']:.1f} | - | - | {smp['peak_rss_mb']:.0f} |")
    print()
    print(f"Extrapolated: 400,000 x 18,085 counts CSV ~{counts['ns_per_cell'] * FULL_CELLS / 1e9 / 60:.1f} min "
          f"(~{counts['bytes'] / counts['cells'] * FULL_CELLS / 1e9:.0f} GB); 20,000 x 20,000 px tiled TIFF "
          f"~{image['ns_per_px'] * FULL_PX / 1e9 / 60:.1f} min. Memory is bounded by the block/tile size.")


if __name__ == "__main__":
    main()
