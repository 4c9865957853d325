"""Operating-system errors are one-line errors naming the path and the cause, never tracebacks.

Tests run as root here and in CI, and root ignores file permissions, so each condition is
made real by other means. Where that is unavailable (not root, no ``chattr``/``setpriv``/
``mount``) the test skips with the reason; in CI (``CI=true``, root) it must run.

- a read-only folder: the immutable attribute (``chattr +i``; root cannot write into it);
- an unreadable file: ``chmod 000`` and the command run as root *without* the capabilities
  that let root ignore permissions (``setpriv --bounding-set=-dac_override,-dac_read_search``);
- a full disk: a small ``tmpfs`` mounted for the test, filled up, then enlarged for the rerun.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_in_ci
from corpus import make_base
from stimage_sd.batch import MANIFEST_NAME
from stimage_sd.cli import main
from stimage_sd.io import is_complete

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("oserr") / "release")


@contextlib.contextmanager
def immutable(path: Path):
    """``path`` made read-only even for root (``chattr +i``), or skip."""
    if shutil.which("chattr") is None:
        require_in_ci("chattr is not available: cannot make a folder read-only for root (apt-get install e2fsprogs)")
    proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        require_in_ci(f"chattr +i is not supported here ({proc.stderr.strip()}): cannot make a folder read-only for root")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs mounted at ``path``, or skip."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        require_in_ci(f"cannot mount a tmpfs to simulate a full disk ({proc.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave
    with open(folder / "filler", "wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(free, 0))


def _convert(capsys, root: Path, out: Path) -> tuple[int, str]:
    code = main(["--quiet", "convert", str(root), str(out)])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _one_line_error(text: str, *needles: str) -> None:
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    flat = "".join(text.split())
    for needle in needles:
        assert "".join(needle.split()) in flat, (needle, text)


def _leftovers(out: Path) -> set[str]:
    """Entries a rerun would have to clean up: temporary siblings, the run lock."""
    if not out.is_dir():
        return set()
    return {p.name for p in out.iterdir() if p.name.startswith(".")}


def test_read_only_output_folder(release, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with immutable(out):
        code, text = _convert(capsys, release.root, out)
        assert code == 1
        _one_line_error(text, str(out), "Operation not permitted")
        assert list(out.iterdir()) == []


def test_read_only_output_folder_with_nothing_to_do(release, tmp_path, capsys):
    out = tmp_path / "out"
    code, _ = _convert(capsys, release.root, out)
    assert code == 0
    before = sorted(p.name for p in out.iterdir())
    with immutable(out):
        code, text = _convert(capsys, release.root, out)
        assert code == 1
        _one_line_error(text, str(out), "Operation not permitted")
        assert sorted(p.name for p in out.iterdir()) == before


def test_output_path_is_a_regular_file(release, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    code, text = _convert(capsys, release.root, out)
    assert code == 1
    _one_line_error(text, str(out), "not a folder")
    assert out.read_text() == "not a folder"


def test_missing_output_folder_under_read_only_parent(release, tmp_path, capsys):
    parent = tmp_path / "parent"
    parent.mkdir()
    with immutable(parent):
        code, text = _convert(capsys, release.root, parent / "out")
        assert code == 1
        _one_line_error(text, str(parent / "out"), "Operation not permitted")
        assert list(parent.iterdir()) == []


@pytest.mark.parametrize("which", ["metadata", "counts"])
def test_unreadable_input_file(which, release, tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        require_in_ci("needs root and setpriv to run the command without root's permission override")
    shutil.copytree(release.root, tmp_path / "release")
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "release" / (
        release.metadata if which == "metadata" else release.files.counts
    ).relative_to(release.root)
    target.chmod(0)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "300"}
    # root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH obeys the owner's (its own) mode bits
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "stimage_sd",
           "--quiet", "convert", str(tmp_path / "release"), str(out), "--slide", release.slide]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=str(tmp_path))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Traceback" not in text, text
    flat = "".join(text.split())
    assert "".join(str(target).split()) in flat and "Permissiondenied" in flat, text
    assert not (out / f"{release.slide}.zarr").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(f".{release.slide}")]


def test_full_disk_while_the_lock_is_written_then_rerun(release, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        _fill(disk)
        out = disk / "out"
        code, text = _convert(capsys, release.root, out)
        assert code == 1
        _one_line_error(text, str(out / ".stimage-convert.lock"), "No space left on device")
        assert _leftovers(out) == set()  # no empty lock left behind
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        code, text = _convert(capsys, release.root, out)
        assert code == 0, text
        assert is_complete(out / f"{release.slide}.zarr")
        assert _leftovers(out) == set()


def test_full_disk_while_the_manifest_is_written_then_rerun(release, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        out = disk / "out"
        out.mkdir()
        _fill(disk, leave=4096)  # room for the lock file, not for a store or the manifest
        code, text = _convert(capsys, release.root, out)
        assert code == 1
        assert "Traceback" not in text, text
        assert "No space left on device" in text, text
        assert str(out) in "".join(text.split()) or str(out) in text
        assert not is_complete(out / f"{release.slide}.zarr") if (out / f"{release.slide}.zarr").exists() else True
        (disk / "filler").unlink()
        code, text = _convert(capsys, release.root, out)
        assert code == 0, text
        assert is_complete(out / f"{release.slide}.zarr")
        assert (out / MANIFEST_NAME).is_file()
        assert _leftovers(out) == set()
