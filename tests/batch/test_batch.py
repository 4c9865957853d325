"""Batch conversion on dask.distributed: parallel, resumable, with a run manifest.

Real components only: generated slides in the release layout, a real ``LocalCluster``
(worker processes), the real CLI in a subprocess killed with SIGKILL, stores read back
with ``spatialdata.read_zarr``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stimage_sd.batch import MANIFEST_NAME, SlideCost, convert_many, estimate_cost, read_manifest
from stimage_sd.batch._manifest import run_lock
from stimage_sd.batch._workers import _admit
from stimage_sd.errors import StimageError
from stimage_sd.io import is_complete

pytestmark = pytest.mark.slow

BROKEN = "GSE900000_GSM9000006"
BIG = "Human_Brain_Batch_01012024_Visium_big"


def _specs():
    from stimage_sd.datasets import SlideSpec

    small = dict(grid=(12, 12), n_genes=300, um_per_px=6.0, n_markers=4, n_domains=3)
    specs = [
        SlideSpec(f"Human_Brain_Batch_0{i}012024_Visium_{i}", "Visium", seed=i, **small) for i in range(1, 4)
    ]
    specs += [
        SlideSpec("Mouse_Brain+Lung_Batch_02212023_Visium_2mm.edge", "Visium", seed=4, species="mouse", **small),
        SlideSpec(
            "Human_Breast_Batch_10142021_ST_B1", "ST", grid=(8, 8), n_genes=300, um_per_px=6.0, n_markers=4,
            n_domains=3, image_format="tiff", integer_counts=True, seed=5,
        ),
        SlideSpec(BROKEN, "Visium", seed=6, **small),
        # the largest slide is scheduled first and is still being written when the run is killed
        SlideSpec(BIG, "Visium", grid=(30, 30), n_genes=600, um_per_px=1.5, n_markers=4, n_domains=3, seed=7),
    ]
    return specs


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory) -> Path:
    """A generated release of 7 slides, one of them with a malformed count file."""
    from stimage_sd.datasets import make_release

    root = tmp_path_factory.mktemp("batch") / "release"
    make_release(root, _specs())
    counts = root / "Visium" / "gene_exp" / f"{BROKEN}_count.csv"
    lines = counts.read_text().splitlines(keepends=True)
    lines[3] = lines[3].split(",", 1)[0] + ",not-a-number" + lines[3][lines[3].index(",", lines[3].index(",") + 1) :]
    counts.write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def good(batch_root) -> list[str]:
    return [s.slide for s in _specs() if s.slide != BROKEN]


@pytest.fixture(scope="module")
def serial(batch_root, tmp_path_factory) -> dict[str, Path]:
    """The reference: every slide converted in this process, one after another."""
    out = tmp_path_factory.mktemp("serial")
    results = convert_many(batch_root, out, workers=0, progress=False)
    by = {r.slide: r for r in results}
    assert by[BROKEN].status == "failed"
    assert all(r.status == "converted" for s, r in by.items() if s != BROKEN)
    return {s: r.path for s, r in by.items() if r.path is not None}


# ----------------------------------------------------------------------------- helpers


def _level0(image) -> np.ndarray:
    if hasattr(image, "children") and "scale0" in image.children:
        return np.asarray(image["scale0"]["image"].values)
    return np.asarray(image.values)


def _assert_same_store(a: Path, b: Path) -> None:
    import spatialdata as sd

    x, y = sd.read_zarr(a), sd.read_zarr(b)
    tx, ty = x.tables["table"], y.tables["table"]
    assert tx.shape == ty.shape
    assert tx.X.dtype == ty.X.dtype
    assert (tx.X != ty.X).nnz == 0
    pd.testing.assert_frame_equal(tx.obs, ty.obs)
    pd.testing.assert_frame_equal(tx.var, ty.var)
    np.testing.assert_array_equal(tx.obsm["spatial"], ty.obsm["spatial"])
    assert set(x.images) == set(y.images) == {"he"}
    ix, iy = _level0(x.images["he"]), _level0(y.images["he"])
    assert ix.shape == iy.shape
    np.testing.assert_array_equal(ix, iy)
    sx, sy = x.shapes["spots"], y.shapes["spots"]
    assert sx.shape == sy.shape
    assert sx.geometry.geom_equals(sy.geometry).all()
    np.testing.assert_array_equal(sx["radius"].to_numpy(), sy["radius"].to_numpy())


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name or ".trash-" in p.name)


def _stores(out: Path) -> list[str]:
    return sorted(p.name[: -len(".zarr")] for p in out.iterdir() if p.name.endswith(".zarr"))


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "STIMAGE_SD_NO_PROGRESS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "stimage_sd", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )


def _t(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


# ----------------------------------------------------------------------------- tests


def test_local_cluster_matches_serial_and_reruns_skip(batch_root, serial, good, tmp_path):
    from distributed import Client, LocalCluster

    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(
        cluster, set_as_default=False
    ) as client:
        results = convert_many(batch_root, out, client=client, progress=False)
        by = {r.slide: r for r in results}
        assert [r.slide for r in results] == [s.slide for s in _specs()]  # selection order kept

        # the broken slide is reported with its error, naming the file and the line
        bad = by[BROKEN]
        assert bad.status == "failed" and bad.path is None
        assert f"{BROKEN}_count.csv" in bad.error and "line 4" in bad.error
        # every good slide converted, in a worker process, identical to a serial conversion
        for s in good:
            r = by[s]
            assert r.status == "converted", (s, r.error)
            assert is_complete(r.path)
            assert int(r.worker.rsplit(":", 1)[1]) != os.getpid()
            _assert_same_store(r.path, serial[s])
        assert _stores(out) == sorted(good)
        assert _leftovers(out) == []

        # the manifest records every slide with its figures
        m = read_manifest(out)
        assert sorted(m.index) == sorted(by)
        assert (m.loc[good, "status"] == "converted").all()
        assert m.at[BROKEN, "status"] == "failed" and "line 4" in m.at[BROKEN, "error"]
        for s in good:
            assert m.at[s, "spots"] == by[s].spots > 0
            assert m.at[s, "genes"] == by[s].genes == 300 + 300 * (s == BIG)
            assert m.at[s, "bytes_out"] == sum(f.stat().st_size for f in (out / f"{s}.zarr").rglob("*") if f.is_file())
            assert m.at[s, "bytes_in"] == sum(
                f.stat().st_size for f in batch_root.rglob(f"{s}*") if f.is_file() and f.parent.name != "meta"
            )
            assert m.at[s, "um_per_px"] == pytest.approx(1.5 if s == BIG else 6.0, rel=0.05)
            assert m.at[s, "seconds"] > 0 and m.at[s, "memory_estimate"] > 0
            assert _t(m.at[s, "started_at"]) <= _t(m.at[s, "finished_at"])

        # a second run skips every complete store and touches none of them
        stamps = {s: (out / f"{s}.zarr" / "zarr.json").stat().st_mtime_ns for s in good}
        again = {r.slide: r for r in convert_many(batch_root, out, client=client, progress=False)}
    assert all(again[s].status == "skipped" for s in good)
    assert again[BROKEN].status == "failed"
    assert {s: (out / f"{s}.zarr" / "zarr.json").stat().st_mtime_ns for s in good} == stamps
    assert again[good[0]].spots == by[good[0]].spots  # figures of skipped slides come from the store
    assert again[good[0]].seconds == by[good[0]].seconds  # ... and from the run that converted them
    runs = json.loads((out / MANIFEST_NAME).read_text())["runs"]
    assert [(r["n_converted"], r["n_skipped"], r["n_failed"]) for r in runs] == [(6, 0, 1), (0, 6, 1)]
    assert not (out / ".stimage-convert.lock").exists()


def test_cli_killed_with_sigkill_then_resumed(batch_root, serial, good, tmp_path, capsys):
    from stimage_sd.cli import main

    out = tmp_path / "out"
    proc = _cli("-q", "convert", str(batch_root), str(out), "--workers", "2", start_new_session=True)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [s for s in good if is_complete(out / f"{s}.zarr")]
            if done:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, the scheduler and both workers
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = [s for s in good if is_complete(out / f"{s}.zarr")]
    assert 1 <= len(done) < len(good)

    # more debris of a killed run: a stray temporary store, a manifest update cut short,
    # an unmarked store in place
    stray = out / f".{good[1]}.zarr.tmp-deadbeef"
    (stray / "tables").mkdir(parents=True)
    (stray / "zarr.json").write_text("{}")
    (out / f".{MANIFEST_NAME}.tmp-1-abcdef").write_text('{"truncated')
    victim = next((s for s in good if s not in done and s != BIG), BIG)
    if not (out / f"{victim}.zarr").exists():
        import zarr

        zarr.open_group(out / f"{victim}.zarr", mode="w").attrs["stimage"] = {"complete": False}

    # started again (in this process, to spare a start-up): finishes the remaining slides
    assert main(["-q", "convert", str(batch_root), str(out), "--workers", "2"]) == 1  # the broken slide
    stdout, stderr = capsys.readouterr()
    assert f"failed: {BROKEN}" in stderr
    assert f"{len(good) - len(done)} converted, {len(done)} skipped, 1 failed" in stdout

    # every good slide complete, once, identical to the serial conversion; no debris
    assert _stores(out) == sorted(good)
    assert _leftovers(out) == []
    for s in good:
        assert is_complete(out / f"{s}.zarr")
        _assert_same_store(out / f"{s}.zarr", serial[s])
    m = read_manifest(out)
    assert sorted(m.index) == sorted([*good, BROKEN])
    assert set(m.loc[done, "status"]) == {"skipped"}
    assert set(m.loc[[s for s in good if s not in done], "status"]) == {"converted"}
    runs = json.loads((out / MANIFEST_NAME).read_text())["runs"]
    assert len(runs) == 2 and "finished_at" not in runs[0] and runs[1]["n_failed"] == 1

    # --retry-failed runs just the failure again
    stamps = {s: (out / f"{s}.zarr" / "zarr.json").stat().st_mtime_ns for s in good}
    assert main(["-q", "convert", str(batch_root), str(out), "--retry-failed"]) == 1
    stdout, stderr = capsys.readouterr()
    assert "0 converted, 0 skipped, 1 failed of 1 slide(s)" in stdout
    assert {s: (out / f"{s}.zarr" / "zarr.json").stat().st_mtime_ns for s in good} == stamps


def test_existing_scheduler_with_mem_resources_runs_slides_one_at_a_time(batch_root, serial, good, tmp_path):
    """Workers declaring a MEM resource get tasks that claim their estimated memory.

    One worker with two threads but MEM=1 byte: every slide claims the whole worker, so
    slides never overlap although two threads are free.
    """
    from distributed import LocalCluster

    slides = [s for s in good if s != BIG][:3]
    out = tmp_path / "out"
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, resources={"MEM": 1}, dashboard_address=None
    ) as cluster:
        results = convert_many(batch_root, out, slides, scheduler=cluster.scheduler_address, progress=False)
    assert [r.status for r in results] == ["converted"] * len(slides)
    spans = sorted((_t(r.started_at), _t(r.finished_at)) for r in results)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 1e-3
    for r in results:
        _assert_same_store(r.path, serial[r.slide])
    runs = json.loads((out / MANIFEST_NAME).read_text())["runs"]
    assert runs[-1]["mode"] == "cluster" and runs[-1]["scheduler"] == cluster.scheduler_address


def _thread_names() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate()]


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_per_worker_bounds_the_threads_of_a_slide(batch_root, serial, good, tmp_path, threads):
    """A slide on a worker uses ``threads_per_worker`` threads: Zarr's codec pool is sized
    to it, and with one thread the image pyramid is computed in the task's own thread (no
    dask thread pool is started in the worker)."""
    from distributed import Client, LocalCluster

    slides = [s for s in good if s != BIG][:2]
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(
        cluster, set_as_default=False
    ) as client:
        before = next(iter(client.run(_thread_names).values()))
        results = convert_many(batch_root, out, slides, client=client, threads_per_worker=threads, progress=False)
        after = next(iter(client.run(_thread_names).values()))
    assert [r.status for r in results] == ["converted"] * len(slides)
    for r in results:
        _assert_same_store(r.path, serial[r.slide])
    new = [n for n in after if n not in before]
    assert 1 <= sum(n.startswith("zarr_pool") for n in new) <= threads, new
    dask_pool = [n for n in new if n.startswith("ThreadPoolExecutor-")]
    assert (dask_pool == []) if threads == 1 else (1 <= len(dask_pool) <= threads), new
    assert json.loads((out / MANIFEST_NAME).read_text())["runs"][-1]["threads_per_worker"] == threads


def test_threads_per_worker_default_and_validation(batch_root, tmp_path):
    slide = "Human_Brain_Batch_02012024_Visium_2"
    with pytest.raises(ValueError, match="threads_per_worker"):
        convert_many(batch_root, tmp_path / "bad", [slide], workers=1, threads_per_worker=0)
    # a local cluster shares the cores among its workers, as LocalCluster does
    results = convert_many(batch_root, tmp_path / "out", [slide], workers=1, progress=False)
    assert results[0].status == "converted"
    run = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["runs"][-1]
    assert run["mode"] == "local" and run["workers"] == 1
    assert run["threads_per_worker"] == max(1, len(os.sched_getaffinity(0)))


def _cost(slide: str, gib: float) -> SlideCost:
    return SlideCost(slide, "Visium", 1, 1, 0, 0, int(gib * 2**30))


def test_admission_largest_first_within_budget():
    pending = [_cost("a", 6), _cost("b", 3), _cost("c", 1)]
    assert _admit(pending, [], slots=2, budget=8 * 2**30) == 0  # largest first
    assert _admit(pending[1:], [6 * 2**30], slots=2, budget=8 * 2**30) == 2 - 1  # back-fill: "c" fits, "b" not
    assert _admit(pending[1:], [6 * 2**30, 1], slots=2, budget=64 * 2**30) is None  # no free slot
    assert _admit([_cost("huge", 100)], [], slots=4, budget=8 * 2**30) == 0  # alone, whatever its size
    assert _admit([_cost("huge", 100)], [1], slots=4, budget=8 * 2**30) is None
    assert _admit(pending, [50 * 2**30], slots=None, budget=None) == 0  # no budget: slots only
    assert _admit([], [], slots=1, budget=1) is None


def test_estimate_cost_from_catalogue_and_image_header(batch_root):
    from PIL import Image

    from stimage_sd.io import read_metadata

    meta = read_metadata(next((batch_root / "meta").glob("*.csv")))
    c = estimate_cost(batch_root, BIG)
    assert (c.tech, c.spots, c.genes) == ("Visium", meta.at[BIG, "spot_num"], meta.at[BIG, "gene_num"])
    with Image.open(batch_root / "Visium" / "image" / f"{BIG}.png") as im:
        assert c.pixels == im.size[0] * im.size[1]
    small = estimate_cost(batch_root, "Human_Brain_Batch_01012024_Visium_1")
    assert c.memory > small.memory > 0
    # the catalogue's figures are used when given; more spots x genes, more memory
    assert estimate_cost(batch_root, BIG, spots=100_000, genes=30_000).memory > c.memory + 1e9
    st = estimate_cost(batch_root, "Human_Breast_Batch_10142021_ST_B1")  # TIFF header
    assert st.tech == "ST" and st.pixels > 0
    # a slide with a missing image still gets an estimate (the conversion reports the error)
    assert estimate_cost(batch_root, "no_such_slide").memory > 0


def test_retry_failed_converts_a_repaired_slide(tmp_path):
    from stimage_sd.datasets import SlideSpec, make_release

    root, out = tmp_path / "release", tmp_path / "out"
    specs = [
        SlideSpec(f"Human_Brain_Retry_0{i}012024_Visium", "Visium", grid=(8, 8), n_genes=200, um_per_px=8.0,
                  n_markers=4, n_domains=2, seed=i)
        for i in (1, 2)
    ]
    make_release(root, specs)
    image = root / "Visium" / "image" / f"{specs[1].slide}.png"
    saved = image.read_bytes()
    image.write_bytes(b"garbage, not an image")

    with pytest.raises(StimageError, match="no run manifest"):
        convert_many(root, out, retry_failed=True, workers=0)
    first = convert_many(root, out, workers=0, progress=False)
    assert [r.status for r in first] == ["converted", "failed"]
    assert "not a PNG, JPEG or TIFF" in first[1].error
    image.write_bytes(saved)
    again = convert_many(root, out, retry_failed=True, workers=0, progress=False)
    assert [(r.slide, r.status) for r in again] == [(specs[1].slide, "converted")]
    m = read_manifest(out)
    assert list(m["status"]) == ["converted", "converted"]
    assert pd.isna(m.at[specs[1].slide, "error"])
    assert convert_many(root, out, retry_failed=True, workers=0) == []


def test_one_run_per_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".stimage-convert.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        with pytest.raises(StimageError, match=f"pid {sleeper.pid}"), run_lock(out):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # the lock of a dead run is taken over, and released at the end
    with run_lock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_partial_writes_of_other_slides_are_cleaned(tmp_path, batch_root):
    out = tmp_path / "out"
    debris = [out / ".some_other_slide.zarr.tmp-0badc0de", out / ".another.zarr.trash-12345678"]
    for d in debris:
        (d / "x").mkdir(parents=True)
    keep = out / "notes.txt"
    keep.write_text("user file")
    results = convert_many(batch_root, out, ["Human_Brain_Batch_01012024_Visium_1"], workers=0, progress=False)
    assert results[0].status == "converted"
    assert not any(d.exists() for d in debris)
    assert keep.read_text() == "user file"


def test_worker_killed_for_memory_is_recorded_and_the_run_goes_on(batch_root, tmp_path):
    """A worker that exceeds its memory limit is restarted by dask; the slide is reported."""
    slide = "Human_Brain_Batch_01012024_Visium_1"
    results = convert_many(batch_root, tmp_path / "out", [slide], workers=1, memory_limit="220MB", progress=False)
    assert results[0].status == "failed"
    assert "died" in results[0].error and "out of memory" in results[0].error
    assert read_manifest(tmp_path / "out").at[slide, "status"] == "failed"
    assert _stores(tmp_path / "out") == [] and _leftovers(tmp_path / "out") == []
