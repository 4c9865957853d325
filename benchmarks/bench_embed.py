"""Benchmark of embedding throughput (``stimage_sd.ml.embed``) against the usual recipes.

One synthetic H&E-like image is made with spots on a grid; each spot's patch (``--px``
pixels, the release's 2r crop with ``2r = px``) exists three ways: in the image, as a
PNG file per spot (the release's ``crop/`` folder), and in a patch store. In one run,
with the same timm model (random weights, ``eval``, ``torch.inference_mode``) and the
model's own timm evaluation transform, it times:

- ``naive loop``: for each spot, ``PIL.Image.crop`` of the in-memory image, the
  torchvision transform of timm (resize, centre crop, to tensor, normalise), then the
  model on that one patch;
- ``DataLoader over PNG``: a ``torch.utils.data.Dataset`` opening each PNG with PIL and
  applying the same transform, batched by a ``DataLoader`` (``--loader-workers``);
- ``ours``: ``ssd.ml.embed(patch_store, encoder)``: contiguous batches read from the
  store by a read-ahead thread, preprocessed as tensors on the device, written back;
- ``forward only``: the model on the same batches, already preprocessed and in memory
  (the encoder's own cost: the floor of any pipeline).

Prints a markdown table of patches/s and the ratios (targets: ours >= 5x the naive loop,
ours within 1.5x of forward only), plus the load average (other processes sharing the
cores skew timings). Needs torch, torchvision and timm.

Example::

    python benchmarks/bench_embed.py                       # CPU, resnet18, 256 patches of 224 px
    python benchmarks/bench_embed.py --device cuda --n 4096 --batch 256 --model vit_base_patch16_224
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_image(n: int, px: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB image with ``n`` spot centres on a grid spaced ``px`` apart."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    h = w = side * px
    blobs = np.zeros((h, w), np.float32)
    for _ in range(max(8, n // 2)):  # nuclei-like blobs, each drawn in its own window
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(px / 16, px / 4)
        y0, y1 = max(0, int(cy - 3 * s)), min(h, int(cy + 3 * s) + 1)
        x0, x1 = max(0, int(cx - 3 * s)), min(w, int(cx + 3 * s) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        blobs[y0:y1, x0:x1] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    noise = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    base = np.array([236, 200, 225], np.float32) - np.minimum(blobs, 1.5)[..., None] * np.array([90, 140, 60], np.float32)
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    centres = np.array([((i % side) + 0.5, (i // side) + 0.5) for i in range(n)]) * px  # (x, y)
    return img, centres


def write_patch_store(path: Path, img: np.ndarray, centres: np.ndarray, px: int) -> None:
    """A patch store of the spots' crops (the exporter's format), written directly."""
    from stimage_sd.ml._patchstore import PatchWriter

    r = px // 2
    patches = np.stack([img[int(y) - r : int(y) + r, int(x) - r : int(x) + r] for x, y in centres])
    w = PatchWriter.create(path, px=px, n_targets=1, genes=["g"], params={"px": px, "mode": "native"})
    n = len(patches)
    w.begin(n)
    obs = {
        "slide": np.zeros(n, np.int32), "row": np.arange(n), "spot_id": np.array([f"s{i}" for i in range(n)]),
        "label": np.array([""] * n), "x": centres[:, 0], "y": centres[:, 1], "flags": np.zeros(n, np.uint8),
        "tissue_fraction": np.ones(n, np.float32), "outside_fraction": np.zeros(n, np.float32),
    }
    w.write(patches, np.zeros((n, 1), np.float32), obs)
    w.commit({"slide": "bench", "n_spots": n})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="patches")
    ap.add_argument("--px", type=int, default=224, help="patch side (pixels)")
    ap.add_argument("--model", default="resnet18", help="timm model (random weights)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="mixed precision in every method")
    ap.add_argument("--loader-workers", type=int, default=1, help="DataLoader workers of the PNG baseline")
    ap.add_argument("--naive-max", type=int, default=128, help="patches timed in the naive loop (rate extrapolated)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import timm
    import torch
    from PIL import Image

    from stimage_sd.ml import embed, encoder, read_embeddings

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_embed_"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    img, centres = make_image(args.n, args.px)
    store = work / "patches.zarr"
    shutil.rmtree(store, ignore_errors=True)
    write_patch_store(store, img, centres, args.px)
    crops = work / "crop"
    shutil.rmtree(crops, ignore_errors=True)
    crops.mkdir()
    pil = Image.fromarray(img)
    r = args.px // 2
    boxes = [(round(x - r), round(y - r), round(x + r), round(y + r)) for x, y in centres]
    for i, b in enumerate(boxes):
        pil.crop(b).save(crops / f"s{i}.png")

    enc = encoder(f"random:{args.model}")
    model = enc.module.to(args.device).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    amp_ctx = (lambda: torch.autocast(device_type=dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16)) if args.amp else None

    def run_model(x):
        with torch.inference_mode():
            if amp_ctx:
                with amp_ctx():
                    return model(x)
            return model(x)

    # warm-up (kernels, allocator, cuDNN autotuning)
    x0 = torch.stack([tf(pil.crop(boxes[i % args.n])) for i in range(args.batch)]).to(dev)
    for _ in range(2):
        run_model(x0)
    sync()
    results = {}

    # 1. naive loop: PIL crop -> torchvision transform -> model, one patch at a time
    k = min(args.naive_max, args.n)
    t = time.perf_counter()
    for b in boxes[:k]:
        run_model(tf(pil.crop(b))[None].to(dev)).cpu()
    sync()
    results["naive loop (PIL crop + torchvision + model, 1 patch)"] = k / (time.perf_counter() - t)

    # 2. plain DataLoader over PNG crops
    class PNGs(torch.utils.data.Dataset):
        def __len__(self):
            return args.n

        def __getitem__(self, i):
            with Image.open(crops / f"s{i}.png") as im:
                return tf(im.convert("RGB"))

    dl = torch.utils.data.DataLoader(PNGs(), batch_size=args.batch, num_workers=args.loader_workers, pin_memory=dev.type == "cuda")
    t = time.perf_counter()
    for x in dl:
        run_model(x.to(dev, non_blocking=True)).cpu()
    sync()
    results[f"DataLoader over PNG crops ({args.loader_workers} worker(s))"] = args.n / (time.perf_counter() - t)

    # 3. ours
    t = time.perf_counter()
    key = embed(store, enc, key="bench", batch_size=args.batch, device=args.device, amp=args.amp, overwrite=True, progress=False)
    sync()
    results["ours: ssd.ml.embed(patch store)"] = args.n / (time.perf_counter() - t)
    assert read_embeddings(store, key).shape[0] == args.n

    # 4. forward only on preloaded, preprocessed batches
    import zarr

    raw = zarr.open_group(str(store), mode="r")["patches"][:]
    batches = []
    for s in range(0, args.n, args.batch):
        x = torch.from_numpy(raw[s : s + args.batch]).to(dev).permute(0, 3, 1, 2).float().div_(255)
        batches.append(enc.preprocess(x))
    sync()
    t = time.perf_counter()
    for x in batches:
        run_model(x).cpu()
    sync()
    results["forward only (preprocessed tensors in memory)"] = args.n / (time.perf_counter() - t)

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    naive = results["naive loop (PIL crop + torchvision + model, 1 patch)"]
    ours = results["ours: ssd.ml.embed(patch store)"]
    fwd = results["forward only (preprocessed tensors in memory)"]
    print(f"\n{args.model} (random weights), {args.n} patches of {args.px} px, batch {args.batch}, device {args.device}"
          f"{' (amp)' if args.amp else ''}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.python_version()}; load average {load0:.2f} before, {load1:.2f} after\n")
    print("| method | patches/s | ours vs this |")
    print("|---|---:|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} | {ours / rate:.2f}x |")
    print(f"\nours / naive = {ours / naive:.2f}x (target >= 5x); forward-only time / ours time = {ours / fwd:.2f} "
          f"(ours takes {fwd / ours:.2f}x the forward time; target <= 1.5x)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
