"""Generator layouts for the spatial-domain benchmark (issue 17) and ``make_table``.

Oracle for ``make_table``: the count file ``make_slide`` writes, read back with pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stimage_sd.datasets import SlideSpec, make_slide, make_table, slide_truth
from stimage_sd.errors import StimageError


def _spec(**kw) -> SlideSpec:
    base = dict(slide="Human_Brain_Lay_01012025_Visium_A1", tech="Visium", grid=(30, 30), n_genes=300, n_markers=4)
    return SlideSpec(**{**base, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        dict(domain_layout="curved_layers", n_domains=7),
        dict(domain_layout="varied_blobs", n_domains=5),
        dict(slide="Human_Breast_Lay_01012025_ST_A1", tech="ST", grid=(20, 20), um_per_px=8.0,
             domain_layout="blobs", spot_dropout=0.3),
    ],
)
def test_make_table_equals_the_written_counts(tmp_path, kw):
    spec = _spec(**kw)
    truth = make_slide(tmp_path, spec)
    adata = make_table(spec)
    df = pd.read_csv(truth.files.counts, index_col=0)
    with open(truth.files.counts, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split(",")[1:]  # pandas renames duplicated columns
    assert header == truth.genes == list(adata.var["gene_name"])
    assert set(df.index) == set(adata.obs_names)
    np.testing.assert_array_equal(adata[df.index].X.toarray(), df.to_numpy())
    assert (adata.obs["domain"].astype(int).to_numpy() == truth.domains.reindex(adata.obs_names).to_numpy()).all()
    coords = pd.read_csv(truth.files.coord, index_col=0)
    np.testing.assert_allclose(adata.obsm["spatial"], coords.loc[adata.obs_names, ["xaxis", "yaxis"]].to_numpy())
    assert adata.uns["stimage"]["tech"] == spec.tech


def test_curved_layers_are_thin_and_folded():
    plain = slide_truth("root", _spec(grid=(60, 60), n_domains=7))
    curved = slide_truth("root", _spec(grid=(60, 60), n_domains=7, domain_layout="curved_layers"))
    for t in (plain, curved):
        assert sorted(t.domains.unique()) == list(range(7))
    def thin_over_thick(t) -> float:  # mean size of layers 1, 3, 5 over layers 0, 2, 4, 6
        size = t.domains.value_counts()
        return float(size[[1, 3, 5]].mean() / size[[0, 2, 4, 6]].mean())

    assert thin_over_thick(curved) < 0.7
    assert thin_over_thick(curved) < 0.6 * thin_over_thick(plain)


def test_varied_blobs_have_islands_of_varied_size():
    from stimage_sd.datasets._geometry import build_layout

    plain = build_layout(_spec(grid=(60, 60), domain_layout="blobs", n_domains=5)).field.centres[:, 2]
    varied = build_layout(_spec(grid=(60, 60), domain_layout="varied_blobs", n_domains=5)).field.centres[:, 2]
    assert len(varied) > len(plain)  # one more island per compartment
    assert varied.max() / varied.min() > 2 * plain.max() / plain.min()


def test_spot_dropout_removes_that_fraction_deterministically():
    full = slide_truth("root", _spec())
    thin = slide_truth("root", _spec(spot_dropout=0.3))
    again = slide_truth("root", _spec(spot_dropout=0.3))
    assert set(thin.domains.index) < set(full.domains.index)
    assert 0.62 < thin.n_spots / full.n_spots < 0.78
    assert list(thin.domains.index) == list(again.domains.index)
    with pytest.raises(StimageError, match="spot_dropout"):
        _spec(spot_dropout=1.0)


@pytest.mark.parametrize(
    ("layout", "tech", "digest"),
    [
        ("layers", "Visium", "c15435479038e6486a037d130d5ff3e0"),
        ("layers", "ST", "2baef12cfaa9955ef75722492589c404"),
        ("blobs", "Visium", "393fd245de70a76855ca3d47273535f0"),
        ("blobs", "ST", "6ad29a17d5f49905972176c73b733f7b"),
    ],
)
def test_existing_layouts_are_unchanged_by_the_new_options(layout, tech, digest):
    # digests of the spot -> domain table written by the generator before these options
    # existed: the new options draw from their own random streams
    import hashlib

    spec = SlideSpec(f"Human_Brain_X_01012025_{tech}_A1", tech, grid=(40, 40), domain_layout=layout, n_domains=5, seed=3)
    assert hashlib.md5(slide_truth("r", spec).domains.to_csv().encode()).hexdigest() == digest
