"""Converted stores read in place over ``hf://``, ``http://`` and ``file://`` (loopback fake Hub).

Every byte is counted by the fake Hub (file content *and* API listings); the oracle of
the content is :func:`spatialdata.read_zarr` on the local copy of the same store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stimage_sd.errors import IncompleteStoreError, StimageError

pytestmark = pytest.mark.slow

REPO = "me/stores"
VISIUM = "GSE000001_GSM0000001"
PLUS = "Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm"


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def served(sample_stores, tmp_path):
    """A folder holding copies of two converted sample stores (what a published repo holds)."""
    folder = tmp_path / "served"
    for slide in (VISIUM, PLUS):
        shutil.copytree(sample_stores[slide], folder / f"{slide}.zarr")
    return folder


def _assert_same(remote, local) -> None:
    import scipy.sparse as sp
    from spatialdata.transformations import get_transformation

    rt, lt = remote.tables["table"], local.tables["table"]
    assert sp.issparse(rt.X) and (rt.X != lt.X).nnz == 0
    assert rt.obs.equals(lt.obs) and rt.var.equals(lt.var)
    np.testing.assert_array_equal(rt.obsm["spatial"], lt.obsm["spatial"])
    assert rt.uns["stimage"]["slide"] == lt.uns["stimage"]["slide"]
    assert rt.uns["spatialdata_attrs"] == lt.uns["spatialdata_attrs"]
    assert remote.shapes["spots"].geom_equals(local.shapes["spots"]).all()
    np.testing.assert_array_equal(remote.shapes["spots"]["radius"], local.shapes["spots"]["radius"])
    for name, el in (("he", remote.images["he"]), ("spots", remote.shapes["spots"])):
        other = local.images["he"] if name == "he" else local.shapes["spots"]
        assert get_transformation(el, get_all=True) == get_transformation(other, get_all=True)
    ri, li = remote.images["he"], local.images["he"]
    assert list(ri.keys()) == list(li.keys())
    last = list(li.keys())[-1]
    np.testing.assert_array_equal(ri[last]["image"].values, li[last]["image"].values)
    assert remote.attrs["stimage"] == local.attrs["stimage"]


@pytest.mark.slow
def test_hf_store_reads_like_the_local_copy(served, fake_hub):
    import spatialdata as sd

    import stimage_sd as ssd

    hub = fake_hub(served, repo_id=REPO)
    for slide in (VISIUM, PLUS):
        url = ssd.hub.store_url(slide, REPO)
        remote = ssd.io.read(url, storage_options=ssd.hub.storage_options())
        _assert_same(remote, sd.read_zarr(served / f"{slide}.zarr"))
        # images stay lazy: opening fetched no level-0 chunk
        level0 = (f"{slide}.zarr/images/he/0/", f"{slide}.zarr/images/he/s0/")
        assert (served / f"{slide}.zarr" / "images" / "he" / "s0").is_dir()
        assert not [p for p in hub.downloads() if p.startswith(level0) and not p.endswith("zarr.json")]
        assert ssd.io.is_complete(url)
        report = ssd.io.validate(url)
        assert report.ok, str(report)
    from stimage_sd.cli import main

    assert main(["validate", ssd.hub.store_url(VISIUM, REPO), str(served / f"{PLUS}.zarr")]) == 0
    # the environment alone (HF_ENDPOINT) also works, and so does the hub helper
    assert ssd.hub.read_store(VISIUM, REPO).tables["table"].n_obs == sd.read_zarr(served / f"{VISIUM}.zarr").tables["table"].n_obs


def test_file_url_and_incomplete_store(served):
    import spatialdata as sd

    import stimage_sd as ssd
    from stimage_sd.io._transaction import set_marker

    path = served / f"{VISIUM}.zarr"
    _assert_same(ssd.io.read(path.as_uri()), sd.read_zarr(path))
    set_marker(path, False)
    assert not ssd.io.is_complete(path.as_uri())
    with pytest.raises(IncompleteStoreError, match="completion marker"):
        ssd.io.read(path.as_uri())
    report = ssd.io.validate(path.as_uri())
    assert not report.ok and any(p.check == "marker" for p in report.problems)
    with pytest.raises(StimageError, match="no zarr store"):
        ssd.io.read((served / "nothing.zarr").as_uri())


def test_offline_refuses_hf_urls(monkeypatch):
    import stimage_sd as ssd

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StimageError, match="offline"):
        ssd.io.read("hf://datasets/me/stores/x.zarr")
    with pytest.raises(StimageError, match="offline"):
        ssd.hub.storage_options()


def _big_image_store(path: Path, side: int, chunk: int) -> Path:
    """A store whose image has the chunk grid of a 20k² slide at 1024² chunks (~400 chunks at level 0)."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    import stimage_sd as ssd

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, side, side), dtype=np.uint8)
    image = Image2DModel.parse(img, dims=("c", "y", "x"), scale_factors=[2, 2, 2, 2], chunks=(3, chunk, chunk))
    sdata = sd.SpatialData(images={"he": image})
    return ssd.io.write(sdata, path)


@pytest.mark.slow
def test_one_patch_transfers_a_small_fraction(tmp_path, fake_hub):
    """One 224 px patch of a store with 400 level-0 chunks (as 20k² at 1024²): < 5 % of the bytes."""
    import stimage_sd as ssd

    folder = tmp_path / "served"
    store = _big_image_store(folder / "big.zarr", side=2560, chunk=128)
    total = _tree_bytes(store)
    hub = fake_hub(folder, repo_id=REPO)
    sdata = ssd.io.read(f"hf://datasets/{REPO}/big.zarr")
    opened = hub.bytes_sent()
    hub.clear()
    patch = sdata.images["he"]["scale0"]["image"][:, 1000:1224, 1500:1724].values
    fetched = hub.bytes_sent()
    local = np.asarray(ssd.io.read(store).images["he"]["scale0"]["image"][:, 1000:1224, 1500:1724])
    np.testing.assert_array_equal(patch, local)
    print(f"store {total} B, open {opened} B ({opened / total:.2%}), patch {fetched} B ({fetched / total:.2%})")
    assert (opened + fetched) / total < 0.05


def _rendered_he_store(path: Path, side: int, chunk: int) -> Path:
    """A store holding a generated H&E image of about ``side``² (tissue and white background, as
    :func:`stimage_sd.datasets.make_slide` renders it), written by the converter's pyramid writer
    (:func:`stimage_sd.io._pyramid.multiscale_image`, its codec) at ``chunk``² chunks."""
    import spatialdata as sd

    import stimage_sd as ssd
    from stimage_sd.datasets import SlideSpec
    from stimage_sd.datasets._geometry import build_layout
    from stimage_sd.datasets._image import ImageRenderer
    from stimage_sd.io._pyramid import multiscale_image

    spec = SlideSpec("GSE000003_GSM0000030", "Visium", um_per_px=6650 / side)
    renderer = ImageRenderer(spec, build_layout(spec))
    image = multiscale_image(renderer.lazy(chunk).transpose(2, 0, 1), chunk=chunk)
    return ssd.io.write(sd.SpatialData(images={"he": image}), path)


@pytest.mark.slow
def test_one_patch_of_a_rendered_slide_transfers_a_small_fraction(tmp_path, fake_hub):
    """As above with realistic content: white background compresses to little, so tissue chunks
    are larger than average. The 224 px patch sits on the largest level-0 chunk and spans 3 x 3
    chunks of 128² (at the converter's 1024² chunks of a 20k² image it spans 1-4 of 400)."""
    import stimage_sd as ssd

    folder = tmp_path / "served"
    store = _rendered_he_store(folder / "he.zarr", side=2560, chunk=128)
    total = _tree_bytes(store)
    level0 = store / "images" / "he" / "s0"
    biggest = max((p for p in level0.rglob("*") if p.is_file() and p.name != "zarr.json"), key=lambda p: p.stat().st_size)
    cy, cx = (int(v) for v in biggest.relative_to(level0).parts[-2:])
    y0, x0 = cy * 128 + 100, cx * 128 + 100
    hub = fake_hub(folder, repo_id=REPO)
    sdata = ssd.io.read(f"hf://datasets/{REPO}/he.zarr")
    opened = hub.bytes_sent()
    hub.clear()
    img = sdata.images["he"]["scale0"]["image"]
    assert img.shape[1] >= 2500 and img.shape[2] >= 2500
    patch = img[:, y0 : y0 + 224, x0 : x0 + 224].values
    fetched = hub.bytes_sent()
    local = np.asarray(ssd.io.read(store).images["he"]["scale0"]["image"][:, y0 : y0 + 224, x0 : x0 + 224])
    np.testing.assert_array_equal(patch, local)
    assert patch.shape == (3, 224, 224) and patch.std() > 10  # tissue, not background
    print(f"store {total} B, open {opened} B ({opened / total:.2%}), patch {fetched} B ({fetched / total:.2%})")
    assert (opened + fetched) / total < 0.05


@pytest.mark.slow
def test_one_gene_of_a_100k_bin_table(tmp_path, fake_hub):
    """Reading the table only never touches shapes or image; X is CSR, so one gene costs the whole X.

    (The gene index is the cheap way: :func:`test_one_gene_through_the_gene_index`.)
    """
    import anndata as ad
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel

    import stimage_sd as ssd

    n, g = 100_000, 8
    rng = np.random.default_rng(1)
    X = sp.random(n, g, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 5).astype(np.float32)
    xy = np.stack(np.divmod(np.arange(n), 400), axis=1).astype(float) * 10
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(n, 5.0))
    obs = {"region": ["spots"] * n, "spot_id": np.arange(n)}
    import pandas as pd

    table = TableModel.parse(
        ad.AnnData(X=X, obs=pd.DataFrame(obs, index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"G{j}" for j in range(g)])),
        region="spots", region_key="region", instance_key="spot_id",
    )
    table.obs["region"] = table.obs["region"].astype("category")
    folder = tmp_path / "served"
    store = _big_image_store(folder / "hd.zarr", side=1024, chunk=256)
    full = sd.read_zarr(store)
    full.shapes["spots"] = shapes
    full.tables["table"] = table
    store = ssd.io.write(full, folder / "hd2.zarr")
    shutil.rmtree(folder / "hd.zarr")
    sizes = {k: _tree_bytes(store / k) for k in ("images", "shapes", "tables")}
    hub = fake_hub(folder, repo_id=REPO)
    t = ssd.io.read(f"hf://datasets/{REPO}/hd2.zarr", selection=("tables",)).tables["table"]
    gene = np.asarray(t[:, "G3"].X.todense()).ravel()
    np.testing.assert_array_equal(gene, np.asarray(X[:, 3].todense()).ravel())
    fetched = hub.bytes_sent()
    got = hub.downloads()
    assert not [p for p in got if ("/images/" in p or "/shapes/" in p) and not p.endswith("zarr.json")]
    print(f"sizes {sizes}; fetched {fetched} B = {fetched / sizes['tables']:.2f} x the table")
    assert fetched < 1.25 * sizes["tables"] + 64 * 1024


@pytest.mark.slow
def test_one_gene_through_the_gene_index(hd_store, tmp_path, fake_hub):
    """Open a 100k-bin HD store and read one gene for all bins: < 5 % of the store's bytes.

    The store has no image (a converted HD slide's image would make the fraction far smaller):
    table, shapes and gene index only. Both the densest gene and a median one, over ``hf://``
    (HfFileSystem) and plain ``https://``-style URLs (fsspec's HTTPFileSystem); every byte the
    fake Hub sends is counted (metadata, obs/var, listings included). Oracle: ``X[:, gene]`` of
    :func:`spatialdata.read_zarr` on the local copy.
    """
    import spatialdata as sd

    import stimage_sd as ssd

    folder = tmp_path / "served"
    store = folder / hd_store.name
    shutil.copytree(hd_store, store)
    total = _tree_bytes(store)
    local = sd.read_zarr(store).tables["table"]
    assert local.n_obs >= 100_000
    per_gene = np.diff(local.X.tocsc().indptr)
    dense, median = int(np.argmax(per_gene)), int(np.argsort(per_gene)[len(per_gene) // 2])
    hub = fake_hub(folder, repo_id=REPO)
    urls = (f"hf://datasets/{REPO}/{store.name}", _url(hub, store.name))
    for j in (dense, median):
        gene = str(local.var_names[j])
        for url in urls:
            hub.clear()
            got = ssd.io.read_genes(url, gene)
            fetched = hub.bytes_sent()
            assert got.shape == (local.n_obs, 1) and got.obs.equals(local.obs)
            assert (got.X != local.X[:, [j]]).nnz == 0
            pulled = [p for p in hub.downloads() if "/tables/table/X/" in p or "/shapes/" in p]
            assert not pulled, pulled  # opening does not pull the table's matrix
            print(f"{url.split(':')[0]} gene {gene} ({per_gene[j]} bins): {fetched} B of {total} "
                  f"= {fetched / total:.2%}")
            assert fetched / total < 0.05
    hub.clear()
    ssd.io.read(urls[0], selection=("tables",))
    print(f"whole table read instead: {hub.bytes_sent()} B = {hub.bytes_sent() / total:.1%} of the store")


def _url(hub, path: str) -> str:
    return f"{hub.endpoint}/datasets/{REPO}/resolve/main/{path}"


def _level0_chunk(store: Path) -> str:
    level0 = next(p for p in (store / "images" / "he").iterdir() if p.name in ("0", "s0"))
    chunks = sorted(p for p in level0.rglob("*") if p.is_file() and p.name != "zarr.json")
    return chunks[0].relative_to(store.parent).as_posix()


@pytest.mark.slow
def test_cut_connection_raises_then_a_retry_succeeds(tmp_path, fake_hub):
    """Plain HTTP (no client-side retry): the cut is a clear RemoteReadError; reading again works."""
    import stimage_sd as ssd
    from stimage_sd.errors import RemoteReadError

    folder = tmp_path / "served"
    store = _big_image_store(folder / "big.zarr", side=1024, chunk=256)
    hub = fake_hub(folder, repo_id=REPO)
    sdata = ssd.io.read(_url(hub, "big.zarr"))
    chunk = _level0_chunk(store)
    hub.cut_after[chunk] = 1000
    img = sdata.images["he"]["scale0"]["image"]
    with pytest.raises(RemoteReadError, match="reading again is safe"):
        _ = img[:, :256, :256].values
    again = img[:, :256, :256].values
    np.testing.assert_array_equal(again, np.asarray(ssd.io.read(store).images["he"]["scale0"]["image"][:, :256, :256]))


@pytest.mark.slow
def test_cut_connection_over_hf_is_retried_by_the_client(tmp_path, fake_hub):
    import stimage_sd as ssd

    folder = tmp_path / "served"
    store = _big_image_store(folder / "big.zarr", side=1024, chunk=256)
    hub = fake_hub(folder, repo_id=REPO)
    sdata = ssd.io.read(f"hf://datasets/{REPO}/big.zarr")
    chunk = _level0_chunk(store)
    hub.cut_after[chunk] = 1000
    got = sdata.images["he"]["scale0"]["image"][:, :256, :256].values
    np.testing.assert_array_equal(got, np.asarray(ssd.io.read(store).images["he"]["scale0"]["image"][:, :256, :256]))
    sent = [r.bytes_sent for r in hub.requests if r.path == chunk and r.method == "GET" and r.status in (200, 206)]
    assert sent[0] == 1000 and len(sent) >= 2  # cut once, then fetched again
