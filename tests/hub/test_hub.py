"""Download from a loopback fake Hub with the real ``huggingface_hub`` client (no internet)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from stimage_sd.cli import main
from stimage_sd.errors import SlideNotFoundError, StimageError
from stimage_sd.hub import Catalog, download, plan_download
from stimage_sd.hub._client import REPO_ID, escape_glob
from stimage_sd.io._layout import release_path as repo_path

PLUS = "Mouse_Brain+Lung_Synth_02212023_Visium_2mm_edge"
DOTS = "Human_Heart_Synth_12122019_ST_ST_Sample_4.5-5PCW_1"
GEO_A = "GSE175540_GSM5924030"
GEO_B = "GSE175540_GSM5924031"
HD = "Mouse_Brain_Synth_03292024_VIsiumHD"
GLOB_PLAIN = "Human_Glob_Synth_01012020_ST_A1"
GLOB_BRACKET = "Human_Glob_Synth_01012020_ST_[A]1"
GLOB_STAR = "Human_Glob_Synth_01012020_ST_*"
BIG = "GSE999999_GSM9999999"
TECH = {PLUS: "Visium", DOTS: "ST", GEO_A: "Visium", GEO_B: "Visium", HD: "VisiumHD",
        GLOB_PLAIN: "ST", GLOB_BRACKET: "ST", GLOB_STAR: "ST", BIG: "Visium"}
ANNOTATED = {PLUS, GEO_A}
META = "meta/meta_all_gene02122025.csv"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A small generated release: ids with '+', '.', glob characters, GEO ids, a VisiumHD typo."""
    from stimage_sd.datasets import SlideSpec, make_release

    root = tmp_path_factory.mktemp("hub") / "release"
    kw = {"n_genes": 60, "n_domains": 2, "n_markers": 2}
    specs = [
        SlideSpec(PLUS, "Visium", grid=(6, 6), um_per_px=8, annotate=True, species="mouse", **kw),
        SlideSpec(DOTS, "ST", grid=(5, 5), um_per_px=8, tissue="heart", **kw),
        SlideSpec(GEO_A, "Visium", grid=(6, 6), um_per_px=8, annotate=True, label_column="TLS_2_cat",
                  cancer=True, tissue="kidney", **kw),
        SlideSpec(GEO_B, "Visium", grid=(5, 6), um_per_px=8, tissue="kidney", cancer=True, **kw),
        SlideSpec(HD, "VisiumHD", grid=(6, 6), um_per_px=4, species="mouse", **kw),
        SlideSpec(GLOB_PLAIN, "ST", grid=(4, 4), um_per_px=8, tissue="skin", **kw),
        SlideSpec(GLOB_BRACKET, "ST", grid=(4, 4), um_per_px=8, tissue="skin", seed=1, **kw),
        SlideSpec(GLOB_STAR, "ST", grid=(4, 4), um_per_px=8, tissue="skin", seed=2, **kw),
        # a counts file larger than huggingface_hub's 10 MiB read chunk, for the resume test
        SlideSpec(BIG, "Visium", grid=(44, 44), n_genes=2000, um_per_px=20, tissue_fraction=1.0),
    ]
    make_release(root, specs)
    return root


def slide_files(slide: str, parts=("image", "coord", "counts", "annotation")) -> set[str]:
    return {repo_path(slide, TECH[slide], p) for p in parts if p != "annotation" or slide in ANNOTATED}


def local_files(root: Path) -> set[str]:
    """Release files under root (the client's .cache and our .stimage_sd excluded)."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".")
    }


def assert_identical(release: Path, root: Path, files: set[str]) -> None:
    for rel in files:
        assert (root / rel).read_bytes() == (release / rel).read_bytes(), rel


def test_escape_glob_matches_only_itself():
    from fnmatch import fnmatchcase

    ids = [GLOB_PLAIN, GLOB_BRACKET, GLOB_STAR, "Human_Glob_Synth_01012020_ST_?x", PLUS]
    for a in ids:
        for b in ids:
            assert fnmatchcase(f"ST/image/{b}.png", f"ST/image/{escape_glob(a)}.png") == (a == b)


def test_download_three_named_slides_exactly(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    root = tmp_path / "root"
    chosen = [PLUS, GEO_A, HD]
    plan = download(chosen, root, cache_dir=tmp_path / "cache", confirm_above=None)
    expected = set().union(*(slide_files(s) for s in chosen)) | {META}
    assert local_files(root) == expected
    assert_identical(release, root, expected)
    # the server sent exactly those files, each once, and nothing else
    assert sorted(hub.downloads()) == sorted(expected)
    assert plan.slides == {PLUS: "Visium", GEO_A: "Visium", HD: "VisiumHD"}
    assert plan.bytes_total == sum((release / f).stat().st_size for f in expected)
    # the result is a release root the catalogue reads, with annotation status from the listing
    cat = Catalog.from_root(root)
    assert bool(cat.table.at[PLUS, "annotated"]) and not bool(cat.table.at[HD, "annotated"])
    assert int(cat.table.at[GEO_A, "size_counts"]) == (release / repo_path(GEO_A, "Visium", "counts")).stat().st_size

    # a second run finds everything complete and transfers nothing
    hub.clear()
    again = download(chosen, root, cache_dir=tmp_path / "cache")
    assert hub.downloads() == []
    assert again.bytes_to_fetch == 0


def test_plus_and_dot_ids_download_correctly(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    root = tmp_path / "root"
    download([PLUS, DOTS], root, parts=("coord", "counts", "annotation"), metadata=False,
             cache_dir=tmp_path / "cache")
    expected = slide_files(PLUS, ("coord", "counts", "annotation")) | slide_files(DOTS, ("coord", "counts"))
    assert local_files(root) == expected
    assert_identical(release, root, expected)
    # '+' travels percent-encoded in the resolve URL and comes back verbatim
    urls = [r.url for r in hub.requests if r.method == "HEAD"]
    assert any("%2B" in u for u in urls)


def test_glob_characters_in_ids_are_escaped(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    root = tmp_path / "root"
    download([GLOB_BRACKET, GLOB_STAR], root, metadata=False, cache_dir=tmp_path / "cache")
    expected = slide_files(GLOB_BRACKET) | slide_files(GLOB_STAR)
    assert local_files(root) == expected  # not GLOB_PLAIN, not every ST slide
    assert_identical(release, root, expected)
    assert sorted(hub.downloads()) == sorted(expected)


def test_cut_transfer_resumes_with_range_request(release, fake_hub, tmp_path):
    counts = repo_path(BIG, "Visium", "counts")
    size = (release / counts).stat().st_size
    assert size > 11 * 1024**2  # more than one 10 MiB client read chunk
    hub = fake_hub(release)
    cut = size * 3 // 4
    hub.cut_after[counts] = cut
    root = tmp_path / "root"
    download([BIG], root, parts=("counts",), metadata=False, cache_dir=tmp_path / "cache")
    assert (root / counts).read_bytes() == (release / counts).read_bytes()
    gets = [r for r in hub.requests if r.path == counts and r.method == "GET"]
    assert gets[0].bytes_sent == cut and gets[0].range is None
    resumed = [r for r in gets[1:] if r.range]
    assert resumed, [(r.status, r.range) for r in gets]
    start = int(resumed[0].range.split("=")[1].split("-")[0])
    assert 0 < start <= cut and resumed[0].status == 206
    assert sum(r.bytes_sent for r in gets) < 2 * size  # resumed, not restarted


def test_interrupted_run_is_completed_by_a_rerun(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    root = tmp_path / "root"
    failing = repo_path(GEO_B, "Visium", "counts")
    hub.fail[failing] = 500
    with pytest.raises(StimageError, match="Hub answered an error"):
        download([GEO_A, GEO_B], root, cache_dir=tmp_path / "cache")
    assert not (root / failing).exists()
    done_before = local_files(root)
    hub.fail.clear()
    hub.clear()
    download([GEO_A, GEO_B], root, cache_dir=tmp_path / "cache")
    expected = slide_files(GEO_A) | slide_files(GEO_B) | {META}
    assert local_files(root) == expected
    assert_identical(release, root, expected)
    # the rerun fetched only what was missing
    assert set(hub.downloads()) == expected - done_before
    assert failing in hub.downloads()


def test_missing_slide_is_a_clear_error_with_close_matches(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    with pytest.raises(SlideNotFoundError) as e:
        download([PLUS, "GSE175540_GSM592403"], tmp_path / "root", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "GSE175540_GSM592403" in msg and GEO_A in msg and "close matches" in msg
    assert hub.downloads() == []
    assert not (tmp_path / "root").exists()


def test_offline_mode_uses_the_warm_local_copy(release, fake_hub, tmp_path, monkeypatch):
    hub = fake_hub(release)
    root = tmp_path / "root"
    download([PLUS, DOTS], root, cache_dir=tmp_path / "cache")
    Catalog.from_hub(cache_dir=tmp_path / "cache")
    hub.stop()  # the Hub is gone: anything touching the network would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = download([PLUS, DOTS], root, cache_dir=tmp_path / "cache")
    assert plan.offline and plan.bytes_to_fetch == 0
    assert set(plan.slides) == {PLUS, DOTS}
    cat = Catalog.from_hub(cache_dir=tmp_path / "cache")
    assert len(cat) == 9 and bool(cat.table.at[PLUS, "annotated"])
    # a slide never downloaded is reported, not fetched; an unknown id gets close matches
    with pytest.raises(StimageError, match=r"offline mode.*GSE175540_GSM5924030_count\.csv"):
        download([GEO_A], root, cache_dir=tmp_path / "cache")
    with pytest.raises(SlideNotFoundError, match=r"offline.*close matches: .*" + GEO_A):
        download(["GSE175540_GSM592403"], root, cache_dir=tmp_path / "cache")
    # a deleted file is reported too
    (root / repo_path(DOTS, "ST", "image")).unlink()
    with pytest.raises(StimageError, match="offline mode"):
        download([DOTS], root, cache_dir=tmp_path / "cache")


def test_token_is_sent_to_the_hub_only_and_never_logged(release, fake_hub, tmp_path, monkeypatch, caplog, capfd):
    secret = "hf_TESTSECRETtoken0123456789"
    hub = fake_hub(release, token=secret, require_token=True)
    with pytest.raises(StimageError, match="HF_TOKEN"):
        download([PLUS], tmp_path / "nope", cache_dir=tmp_path / "cache")
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "root"
    download([PLUS], root, cache_dir=tmp_path / "cache", progress=True)
    assert local_files(root) == slide_files(PLUS) | {META}
    hub_auth = {r.authorization for r in hub.requests if r.server == "hub" and r.status < 400}
    assert hub_auth == {f"Bearer {secret}"}
    assert all(r.authorization is None for r in hub.requests if r.server == "cdn")  # not sent off the Hub
    out, err = capfd.readouterr()
    logged = caplog.text + out + err + "".join(str(r.args) for r in caplog.records)
    assert secret not in logged
    assert "GiB" in caplog.text or "MiB" in caplog.text or "KiB" in caplog.text  # the byte total was reported


def test_confirmation_above_threshold(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    root = tmp_path / "root"
    with pytest.raises(StimageError, match="confirm=True"):
        download([GEO_A], root, confirm_above=1000, cache_dir=tmp_path / "cache")
    seen = []
    with pytest.raises(StimageError, match="without confirmation"):
        download([GEO_A], root, confirm_above=1000, confirm=lambda p: seen.append(p.bytes_to_fetch) or False)
    assert seen and seen[0] > 1000
    assert hub.downloads() == []
    plan = download([GEO_A], root, dry_run=True)
    assert plan.bytes_to_fetch == seen[0] and hub.downloads() == [] and not root.exists()
    download([GEO_A], root, confirm_above=1000, confirm=lambda p: True, cache_dir=tmp_path / "cache")
    assert local_files(root) == slide_files(GEO_A) | {META}


def test_corrupted_transfer_fails_verification_and_is_removed(release, tmp_path, fake_hub):
    served = tmp_path / "served"
    shutil.copytree(release, served)
    hub = fake_hub(served)
    image = repo_path(GEO_A, "Visium", "image")
    data = bytearray((served / image).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only a checksum can tell
    (served / image).write_bytes(bytes(data))
    root = tmp_path / "root"
    with pytest.raises(StimageError, match="sha256"):
        download([GEO_A], root, cache_dir=tmp_path / "cache")
    assert not (root / image).exists()
    assert hub.downloads().count(image) == 1


def test_catalog_from_hub_is_cached(release, fake_hub, tmp_path):
    hub = fake_hub(release)
    cat = Catalog.from_hub(cache_dir=tmp_path / "cache")
    assert sorted(cat.slides) == sorted(TECH)
    t = cat.table
    assert set(t.index[t["annotated"].astype(bool)]) == ANNOTATED
    for s in (PLUS, HD):
        want = sum((release / f).stat().st_size for f in slide_files(s))
        assert int(t.at[s, "size_total"]) == want
    assert cat.filter(tech="Visium", cancer=True).slides == [GEO_A, GEO_B]
    assert cat.summary()["bytes"] == sum(
        (release / f).stat().st_size for s in TECH for f in slide_files(s)
    )
    hub.clear()
    Catalog.from_hub(cache_dir=tmp_path / "cache")
    # the second load only asks which commit is current: no listing, no file transfer
    assert [r.url.split("?")[0] for r in hub.requests] == [f"/api/datasets/{REPO_ID}/revision/main"]


def test_plan_reports_missing_parts_and_bytes(release, fake_hub, tmp_path):
    fake_hub(release)
    plan = plan_download([HD, PLUS], tmp_path / "root", parts="coord,annotation")
    assert {f.path for f in plan.files} == {
        repo_path(HD, "VisiumHD", "coord"), repo_path(PLUS, "Visium", "coord"),
        repo_path(PLUS, "Visium", "annotation"), META,
    }
    assert plan.missing == {}
    with pytest.raises(StimageError, match="unknown part"):
        plan_download([HD], tmp_path / "root", parts=("coords",))


# --------------------------------------------------------------------------- CLI
def test_cli_download_named_slides_then_catalog(release, fake_hub, tmp_path, capsys):
    fake_hub(release)
    root = tmp_path / "root"
    rc = main(["download", str(root), "--slide", f"{PLUS},{DOTS}", "--parts", "coord", "--parts", "counts", "--yes"])
    assert rc == 0
    assert local_files(root) == slide_files(PLUS, ("coord", "counts")) | slide_files(DOTS, ("coord", "counts")) | {META}
    capsys.readouterr()
    assert main(["catalog", "--source", str(root), "--format", "csv", "--columns", "tech,annotated"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "slide,tech,annotated" and f"{PLUS},Visium,True" in out


def test_cli_download_with_filters_and_confirmation(release, fake_hub, tmp_path, capsys, monkeypatch):
    hub = fake_hub(release)
    root = tmp_path / "root"
    # without a terminal and without --yes, a download above the threshold stops with a clear message
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    rc = main(["download", str(root), "--tech", "Visium", "--annotated", "--confirm-above", "1KB"])
    assert rc == 1
    assert "--yes" in capsys.readouterr().err
    assert hub.downloads() == [META]  # only the catalogue was fetched
    rc = main(["download", str(root), "--tech", "Visium", "--annotated", "--confirm-above", "1KB", "--yes"])
    assert rc == 0
    assert local_files(root) == slide_files(PLUS) | slide_files(GEO_A) | {META}
    # nothing selected: refuse rather than fetch 0.5 TB
    assert main(["download", str(tmp_path / "x")]) == 1
    assert "--all" in capsys.readouterr().err
    # dry run lists the files and downloads nothing
    hub.clear()
    capsys.readouterr()
    assert main(["download", str(tmp_path / "dry"), "--slide", HD, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert repo_path(HD, "VisiumHD", "counts") in out and hub.downloads() == []


def test_cli_unknown_slide_is_one_line_error(release, fake_hub, tmp_path, capsys):
    fake_hub(release)
    rc = main(["download", str(tmp_path / "root"), "--slide", "Mouse_Brain_Synth_03292024_VisiumHD", "--yes"])
    assert rc == 1
    err = capsys.readouterr().err
    assert HD in err and "Traceback" not in err
