"""The synthetic release generator reproduces the release layout and its quirks."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy.spatial import cKDTree

from stimage_sd import datasets
from stimage_sd.datasets import (
    SlideSpec,
    make_release,
    make_slide,
    sample_truth,
    slide_truth,
    write_metadata,
)
from stimage_sd.errors import StimageError
from stimage_sd.io._annotation import read_annotation
from stimage_sd.io._coords import read_coords
from stimage_sd.io._counts import read_counts
from stimage_sd.io._layout import find_metadata, find_slide, list_slides
from stimage_sd.io._metadata import read_metadata

Image.MAX_IMAGE_PIXELS = None
SPECS = {s.slide: s for s in datasets.SAMPLE_SPECS}
MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "tiff": (b"II*\x00", b"MM\x00*")}


@pytest.fixture(scope="module")
def truth(sample_root) -> dict[str, datasets.SlideTruth]:
    return sample_truth(sample_root)


def _small(slide: str = "Human_Test_Synth_01012020_Visium_A1", **kw) -> SlideSpec:
    base = dict(tech="Visium", grid=(8, 10), um_per_px=4.0, n_genes=200, n_domains=3, seed=7)
    base.update(kw)
    return SlideSpec(slide, **base)


def _count_ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        next(fh)
        return [line.split(",", 1)[0] for line in fh]


# ------------------------------------------------------------------------------ layout
def test_sample_layout_and_file_names(sample_root, truth):
    assert set(list_slides(sample_root)) == set(SPECS)
    assert find_metadata(sample_root) == sample_root / "meta" / "meta_all_gene02122025.csv"
    for slide, spec in SPECS.items():
        files = find_slide(sample_root, slide)
        assert files.tech == spec.tech
        assert files.image == sample_root / spec.tech / "image" / f"{slide}.png"
        assert files.coord == sample_root / spec.tech / "coord" / f"{slide}_coord.csv"
        assert files.counts == sample_root / spec.tech / "gene_exp" / f"{slide}_count.csv"
        assert (files.annotation is not None) == spec.annotate
        assert truth[slide].files.coord == files.coord
    # the quirky ids are kept verbatim
    assert any("+" in s and "." in s for s in SPECS)
    assert "Mouse_Brain_Synth_03292024_VIsiumHD" in SPECS
    assert {s.tech for s in SPECS.values()} == {"ST", "Visium", "VisiumHD"}
    assert not list(sample_root.rglob("*.partial"))


def test_sample_is_reused_and_never_clobbers_foreign_folders(sample_root, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in sample_root.rglob("*") if p.is_file()}
    assert datasets.sample(sample_root) == sample_root
    assert {p: p.stat().st_mtime_ns for p in sample_root.rglob("*") if p.is_file()} == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StimageError, match="does not hold the sample"):
        datasets.sample(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------ coords
def test_coord_header_bytes_and_values(sample_root, truth):
    for slide, t in truth.items():
        raw = t.files.coord.read_bytes()
        assert raw.startswith(b",yaxis,xaxis,r\n")
        df = pd.read_csv(t.files.coord, index_col=0)
        assert list(df.columns) == ["yaxis", "xaxis", "r"]
        assert df.index.name is None and df.index.is_unique
        assert (df.dtypes == np.float64).all()
        assert df["r"].nunique() == 1
        assert df["r"].iloc[0] == pytest.approx(SPECS[slide].radius_um / t.um_per_px)
        h, w = t.image_shape
        assert (df.xaxis - df.r >= 0).all() and (df.xaxis + df.r <= w).all()
        assert (df.yaxis - df.r >= 0).all() and (df.yaxis + df.r <= h).all()
        assert list(df.index) == list(t.domains.index)
        # the project's reader agrees (x = xaxis, y = yaxis)
        co = read_coords(t.files.coord)
        np.testing.assert_array_equal(co["x"].to_numpy(), df["xaxis"].to_numpy())


def test_spot_ids_follow_each_technology(truth):
    pats = {
        "Visium": r"_[ACGT]{16}-1",
        "ST": r"_\d+x\d+",
        "VisiumHD": r"_s_008um_\d{5}_\d{5}-1",
    }
    for slide, t in truth.items():
        pat = re.compile(re.escape(slide) + pats[t.tech] + "$")
        ids = t.domains.index
        assert ids.is_unique
        assert all(pat.match(i) for i in ids), slide


def test_nearest_neighbour_spacing_is_the_pitch(truth):
    for slide, t in truth.items():
        df = read_coords(t.files.coord)
        xy = df[["x", "y"]].to_numpy()
        d, _ = cKDTree(xy).query(xy, k=2)
        nn = np.median(d[:, 1])
        expected = SPECS[slide].pitch_um / t.um_per_px
        assert t.pitch_px == pytest.approx(expected)
        tol = 0.03 if t.tech == "ST" else 1e-6  # ST arrays are jittered by ~1 % of the pitch
        assert nn == pytest.approx(expected, rel=tol), slide
    # Visium is a hexagonal grid: 6 neighbours at the pitch for interior spots
    t = next(t for t in truth.values() if t.tech == "Visium")
    xy = read_coords(t.files.coord)[["x", "y"]].to_numpy()
    counts = np.array([len(n) - 1 for n in cKDTree(xy).query_ball_point(xy, t.pitch_px * 1.01)])
    assert counts.max() == 6


# ------------------------------------------------------------------------------ image
def test_image_format_is_detected_from_bytes_not_name(truth):
    for slide, t in truth.items():
        spec = SPECS[slide]
        head = t.files.image.read_bytes()[:8]
        assert t.files.image.suffix == ".png"
        assert head.startswith(MAGIC[spec.image_format]), (slide, head)
        with Image.open(t.files.image) as im:
            assert im.format == {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}[spec.image_format]
            assert im.size == (t.image_shape[1], t.image_shape[0])
            assert im.mode == spec.image_mode


def test_image_looks_like_he_and_follows_domains(truth):
    t = next(t for t in truth.values() if t.spec.domain_layout == "blobs" and t.tech == "Visium")
    with Image.open(t.files.image) as im:
        rgb = np.asarray(im.convert("RGB")).astype(float)
    # background (corner) is near white, tissue is pink/purple (red and blue over green)
    assert rgb[:20, :20].mean() > 230
    df = read_coords(t.files.coord)
    px = rgb[df["y"].round().astype(int), df["x"].round().astype(int)]
    assert (px[:, 0] > px[:, 1]).mean() > 0.8 and (px[:, 2] > px[:, 1]).mean() > 0.8
    # nuclear density differs by domain: tumour (1) spots are darker than stroma (0) spots
    r = int(t.radius_px)
    dark = []
    for x, y in df[["x", "y"]].to_numpy():
        patch = rgb[int(y) - r : int(y) + r, int(x) - r : int(x) + r].mean(axis=2)
        dark.append((patch < 140).mean())
    dark = pd.Series(dark, index=df.index)
    dom = t.domains.loc[df.index]
    assert dark[dom == 1].mean() > 2 * dark[dom == 0].mean()


def test_image_variants_and_tiling_give_the_same_pixels(tmp_path):
    png = make_slide(tmp_path / "a", _small(image_format="png"))
    tif = make_slide(tmp_path / "b", _small(image_format="tiff", tiff_tile=64, tiff_compression="zlib"))
    strip = make_slide(tmp_path / "c", _small(image_format="tiff"))
    ref = np.asarray(Image.open(png.files.image))
    tiled = tifffile.imread(tif.files.image)
    assert tifffile.TiffFile(tif.files.image).pages[0].is_tiled
    np.testing.assert_array_equal(tiled, ref)
    np.testing.assert_array_equal(tifffile.imread(strip.files.image), ref)
    rgb16 = make_slide(tmp_path / "d", _small(image_format="tiff", image_mode="RGB16"))
    a16 = tifffile.imread(rgb16.files.image)
    assert a16.dtype == np.uint16 and a16.shape == (*ref.shape[:2], 3)
    assert np.abs(a16 / 257.0 - ref).max() <= 1.0
    gray = make_slide(tmp_path / "e", _small(image_mode="L"))
    with Image.open(gray.files.image) as im:
        assert im.mode == "L" and im.format == "PNG"
    rgba = make_slide(tmp_path / "f", _small(image_format="tiff", image_mode="RGBA"))
    a = tifffile.imread(rgba.files.image)
    assert a.shape[2] == 4 and (a[..., 3] == 255).all()
    np.testing.assert_array_equal(a[..., :3], ref)
    with pytest.raises(StimageError):
        _small(image_format="png", image_mode="RGB16")


# ------------------------------------------------------------------------------ counts
def test_counts_layout_quirks(truth):
    for slide, t in truth.items():
        spec = SPECS[slide]
        with open(t.files.counts, encoding="utf-8") as fh:
            header = next(fh).rstrip("\n").split(",")
            first = next(fh).rstrip("\n").split(",")
        assert header[0] == ""
        assert header[1:] == t.genes
        assert len(t.genes) == spec.n_genes
        dup = pd.Index(t.genes)[pd.Index(t.genes).duplicated()]
        assert len(dup) == spec.duplicate_genes
        values = first[1:]
        if spec.integer_counts:
            assert all(re.fullmatch(r"\d+", v) for v in values)
        else:
            assert all(re.fullmatch(r"\d+\.0", v) for v in values)
        ids = _count_ids(t.files.counts)
        assert set(ids) == set(t.domains.index) and len(ids) == len(t.domains)
        assert ids != list(t.domains.index)  # row order differs from the coordinate file


def test_gene_names_are_realistic(truth):
    mouse = truth["Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm"].genes
    human = truth["GSE000001_GSM0000001"].genes
    assert sum(g.startswith("mt-") for g in mouse) == 13 and not any(g.startswith("MT-") for g in mouse)
    assert sum(g.startswith("MT-") for g in human) == 13
    assert any(re.fullmatch(r"Rp[sl]\w+", g) for g in mouse)
    assert any(re.fullmatch(r"RP[SL]\w+", g) for g in human)
    assert any(re.fullmatch(r"ENSG\d{11}\.\d+", g) for g in human)
    assert any(re.fullmatch(r"RP\d+-\w+\.\d+", g) for g in human)
    for t in truth.values():
        marker_names = [g for gs in t.markers.values() for g in gs]
        assert len(marker_names) == len(set(marker_names)) == t.spec.n_domains * t.spec.n_markers
        assert set(marker_names) <= set(t.genes)
        assert not set(marker_names) & set(pd.Index(t.genes)[pd.Index(t.genes).duplicated()])


def test_counts_are_sparse_nb_with_domain_markers(truth):
    nnz = {}
    for slide, t in truth.items():
        df = pd.read_csv(t.files.counts, index_col=0)
        assert (df.to_numpy() % 1 == 0).all() and (df.to_numpy() >= 0).all()
        df = df.loc[t.domains.index]
        x = df.to_numpy()
        nnz[t.tech, slide] = (x > 0).mean()
        lib = x.sum(axis=1)
        assert lib.std() / lib.mean() > 0.25  # library size varies
        norm = x / lib[:, None].clip(1) * np.median(lib)
        cols = pd.Index(df.columns)
        for d, genes in t.markers.items():
            idx = [cols.get_loc(g) for g in genes]
            inside = norm[t.domains.to_numpy() == d][:, idx].mean()
            outside = norm[t.domains.to_numpy() != d][:, idx].mean()
            assert inside > 4 * outside, (slide, d)
        mt = [i for i, g in enumerate(df.columns) if g.lower().startswith("mt-")]
        frac = x[:, mt].sum() / x.sum()
        assert 0.01 < frac < 0.3
    for (tech, slide), f in nnz.items():
        lo, hi = {"Visium": (0.05, 0.15), "ST": (0.08, 0.35), "VisiumHD": (0.005, 0.03)}[tech]
        assert lo <= f <= hi, (slide, f)


def test_project_reader_reads_generated_counts(truth):
    t = truth["Human_Breast_Synth_10142021_ST_A1"]
    c = read_counts(t.files.counts)
    df = pd.read_csv(t.files.counts, index_col=0)
    assert list(c.genes) == t.genes
    assert list(c.spot_ids) == list(df.index)
    np.testing.assert_array_equal(c.X.toarray(), df.to_numpy())


# ------------------------------------------------------------------------------ annotation
def test_annotation_quirks(truth):
    for slide, t in truth.items():
        spec = SPECS[slide]
        if not spec.annotate:
            assert t.files.annotation is None
            continue
        with open(t.files.annotation, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["V1", spec.label_column]
        ids = [r[0] for r in rows[1:]]
        labels = [r[1] for r in rows[1:]]
        assert len(ids) - len(set(ids)) == 1  # one spot listed twice
        assert set(ids) == set(t.domains.index)
        assert "" in labels and "undetermined" in labels and "Exclude" in labels
        assert set(labels) - {"", "undetermined", "Exclude"} == set(t.domain_names)
        got, col = read_annotation(t.files.annotation)
        assert col == spec.label_column
        ok = got.dropna()
        ok = ok[~ok.isin(["undetermined", "Exclude"])]
        expected = pd.Series(t.domain_names, dtype=object)[t.domains.loc[ok.index].to_numpy()]
        assert (ok.to_numpy() == expected.to_numpy()).all()
        assert len(ok) > 0.9 * len(t.domains)
    assert truth["GSE000001_GSM0000001"].domain_names == ["NO_TLS", "Tumor", "TLS"]


# ------------------------------------------------------------------------------ metadata
def test_metadata_round_trips_typed(sample_root, truth):
    path = sample_root / "meta" / "meta_all_gene02122025.csv"
    raw = path.read_text(encoding="utf-8")
    assert raw.startswith(
        '"slide","species","tissue","pmid","title","abstract","keywords","involve_cancer","tech","spot_num","gene_num"\n'
    )
    assert "\r" not in raw
    pd.read_csv(path)  # plain pandas copes with it
    meta = read_metadata(path)
    assert list(meta.index) == list(SPECS)
    assert meta["involve_cancer"].dtype == "boolean"
    assert meta["spot_num"].dtype == "Int64" and meta["gene_num"].dtype == "Int64"
    for slide, t in truth.items():
        assert meta.at[slide, "spot_num"] == len(t.domains)
        assert meta.at[slide, "gene_num"] == len(t.genes)
        assert meta.at[slide, "tech"] == t.tech
        assert bool(meta.at[slide, "involve_cancer"]) == SPECS[slide].cancer
    assert meta.at["GSE000001_GSM0000001", "pmid"] == "32579974,38037084"
    assert meta.at["GSE000001_GSM0000001", "title"].startswith("Title 1:")
    assert meta["abstract"].dropna().str.contains("\n").all()
    assert meta["pmid"].isna().any() and meta["keywords"].isna().any() and meta["title"].isna().any()
    # every field is quoted
    with open(path, encoding="utf-8", newline="") as fh:
        body = fh.read()
    assert body.count('"') >= 2 * 11 * (len(SPECS) + 1)


def test_metadata_tab_variant_reads_the_same(tmp_path, sample_root):
    truths = sample_truth(sample_root)
    comma = write_metadata(tmp_path, truths.values(), filename="meta_all_gene.csv")
    tab = write_metadata(tmp_path / "old", list(datasets.SAMPLE_SPECS), sep="\t")
    assert "\t" in tab.read_text().splitlines()[0]
    pd.testing.assert_frame_equal(read_metadata(comma), read_metadata(tab))
    pd.testing.assert_frame_equal(read_metadata(comma), read_metadata(sample_root / "meta" / "meta_all_gene02122025.csv"))


# ------------------------------------------------------------------------------ determinism
def test_same_spec_gives_byte_identical_files(tmp_path):
    specs = [
        _small(),
        _small("Human_Test_Synth_01012020_ST_B2", tech="ST", grid=(6, 7), image_format="tiff", integer_counts=True,
               domain_layout="blobs", annotate=True, label_column="label"),
        _small("Mouse_Test_Synth_01012020_VisiumHD", tech="VisiumHD", grid=(20, 24), um_per_px=1.0, species="mouse",
               image_format="jpeg"),
    ]
    a = make_release(tmp_path / "a", specs)
    b = make_release(tmp_path / "b", specs)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 * 3 + 1 + 1
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for s in specs:
        pd.testing.assert_series_equal(a[s.slide].domains, b[s.slide].domains)
        assert a[s.slide].domains.equals(slide_truth(tmp_path / "a", s).domains)
    other = make_slide(tmp_path / "c", _small(seed=8))
    assert other.files.counts.read_bytes() != a[specs[0].slide].files.counts.read_bytes()
    assert other.files.image.read_bytes() != a[specs[0].slide].files.image.read_bytes()


def test_spec_validation():
    with pytest.raises(StimageError):
        SlideSpec("bad/id", "Visium")
    with pytest.raises(StimageError):
        SlideSpec("ok", "Xenium")
    with pytest.raises(StimageError):
        SlideSpec("ok", "Visium", image_format="jpeg", image_mode="RGBA")
    with pytest.raises(StimageError):
        SlideSpec("ok", "Visium", n_genes=20)
    s = SlideSpec("ok", "VisiumHD")
    assert s.grid == datasets.DEFAULT_GRID["VisiumHD"]
    assert s.um_per_px == datasets.DEFAULT_UM_PER_PX["VisiumHD"]


def test_density_option_calibrates_sparsity(tmp_path):
    for density in (0.03, 0.3):
        t = make_slide(tmp_path / str(density), _small(grid=(12, 12), n_genes=400, density=density))
        x = pd.read_csv(t.files.counts, index_col=0).to_numpy()
        assert (x > 0).mean() == pytest.approx(density, rel=0.15)
    with pytest.raises(StimageError):
        _small(density=1.5)
