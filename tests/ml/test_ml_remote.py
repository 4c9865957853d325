"""ml and tl on stores read straight from the (loopback fake) Hub: the same results as on local copies."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

REPO = "me/stores"
SLIDES = ("GSE000001_GSM0000001", "Mouse_Brain_Synth_03292024_VIsiumHD")


@pytest.fixture
def served(sample_stores, tmp_path):
    folder = tmp_path / "served"
    for s in SLIDES:
        shutil.copytree(sample_stores[s], folder / f"{s}.zarr")
    return folder


@pytest.mark.slow
def test_patches_and_export_from_hf_urls_equal_local(served, fake_hub, tmp_path):
    import stimage_sd as ssd
    from stimage_sd.ml import PatchDataset, export_patches

    fake_hub(served, repo_id=REPO)
    urls = [ssd.hub.store_url(s, REPO) for s in SLIDES]
    local = [served / f"{s}.zarr" for s in SLIDES]
    opts = dict(size_um=112, px=32, genes="hvg", n_hvg=8)
    remote_ds, local_ds = PatchDataset(urls, **opts), PatchDataset(local, **opts)
    assert len(remote_ds) == len(local_ds)
    idx = list(range(0, len(local_ds), 37))
    for a, b in zip(remote_ds.__getitems__(idx), local_ds.__getitems__(idx), strict=True):
        assert (a["slide"], a["spot_id"]) == (b["slide"], b["spot_id"])
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_allclose(a["target"], b["target"], rtol=1e-6)
    out = export_patches(urls, tmp_path / "remote.zarr", progress=False, **opts)
    ref = export_patches(local, tmp_path / "local.zarr", progress=False, **opts)
    r, lo = PatchDataset(out), PatchDataset(ref)
    assert len(r) == len(lo)
    for a, b in zip(r.__getitems__(idx), lo.__getitems__(idx), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.slow
def test_tl_on_a_remote_store_equals_local(served, fake_hub):
    import spatialdata as sd

    import stimage_sd as ssd

    fake_hub(served, repo_id=REPO)
    remote = ssd.io.read(ssd.hub.store_url(SLIDES[0], REPO))
    local = sd.read_zarr(served / f"{SLIDES[0]}.zarr")
    for data in (remote, local):
        ssd.tl.spatial_graph(data)
    a, b = remote.tables["table"], local.tables["table"]
    key = next(k for k in b.obsp if "connectivities" in k)
    assert (a.obsp[key] != b.obsp[key]).nnz == 0
