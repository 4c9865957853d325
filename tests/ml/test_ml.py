"""Training patches: export geometry, targets, the patch store, the lazy dataset, the CLI."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata as sd
from PIL import Image

import stimage_sd as ssd
from stimage_sd._constants import GEOMETRY
from stimage_sd.errors import StimageError
from stimage_sd.ml import EDGE, NO_TISSUE, PatchDataset, export_patches
from stimage_sd.ml._image import tissue_fraction
from stimage_sd.ml._patchstore import PatchWriter

HD = "Mouse_Brain_Synth_03292024_VIsiumHD"
ST = "Human_Breast_Synth_10142021_ST_A1"
GEO = "GSE000001_GSM0000001"  # annotated (TLS labels), RGBA PNG
VIS = "Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm"  # annotated, JPEG


# ---------------------------------------------------------------------------- helpers
def _image(store: Path) -> np.ndarray:
    """Level 0 of a converted slide's image as (y, x, 3), read back with spatialdata."""
    s = sd.read_zarr(store, selection=("images",))
    return np.moveaxis(s.images["he"]["scale0"]["image"].values, 0, -1)


def _table(store: Path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The table is annotating")
        return sd.read_zarr(store, selection=("tables",)).tables["table"]


def _padded_crop(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    out = np.full((side, side, 3), 255, dtype=np.uint8)
    h, w = img.shape[:2]
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + side, h), min(x0 + side, w)
    if ys < ye and xs < xe:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = img[ys:ye, xs:xe]
    return out


def _items(ds: PatchDataset, step: int = 1) -> list[dict]:
    idx = list(range(0, len(ds), step))
    return [item for k in range(0, len(idx), 512) for item in ds.__getitems__(idx[k : k + 512])]


@pytest.fixture(scope="module")
def store(sample_stores, tmp_path_factory) -> Path:
    """A patch store of every sample slide: 112 µm at 32 px (3.5 µm/px), per-slide HVGs."""
    out = tmp_path_factory.mktemp("patches") / "patches.zarr"
    return export_patches(sample_stores, out, size_um=112, px=32, genes="hvg", n_hvg=16, progress=False)


# ---------------------------------------------------------------------------- geometry
@pytest.mark.slow
def test_native_resolution_patch_is_the_image_region_pixel_for_pixel(sample_stores, tmp_path):
    # HD sample: 0.5 µm/px, so 48 µm at 96 px is the image's own resolution (no resampling)
    out = export_patches(sample_stores[HD], tmp_path / "p.zarr", size_um=48, px=96, n_hvg=4, progress=False)
    ds = PatchDataset(out)
    table = _table(sample_stores[HD])
    xy = dict(zip(table.obs_names, np.asarray(table.obsm["spatial"]), strict=True))
    img = _image(sample_stores[HD])
    assert len(ds) == table.n_obs
    rec = ds._backend.records[0]
    assert rec["resampled"] is False and rec["level"] == 0
    n_edge = 0
    for item in _items(ds, step=3):
        x, y = xy[item["spot_id"]]  # the spot's centre from the slide's own table
        x0, y0 = math.floor(x - 48 + 0.5), math.floor(y - 48 + 0.5)
        np.testing.assert_array_equal(item["image"], _padded_crop(img, x0, y0, 96))
        leaves = x0 < 0 or y0 < 0 or x0 + 96 > img.shape[1] or y0 + 96 > img.shape[0]
        assert bool(item["flags"] & EDGE) == leaves
        n_edge += leaves
    assert n_edge > 0  # bins at the border: padded with white and flagged


def test_native_mode_reproduces_the_release_pil_crop(sample_root, sample_stores, tmp_path):
    # the release recipe: PIL open + img.crop((x - r, y - r, x + r, y + r)); HD r = 8 px
    out = export_patches(sample_stores[HD], tmp_path / "n.zarr", mode="native", px=16, progress=False)
    ds = PatchDataset(out)
    coords = pd.read_csv(sample_root / "VisiumHD" / "coord" / f"{HD}_coord.csv", index_col=0)
    with Image.open(sample_root / "VisiumHD" / "image" / f"{HD}.png") as im:
        rgb = im.convert("RGB")
        for item in _items(ds, step=11):
            c = coords.loc[item["spot_id"]]
            crop = rgb.crop((c.xaxis - c.r, c.yaxis - c.r, c.xaxis + c.r, c.yaxis + c.r))
            np.testing.assert_array_equal(item["image"], np.asarray(crop))


@pytest.mark.parametrize(("slide", "pyramid", "mean_tol", "max_tol"), [(ST, False, 0.1, 1), (GEO, False, 0.1, 1), (HD, True, 1.5, 24)])
def test_resampled_patch_matches_reference_resampling(sample_stores, tmp_path, slide, pyramid, mean_tol, max_tol):
    # reference: PIL bilinear resize of the whole level-0 image with the patch's box
    out = export_patches(
        sample_stores[slide], tmp_path / "r.zarr", size_um=112, px=48, pyramid=pyramid, genes="hvg", n_hvg=4, progress=False
    )
    ds = PatchDataset(out, exclude=["edge"])
    table = _table(sample_stores[slide])
    ump = float(table.uns["stimage"]["um_per_px"])
    side = 112 / ump
    xy = dict(zip(table.obs_names, np.asarray(table.obsm["spatial"]), strict=True))
    pil = Image.fromarray(_image(sample_stores[slide]))
    rec = ds._backend.records[0]
    assert rec["resampled"] and rec["level"] == (1 if pyramid else 0)
    diffs = []
    for item in _items(ds, step=max(1, len(ds) // 40)):
        x, y = xy[item["spot_id"]]
        box = (x - side / 2, y - side / 2, x + side / 2, y + side / 2)
        ref = np.asarray(pil.resize((48, 48), Image.Resampling.BILINEAR, box=box)).astype(int)
        diffs.append(np.abs(item["image"].astype(int) - ref))
    d = np.stack(diffs)
    assert d.mean() <= mean_tol and d.max() <= max_tol


def _pattern(xu: np.ndarray, yu: np.ndarray) -> np.ndarray:
    """An RGB image defined in micrometres (periods 37, 23 and 51 µm)."""
    r = 128 + 90 * np.sin(2 * np.pi * xu / 37.0)
    g = 128 + 90 * np.sin(2 * np.pi * yu / 23.0)
    b = 128 + 60 * np.sin(2 * np.pi * (xu + yu) / 51.0)
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1)


def _physical_store(root: Path, slide: str, tech: str, ump: float, grid: tuple[int, int]) -> Path:
    """A converted slide whose image is :func:`_pattern` sampled at ``ump`` µm/px."""
    import dask.array as da

    from stimage_sd.io import Counts, build_sdata, write

    g = GEOMETRY[tech]
    pitch = g.pitch_um / ump
    margin = 150 / ump
    ids, xs, ys = [], [], []
    for i in range(grid[0]):
        for j in range(grid[1]):
            if tech == "Visium":
                x, y = margin + (j + 0.5 * (i % 2)) * pitch, margin + i * pitch * math.sqrt(3) / 2
                ids.append(f"{slide}_{i:03d}{j:03d}ACGT-1")
            elif tech == "ST":
                x, y = margin + j * pitch, margin + i * pitch
                ids.append(f"{slide}_{j + 1}x{i + 1}")
            else:
                x, y = margin + j * pitch, margin + i * pitch
                ids.append(f"{slide}_s_008um_{i:05d}_{j:05d}-1")
            xs.append(x)
            ys.append(y)
    w = math.ceil(max(xs) + margin)
    h = math.ceil(max(ys) + margin)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.rint(_pattern((xx + 0.5) * ump, (yy + 0.5) * ump)).astype(np.uint8)
    coords = pd.DataFrame({"x": xs, "y": ys, "r": g.radius_um / ump}, index=pd.Index(ids))
    rng = np.random.default_rng(0)
    counts = Counts(
        X=sp.csr_matrix(rng.poisson(2.0, (len(ids), 30)).astype(np.int32)),
        spot_ids=np.asarray(ids, dtype=object),
        genes=np.asarray([f"G{k}" for k in range(30)], dtype=object),
    )
    sdata = build_sdata(
        slide=slide, tech=tech, coords=coords, counts=counts,
        image=da.from_array(np.moveaxis(img, -1, 0), chunks=(3, 1024, 1024)),
    )
    return write(sdata, root / f"{slide}.zarr")


@pytest.mark.slow
def test_physical_size_is_the_same_across_st_visium_and_hd(tmp_path):
    # the same µm-defined pattern imaged at different resolutions: every 112 µm / 224 px
    # patch must show the pattern at 0.5 µm/px around the spot, whatever the technology
    specs = [("phys_ST", "ST", 0.25, (2, 2)), ("phys_Visium", "Visium", 2.0, (4, 4)), ("phys_HD", "VisiumHD", 0.35, (4, 4))]
    stores = [_physical_store(tmp_path, *s) for s in specs]
    true_ump = {s[0]: s[2] for s in specs}
    out = export_patches(stores, tmp_path / "phys.zarr", size_um=112, px=224, genes="intersection", progress=False)
    wrong = export_patches(stores, tmp_path / "wrong.zarr", size_um=100, px=224, genes="intersection", progress=False)
    ds, ds_wrong = PatchDataset(out, exclude=["edge"]), PatchDataset(wrong, exclude=["edge"])
    wrong_of = {item["spot_id"]: item["image"] for item in _items(ds_wrong)}
    records = {r["slide"]: r for r in ds._backend.records}
    assert {r["level"] for r in records.values()} == {0, 1}  # ST is read from pyramid level 1
    errs: dict[str, list[float]] = {}
    obs = ds.obs
    for i, item in enumerate(_items(ds)):
        slide = item["slide"]
        ump = true_ump[slide]
        x, y = obs.loc[i, ["x", "y"]]
        u = (np.arange(224) + 0.5) * 0.5 - 56  # output pixel centres, µm from the spot centre
        ref = _pattern(x * ump + u[None, :], y * ump + u[:, None])
        assert records[slide]["source_px"] * records[slide]["um_per_px"] == pytest.approx(112)
        errs.setdefault(slide, []).append(float(np.abs(item["image"] - ref).mean()))
        bad = np.abs(wrong_of[item["spot_id"]] - ref).mean()
        assert bad > 10  # a patch of the wrong physical size does not pass
    assert set(errs) == set(true_ump)
    for slide, e in errs.items():
        assert max(e) < 2.5, (slide, max(e))


# ---------------------------------------------------------------------------- targets
def test_targets_and_labels_line_up_with_their_spot(store, sample_stores):
    ds = PatchDataset(store)
    assert len(ds) == sum(_table(p).n_obs for p in sample_stores.values())
    for slide, path in sample_stores.items():
        table = _table(path)
        genes = ds.genes_of(slide)
        assert len(genes) == 16
        X = table.X.tocsr()
        lib = np.asarray(X.sum(axis=1)).ravel()
        sel = np.flatnonzero(ds.obs["slide"] == slide)
        for i in sel[:: max(1, len(sel) // 25)]:
            item = ds[int(i)]
            r = table.obs_names.get_loc(item["spot_id"])
            raw = X[r][:, table.var_names.get_indexer(genes)].toarray().ravel()
            expected = np.log1p(raw / lib[r] * 1e4) if lib[r] > 0 else np.zeros(len(genes))
            np.testing.assert_allclose(item["target"], expected, rtol=1e-5, atol=1e-6)
            assert ds.obs.loc[int(i), "row"] == r
            if "annotation" in table.obs:
                lab = table.obs["annotation"].iloc[r]
                assert item["label"] == ("" if pd.isna(lab) else str(lab))
            else:
                assert item["label"] == ""


def test_counts_targets_for_a_gene_list_and_missing_genes(sample_stores, tmp_path):
    t = _table(sample_stores[GEO])
    genes = [*list(t.var_names[[3, 10, 50]]), "NOT_A_GENE"]
    out = export_patches(sample_stores[GEO], tmp_path / "c.zarr", size_um=112, px=16, genes=genes, target="counts", progress=False)
    ds = PatchDataset(out)
    assert ds.genes == genes
    X = t.X.tocsr()
    for item in _items(ds, step=50):
        r = t.obs_names.get_loc(item["spot_id"])
        np.testing.assert_array_equal(item["target"][:3], X[r][:, [3, 10, 50]].toarray().ravel())
        assert np.isnan(item["target"][3])


def test_intersection_panel_is_common_to_the_slides(sample_stores, tmp_path):
    two = [sample_stores[GEO], sample_stores[ST]]  # both human
    out = export_patches(two, tmp_path / "i.zarr", size_um=112, px=16, genes="intersection", progress=False)
    expected = set(_table(two[0]).var_names) & set(_table(two[1]).var_names)
    ds = PatchDataset(out)
    assert set(ds.genes) == expected and len(ds.genes) == len(expected)
    assert ds[0]["target"].shape == (len(expected),)
    # mouse and human slides share no gene: a clear error, not an empty panel
    with pytest.raises(StimageError, match="no gene in common"):
        export_patches([sample_stores[GEO], sample_stores[HD]], tmp_path / "x.zarr", genes="intersection", progress=False)


# ---------------------------------------------------------------------------- store
def test_store_reads_back_with_zarr_and_records_slides(store, sample_stores):
    import zarr

    g = zarr.open_group(str(store), mode="r")
    attrs = g.attrs.asdict()["stimage_patches"]
    n = attrs["n"]
    assert g["patches"].shape == (n, 32, 32, 3) and g["patches"].dtype == np.uint8
    assert g["targets"].shape == (n, 16)
    assert [r["slide"] for r in attrs["slides"]] == list(sample_stores)
    assert attrs["slides"][-1]["stop"] == n
    starts = [r["start"] for r in attrs["slides"]]
    assert starts == sorted(starts) and starts[0] == 0
    flags = g["obs/flags"][:]
    for r in attrs["slides"]:
        part = flags[r["start"] : r["stop"]]
        assert r["n_edge"] == int((part & EDGE).astype(bool).sum())
        assert r["n_no_tissue"] == int((part & NO_TISSUE).astype(bool).sum())


def test_edge_drop_and_tissue_flags(sample_stores, tmp_path):
    padded = export_patches(sample_stores[HD], tmp_path / "pad.zarr", size_um=112, px=16, n_hvg=4, progress=False)
    dropped = export_patches(sample_stores[HD], tmp_path / "drop.zarr", size_um=112, px=16, n_hvg=4, edge="drop", progress=False)
    a, b = PatchDataset(padded), PatchDataset(dropped)
    n_edge = int((a.obs["flags"] & EDGE).astype(bool).sum())
    assert n_edge > 0 and len(b) == len(a) - n_edge
    assert b._backend.records[0]["n_dropped"] == n_edge
    assert not (b.obs["flags"] & EDGE).any()
    assert len(PatchDataset(padded, exclude=["edge"])) == len(b)
    assert tissue_fraction(np.full((1, 32, 32, 3), 255, np.uint8))[0] == 0
    obs = a.obs
    assert ((obs["tissue_fraction"] < 0.1) == ((obs["flags"] & NO_TISSUE) > 0)).all()
    tissue = obs["tissue_fraction"][obs["outside_fraction"] == 0]
    assert tissue.median() > 0.5  # bins lie on tissue


def test_rerun_skips_done_slides_and_appends_new_ones(sample_stores, tmp_path):
    out = tmp_path / "a.zarr"
    export_patches(sample_stores[ST], out, size_um=112, px=16, progress=False)
    n1 = len(PatchDataset(out))
    export_patches([sample_stores[ST], sample_stores[GEO]], out, size_um=112, px=16, progress=False)
    ds = PatchDataset(out)
    assert ds.slides == [ST, GEO]
    assert len(ds) == n1 + _table(sample_stores[GEO]).n_obs
    assert not ds.obs.duplicated(["slide", "spot_id"]).any()
    with pytest.raises(StimageError, match="other parameters"):
        export_patches(sample_stores[ST], out, size_um=100, px=16, progress=False)


def test_partial_append_is_cut_and_redone(sample_stores, tmp_path):
    # a writer that dies after writing rows of a slide but before recording it
    out = tmp_path / "p.zarr"
    export_patches(sample_stores[ST], out, size_um=112, px=16, progress=False)
    n1 = len(PatchDataset(out))
    w = PatchWriter(out)
    w.begin(300)
    junk = {
        "slide": np.full(300, 1, np.int32), "row": np.arange(300), "spot_id": np.full(300, "junk"),
        "label": np.full(300, ""), "x": np.zeros(300), "y": np.zeros(300), "flags": np.zeros(300, np.uint8),
        "tissue_fraction": np.zeros(300, np.float32), "outside_fraction": np.zeros(300, np.float32),
    }
    w.write(np.zeros((300, 16, 16, 3), np.uint8), np.zeros((300, w.targets.shape[1]), np.float32), junk)
    w._flush()
    assert w.patches.shape[0] > n1  # rows are on disk, the slide is not recorded
    assert len(PatchDataset(out)) == n1
    export_patches([sample_stores[ST], sample_stores[GEO]], out, size_um=112, px=16, progress=False)
    ds = PatchDataset(out)
    assert len(ds) == n1 + _table(sample_stores[GEO]).n_obs
    assert "junk" not in set(ds.obs["spot_id"])
    assert ds.__getitems__([n1])[0]["image"].any()


@pytest.mark.slow
def test_export_killed_midway_then_rerun_completes_without_duplicates(sample_stores, tmp_path):
    import zarr

    out = tmp_path / "k.zarr"
    stores = [str(sample_stores[s]) for s in (ST, HD)]
    cmd = [sys.executable, "-m", "stimage_sd", "-q", "patches", *stores, str(out), "--size-um", "112", "--px", "32", "--workers", "1"]
    env = {**os.environ, "STIMAGE_SD_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            g = zarr.open_group(str(out), mode="r")
            done = len(g.attrs.asdict()["stimage_patches"]["slides"])
            written = g["patches"].shape[0]
        except Exception:
            time.sleep(0.02)
            continue
        if done == 1 and written > g.attrs.asdict()["stimage_patches"]["n"]:  # the HD slide has begun
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed, f"export finished before it could be interrupted: {proc.stderr.read().decode()[-2000:]}"
    partial = PatchDataset(out)
    assert partial.slides == [ST]
    from stimage_sd.cli import main

    assert main(["-q", "patches", *stores, str(out), "--size-um", "112", "--px", "32"]) == 0
    ds = PatchDataset(out)
    assert ds.slides == [ST, HD]
    total = sum(_table(Path(s)).n_obs for s in stores)
    assert len(ds) == total
    assert not ds.obs.duplicated(["slide", "spot_id"]).any()


def test_bad_inputs_are_refused_with_clear_errors(sample_stores, tmp_path):
    with pytest.raises(StimageError, match="no such store"):
        export_patches(tmp_path / "nope.zarr", tmp_path / "o.zarr", progress=False)
    with pytest.raises(StimageError, match="mode"):
        export_patches(sample_stores[ST], tmp_path / "o.zarr", mode="weird", progress=False)
    (tmp_path / "not_a_store").mkdir()
    (tmp_path / "not_a_store" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(StimageError, match="not a patch store"):
        export_patches(sample_stores[ST], tmp_path / "not_a_store", progress=False)
    # the same store given twice is exported once
    out = export_patches([sample_stores[ST], sample_stores[ST]], tmp_path / "o.zarr", px=8, progress=False)
    assert PatchDataset(out).slides == [ST]


# ---------------------------------------------------------------------------- dataset
def test_dataset_over_slides_equals_the_exported_store(store, sample_stores):
    direct = PatchDataset(sample_stores, size_um=112, px=32, genes="hvg", n_hvg=16)
    exported = PatchDataset(store)
    assert len(direct) == len(exported)
    by_spot = {(s, sid): i for i, (s, sid) in enumerate(zip(direct.obs["slide"], direct.obs["spot_id"], strict=True))}
    for i in range(0, len(exported), 97):
        a = exported[i]
        b = direct[by_spot[(a["slide"], a["spot_id"])]]
        assert isinstance(b["image"], np.ndarray) and b["image"].dtype == np.uint8
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_allclose(a["target"], b["target"], rtol=1e-6)
        assert (a["label"], a["flags"]) == (b["label"], b["flags"])


def test_split_selection_from_catalog_split_and_split_file(store, sample_root, tmp_path):
    from stimage_sd.hub import Catalog

    cat = Catalog.from_root(sample_root)
    splits = cat.split(by="slide", fractions=(0.5, 0.5), seed=0)
    for name, ids in splits.items():
        ds = PatchDataset(store, split=name, splits=splits)
        assert set(ds.slides) == set(ids)
        assert set(ds.obs["slide"]) == set(ids)
    for suffix in (".json", ".csv"):
        f = cat.write_split(tmp_path / f"split{suffix}", splits)
        ds = PatchDataset(store, split="train", splits=f)
        assert set(ds.slides) == set(splits["train"])
    with pytest.raises(StimageError, match="no split"):
        PatchDataset(store, split="holdout", splits=splits)


@pytest.mark.slow
def test_dataloader_with_two_workers_sees_every_spot_exactly_once(store):
    torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install stimage-sd[ml]); the dataset itself needs no torch")
    from torch.utils.data import DataLoader

    ds = PatchDataset(store)
    loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    seen, spots = [], []
    for batch in loader:
        assert batch["image"].dtype == torch.uint8 and tuple(batch["image"].shape[1:]) == (32, 32, 3)
        assert batch["target"].shape[1] == 16
        seen.extend(batch["index"].tolist())
        spots.extend(zip(batch["slide"], batch["spot_id"], strict=True))
    assert sorted(seen) == list(range(len(ds)))
    assert len(set(spots)) == len(ds) == len(spots)
    assert set(spots) == set(zip(ds.obs["slide"], ds.obs["spot_id"], strict=True))


# ---------------------------------------------------------------------------- CLI
def test_cli_patches(sample_stores, tmp_path, capsys):
    from stimage_sd.cli import main

    out = tmp_path / "cli.zarr"
    rc = main(["patches", str(sample_stores[GEO]), str(out), "--size-um", "80", "--px", "32", "--genes", "hvg", "--n-hvg", "8"])
    assert rc == 0
    ds = ssd.ml.PatchDataset(out)
    assert ds.params["size_um"] == 80 and ds.params["px"] == 32 and ds[0]["target"].shape == (8,)
    assert "867 patches" in capsys.readouterr().out
    assert main(["patches", str(tmp_path / "missing.zarr"), str(tmp_path / "o.zarr")]) == 1


def test_direct_shard_writes_read_back_with_zarr(tmp_path):
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    from stimage_sd.ml._shards import shard_writer

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    rng = np.random.default_rng(0)
    cases = [
        ("zstd", (60, 8, 8, 3), (3, 8, 8, 3), (12, 8, 8, 3), np.uint8, ZstdCodec(level=1)),
        ("lz4", (60, 8, 8, 3), (1, 8, 8, 3), (12, 8, 8, 3), np.uint8, BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")),
        ("raw", (60, 8, 8, 3), (4, 8, 8, 3), (12, 8, 8, 3), np.uint8, None),
        ("float", (60, 5), (6, 5), (12, 5), np.float32, ZstdCodec(level=1)),
    ]
    for name, shape, chunks, shards, dtype, comp in cases:
        a = g.create_array(name, shape=shape, chunks=chunks, shards=shards, dtype=dtype, compressors=comp)
        write = shard_writer(a)
        assert write is not None, name
        data = (rng.random(shape) * 255).astype(dtype)
        for sh in range(shape[0] // shards[0]):
            write(sh, data[sh * shards[0] : (sh + 1) * shards[0]], None)
        back = zarr.open_array(str(tmp_path / "s.zarr" / name), mode="r")
        np.testing.assert_array_equal(back[:], data)
        np.testing.assert_array_equal(back.get_orthogonal_selection(([59, 2, 31],)), data[[59, 2, 31]])
    # arrays it cannot write (no sharding) are left to zarr
    plain = g.create_array("plain", shape=(10, 4), chunks=(5, 4), dtype=np.uint8)
    assert shard_writer(plain) is None
