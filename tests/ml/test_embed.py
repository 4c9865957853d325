"""Embeddings: numpy and torch encoders, timm/open_clip preprocessing, resuming, obsm.

Oracles: numpy's own histogram; a hand-written torch module run directly on the
patches; timm's and open_clip's own evaluation transforms (PIL) followed by the model.
The timm/open_clip tests skip on a machine without those packages, except in CI
(``CI`` set), where they must run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import require_in_ci
from stimage_sd.errors import StimageError
from stimage_sd.ml import PatchDataset, embed, embed_array, encoder, export_patches, read_embeddings

pytestmark = pytest.mark.slow

ANNOTATED = "GSE000001_GSM0000001"
ST = "Human_Breast_Synth_10142021_ST_A1"


def _need(module: str):
    """Import ``module``, or skip (outside CI) / fail (in CI) when it is missing."""
    try:
        return __import__(module)
    except ImportError as e:
        require_in_ci(f"{module} is not installed ({e}); pip install 'stimage-sd[ml]'")


@pytest.fixture(scope="module")
def pstore(sample_stores, tmp_path_factory) -> Path:
    """A small patch store of two slides (24 px, 112 µm)."""
    out = tmp_path_factory.mktemp("emb") / "p.zarr"
    return export_patches({s: sample_stores[s] for s in (ANNOTATED, ST)}, out, size_um=112, px=24, genes="hvg", n_hvg=8, progress=False)


def _patches(store: Path) -> np.ndarray:
    g = zarr.open_group(str(store), mode="r")
    return g["patches"][:]


def test_histogram_embedding_into_the_patch_store(pstore, tmp_path):
    store = shutil.copytree(pstore, tmp_path / "p.zarr")
    key = embed(store, "histogram:8", batch_size=100, progress=False)
    emb = read_embeddings(store, key)
    imgs = _patches(store)
    assert emb.shape == (len(imgs), 24)
    ref = np.stack([
        np.concatenate([np.histogram(im[..., c], bins=8, range=(0, 256))[0] for c in range(3)]) / (24 * 24) for im in imgs
    ])
    np.testing.assert_allclose(emb.to_numpy(), ref, rtol=1e-6)
    ds = PatchDataset(store)
    assert list(emb.index.get_level_values("spot_id")) == list(ds.obs["spot_id"])
    assert list(emb.index.get_level_values("slide")) == list(ds.obs["slide"].astype(str))


def test_embedding_resumes_after_an_interruption(pstore, tmp_path):
    store = shutil.copytree(pstore, tmp_path / "p.zarr")
    n = len(_patches(store))
    assert n > 1280
    calls = {"rows": 0}

    def mean_rgb(x):
        calls["rows"] += len(x)
        if calls.get("fail") and calls["rows"] > 1100:
            raise KeyboardInterrupt
        return x.reshape(len(x), -1, 3).mean(axis=1)

    calls["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        embed(store, mean_rgb, key="rgb", batch_size=256, progress=False)
    rec = zarr.open_group(str(store))["embeddings/rgb"].attrs["stimage_embedding"]
    assert rec["n_done"] == 1024  # whole chunks written before the interruption
    with pytest.raises(StimageError, match="incomplete"):
        read_embeddings(store, "rgb")
    calls.update(fail=False, rows=0)
    embed(store, mean_rgb, key="rgb", batch_size=256, progress=False)
    assert calls["rows"] == n - 1024  # only the rest was computed
    emb = read_embeddings(store, "rgb").to_numpy()
    ref = _patches(store).reshape(n, -1, 3).mean(axis=1)
    np.testing.assert_allclose(emb, ref, rtol=1e-6)
    # another encoder under the same key is refused
    with pytest.raises(StimageError, match="another encoder"):
        embed(store, "histogram", key="rgb", progress=False)


def test_torch_module_embedding_equals_the_module_on_normalised_patches(pstore, tmp_path):
    torch = _need("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x):
            return self.conv(x).relu().mean(dim=(2, 3))

    store = shutil.copytree(pstore, tmp_path / "p.zarr")
    model = Tiny()
    key = embed(store, model, key="tiny", batch_size=50, device="cpu", progress=False)
    emb = read_embeddings(store, key).to_numpy()
    imgs = torch.from_numpy(_patches(store)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model((imgs - mean) / std).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    # the same through DataLoader worker processes reading the store
    embed(store, model, key="tiny_w", batch_size=50, device="cpu", workers=1, progress=False)
    np.testing.assert_allclose(read_embeddings(store, "tiny_w").to_numpy(), ref, rtol=1e-5, atol=1e-6)
    # mixed precision (bfloat16 on CPU) stays close
    amp = embed_array(_patches(store)[:64], model, amp=True)
    np.testing.assert_allclose(amp, ref[:64], atol=0.05)
    # a TorchScript file is an encoder too (as the CLI's --encoder PATH)
    path = tmp_path / "tiny.pt"
    torch.jit.script(model).save(str(path))
    np.testing.assert_allclose(embed_array(_patches(store)[:10], str(path)), ref[:10], rtol=1e-5, atol=1e-6)


def test_obsm_embeddings_of_converted_slides(sample_stores, tmp_path):
    import stimage_sd as ssd

    store = shutil.copytree(sample_stores[ST], tmp_path / f"{ST}.zarr")
    embed(store, "histogram:4", size_um=112, px=16, progress=False)
    table = ssd.io.read(store, selection=("tables",))["table"]
    emb = table.obsm["X_histogram_4"]
    ds = PatchDataset(store, size_um=112, px=16)
    ref = embed_array(np.stack([ds[i]["image"] for i in range(len(ds))]), "histogram:4")
    rows = ds.obs["row"].to_numpy()
    np.testing.assert_array_equal(emb[rows], ref)
    assert table.uns["stimage_embeddings"]["histogram_4"]["encoder"]["name"] == "histogram:4"
    assert ssd.io.is_complete(store)


def test_unknown_encoder_is_refused():
    with pytest.raises(StimageError, match="unknown encoder"):
        encoder("no-such-model-xyz")
    with pytest.raises(StimageError, match="no such model file"):
        encoder("missing.pt")


def _timm_reference(model_name: str, imgs: np.ndarray, **kw) -> np.ndarray:
    import timm
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    x = torch.stack([tf(Image.fromarray(im)) for im in imgs])
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_timm_model_with_timm_preprocessing(pstore, name):
    _need("timm")
    imgs = _patches(pstore)[:16]
    ours = embed_array(imgs, f"random:{name}")
    ref = _timm_reference(name, imgs)
    # batched tensor resize vs PIL resize of uint8 images: close, not bit-equal
    assert ours.shape == ref.shape
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
    import timm

    enc = encoder(f"random:{name}")
    cfg = timm.data.resolve_data_config({}, model=enc.module)
    assert (enc.size, enc.crop_pct, enc.interpolation) == (cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"])
    assert (enc.mean, enc.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))


@pytest.mark.slow
def test_random_resnet18_baseline_is_seeded_timm_resnet18(pstore):
    _need("timm")
    imgs = _patches(pstore)[:8]
    emb = embed_array(imgs, "random-resnet18")
    assert emb.shape == (8, 512) and np.isfinite(emb).all()
    np.testing.assert_allclose(embed_array(imgs, "random-resnet18"), emb, rtol=1e-5, atol=1e-6)
    cos = (emb * (ref := _timm_reference("resnet18", imgs))).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99


@pytest.mark.slow
def test_open_clip_model_with_open_clip_preprocessing(pstore):
    _need("open_clip")
    import open_clip
    import torch
    from PIL import Image

    imgs = _patches(pstore)[:4]
    ours = embed_array(imgs, "open_clip:RN50", pretrained=False)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("RN50", pretrained=None)
    model.eval()
    x = torch.stack([preprocess(Image.fromarray(im)) for im in imgs])
    with torch.no_grad():
        ref = model.encode_image(x).numpy()
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert ours.shape == ref.shape and cos.min() > 0.99
