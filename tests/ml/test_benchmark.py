"""``stimage-sd benchmark`` end to end on the converted sample slides, with a tiny random model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import require_in_ci
from stimage_sd.cli import main

ANNOTATED = {"GSE000001_GSM0000001", "Mouse_Brain+Lung_Synth_01012025_Visium_2.5mm"}


def _torch():
    try:
        import torch
    except ImportError as e:
        require_in_ci(f"torch is not installed ({e}); pip install 'stimage-sd[ml]'")
    return torch


def _tiny_model_file(path):
    torch = _torch()

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

        def forward(self, x):
            return self.conv(x).relu().mean(dim=(2, 3))

    torch.manual_seed(0)
    torch.jit.script(Tiny()).save(str(path))
    return path


@pytest.mark.slow
def test_benchmark_command_runs_and_a_second_encoder_adds_rows(sample_stores, tmp_path, capsys):
    from stimage_sd.ml import linear_probe, read_embeddings

    model = _tiny_model_file(tmp_path / "tiny.pt")
    out = tmp_path / "results"
    stores = [str(p) for p in sample_stores.values()]
    assert main(["-q", "benchmark", *stores, "--encoder", str(model), "--px", "32", "--out", str(out)]) == 0
    first = pd.read_csv(out / "results.csv")
    assert set(first["encoder"]) == {"tiny"}
    probe = first[first["task"] == "probe"]
    assert set(probe["dataset"]) == ANNOTATED
    assert ((probe["mean"] >= 0) & (probe["mean"] <= 1)).all()
    expr = first[first["task"] == "expression"]
    assert set(expr["dataset"]) == {"human_breast", "mouse_brain"}
    assert expr["detail"].str.contains("folds=2 by study").all()
    # the probe row is linear_probe on the stored embeddings and labels
    pstore = out / "patches_native_32px.zarr"
    emb = read_embeddings(pstore, "tiny")
    from stimage_sd.ml import PatchDataset

    labels = PatchDataset(pstore).obs["label"].to_numpy(dtype=object)
    slide = "GSE000001_GSM0000001"
    m = np.asarray(emb.index.get_level_values("slide") == slide)
    ref = linear_probe(emb[m].droplevel("slide"), labels[m], tasks=[slide] * int(m.sum())).iloc[0]
    got = probe.set_index("dataset").loc[slide]
    assert got["mean"] == pytest.approx(ref["mean_f1"], abs=1e-12) and got["n_spots"] == ref["n_spots"]
    # a second encoder adds its rows; the report compares both
    assert main(["-q", "benchmark", *stores, "--encoder", "histogram", "--px", "32", "--out", str(out), "--task", "probe"]) == 0
    both = pd.read_csv(out / "results.csv")
    assert len(both) == len(first) + 2
    assert list(both["encoder"].unique()) == ["tiny", "histogram"]
    md = (out / "results.md").read_text()
    assert "| tiny | histogram |" in md and "probe: GSE000001_GSM0000001" in md
    assert (out / "results.png").stat().st_size > 10_000
    genes = pd.read_csv(out / "expression_genes.csv")
    assert set(genes.columns) >= {"encoder", "dataset", "fold", "gene", "pearson_r"}
    # rerunning an encoder replaces its rows instead of duplicating them
    assert main(["-q", "benchmark", *stores, "--encoder", "histogram", "--px", "32", "--out", str(out), "--task", "probe"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == len(both)


def test_benchmark_command_bad_input_is_one_line(sample_stores, tmp_path, capsys):
    store = str(next(iter(sample_stores.values())))
    assert main(["benchmark", store, "--encoder", "no-such-encoder", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "unknown encoder 'no-such-encoder'" in err and "Traceback" not in err
    assert main(["benchmark", store, "--encoder", "histogram", "--task", "nope", "--out", str(tmp_path / "r")]) == 1
    assert "tasks must be among" in capsys.readouterr().err
