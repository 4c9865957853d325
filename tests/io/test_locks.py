"""The store lock (``io/_transaction.store_lock``) and the batch folder lock, with real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stimage_sd.errors import LockedError, StimageError
from stimage_sd.io import convert_slide, is_complete, read, validate
from stimage_sd.io._transaction import lock_holder, lock_path, store_lock

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

_SLEEPER = "import time, sys; print('ready', flush=True); time.sleep(120)"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "300", "STIMAGE_SD_NO_PROGRESS": "1"}


def _holder(store: Path, operation: str):
    """Another process holding ``store``'s lock until killed."""
    code = (f"import sys, time; from stimage_sd.io._transaction import store_lock\n"
            f"with store_lock({str(store)!r}, {operation!r}):\n"
            f"    print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def store(sample_stores, tmp_path) -> Path:
    src = next(iter(sample_stores.values()))
    dst = tmp_path / "out" / src.name
    shutil.copytree(src, dst)
    return dst


def test_lock_refuses_and_names_the_other_run_and_the_lock_file(store):
    proc = _holder(store, "analyze")
    try:
        rec = lock_holder(store)
        assert rec is not None and rec["pid"] == proc.pid and rec["operation"] == "analyze"
        with pytest.raises(LockedError) as err:
            with store_lock(store, "convert"):
                pass
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and str(lock_path(store)) in msg and "analyze" in msg
        assert "\n" not in msg
        # waiting: the lock is taken as soon as the holder ends
        t0 = time.monotonic()
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time, signal; time.sleep(1.5); os.kill({proc.pid}, signal.SIGKILL)"])
        with store_lock(store, "convert", timeout=60):
            assert time.monotonic() - t0 >= 1.0
            assert json.loads(lock_path(store).read_text())["pid"] == os.getpid()
        killer.wait()
    finally:
        proc.kill()
        proc.wait()
    assert not lock_path(store).exists()


def test_stale_lock_of_a_dead_run_and_of_a_reused_pid_are_taken_over(store):
    path = lock_path(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "process_started": 1.0,
                                "operation": "analyze", "token": "x"}))
    with store_lock(store, "convert"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    # a live pid whose start time differs from the recorded one: an unrelated process reused it
    sleeper = subprocess.Popen([sys.executable, "-c", _SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout.readline().strip() == "ready"
        path.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid, "process_started": 12345.0,
                                    "operation": "analyze", "token": "y"}))
        assert lock_holder(store) is None
        with store_lock(store, "convert"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
        # the same pid with its true start time: a live holder
        import psutil

        path.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid,
                                    "process_started": psutil.Process(sleeper.pid).create_time(),
                                    "operation": "analyze", "token": "z"}))
        with pytest.raises(LockedError, match=f"pid {sleeper.pid}"):
            with store_lock(store, "convert"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
        path.unlink(missing_ok=True)


def test_batch_folder_lock_names_its_file_and_handles_pid_reuse(tmp_path):
    from stimage_sd.batch._manifest import run_lock

    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".stimage-convert.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", _SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout.readline().strip() == "ready"
        import psutil

        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid,
                                    "process_started": psutil.Process(sleeper.pid).create_time()}))
        with pytest.raises(StimageError) as err, run_lock(out):
            pass
        assert ".stimage-convert.lock" in str(err.value) and f"pid {sleeper.pid}" in str(err.value)
        # the pid reused by an unrelated process: taken over
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid, "process_started": 99.0}))
        with run_lock(out):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not lock.exists()


def test_convert_does_not_delete_the_temporary_table_of_a_live_analysis(store, sample_root):
    """``convert`` (library and batch) while an analysis holds the store: its siblings are kept."""
    from stimage_sd.batch import convert_many

    slide = store.name.removesuffix(".zarr")
    live_tmp = store.with_name(f".{store.name}.tmp-table-99999-deadbeef")
    (live_tmp / "tables").mkdir(parents=True)
    proc = _holder(store, "analyze")
    try:
        with pytest.raises(LockedError, match="analyze"):
            convert_slide(sample_root, slide, store.parent, lock_timeout=0.5)
        assert live_tmp.is_dir()
        results = convert_many(sample_root, store.parent, slides=[slide], workers=0, progress=False)
        assert [(r.slide, r.status) for r in results] == [(slide, "skipped")]
        assert live_tmp.is_dir()
    finally:
        proc.kill()
        proc.wait()
    # the holder is gone: its lock is stale and its debris is cleaned by the next conversion
    assert convert_slide(sample_root, slide, store.parent) == store
    assert not live_tmp.exists() and not lock_path(store).exists()


@pytest.mark.slow
def test_two_analyze_runs_on_one_store_are_serialised(store):
    """Two real ``stimage-sd analyze`` processes: both succeed, neither result is half-written."""
    cmd = [sys.executable, "-m", "stimage_sd", "analyze", str(store), "--domains", "3"]
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not lock_path(store).exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    out_a, _ = a.communicate(timeout=400)
    out_b, _ = b.communicate(timeout=400)
    for out, p in ((out_a, a), (out_b, b)):
        assert p.returncode == 0, out
        assert "Traceback" not in out and "KeyError" not in out
    assert "waiting for analyze" in out_b and str(lock_path(store)) in " ".join(out_b.split())
    assert is_complete(store) and not lock_path(store).exists()
    table = read(store)["table"]
    assert table.obs["domain"].cat.categories.size == 3
    assert validate(store).ok
    assert not list(store.parent.glob(f".{store.name}.tmp-*"))
