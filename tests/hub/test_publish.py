"""``publish`` to the loopback fake Hub with the real ``huggingface_hub`` client, then read back in place.

The fake Hub answers every file as a regular (non-LFS, non-Xet) upload, so file contents
travel base64-encoded inside the commit payload: that is the path ``huggingface_hub``
takes for small files; the Xet transfer of large files is not faked.
"""

from __future__ import annotations

import json
import shutil

import pytest

from stimage_sd.cli import main
from stimage_sd.errors import StimageError

pytestmark = pytest.mark.slow

REPO = "me/stores"
SLIDES = ("GSE000001_GSM0000001", "Human_Breast_Synth_10142021_ST_A1")


@pytest.fixture
def stores(sample_stores, tmp_path):
    folder = tmp_path / "stores"
    for s in SLIDES:
        shutil.copytree(sample_stores[s], folder / f"{s}.zarr")
    return folder


def test_dry_run_lists_every_file(stores, capsys):
    import stimage_sd as ssd

    plan = ssd.hub.publish(stores, REPO, dry_run=True)
    local = {f"{p.relative_to(stores).as_posix()}" for p in stores.rglob("*") if p.is_file()}
    assert {path for _, path, _ in plan.files} == local | {"manifest.json", "README.md"}
    assert set(plan.manifest["slides"]) == set(SLIDES)
    # the card: contract, manifest rows, release citation and each study's pmid/title
    card = plan.card
    assert "## Data contract" in card and "STimage-1K4M" in card and "2406.06393" in card
    for s in SLIDES:
        attrs = ssd.io.read(stores / f"{s}.zarr", selection=("tables",)).attrs["stimage"]
        assert f"| [{s}]({s}.zarr)" in card
        for pmid in str(attrs["pmid"]).split(","):
            assert f"https://pubmed.ncbi.nlm.nih.gov/{pmid.strip()}/" in card
        assert str(attrs["title"])[:40] in card
    assert main(["publish", str(stores), "--repo", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{SLIDES[0]}.zarr/zarr.json" in out and "README.md" in out


def test_incomplete_store_is_refused(stores):
    import stimage_sd as ssd
    from stimage_sd.io._transaction import set_marker

    set_marker(stores / f"{SLIDES[1]}.zarr", False)
    with pytest.raises(StimageError, match="not a complete converted store"):
        ssd.hub.publish(stores, REPO, dry_run=True)
    assert main(["publish", str(stores), "--repo", REPO]) == 1


@pytest.mark.slow
def test_publish_then_read_in_place_and_resume(stores, fake_hub, tmp_path):
    import spatialdata as sd

    import stimage_sd as ssd

    served = tmp_path / "repo"
    served.mkdir()
    hub = fake_hub(served, repo_id=REPO, lfs_min_size=1 << 40)
    plan = ssd.hub.publish(stores, REPO)
    assert len(plan.commits) == len(SLIDES) + 1
    # the repository now holds exactly the stores, the manifest and the card
    for s in SLIDES:
        for p in (stores / f"{s}.zarr").rglob("*"):
            if p.is_file():
                rel = p.relative_to(stores).as_posix()
                assert (served / rel).read_bytes() == p.read_bytes(), rel
    manifest = json.loads((served / "manifest.json").read_text())
    assert set(manifest["slides"]) == set(SLIDES)
    assert (served / "README.md").read_text() == plan.card
    # readable in place through hf://
    remote = ssd.io.read(ssd.hub.store_url(SLIDES[0], REPO))
    local = sd.read_zarr(stores / f"{SLIDES[0]}.zarr")
    assert (remote.tables["table"].X != local.tables["table"].X).nnz == 0
    # a second run (as after an interruption) sends no file again
    n_commits = len(hub.committed)
    ssd.hub.publish(stores, REPO)
    sent_again = [p for batch in hub.committed[n_commits:] for p in batch]
    assert sent_again == []
