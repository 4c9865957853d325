"""Every malformed or hostile input of the corpus (``tests/corpus``) has its documented outcome.

Each case is run through the library (:func:`stimage_sd.io.convert_slide`) and the command
line (``stimage-sd convert``, in-process; two cases also in a subprocess). For an error: the
exact :mod:`stimage_sd` exception whose message names the file and position, exit status
1 without a traceback, and no complete store. For a repair: a warning and a record in
``uns["stimage"]``. Always: nothing written outside the output folder, no hang.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import CASES, Base, Expected, corpus_table, make_base
from stimage_sd.batch import MANIFEST_NAME
from stimage_sd.cli import main
from stimage_sd.errors import StimageError
from stimage_sd.io import convert_slide, is_complete, read

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def corpus_base(tmp_path_factory) -> Base:
    return make_base(tmp_path_factory.mktemp("corpus") / "base")


@pytest.fixture
def stimage_logging():
    """Restore the ``stimage_sd`` logger after the CLI reconfigured it (handlers, propagate)."""
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    yield log
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def _snapshot(top: Path, exclude: Path) -> dict[str, tuple]:
    """Every file and folder under ``top`` except ``exclude``: path -> (kind, size, mtime)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        if d == exclude or exclude in d.parents:
            dirnames[:] = []
            continue
        for name in dirnames:
            if d / name != exclude:
                out[str((d / name).relative_to(top))] = ("dir",)
        for name in filenames:
            st = (d / name).lstat()
            out[str((d / name).relative_to(top))] = ("file", st.st_size, st.st_mtime_ns)
    return out


def _squash(text: str) -> str:
    return "".join(text.split())


class _Run:
    def __init__(self, tmp_path: Path, base: Base, name: str, monkeypatch):
        self.tmp = tmp_path
        work = tmp_path / "work"
        work.mkdir()
        self.base = base.copy_to(work / "release")
        self.exp: Expected = CASES[name].build(self.base)
        self.slide = self.exp.slide or self.base.slide
        self.out = work / "out"
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        self.before = _snapshot(tmp_path, self.out)
        self.outside = self._outside_targets()

    def _outside_targets(self) -> list[Path]:
        # where a store of an unsafe id would land if the id were used as a path
        name = self.slide.replace("\x00", "") + ".zarr"
        targets = {Path(os.path.normpath(f"{self.out}/{name}")), Path(os.path.normpath(self.out / name))}
        out = [t for t in targets if t.parent != self.out]
        for t in out:
            assert not t.exists(), f"{t} exists before the test"
        return out

    def check_nothing_outside(self) -> None:
        assert _snapshot(self.tmp, self.out) == self.before, "files changed outside the output folder"
        for t in self.outside:
            assert not t.exists(), f"{t} was written outside the output folder"
            assert not list(t.parent.glob(f".{t.name}*")), f"temporary sibling of {t} was written"

    def expected_stores(self, cli: bool) -> set[str]:
        """Store names allowed in the output folder after a failure."""
        if cli and self.exp.all_slides and self.slide != self.base.slide:
            return {f"{self.base.slide}.zarr"}
        return set()

    def check_failure_output(self, cli: bool = False) -> None:
        entries = {p.name for p in self.out.iterdir()} if self.out.exists() else set()
        if cli:
            entries.discard(MANIFEST_NAME)  # the batch's run record, not a store
        assert entries == self.expected_stores(cli), f"unexpected output {entries}"
        for name in entries:
            assert is_complete(self.out / name)


@pytest.mark.parametrize("name", list(CASES))
def test_library(name, corpus_base, tmp_path, monkeypatch, caplog, stimage_logging):
    run = _Run(tmp_path, corpus_base, name, monkeypatch)
    exp = run.exp
    stimage_logging.propagate = True
    with caplog.at_level(logging.WARNING, logger="stimage_sd"):
        if exp.outcome == "error":
            with pytest.raises(StimageError) as err:
                convert_slide(run.base.root, run.slide, run.out)
            assert type(err.value) is exp.exception, repr(err.value)
            msg = str(err.value)
            if exp.path is not None:
                assert str(exp.path) in msg
            for where in exp.where:
                assert where in msg, (where, msg)
            assert exp.message in msg, msg
            assert "\n" not in msg.strip()
            run.check_failure_output()
        else:
            store = convert_slide(run.base.root, run.slide, run.out)
            assert store.parent == run.out and is_complete(store)
            exp.check(read(store))
            if exp.outcome == "repair":
                assert exp.warning in caplog.text, caplog.text
            assert {p.name for p in run.out.iterdir()} == {store.name}
    run.check_nothing_outside()


@pytest.mark.parametrize("name", list(CASES))
def test_cli(name, corpus_base, tmp_path, monkeypatch, capsys, stimage_logging):
    run = _Run(tmp_path, corpus_base, name, monkeypatch)
    exp = run.exp
    args = ["--quiet", "convert", str(run.base.root), str(run.out)]
    if not exp.all_slides:
        args += ["--slide", run.slide]
    code = main(args)
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text
    if exp.outcome == "error":
        assert code == 1, text
        assert _squash(exp.message) in _squash(text), text
        if exp.path is not None:
            assert _squash(str(exp.path)) in _squash(text)
        run.check_failure_output(cli=True)
    else:
        assert code == 0, text
        store = run.out / f"{run.slide}.zarr"
        assert is_complete(store)
        exp.check(read(store))
        if exp.outcome == "repair":
            assert _squash(exp.warning) in _squash(text), text
    run.check_nothing_outside()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["image_bomb", "counts_truncated_mid_number"])
def test_cli_subprocess(name, corpus_base, tmp_path, monkeypatch):
    """A real ``stimage-sd`` process: no hang, no traceback, the documented exit status."""
    run = _Run(tmp_path, corpus_base, name, monkeypatch)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "stimage_sd", "--quiet", "convert", str(run.base.root), str(run.out),
         "--slide", run.slide],
        capture_output=True, text=True, timeout=150, env=env,
    )
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    if run.exp.outcome == "error":
        assert proc.returncode == 1, text
        assert _squash(run.exp.message) in _squash(text)
        run.check_failure_output(cli=True)
    else:
        assert proc.returncode == 0, text
        assert is_complete(run.out / f"{run.slide}.zarr")
    run.check_nothing_outside()


def test_corpus_size_and_coverage():
    assert len(CASES) >= 30
    parts = {c.part for c in CASES.values()}
    assert {"counts", "coord", "image", "metadata", "annotation", "slide id"} <= parts
    outcomes = {c.build.__name__: c for c in CASES.values()}
    assert len(outcomes) == len(CASES)


def test_docs_table_in_sync():
    """``docs/robustness.md`` shows the corpus table generated from the registry."""
    doc = (REPO / "docs" / "robustness.md").read_text(encoding="utf-8")
    assert corpus_table() in doc, "regenerate the table: python -c 'import sys; sys.path.insert(0, \"tests\"); from corpus import corpus_table; print(corpus_table())'"


# --------------------------------------------------------------------------- security

UNSAFE_IDS = ["../../evil", "/etc/passwd", "a/b", "a\\b", "..", ".", "...", "x\x00y", "tab\there", ""]


@pytest.mark.parametrize("bad", UNSAFE_IDS)
def test_unsafe_ids_refused_by_every_entry_point(bad, corpus_base, tmp_path):
    from stimage_sd.io import find_slide, store_path, validate_slide_id

    with pytest.raises(StimageError, match="invalid slide id"):
        validate_slide_id(bad)
    with pytest.raises(StimageError, match="invalid slide id"):
        store_path(tmp_path / "out", bad)
    with pytest.raises(StimageError, match="invalid slide id"):
        find_slide(corpus_base.root, bad)
    with pytest.raises(StimageError, match="invalid slide id"):
        convert_slide(corpus_base.root, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["../../evil", "a/b", "..", "x\x00y"])
def test_hub_download_refuses_unsafe_ids(bad, tmp_path, monkeypatch):
    """Refused before the Hub is contacted or any path is built (offline, empty root)."""
    from stimage_sd.hub import download, plan_download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "root"
    for call in (download, plan_download):
        with pytest.raises(StimageError, match="invalid slide id"):
            call([bad], root)
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_catalog_refuses_unsafe_metadata_ids(corpus_base, tmp_path):
    from corpus import metadata_evil_id
    from stimage_sd.errors import FormatError
    from stimage_sd.hub import Catalog

    b = corpus_base.copy_to(tmp_path / "release")
    metadata_evil_id(b)
    with pytest.raises(FormatError, match="invalid slide id") as err:
        Catalog.from_root(b.root)
    assert err.value.column == "slide" and err.value.line is not None


def test_token_never_in_logs_or_stores(corpus_base, tmp_path, monkeypatch, capsys, stimage_logging):
    secret = "hf_stimageSECRETtoken0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", secret)
    b = corpus_base.copy_to(tmp_path / "release")
    out = tmp_path / "out"
    assert main(["--verbose", "convert", str(b.root), str(out)]) == 0
    assert main(["--verbose", "validate", str(out), "--source", str(b.root)]) == 0
    cap = capsys.readouterr()
    assert secret not in cap.out + cap.err
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


# --------------------------------------------------------------------------- damaged stores

from corpus import STORE_CASES, store_corpus_table  # noqa: E402


@pytest.fixture(scope="module")
def corpus_store(corpus_base, tmp_path_factory) -> Path:
    """The base slide converted once; each damaged-store case damages a copy."""
    return convert_slide(corpus_base.root, corpus_base.slide, tmp_path_factory.mktemp("corpus_store"))


def _damaged(corpus_store: Path, tmp_path: Path, name: str):
    import shutil

    store = tmp_path / corpus_store.name
    shutil.copytree(corpus_store, store)
    return store, STORE_CASES[name].build(store)


def _has(problems: list[str], needle: str) -> bool:
    return any(needle in p for p in problems)


def test_pristine_store_is_valid_with_checksums(corpus_base, corpus_store):
    from stimage_sd.io import validate

    report = validate(corpus_store, corpus_base.root)
    assert report.ok, str(report)
    assert {"structure", "checksums", "pixels", "counts"} <= set(report.checks)


VALIDATE_CASES = [n for n, c in STORE_CASES.items() if c.command == "validate"]
ANALYZE_CASES = [n for n, c in STORE_CASES.items() if c.command == "analyze"]


@pytest.mark.parametrize("name", VALIDATE_CASES)
def test_store_library(name, corpus_base, corpus_store, tmp_path):
    from stimage_sd.io import validate

    store, exp = _damaged(corpus_store, tmp_path, name)
    plain = [str(p) for p in validate(store).problems]
    for needle in exp.problems:
        assert _has(plain, needle), (needle, plain)
    full = [str(p) for p in validate(store, corpus_base.root).problems]
    for needle in (*exp.problems, *exp.source_problems):
        assert _has(full, needle), (needle, full)


def _report_sections(text: str) -> dict[str, str]:
    """``stimage-sd validate`` output split per store: path -> its ``ok``/``invalid`` line and problems."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        for head in ("ok ", "invalid "):
            if line.startswith(head):
                path = line[len(head):].strip()
                path = path.rsplit(": ", 1)[0] if head == "invalid " else path
                current = sections.setdefault(path, [])
                break
        if current is not None:
            current.append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


@pytest.fixture(scope="module")
def store_cli_runs(corpus_base, corpus_store, tmp_path_factory) -> dict:
    """Every damaged store of :data:`VALIDATE_CASES` checked by one in-process ``stimage-sd
    validate`` run, without and with ``--source`` (one worker process per run instead of
    one per case and run): ``{"stores": {case: (path, StoreExpected)}, "runs": {extra: (exit, stdout, stderr)}}``."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("store_cli")
    stores = {name: _damaged(corpus_store, base / name, name) for name in VALIDATE_CASES}
    runs = {}
    log = logging.getLogger("stimage_sd")
    saved = (list(log.handlers), log.level, log.propagate)
    try:
        for extra in ((), ("--source", str(corpus_base.root))):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["--quiet", "validate", *(str(path) for path, _ in stores.values()), *extra])
            runs[extra] = (code, out.getvalue(), err.getvalue())
    finally:
        log.handlers[:], log.level, log.propagate = saved
    return {"stores": stores, "runs": runs}


@pytest.mark.slow
@pytest.mark.parametrize("name", VALIDATE_CASES)
def test_store_cli(name, store_cli_runs):
    """The command line reports the damaged store invalid, with the documented problems."""
    store, exp = store_cli_runs["stores"][name]
    for extra, (code, out, err) in store_cli_runs["runs"].items():
        text = out + err
        assert code == 1, text
        assert "Traceback" not in text
        assert f"0 of {len(VALIDATE_CASES)} store(s) valid" in out, out
        section = _report_sections(text).get(str(store))
        assert section is not None and section.startswith(f"invalid {store}: "), (str(store), text)
        for needle in (*exp.problems, *(exp.source_problems if extra else ())):
            assert _squash(needle) in _squash(section), (needle, section)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["store_indices_byte_flip", "store_data_chunk_deleted"])
def test_store_cli_subprocess(name, corpus_base, corpus_store, tmp_path):
    """A real ``stimage-sd validate`` process: exit 1 and the report, no crash signal (was SIGSEGV)."""
    store, exp = _damaged(corpus_store, tmp_path, name)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "300"}
    proc = subprocess.run(
        [sys.executable, "-m", "stimage_sd", "--quiet", "validate", str(store), str(corpus_store),
         "--source", str(corpus_base.root)],
        capture_output=True, text=True, timeout=150, env=env,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, (proc.returncode, text)
    assert "Traceback" not in text
    assert _squash(exp.problems[0]) in _squash(text)
    assert "1 of 2 store(s) valid" in text  # the pristine store after the damaged one is still checked


@pytest.mark.parametrize("name", ANALYZE_CASES)
def test_analyze_library(name, corpus_store, tmp_path):
    from stimage_sd.workflows import analyze_store

    store, exp = _damaged(corpus_store, tmp_path, name)
    if exp.status == "failed":
        with pytest.raises(StimageError) as err:
            analyze_store(store, seed=0)
        for needle in exp.problems:
            assert needle in str(err.value)
        return
    summary = analyze_store(store, seed=0)
    assert (summary["skipped"] != {}) == (exp.status == "skipped")
    reasons = " ".join(summary["skipped"].values())
    for needle in exp.problems:
        assert needle in reasons
    table = read(store)["table"]
    assert dict(table.uns["stimage_analysis"]["skipped"]) == summary["skipped"]
    assert "counts" in table.layers  # the normalisation ran and was written back


@pytest.mark.slow
def test_analyze_cli_one_bad_store_does_not_take_down_the_run(corpus_store, tmp_path):
    """``analyze good <each case> good --report R`` in a real process: every store has its row."""
    import csv
    import shutil

    stores, expected = [], []
    good = tmp_path / "good"
    shutil.copytree(corpus_store, good / corpus_store.name)
    stores.append(good / corpus_store.name)
    expected.append(("ok", ()))
    for name in ANALYZE_CASES:
        store, exp = _damaged(corpus_store, tmp_path / name, name)
        stores.append(store)
        expected.append((exp.status, exp.problems))
    good2 = tmp_path / "good2" / corpus_store.name
    shutil.copytree(corpus_store, good2)
    stores.append(good2)
    expected.append(("ok", ()))
    report = tmp_path / "R"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "300"}
    proc = subprocess.run(
        [sys.executable, "-m", "stimage_sd", "--quiet", "analyze", *map(str, stores), "--report", str(report)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text  # one store failed (the damaged one)
    assert "Traceback" not in text
    with open(report / "summary.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["store"] for r in rows] == [str(s) for s in stores]
    for row, (status, needles) in zip(rows, expected, strict=True):
        assert row["status"] == status, row
        for needle in needles:
            assert needle in row["note"], row


def test_store_docs_table_in_sync():
    doc = (REPO / "docs" / "robustness.md").read_text(encoding="utf-8")
    assert store_corpus_table() in doc, "regenerate: python -c 'import sys; sys.path.insert(0, \"tests\"); from corpus import store_corpus_table; print(store_corpus_table())'"
