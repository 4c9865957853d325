"""Benchmark of stores read in place: one gene through the gene index, its disk cost, one patch.

For a Visium-scale and a VisiumHD-scale slide (counts from :func:`stimage_sd.datasets.make_table`,
the store from :func:`stimage_sd.io.build_sdata` and :func:`stimage_sd.io.write`, as
``convert_slide`` writes them, without image), written with and without the gene index:

- **disk**: bytes of the table, of the gene index, of the store; write time with and without;
  peak memory of writing the index (``tracemalloc``, numpy buffers included) against the size
  of the raw counts in memory;
- **one gene, all spots** over ``hf://`` (the real ``huggingface_hub`` client) from the loopback
  fake Hub of the tests (``tests/_hf_server.py``, every byte counted, listings included):
  :func:`stimage_sd.io.read_genes` against the baseline measured in the same run, the whole
  table (:func:`stimage_sd.io.read` with ``selection=("tables",)``, then the column), for
  the densest and a median gene. Bytes of the first (cold) read; time: the best of
  ``--repeat`` reads.
- with ``--patch-side N``: a generated H&E image of about N² (the generator's renderer:
  tissue and white background), written by the converter's pyramid writer at its 1024²
  chunks, and one 224 px patch read over ``hf://`` on the largest level-0 chunk.

Example::

    python benchmarks/bench_remote.py --hd-genes 5000 --visium-genes 18000 --patch-side 20000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loopback fake Hub


def _bytes(p: Path) -> int:
    return sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.exists() else 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _table(slide: str, tech: str, grid: tuple[int, int], genes: int):
    from stimage_sd.datasets import SlideSpec, make_table

    spec = SlideSpec(slide, tech, grid=grid, n_genes=genes, tissue_fraction=1.0 if tech == "VisiumHD" else 0.85,
                     um_per_px=0.5 if tech == "VisiumHD" else None)
    return make_table(spec)


def _sdata(t, slide: str, tech: str):
    import stimage_sd as ssd

    xy = t.obsm["spatial"]
    coords = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "r": t.uns["stimage"]["spot_radius_px"]}, index=t.obs_names)
    counts = ssd.io.Counts(X=t.X.astype(np.int32), spot_ids=t.obs_names.to_numpy(dtype=object),
                           genes=t.var["gene_name"].to_numpy(dtype=object))
    return ssd.io.build_sdata(slide=slide, tech=tech, coords=coords, counts=counts, image=None)


def _disk(name: str, sdata, folder: Path, slide: str) -> dict:
    import stimage_sd as ssd
    from stimage_sd.io._gene_index import write_gene_index

    row = {"scale": name}
    for with_index in (False, True):
        path = folder / ("with" if with_index else "without") / f"{slide}.zarr"
        t0 = time.perf_counter()
        ssd.io.write(sdata, path, gene_index=with_index)
        row["write_s_index" if with_index else "write_s"] = time.perf_counter() - t0
    store = folder / "with" / f"{slide}.zarr"
    X = sdata.tables["table"].X
    row.update(spots=X.shape[0], genes=X.shape[1], nnz=X.nnz, store=_bytes(store), table=_bytes(store / "tables"),
               index=_bytes(store / "gene_index"), counts_mem=X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    scratch = folder / "scratch.zarr"
    shutil.copytree(folder / "without" / f"{slide}.zarr", scratch)
    tracemalloc.start()
    write_gene_index(scratch, "table", X, sdata.tables["table"].obs_names, sdata.tables["table"].var_names)
    row["index_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    shutil.rmtree(scratch)
    return row


def _reads(name: str, folder: Path, slide: str, table, repeat: int) -> list[dict]:
    import stimage_sd as ssd
    from _hf_server import FakeHub

    rows = []
    per_gene = np.diff(table.X.tocsc().indptr)
    picks = {"densest": int(np.argmax(per_gene)), "median": int(np.argsort(per_gene)[len(per_gene) // 2])}
    hub = FakeHub(folder / "with", repo_id="bench/stores").start()
    os.environ["HF_ENDPOINT"] = hub.endpoint
    try:
        url = f"hf://datasets/bench/stores/{slide}.zarr"
        total = _bytes(folder / "with" / f"{slide}.zarr")
        for kind, j in picks.items():
            gene = str(table.var_names[j])
            row = {"scale": name, "gene": f"{kind} ({per_gene[j]} spots)"}
            for method in ("read_genes", "whole table"):
                times, sent = [], None
                for _ in range(repeat):
                    hub.clear()
                    t0 = time.perf_counter()
                    if method == "read_genes":
                        got = ssd.io.read_genes(url, gene).X
                    else:
                        t = ssd.io.read(url, selection=("tables",))["table"]
                        got = t.X[:, [j]]
                    times.append(time.perf_counter() - t0)
                    sent = hub.bytes_sent() if sent is None else sent
                    assert (got != table.X[:, [j]]).nnz == 0
                row[method] = (sent, min(times))
            row["store"] = total
            rows.append(row)
    finally:
        hub.stop()
    return rows


def _patch(side: int, folder: Path) -> dict:
    import spatialdata as sd

    import stimage_sd as ssd
    from _hf_server import FakeHub
    from stimage_sd.datasets import SlideSpec
    from stimage_sd.datasets._geometry import build_layout
    from stimage_sd.datasets._image import ImageRenderer
    from stimage_sd.io._pyramid import DEFAULT_CHUNK, multiscale_image

    chunk = DEFAULT_CHUNK
    spec = SlideSpec("GSE000003_GSM0000030", "Visium", um_per_px=6650 / side)
    renderer = ImageRenderer(spec, build_layout(spec))
    h, w = renderer.height, renderer.width
    rgb = renderer.lazy(chunk)
    t0 = time.perf_counter()
    store = ssd.io.write(sd.SpatialData(images={"he": multiscale_image(rgb.transpose(2, 0, 1), chunk=chunk)}),
                         folder / "he.zarr")
    written = time.perf_counter() - t0
    level0 = store / "images" / "he" / "s0"
    chunks = [p for p in level0.rglob("*") if p.is_file() and p.name != "zarr.json"]
    biggest = max(chunks, key=lambda p: p.stat().st_size)
    cy, cx = (int(v) for v in biggest.relative_to(level0).parts[-2:])
    y0, x0 = cy * chunk + 400, cx * chunk + 400  # inside that chunk
    hub = FakeHub(folder, repo_id="bench/he").start()
    os.environ["HF_ENDPOINT"] = hub.endpoint
    try:
        sdata = ssd.io.read("hf://datasets/bench/he/he.zarr")
        opened = hub.bytes_sent()
        hub.clear()
        t0 = time.perf_counter()
        patch = sdata.images["he"]["scale0"]["image"][:, y0 : y0 + 224, x0 : x0 + 224].values
        took = time.perf_counter() - t0
        fetched = hub.bytes_sent()
    finally:
        hub.stop()
    assert patch.shape == (3, 224, 224)
    return {"image": f"{h} x {w}", "chunks_level0": len(chunks), "store": _bytes(store), "write_s": written,
            "open": opened, "patch": fetched, "patch_s": took}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visium-genes", type=int, default=18000)
    ap.add_argument("--hd-grid", type=int, default=317, help="HD bins per side (317: 100,489 bins)")
    ap.add_argument("--hd-genes", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--patch-side", type=int, default=0, help="also one patch of an N² generated image (0: skip)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    logging.getLogger("stimage_sd").setLevel(logging.ERROR)
    os.environ.setdefault("STIMAGE_SD_NO_PROGRESS", "1")
    work = Path(tempfile.mkdtemp(prefix="bench_remote_", dir=args.workdir))
    scales = [
        ("Visium", "GSE000004_GSM0000040", "Visium", (78, 64), args.visium_genes),
        ("VisiumHD", "Mouse_Brain_Bench_03292024_VisiumHD", "VisiumHD", (args.hd_grid, args.hd_grid), args.hd_genes),
    ]
    disk, reads = [], []
    try:
        for name, slide, tech, grid, genes in scales:
            t = _table(slide, tech, grid, genes)
            sdata = _sdata(t, slide, tech)
            folder = work / name
            disk.append(_disk(name, sdata, folder, slide))
            reads += _reads(name, folder, slide, sdata.tables["table"], args.repeat)
        print("\n## Disk cost of the gene index (stores without image)\n")
        print("| scale | spots x genes | nnz | table MiB | index MiB | index / table | index / store | "
              "write s (without -> with) | index write peak MiB (counts in memory MiB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in disk:
            print(f"| {r['scale']} | {r['spots']} x {r['genes']} | {r['nnz']} | {_mib(r['table'])} | {_mib(r['index'])} "
                  f"| {r['index'] / r['table']:.2f} | {r['index'] / r['store']:.1%} | "
                  f"{r['write_s']:.1f} -> {r['write_s_index']:.1f} | {_mib(r['index_peak'])} ({_mib(r['counts_mem'])}) |")
        print("\n## One gene for all spots over hf:// (fake Hub, bytes counted)\n")
        print("| scale | gene | read_genes: bytes (% of store), s | whole table: bytes, s | bytes ratio | time ratio |")
        print("|---|---|---|---|---|---|")
        for r in reads:
            (gb, gs), (tb, ts) = r["read_genes"], r["whole table"]
            print(f"| {r['scale']} | {r['gene']} | {gb} ({gb / r['store']:.2%}), {gs:.2f} | {tb}, {ts:.2f} | "
                  f"{tb / gb:.0f}x | {ts / gs:.1f}x |")
        if args.patch_side:
            p = _patch(args.patch_side, work / "patch")
            print("\n## One 224 px patch over hf://\n")
            print("| image | level-0 chunks | store MiB | write s | open (% of store) | patch (% of store) | patch s |")
            print("|---|---|---|---|---|---|---|")
            print(f"| {p['image']} | {p['chunks_level0']} | {_mib(p['store'])} | {p['write_s']:.0f} | "
                  f"{p['open']} ({p['open'] / p['store']:.2%}) | {p['patch']} ({p['patch'] / p['store']:.2%}) | "
                  f"{p['patch_s']:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
