"""Crash safety: ``stimage-sd convert`` and ``stimage-sd analyze`` killed with SIGKILL at random points.

After each kill every store is either complete and identical to a clean run, or absent, or
marked incomplete (refused by :func:`stimage_sd.io.read`); a rerun then completes and its
stores are identical to the clean run and valid against the release files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd

from stimage_sd import datasets
from stimage_sd.cli import main
from stimage_sd.errors import IncompleteStoreError
from stimage_sd.io import is_complete, read, validate

SEEDS = range(6)  # acceptance: >= 5 seeds
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPECS = [
    datasets.SlideSpec(
        slide="Human_Breast_Crash_10142021_ST_B1", tech="ST", grid=(6, 6), um_per_px=1.6, n_genes=60,
        n_domains=2, n_markers=2, seed=11, image_format="tiff", tiff_tile=256,
    ),
    datasets.SlideSpec(
        slide="GSE000002_GSM0000009", tech="Visium", grid=(10, 10), n_genes=60, n_domains=2, n_markers=2,
        seed=12, annotate=True,
    ),
]


@pytest.fixture
def stimage_logging():
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    yield log
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


@pytest.fixture(scope="module")
def crash_release(tmp_path_factory):
    """A two-slide release and its stores from a clean (not killed) run, with its duration."""
    base = tmp_path_factory.mktemp("crash")
    root = base / "release"
    datasets.make_release(root, SPECS)
    ref = base / "reference"
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    t0 = time.perf_counter()
    try:
        assert main(["--quiet", "convert", str(root), str(ref)]) == 0
    finally:
        log.handlers[:], log.level, log.propagate = saved
    seconds = time.perf_counter() - t0
    return root, ref, seconds


def _stores(out: Path) -> dict[str, Path]:
    return {s.slide: out / f"{s.slide}.zarr" for s in SPECS}


def assert_same_store(path: Path, ref: Path) -> None:
    """Same table, shapes, image pixels and metadata as the reference store."""
    a, b = sd.read_zarr(path), sd.read_zarr(ref)
    ta, tb = a["table"], b["table"]
    assert list(ta.obs_names) == list(tb.obs_names)
    assert list(ta.var_names) == list(tb.var_names)
    assert (ta.X != tb.X).nnz == 0 and ta.X.dtype == tb.X.dtype
    np.testing.assert_array_equal(ta.obsm["spatial"], tb.obsm["spatial"])
    ua = {k: v for k, v in ta.uns["stimage"].items() if k != "completed_at"}
    ub = {k: v for k, v in tb.uns["stimage"].items() if k != "completed_at"}
    assert ua.keys() == ub.keys()
    assert a["spots"].geometry.equals(b["spots"].geometry)
    ia, ib = a["he"], b["he"]
    la = [ia] if not hasattr(ia, "keys") else [ia[k]["image"] for k in sorted(ia.keys())]
    lb = [ib] if not hasattr(ib, "keys") else [ib[k]["image"] for k in sorted(ib.keys())]
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x.data), np.asarray(y.data))


def check_after_kill(out: Path, ref: Path) -> dict[str, str]:
    """Every store is complete and identical, absent, or marked incomplete. Returns the states."""
    states = {}
    for slide, path in _stores(out).items():
        if not path.exists():
            states[slide] = "absent"
        elif is_complete(path):
            assert_same_store(path, ref / path.name)
            states[slide] = "complete"
        else:
            with pytest.raises(IncompleteStoreError):
                read(path)
            states[slide] = "incomplete"
    manifest = out / "manifest.json"
    if manifest.exists():
        json.loads(manifest.read_text(encoding="utf-8"))  # written atomically: always parseable
    return states


def check_rerun(root: Path, out: Path, ref: Path) -> None:
    assert main(["--quiet", "convert", str(root), str(out)]) == 0
    for path in _stores(out).values():
        assert is_complete(path)
        assert_same_store(path, ref / path.name)
        report = validate(path, source=root)
        assert report.ok, str(report)
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name or ".trash-" in p.name or p.name.endswith(".lock")]
    assert not leftovers, leftovers


class _Proc:
    """A running ``stimage-sd`` command: a real subprocess, or a fork of a warm server.

    Forks come from a ``forkserver`` that imported :mod:`stimage_sd.cli` once, so a seed
    costs the conversion, not the imports; the child runs the same ``main(argv)`` as the
    console script.
    """

    _ctx = None

    def __init__(self, args: list[str], *, real: bool):
        self.real = real
        argv = ["--quiet", *args]
        if real:
            env = {**os.environ, "STIMAGE_SD_NO_PROGRESS": "1"}
            self.p = subprocess.Popen(
                [sys.executable, "-m", "stimage_sd", *argv],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        else:
            if args[0] == "convert":
                argv.append("--workers=0")  # a daemonic child cannot start a local cluster
            self.p = self._context().Process(target=main, args=(argv,), daemon=True)
            self.p.start()

    @classmethod
    def _context(cls):
        if cls._ctx is None:
            import multiprocessing as mp

            cls._ctx = mp.get_context("forkserver")
            cls._ctx.set_forkserver_preload(["stimage_sd.cli", "stimage_sd.io", "spatialdata"])
        return cls._ctx

    def alive(self) -> bool:
        return self.p.poll() is None if self.real else self.p.is_alive()

    def kill(self) -> bool:
        """SIGKILL (the whole process group of a subprocess); whether it was still running."""
        running = self.alive()
        if self.real:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, _ = self.p.communicate(timeout=60)
            if not running:
                assert b"Traceback" not in out, out.decode(errors="replace")
        else:
            self.p.kill()
            self.p.join(60)
        return running


def _wait_for(cond, proc: _Proc, timeout: float) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return True
        if not proc.alive():
            return False
        time.sleep(0.002)
    return False


def _store_partial(out: Path) -> bool:
    return out.is_dir() and any(".zarr.tmp-" in p.name for p in out.iterdir())


@pytest.mark.parametrize("seed", SEEDS)
def test_convert_killed(seed, crash_release, tmp_path, stimage_logging):
    """Killed at a random time after the first store write began; odd seeds ``--overwrite``
    complete stores (the replace path). Seed 0 runs the real console command."""
    root, ref, seconds = crash_release
    rng = np.random.default_rng(seed)
    out = tmp_path / "out"
    args = ["convert", str(root), str(out)]
    if seed % 2:
        shutil.copytree(ref, out)
        (out / "manifest.json").unlink(missing_ok=True)
        args.append("--overwrite")
    proc = _Proc(args, real=seed == 0)
    delay = rng.uniform(0, 0.8 * seconds)
    if _wait_for(lambda: _store_partial(out), proc, timeout=300):
        time.sleep(delay)
    partial = _store_partial(out)
    was_running = proc.kill()
    states = check_after_kill(out, ref)
    print(f"seed {seed}: killed {delay:.2f} s into writing (running={was_running}, partial write={partial}): {states}")
    check_rerun(root, out, ref)


def test_convert_killed_repeatedly(crash_release, tmp_path, stimage_logging):
    """Killed again and again into the same output folder, then finished."""
    root, ref, seconds = crash_release
    rng = np.random.default_rng(1234)
    out = tmp_path / "out"
    for _ in range(3):
        proc = _Proc(["convert", str(root), str(out)], real=False)
        if _wait_for(out.is_dir, proc, timeout=120):
            time.sleep(rng.uniform(0, seconds))
        proc.kill()
        check_after_kill(out, ref)
    check_rerun(root, out, ref)


# --------------------------------------------------------------------------- analyze

ANALYZED = SPECS[1].slide  # the annotated Visium slide: the whole pipeline, scoring included


@pytest.fixture(scope="module")
def analyzed_reference(crash_release, tmp_path_factory):
    """The store before and after a clean ``stimage-sd analyze``, and how long it took."""
    pytest.importorskip("stimage_sd.cli._analyze", reason="stimage-sd analyze is not available")
    _root, ref, _ = crash_release
    before = ref / f"{ANALYZED}.zarr"
    after = tmp_path_factory.mktemp("analyzed") / before.name
    shutil.copytree(before, after)
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    t0 = time.perf_counter()
    try:
        assert main(["--quiet", "analyze", str(after)]) == 0
    finally:
        log.handlers[:], log.level, log.propagate = saved
    return before, after, time.perf_counter() - t0


def _table_state(path: Path, before: Path, after: Path) -> str:
    """``"before"`` or ``"after"``: which clean table the complete store holds (asserts one)."""
    t = sd.read_zarr(path, selection=("tables",))["table"]
    if "domain" not in t.obs:
        tb = sd.read_zarr(before, selection=("tables",))["table"]
        assert list(t.obs_names) == list(tb.obs_names)
        assert (t.X != tb.X).nnz == 0
        return "before"
    ta = sd.read_zarr(after, selection=("tables",))["table"]
    assert list(t.obs_names) == list(ta.obs_names)
    assert (t.layers["counts"] != ta.layers["counts"]).nnz == 0
    assert list(t.obs["domain"].astype(str)) == list(ta.obs["domain"].astype(str))
    assert t.uns["stimage_analysis"].keys() == ta.uns["stimage_analysis"].keys()
    return "after"


def _table_partial(store: Path) -> bool:
    return any(".tmp-table-" in p.name for p in store.parent.iterdir())


@pytest.mark.parametrize("seed", range(5))
def test_analyze_killed(seed, crash_release, analyzed_reference, tmp_path, stimage_logging):
    """Killed at a random time: even seeds from the start, odd seeds once the new table is
    being written (the swap). Then the store is complete with the old or the new table, or
    marked incomplete; a rerun completes and the store is valid against the release."""
    root, _, _ = crash_release
    before, after, seconds = analyzed_reference
    rng = np.random.default_rng(100 + seed)
    store = tmp_path / "out" / before.name
    shutil.copytree(before, store)
    proc = _Proc(["analyze", str(store)], real=False)
    if seed % 2:
        anchor = _wait_for(lambda: _table_partial(store), proc, timeout=300)
        delay = rng.uniform(0, 0.3 * seconds)
    else:
        anchor = True
        delay = rng.uniform(0, 1.1 * seconds)
    if anchor:
        time.sleep(delay)
    was_running = proc.kill()
    if is_complete(store):
        state = _table_state(store, before, after)
    else:
        with pytest.raises(IncompleteStoreError):
            read(store)
        state = "incomplete"
    print(f"seed {seed}: killed after {delay:.2f} s (running={was_running}): {state}")
    assert main(["--quiet", "analyze", str(store)]) == 0
    assert is_complete(store)
    assert _table_state(store, before, after) == "after"
    report = validate(store, source=root)
    assert report.ok, str(report)
    leftovers = [p.name for p in store.parent.iterdir() if p != store]
    assert not leftovers, leftovers
