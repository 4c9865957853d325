"""Benchmark of batch conversion (``stimage_sd.batch.convert_many``) on dask.distributed.

Generates one release of N moderately sized Visium slides (``stimage_sd.datasets``) and, in
one run, converts all of them three ways into fresh output folders:

- ``serial``: the baseline, a plain loop over ``convert_slide`` in this process (warmed up
  first: modules imported and the compiled count parser loaded before timing);
- ``1 worker``: ``convert_many`` on a local cluster of one single-threaded worker
  process (``threads_per_worker=1``);
- ``2 workers``: ``convert_many`` on a local cluster of two single-threaded worker
  processes; the ratio of the two is the scaling of the batch over workers;
- ``1 worker x 2 threads`` (with ``--threaded-worker``): one worker whose slides may use
  two threads (what ``workers=1`` gives by default on two cores).

The cluster timings include everything a user waits for: starting the cluster, importing
the converter in each worker, the run manifest. It prints a markdown table: wall time,
slides/s, input MB/s, ratios vs the serial loop and vs one worker, CPU time of this
process and its workers, mean number of slides in flight (summed task time over wall
time), the time from the first slide started to the last one finished (the run without
cluster start-up, which a long run approaches), and the CPU time that *other* processes
took during each run (from /proc/stat)
with the load average, since processes sharing the cores skew the wall-time ratios. With
``--repeat N`` each method runs N times (interleaved) and the fastest run is reported.

Example::

    python benchmarks/bench_batch.py --slides 10 --grid 70 --genes 30000 --um-per-px 0.9 --repeat 2 --threaded-worker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

MB = 1e6
ONE = "convert_many, 1 worker x 1 thread"
TWO = "convert_many, 2 workers x 1 thread"


def _specs(n: int, grid: int, genes: int, um_per_px: float):
    from stimage_sd.datasets import SlideSpec

    return [
        SlideSpec(
            f"Human_Brain_Bench_{i:02d}012024_Visium", "Visium", grid=(grid, grid), n_genes=genes,
            um_per_px=um_per_px, seed=100 + i,
        )
        for i in range(n)
    ]


def _release(workdir: Path, n: int, grid: int, genes: int, um_per_px: float) -> Path:
    """The generated release, reused from an earlier run with the same parameters."""
    from stimage_sd.datasets import make_release

    root = workdir / f"release_n{n}_g{grid}_x{genes}_u{um_per_px}"
    marker = root / ".bench_batch.json"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    make_release(root, _specs(n, grid, genes, um_per_px))
    marker.write_text(json.dumps({"n": n, "grid": grid, "genes": genes, "um_per_px": um_per_px}))
    print(f"generated {n} slides in {time.perf_counter() - t0:.1f} s -> {root}", file=sys.stderr)
    return root


def _input_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.parent.name in ("image", "coord", "gene_exp"))


def _warm_up(workdir: Path) -> None:
    """Import everything and load the compiled parser, so the serial loop is timed warm."""
    from stimage_sd.datasets import SlideSpec, make_slide
    from stimage_sd.io import convert_slide

    tiny = workdir / "warmup"
    spec = SlideSpec("Human_Brain_Warmup_01012024_Visium", "Visium", grid=(6, 6), n_genes=200, um_per_px=8.0, n_markers=4, n_domains=2)
    if not (tiny / "Visium" / "coord" / f"{spec.slide}_coord.csv").is_file():
        make_slide(tiny, spec)
    convert_slide(tiny, spec.slide, workdir / "warmup_out", overwrite=True)
    shutil.rmtree(workdir / "warmup_out", ignore_errors=True)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the cluster's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _serial(root: Path, slides: list[str], out: Path) -> float:
    from stimage_sd.io import convert_slide

    t0 = time.perf_counter()
    for s in slides:
        convert_slide(root, s, out, overwrite=True)
    return time.perf_counter() - t0


_BUSY: dict[str, float] = {}
_STEADY: dict[str, float] = {}


def _many(name: str, root: Path, slides: list[str], out: Path, workers: int, threads: int) -> float:
    from stimage_sd.batch import convert_many

    t0 = time.perf_counter()
    results = convert_many(root, out, slides, workers=workers, threads_per_worker=threads, progress=False)
    dt = time.perf_counter() - t0
    bad = [r for r in results if r.status != "converted"]
    if bad:
        raise SystemExit(f"workers={workers}: {len(bad)} slide(s) not converted: {bad[0].slide}: {bad[0].error}")
    _BUSY[name] = sum(r.seconds for r in results) / dt  # mean number of slides in flight
    # from the first slide started to the last finished: the run without cluster start-up
    # (worker processes spawned, converter imported), i.e. what a long run approaches
    starts = [datetime.fromisoformat(r.started_at).timestamp() for r in results]
    ends = [datetime.fromisoformat(r.finished_at).timestamp() for r in results]
    _STEADY[name] = max(ends) - min(starts)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=10, help="number of generated slides (default 10)")
    ap.add_argument("--grid", type=int, default=70, help="spot array rows = columns (default 70)")
    ap.add_argument("--genes", type=int, default=30000, help="genes per slide (default 30000)")
    ap.add_argument("--um-per-px", type=float, default=0.9, help="image pixel size, sets the image size (default 0.9)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated release here (reused next time)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method, fastest reported (default 1)")
    ap.add_argument(
        "--threaded-worker", action="store_true", help="also time one worker whose slides use 2 threads"
    )
    args = ap.parse_args()

    import logging
    import warnings

    logging.getLogger("stimage_sd").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
    os.environ["STIMAGE_SD_NO_PROGRESS"] = "1"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_batch_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        root = _release(workdir, args.slides, args.grid, args.genes, args.um_per_px)
        slides = [s.slide for s in _specs(args.slides, args.grid, args.genes, args.um_per_px)]
        n_in = _input_bytes(root)
        _warm_up(workdir)
        load_before = os.getloadavg()
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}
        others: dict[str, float] = {}
        one_w, two_w, one_w2 = ONE, TWO, "convert_many, 1 worker x 2 threads"
        methods = [
            ("serial loop over convert_slide", lambda out: _serial(root, slides, out)),
            (one_w, lambda out: _many(one_w, root, slides, out, 1, 1)),
            (two_w, lambda out: _many(two_w, root, slides, out, 2, 1)),
        ]
        if args.threaded_worker:
            methods.append((one_w2, lambda out: _many(one_w2, root, slides, out, 1, 2)))
        busy: dict[str, float] = {}
        steady: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, run in methods:
                out = workdir / "out"
                shutil.rmtree(out, ignore_errors=True)
                c0, m0 = _cpu_seconds(), _machine_busy_seconds()
                t = run(out)
                c = _cpu_seconds() - c0
                o = max(0.0, _machine_busy_seconds() - m0 - c)
                print(f"{name}: {t:.1f} s, {c:.1f} CPU s, others {o:.1f} CPU s", file=sys.stderr)
                if name not in times or t < times[name]:
                    times[name], cpu[name], others[name] = t, c, o
                    busy[name] = _BUSY.get(name, 1.0)
                    steady[name] = _STEADY.get(name, t)
                shutil.rmtree(out, ignore_errors=True)
        load_after = os.getloadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    base, one = times["serial loop over convert_slide"], times[ONE]
    print(
        f"\n{args.slides} Visium slides, grid {args.grid}x{args.grid}, {args.genes} genes, "
        f"{args.um_per_px} um/px; {n_in / MB:.0f} MB of input; python {platform.python_version()}, "
        f"{len(os.sched_getaffinity(0))} usable cores; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f}\n"
    )
    print(
        "| method | wall s | slides/s | MB/s in | vs serial | vs 1 worker | without start-up s "
        "| vs 1 worker without start-up | CPU s | CPU s / slide | slides in flight | other processes' CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one_steady = steady[ONE]
    for name, t in times.items():
        print(
            f"| {name} | {t:.1f} | {args.slides / t:.3f} | {n_in / MB / t:.1f} | {base / t:.2f}x | {one / t:.2f}x "
            f"| {steady[name]:.1f} | {one_steady / steady[name]:.2f}x "
            f"| {cpu[name]:.1f} | {cpu[name] / args.slides:.2f} | {busy[name]:.2f} | {others[name]:.1f} |"
        )
    two = TWO
    ratio, ratio_steady = one / times[two], one_steady / steady[two]
    print(
        f"\n2 workers vs 1 worker: {ratio:.2f}x end to end, {ratio_steady:.2f}x without cluster start-up "
        f"(target >= 1.6x on 2 cores): {'met' if ratio >= 1.6 else 'NOT met'} end to end"
    )


if __name__ == "__main__":
    main()
