"""The slide catalogue: real metadata counts, filters, leak-free splits, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from stimage_sd.cli import main
from stimage_sd.cli._filters import read_slide_list
from stimage_sd.errors import SlideNotFoundError, StimageError
from stimage_sd.hub import Catalog, study_of
from stimage_sd.io import read_metadata
from stimage_sd.io._layout import release_path as repo_path

META_NAME = "meta_all_gene02122025.csv"


@pytest.fixture(scope="module")
def real_meta(real_data) -> Path:
    path = real_data / META_NAME
    if not path.is_file():
        pytest.skip(f"real metadata table not available: {path} is absent")
    return path


@pytest.fixture(scope="module")
def real_cat(real_meta) -> Catalog:
    return Catalog.from_path(real_meta)


@pytest.fixture(scope="module")
def raw_rows(real_meta) -> list[dict]:
    """The real table read independently, with the csv module."""
    with open(real_meta, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- acceptance
def test_real_counts_per_tech_and_total_spots(real_cat):
    s = real_cat.summary()
    assert s["slides"] == 1149
    assert s["spots"] == 4_293_195
    by_tech = s["by_tech"]
    assert by_tech["slides"].to_dict() == {"Visium": 994, "ST": 151, "VisiumHD": 4}
    assert by_tech["spots"].to_dict() == {"Visium": 2_336_306, "ST": 60_145, "VisiumHD": 1_896_744}
    assert s["by_species"].loc["human", "slides"] == 672
    assert s["by_tissue"].loc["brain", "slides"] == 251
    assert s["annotated"] is None and s["bytes"] is None  # a bare metadata file knows neither


def test_real_split_by_study_is_leak_free_and_deterministic(real_cat):
    splits = real_cat.split(by="study", fractions=(0.8, 0.1, 0.1), seed=7)
    assert list(splits) == ["train", "val", "test"]
    every = [s for ids in splits.values() for s in ids]
    assert sorted(every) == sorted(real_cat.slides)  # each slide exactly once
    study = real_cat.table["study"]
    sides = {}
    for name, ids in splits.items():
        for st in set(study[ids]):
            sides.setdefault(st, set()).add(name)
    assert all(len(v) == 1 for v in sides.values())
    assert len(sides) == study.nunique() == 175
    n = len(real_cat)
    assert abs(len(splits["train"]) / n - 0.8) < 0.03
    assert abs(len(splits["val"]) / n - 0.1) < 0.03 and abs(len(splits["test"]) / n - 0.1) < 0.03
    assert real_cat.split(by="study", seed=7) == splits
    assert real_cat.split(by="study", seed=8) != splits


def test_real_split_by_tissue_stratified(real_cat):
    splits = real_cat.split(by="tissue", fractions={"train": 0.7, "test": 0.3}, seed=0, stratify="tech")
    tissue = real_cat.table["tissue"]
    train, test = set(tissue[splits["train"]]), set(tissue[splits["test"]])
    assert not train & test
    assert len(splits["train"]) + len(splits["test"]) == 1149
    assert 0.55 < len(splits["train"]) / 1149 < 0.85


def test_real_studies_are_sensible(real_cat):
    t = real_cat.table
    geo = t.index.str.match(r"^GSE\d+_GSM\d+$")
    assert geo.sum() == 856
    assert (t.loc[geo, "study"] == [s.split("_")[0] for s in t.index[geo]]).all()
    assert t.at["Human_Breast_Andersson_10142021_ST_A1", "study"] == "Human_Breast_Andersson_10142021"
    assert t.at["Mouse_Brain+Lung_10X_02212023_Visium_2mm_edge", "study"] == "Mouse_Brain+Lung_10X_02212023"
    assert t.loc[~geo, "study"].str.fullmatch(r"[A-Za-z]+_[A-Za-z+]+_[A-Za-z0-9]+_\d{8}").all()


def test_study_of():
    assert study_of("GSE144239_GSM4284316") == "GSE144239"
    assert study_of("Human_Heart_Asp_12122019_ST_ST_Sample_4.5-5PCW_1") == "Human_Heart_Asp_12122019"
    assert study_of("Mouse_Brain_10X_03292024_VIsiumHD") == "Mouse_Brain_10X_03292024"
    assert study_of("odd") == "odd"


# --------------------------------------------------------------------------- filters on the real table
def test_filters_match_an_independent_count(real_cat, raw_rows):
    def count(pred):
        return sum(1 for r in raw_rows if pred(r))

    got = real_cat.filter(species="human", tissue="brain", tech="visium")
    assert len(got) == count(lambda r: r["species"] == "human" and r["tissue"] == "brain" and r["tech"] == "Visium")
    assert len(real_cat.filter(cancer=True)) == count(lambda r: r["involve_cancer"] == "True")
    assert len(real_cat.filter(min_spots=1000, max_spots=2000)) == count(lambda r: 1000 <= int(r["spot_num"]) <= 2000)
    assert len(real_cat.filter(tech=["ST", "VisiumHD"])) == 155
    assert len(real_cat.filter(species=["Human", "mouse"])) == 672 + 419
    term = "alzheimer"
    assert len(real_cat.filter(text=term)) == count(
        lambda r: any(term in r[c].lower() for c in ("title", "abstract", "keywords"))
    )
    both = real_cat.filter(text=["alzheimer", "mouse"])
    assert 0 < len(both) < len(real_cat.filter(text=term))
    assert len(real_cat.filter(study="GSE144239")) == count(lambda r: r["slide"].startswith("GSE144239_"))
    # chained filters compose
    assert real_cat.filter(species="human").filter(tissue="brain").slides == real_cat.filter(
        species="human", tissue="brain"
    ).slides


def test_filter_errors_suggest_close_matches(real_cat):
    with pytest.raises(StimageError, match="brain"):
        real_cat.filter(tissue="brian")
    with pytest.raises(StimageError, match="unknown tech"):
        real_cat.filter(tech="Visium HD")
    with pytest.raises(StimageError, match="annotation status is unknown"):
        real_cat.filter(annotated=True)
    with pytest.raises(SlideNotFoundError, match="Mouse_Brain_10X_03292024_VIsiumHD"):
        real_cat.select(["Mouse_Brain_10X_03292024_VisiumHD"])
    # a filter that is valid but matches nothing gives an empty catalogue
    assert len(real_cat.filter(tech="VisiumHD", tissue="heart")) == 0


def test_tab_separated_variant_reads_the_same(real_meta, real_cat, tmp_path):
    df = pd.read_csv(real_meta, dtype=str, keep_default_na=False)
    tsv = tmp_path / "meta_all_gene.csv"  # the older release: same name pattern, tab-separated
    df.to_csv(tsv, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL)
    assert "\t" in tsv.read_text().splitlines()[0]
    cat = Catalog.from_path(tsv)
    pd.testing.assert_frame_equal(cat.table, real_cat.table)
    assert cat.summary()["spots"] == 4_293_195


# --------------------------------------------------------------------------- generated root
@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    from stimage_sd.datasets import SlideSpec, make_release

    root = tmp_path_factory.mktemp("catalog") / "release"
    kw = {"n_genes": 60, "n_domains": 2, "n_markers": 2, "um_per_px": 8}
    make_release(
        root,
        [
            SlideSpec("Human_Brain_Synth_01012020_Visium_A", "Visium", grid=(5, 5), annotate=True, **kw),
            SlideSpec("Human_Brain_Synth_01012020_Visium_B", "Visium", grid=(4, 5), **kw),
            SlideSpec("GSE100001_GSM2000001", "Visium", grid=(5, 5), tissue="kidney", cancer=True, annotate=True, **kw),
            SlideSpec("GSE100001_GSM2000002", "Visium", grid=(4, 4), tissue="kidney", cancer=True, **kw),
            SlideSpec("Mouse_Heart_Synth_02022021_ST_1.5-2", "ST", grid=(4, 4), species="mouse", tissue="heart", **kw),
            SlideSpec("Mouse_Heart+Lung_Synth_02022021_ST_2", "ST", grid=(4, 4), species="mouse", tissue="heart", **kw),
        ],
    )
    return root


def test_from_root_knows_annotations_and_sizes(small_root):
    cat = Catalog.load(small_root)
    t = cat.table
    assert cat.root == small_root and len(cat) == 6
    assert set(t.index[t["annotated"].astype(bool)]) == {"Human_Brain_Synth_01012020_Visium_A", "GSE100001_GSM2000001"}
    for s, tech in zip(t.index, t["tech"], strict=True):
        for part in ("image", "coord", "counts"):
            assert int(t.at[s, f"size_{part}"]) == (small_root / repo_path(s, tech, part)).stat().st_size
    total = sum(p.stat().st_size for p in small_root.rglob("*") if p.is_file() and p.parent.name != "meta")
    assert cat.summary()["bytes"] == total
    assert cat.filter(annotated=True, cancer=True).slides == ["GSE100001_GSM2000001"]
    assert cat.filter(annotated=False).filter(species="mouse").slides == [
        "Mouse_Heart_Synth_02022021_ST_1.5-2", "Mouse_Heart+Lung_Synth_02022021_ST_2",
    ]
    assert t.at["Mouse_Heart+Lung_Synth_02022021_ST_2", "study"] == "Mouse_Heart+Lung_Synth_02022021"
    assert cat.counts("study")["slides"].to_dict() == {
        "GSE100001": 2, "Human_Brain_Synth_01012020": 2, "Mouse_Heart+Lung_Synth_02022021": 1,
        "Mouse_Heart_Synth_02022021": 1,
    }
    assert list(cat) == cat.slides and "GSE100001_GSM2000002" in cat


def test_catalog_load_dispatch_and_errors(small_root, tmp_path):
    meta = small_root / "meta" / META_NAME
    assert Catalog.load(meta).slides == Catalog.load(small_root).slides
    with pytest.raises(StimageError, match="neither"):
        Catalog.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StimageError, match="no metadata table"):
        Catalog.from_root(tmp_path / "empty")


def test_split_options_and_files(small_root, tmp_path):
    cat = Catalog.from_root(small_root)
    two = cat.split(fractions=(0.5, 0.5), seed=3)
    assert list(two) == ["train", "test"]
    study = cat.table["study"]
    assert not set(study[two["train"]]) & set(study[two["test"]])
    by_slide = cat.split(by="slide", fractions=(0.5, 0.5), seed=0, weight="spots")
    assert sorted(by_slide["train"] + by_slide["test"]) == sorted(cat.slides)
    with pytest.raises(StimageError, match="sum to 1"):
        cat.split(fractions=(0.8, 0.3))
    with pytest.raises(StimageError, match="no such column"):
        cat.split(by="lab")
    splits = cat.split(seed=1, fractions=(0.6, 0.2, 0.2))
    csv_path = cat.write_split(tmp_path / "split.csv", splits)
    df = pd.read_csv(csv_path)
    assert list(df.columns) == ["slide", "split", "study", "tech"]
    for name, ids in splits.items():
        assert read_slide_list(csv_path, split=name) == ids
    json_path = cat.write_split(tmp_path / "split.json", by="study", seed=1, fractions=(0.6, 0.2, 0.2))
    assert json.loads(json_path.read_text())["splits"] == splits
    assert read_slide_list(json_path, split="test") == splits["test"]
    with pytest.raises(StimageError, match="no split"):
        read_slide_list(json_path, split="holdout")
    txt = tmp_path / "ids.txt"
    txt.write_text("# my slides\nGSE100001_GSM2000001\n\nMouse_Heart+Lung_Synth_02022021_ST_2\n")
    assert read_slide_list(txt) == ["GSE100001_GSM2000001", "Mouse_Heart+Lung_Synth_02022021_ST_2"]


# --------------------------------------------------------------------------- CLI (no network)
def test_cli_catalog_formats(small_root, capsys):
    assert main(["catalog", "--source", str(small_root), "--species", "human", "--annotated", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["slide"] for r in rows] == ["Human_Brain_Synth_01012020_Visium_A", "GSE100001_GSM2000001"]
    assert rows[0]["annotated"] is True and isinstance(rows[0]["size_total"], int)
    assert main(["catalog", "--source", str(small_root), "--tech", "ST", "--format", "csv", "--columns", "study"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "slide,study",
        "Mouse_Heart_Synth_02022021_ST_1.5-2,Mouse_Heart_Synth_02022021",
        "Mouse_Heart+Lung_Synth_02022021_ST_2,Mouse_Heart+Lung_Synth_02022021",
    ]
    assert main(["catalog", "--source", str(small_root), "--summary", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["slides"] == 6 and summary["annotated"] == 2
    assert {r["tech"]: r["slides"] for r in summary["by_tech"]} == {"Visium": 4, "ST": 2}
    assert main(["catalog", "--source", str(small_root), "--text", "zzzz-not-there"]) == 0
    assert "0 slide(s)" in capsys.readouterr().out
    assert main(["catalog", "--source", str(small_root), "--tissue", "hart"]) == 1
    assert "heart" in capsys.readouterr().err


def test_cli_split_writes_a_deterministic_file(small_root, tmp_path, capsys):
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    for out in (out1, out2):
        assert main(["split", "--source", str(small_root), "--by", "study", "--fractions", "0.5,0.25,0.25",
                     "--seed", "5", "-o", str(out)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    df = pd.read_csv(out1)
    assert df.groupby("study")["split"].nunique().max() == 1
    assert sorted(df["slide"]) == sorted(Catalog.from_root(small_root).slides)
    capsys.readouterr()
    assert main(["split", "--source", str(small_root), "--species", "mouse", "--by", "slide",
                 "--fractions", "0.5,0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "slide,split" and len(lines) == 3


def test_cli_catalog_real_summary(real_meta, capsys):
    assert main(["catalog", "--source", str(real_meta), "--summary", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "tech,ST,151,60145,6,," in out and "tech,VisiumHD,4,1896744,4,," in out


def test_read_metadata_allows_empty_counts(tmp_path):
    # bug fixed in read_metadata: an empty spot_num/gene_num is <NA>, not "must be an integer, got nan"
    p = tmp_path / "m.csv"
    p.write_text(
        '"slide","species","tissue","pmid","title","abstract","keywords","involve_cancer","tech","spot_num","gene_num"\n'
        '"A_b_c_01012020_ST_1","human","brain","","T","","","False","ST","","100"\n'
        '"A_b_c_01012020_ST_2","human","brain","","T","","","False","ST","1.5","100"\n'
    )
    with pytest.raises(StimageError, match=r"line 3.*spot_num must be an integer, got '1.5'"):
        read_metadata(p)
    p.write_text("\n".join(p.read_text().splitlines()[:2]) + "\n")
    t = read_metadata(p)
    assert t["spot_num"].isna().all() and str(t["spot_num"].dtype) == "Int64"
    cat = Catalog.from_path(p)
    assert cat.summary()["spots"] == 0 and len(cat.filter(min_spots=1)) == 0


@pytest.mark.slow
def test_cli_convert_accepts_the_catalogue_filters(small_root, tmp_path):
    import spatialdata as sd

    out = tmp_path / "stores"
    assert main(["convert", str(small_root), str(out), "--tissue", "brain", "--annotated", "--no-checksums"]) == 0
    stores = sorted(p.name for p in out.glob("*.zarr"))
    assert stores == ["Human_Brain_Synth_01012020_Visium_A.zarr"]
    sdata = sd.read_zarr(out / stores[0])
    assert "annotation" in sdata.tables["table"].obs
    # a split file selects too
    split = tmp_path / "ids.txt"
    split.write_text("Mouse_Heart+Lung_Synth_02022021_ST_2\n")
    assert main(["convert", str(small_root), str(out), "--slides-file", str(split), "--no-checksums"]) == 0
    assert sorted(p.name for p in out.glob("*.zarr")) == [
        "Human_Brain_Synth_01012020_Visium_A.zarr", "Mouse_Heart+Lung_Synth_02022021_ST_2.zarr",
    ]
