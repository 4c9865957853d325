"""Benchmark of the count-matrix reader (``stimage_sd.io.read_counts``).

Generates a release-format dense count CSV (``,GENE1,GENE2,...`` then ``spot,0.0,3.0,...``)
and, in one run, times every method in a fresh subprocess that reports its own peak RSS:

- ``pagecache``: reading the file's bytes from the page cache (the physical limit here);
- ``stimage_sd``: ``read_counts`` as a user's first call in a process (this includes loading
  the cached compiled kernel, a fixed ~0.3 s); ``stimage_sd-warm``: the kernel loaded before
  timing; ``stimage_sd-warm-1t``: the same with one parser thread;
- ``pandas``: ``pandas.read_csv(path, index_col=0)``, as the release's docs do;
- ``pyarrow``: ``pyarrow.csv.read_csv``; ``polars``: ``polars.read_csv`` when installed.

It prints a markdown table (time, MB/s, peak RSS, ratios vs pandas and vs the page-cache
read) and checks the issue's targets.

Examples
--------
Visium scale (~540 MB)::

    python benchmarks/bench_counts.py --spots 4000 --genes 33538 --density 0.08

VisiumHD scale (~7 GB, pandas cannot load it)::

    python benchmarks/bench_counts.py --spots 100000 --genes 18085 --density 0.02 \\
        --methods pagecache,stimage_sd

A whole Visium-scale slide converted end to end (needs ``stimage_sd.datasets``)::

    python benchmarks/bench_counts.py --end-to-end
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1e6
LOAD0 = os.getloadavg()
SLOW_METHODS = {"pandas", "pyarrow", "polars"}
ALL_METHODS = [
    "pagecache",
    "stimage_sd",
    "stimage_sd-warm",
    "stimage_sd-warm-1t",
    "pandas",
    "pyarrow",
    "polars",
]


# --------------------------------------------------------------------------- generator


def _value_tokens(kmax: int, ints: bool, last: bool) -> np.ndarray:
    end = "\n" if last else ","
    fmt = "{}" if ints else "{}.0"
    return np.array([(fmt.format(v) + end).encode() for v in range(kmax + 1)], dtype="S8")


def generate(
    path: Path,
    spots: int,
    genes: int,
    density: float,
    *,
    ints: bool = False,
    seed: int = 0,
    block_rows: int | None = None,
) -> dict:
    """Write a release-format dense count CSV; return its shape, nnz and size.

    Values are 1 + geometric counts (mostly 1-5, a tail to hundreds) at the given density,
    written as ``3.0`` (or ``3`` with ``ints``); gene names look like Visium's (symbols,
    Ensembl ids, ``MT-`` genes); spot ids like ``<slide>_<barcode>-1``. Formatting is
    vectorised per block of rows: cells become fixed-width ``S8`` tokens whose padding is
    then dropped.
    """
    rng = np.random.default_rng(seed)
    kmax = 9999
    tok = _value_tokens(kmax, ints, last=False)
    tok_last = _value_tokens(kmax, ints, last=True)
    names = [
        f"MT-G{i}" if i % 997 == 0 else (f"ENSG{i:011d}.1" if i % 3 == 0 else f"GENE{i}")
        for i in range(genes)
    ]
    names[min(5, genes - 1)] = "HLA-A,B"  # a quoted header field, as CSV writers emit
    header = (
        ","
        + ",".join('"' + g.replace('"', '""') + '"' if ("," in g or '"' in g) else g for g in names)
        + "\n"
    )
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    block_rows = block_rows or max(1, min(spots, 4_000_000 // max(genes, 1)))
    nnz = 0
    with open(path, "wb") as f:
        f.write(header.encode())
        for r0 in range(0, spots, block_rows):
            r = min(block_rows, spots - r0)
            mask = rng.random((r, genes), dtype=np.float32) < density
            vals = np.zeros((r, genes), dtype=np.int16)
            k = int(mask.sum())
            nnz += k
            vals[mask] = np.minimum(rng.geometric(0.45, size=k), kmax).astype(np.int16)
            cells = tok[vals]
            cells[:, -1] = tok_last[vals[:, -1]]
            flat = cells.view(np.uint8).reshape(r, -1)
            keep = flat != 0
            row_len = np.count_nonzero(keep, axis=1)
            body = flat[keep]
            barcodes = bases[rng.integers(0, 4, size=(r, 16))]
            ends = np.cumsum(row_len)
            out = []
            for i in range(r):
                out.append(b"Slide_" + barcodes[i].tobytes() + b"-%d," % (r0 + i))
                out.append(body[ends[i] - row_len[i] : ends[i]].tobytes())
            f.write(b"".join(out))
    return {"spots": spots, "genes": genes, "nnz": nnz, "bytes": path.stat().st_size}


# --------------------------------------------------------------------------- runners


def peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the parent's RSS at fork)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_method(method: str, path: str) -> dict:
    """Run one method in this (fresh) process; return timing and peak RSS."""
    base_rss = peak_rss_mb()
    info: dict = {}
    cpu0 = cpu_seconds()
    if method == "pagecache":
        buf = bytearray(4 << 20)
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        t = time.perf_counter() - t0
    elif method.startswith("stimage_sd"):
        import io

        from stimage_sd.io._counts import read_counts

        if "-warm" in method:
            read_counts(io.BytesIO(b",g\ns,1\n"))  # load the compiled kernel before timing
        base_rss = peak_rss_mb()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        c = read_counts(path, workers=1 if "-1t" in method else None, progress=False)
        t = time.perf_counter() - t0
        X = c.X
        info = {
            "shape": list(X.shape),
            "nnz": int(X.nnz),
            "dtype": str(X.dtype),
            "csr_bytes": int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes),
        }
    elif method == "pandas":
        import pandas as pd

        base_rss = peak_rss_mb()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        df = pd.read_csv(path, index_col=0)
        t = time.perf_counter() - t0
        info = {"shape": list(df.shape)}
    elif method == "pyarrow":
        import pyarrow.csv as pv

        base_rss = peak_rss_mb()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        table = pv.read_csv(path)
        t = time.perf_counter() - t0
        info = {"shape": [table.num_rows, table.num_columns - 1]}
    elif method == "polars":
        import polars as pl

        base_rss = peak_rss_mb()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        df = pl.read_csv(path)
        t = time.perf_counter() - t0
        info = {"shape": [df.height, df.width - 1]}
    else:
        raise SystemExit(f"unknown method {method}")
    cpu = cpu_seconds() - cpu0
    return {
        "method": method,
        "seconds": t,
        "cpu_s": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base_rss,
        **info,
    }


def _available(method: str) -> bool:
    mod = {"pyarrow": "pyarrow", "polars": "polars", "pandas": "pandas"}.get(method)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def run_subprocess(method: str, path: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--_run", method, "--file", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.CalledProcessError as e:
        return {"method": method, "error": (e.stderr.strip().splitlines() or ["failed"])[-1]}
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timeout after {timeout:.0f} s"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(path: Path) -> None:
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


# --------------------------------------------------------------------------- report


def table(results: list[dict], size: int) -> str:
    by = {r["method"]: r for r in results if "error" not in r}
    pandas_t = by.get("pandas", {}).get("seconds")
    cache_t = by.get("pagecache", {}).get("seconds")
    rows = [
        "| method | wall (s) | CPU (s) | MB/s | peak RSS (MB) | speed-up vs pandas | fraction of page-cache speed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['method']} | failed: {r['error']} | | | | | |")
            continue
        t = r["seconds"]
        vs_pd = f"{pandas_t / t:.1f}x" if pandas_t else "n/a"
        vs_cache = f"{cache_t / t:.2f}" if cache_t else "n/a"
        rows.append(
            f"| {r['method']} | {t:.3f} | {r.get('cpu_s', float('nan')):.2f} | {size / MB / t:,.0f} | {r['peak_rss_mb']:,.0f} | {vs_pd} | {vs_cache} |"
        )
    return "\n".join(rows)


def check_targets(results: list[dict], hd: bool, size: int) -> list[str]:
    by = {r["method"]: r for r in results if "error" not in r}
    ours = by.get("stimage_sd")
    lines = []
    if ours is None:
        return ["stimage_sd did not run"]
    out_mb = ours["csr_bytes"] / MB
    if hd:
        if "pagecache" in by:
            for name in ("stimage_sd", "stimage_sd-warm"):
                if name in by:
                    lines.append(
                        f"{name}: {by['pagecache']['seconds'] / by[name]['seconds']:.2f} of the page-cache read speed"
                    )
        lines.append(
            f"peak RSS {ours['peak_rss_mb']:,.0f} MB < 2,000 MB: {'MET' if ours['peak_rss_mb'] < 2000 else 'NOT MET'}"
        )
        t44 = ours["seconds"] * 44e9 / size
        lines.append(
            f"first-call time extrapolated to the largest HD file (44 GB): {t44:,.0f} s < 600 s: "
            f"{'MET' if t44 < 600 else 'NOT MET'}"
        )
        return lines
    if "pandas" in by:
        s = by["pandas"]["seconds"] / ours["seconds"]
        lines.append(f"speed-up vs pandas {s:.1f}x >= 30x: {'MET' if s >= 30 else 'NOT MET'}")
    if "pagecache" in by:
        for name, label in (
            ("stimage_sd", "first call in a process"),
            ("stimage_sd-warm", "kernel loaded"),
        ):
            if name in by:
                f = by["pagecache"]["seconds"] / by[name]["seconds"]
                lines.append(
                    f"fraction of page-cache speed ({label}) {f:.2f} >= 0.20: {'MET' if f >= 0.2 else 'NOT MET'}"
                )
    bound = 1.5 * out_mb + 300
    lines.append(
        f"peak RSS {ours['peak_rss_mb']:,.0f} MB <= 1.5 x CSR ({out_mb:,.0f} MB) + 300 = {bound:,.0f} MB: "
        f"{'MET' if ours['peak_rss_mb'] <= bound else 'NOT MET'}"
    )
    return lines


def end_to_end(workdir: Path, args: argparse.Namespace) -> None:
    """Generate a Visium-scale slide with stimage_sd.datasets and time convert_slide on it."""
    from stimage_sd.datasets import SlideSpec, make_slide

    slide = "Human_Brain_Bench_01012025_Visium_A1"
    spec = SlideSpec(
        slide,
        "Visium",
        grid=(78, 64),
        n_genes=args.genes,
        um_per_px=3.4,
        tissue_fraction=args.tissue_fraction,
        depth=args.depth,
        seed=0,
    )
    t0 = time.perf_counter()
    truth = make_slide(workdir / "release", spec)
    gen_s = time.perf_counter() - t0
    files = [p for p in (workdir / "release").rglob("*") if p.is_file()]
    sizes = {p.parent.name: p.stat().st_size for p in files}
    print(
        f"generated {slide} in {gen_s:.1f} s: "
        + ", ".join(f"{k} {v / MB:,.1f} MB" for k, v in sorted(sizes.items())),
        file=sys.stderr,
    )
    counts_path = next(p for p in files if p.parent.name == "gene_exp")
    warm_page_cache(counts_path)
    runs = []
    for _ in range(args.repeat):
        out = workdir / f"out{len(runs)}"
        cmd = [
            sys.executable,
            __file__,
            "--_convert",
            str(workdir / "release"),
            "--_slide",
            slide,
            "--_out",
            str(out),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if res.returncode:
            raise SystemExit(res.stderr)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out, ignore_errors=True)
    best = min(runs, key=lambda r: r["seconds"])
    load = os.getloadavg()
    print(
        f"\nEnd to end: {slide}, {best['n_obs']:,} spots x {best['n_vars']:,} genes "
        f"({best['nnz'] / max(best['n_obs'] * best['n_vars'], 1):.1%} non-zero), counts file "
        f"{counts_path.stat().st_size / MB:,.0f} MB, image {best['image_shape']} px; {os.cpu_count()} CPUs, "
        f"load average {LOAD0[0]:.2f} before, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) after the runs; "
        f"best of {args.repeat}.\n"
    )
    print("| step | wall (s) | CPU (s) | peak RSS (MB) |\n|---|---:|---:|---:|")
    print(f"| import stimage_sd.io (not counted) | {best['import_s']:.2f} | | |")
    print(
        f"| convert_slide (read counts, coords, image; build; write Zarr) | {best['seconds']:.2f} | "
        f"{best['cpu_s']:.2f} | {best['peak_rss_mb']:,.0f} |"
    )
    print(
        f"\n- end to end {best['seconds']:.2f} s < 10 s: {'MET' if best['seconds'] < 10 else 'NOT MET'}"
    )
    del truth


def _run_convert(root: str, slide: str, out: str) -> dict:
    t0 = time.perf_counter()
    import spatialdata

    import stimage_sd.io as sio

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu0 = cpu_seconds()
    dest = sio.convert_slide(root, slide, out, progress=False)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    peak = peak_rss_mb()
    sdata = spatialdata.read_zarr(dest)
    table = sdata.tables["table"]
    image = sdata.images["he"]
    shape = image["scale0"].image.shape if hasattr(image, "keys") else image.shape
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "import_s": import_s,
        "peak_rss_mb": peak,
        "n_obs": int(table.n_obs),
        "n_vars": int(table.n_vars),
        "nnz": int(table.X.nnz),
        "image_shape": "x".join(map(str, shape[1:])),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spots", type=int, default=4000)
    ap.add_argument("--genes", type=int, default=33538)
    ap.add_argument("--density", type=float, default=0.08)
    ap.add_argument(
        "--ints", action="store_true", help="write integers (3) instead of floats (3.0)"
    )
    ap.add_argument(
        "--methods",
        default=",".join(ALL_METHODS),
        help="comma-separated subset of " + ",".join(ALL_METHODS),
    )
    ap.add_argument(
        "--skip-pandas",
        action="store_true",
        help="do not run pandas (it cannot load HD-scale files)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per fast method (the best time and its RSS are kept)",
    )
    ap.add_argument("--repeat-slow", type=int, default=1, help="runs of pandas, pyarrow and polars")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory for the generated file (default: a temp dir, deleted)",
    )
    ap.add_argument(
        "--file",
        type=Path,
        default=None,
        help="benchmark an existing file instead of generating one",
    )
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(
        "--end-to-end",
        action="store_true",
        help="time convert_slide on a generated Visium-scale slide",
    )
    ap.add_argument(
        "--tissue-fraction",
        type=float,
        default=0.82,
        help="--end-to-end: tissue fraction of the 78x64 array",
    )
    ap.add_argument(
        "--depth", type=float, default=1.0, help="--end-to-end: sequencing depth multiplier"
    )
    ap.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_convert", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_slide", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._run:
        print(json.dumps(_run_method(args._run, str(args.file))))
        return
    if args._convert:
        print(json.dumps(_run_convert(args._convert, args._slide, args._out)))
        return
    if args.end_to_end:
        tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.dir))
        try:
            end_to_end(tmp, args)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    methods = [m for m in args.methods.split(",") if m]
    if args.skip_pandas:
        methods = [m for m in methods if m != "pandas"]
    methods = [m for m in methods if _available(m)]
    tmp = None
    try:
        if args.file is None:
            tmp = Path(tempfile.mkdtemp(prefix="bench_counts_", dir=args.dir))
            path = tmp / "Slide_count.csv"
            t0 = time.perf_counter()
            meta = generate(path, args.spots, args.genes, args.density, ints=args.ints)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        else:
            path = args.file
            meta = {"bytes": path.stat().st_size}
        size = meta["bytes"]
        warm_page_cache(path)
        results = []
        # fast methods are interleaved round by round, so that a change of load on a shared
        # machine hits them alike; the slow baselines run afterwards
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for rnd in range(max(args.repeat, args.repeat_slow)):
            for m in methods:
                if rnd < (args.repeat_slow if m in SLOW_METHODS else args.repeat) and (
                    m not in SLOW_METHODS
                ):
                    runs[m].append(run_subprocess(m, path, args.timeout))
                    print(f"{m}: {runs[m][-1]}", file=sys.stderr)
        for m in methods:
            if m in SLOW_METHODS:
                for _ in range(args.repeat_slow):
                    runs[m].append(run_subprocess(m, path, args.timeout))
                    print(f"{m}: {runs[m][-1]}", file=sys.stderr)
        for m in methods:
            ok = [r for r in runs[m] if "error" not in r]
            results.append(min(ok, key=lambda r: r["seconds"]) if ok else runs[m][-1])
        load = os.getloadavg()
        print(
            f"\nFile: {meta.get('spots', '?')} spots x {meta.get('genes', '?')} genes, "
            f"density {args.density:g}, {size / MB:,.0f} MB ({'integers' if args.ints else 'floats'}); "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
            f"{LOAD0[0]:.2f} before, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) after the runs; best of {args.repeat} runs "
            f"({args.repeat_slow} for {', '.join(sorted(SLOW_METHODS))}).\n"
        )
        print(table(results, size))
        ours = next((r for r in results if r["method"] == "stimage_sd" and "error" not in r), None)
        if ours:
            print(
                f"\nstimage_sd output: {ours['shape'][0]} x {ours['shape'][1]} {ours['dtype']}, "
                f"nnz {ours['nnz']:,}, CSR {ours['csr_bytes'] / MB:,.0f} MB; process RSS before the call "
                f"{ours['base_rss_mb']:,.0f} MB."
            )
        print()
        hd = "pandas" not in methods or size > 2e9
        for line in check_targets(results, hd=hd, size=size):
            print(f"- {line}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
