"""Image encoders for :func:`stimage_sd.ml.embed`: torch modules, timm, open_clip, callables.

An :class:`Encoder` maps a batch of uint8 patches ``(B, H, W, 3)`` to float32 features
``(B, D)``. Torch encoders carry their own preprocessing (resize, centre crop,
normalisation), applied on whole batches as tensors. torch, timm and open_clip are
imported only when such an encoder is asked for: the colour histogram and plain
callables run on numpy alone.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StimageError

__all__ = ["BUILTIN", "Encoder", "color_histogram", "encoder"]

#: Built-in encoders that need no downloaded weights.
BUILTIN: dict[str, str] = {
    "histogram": "colour histogram: 16 bins per RGB channel, normalised (numpy; no torch)",
    "random-resnet18": "timm resnet18 with random weights (seed 0), 224 px, ImageNet normalisation",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def color_histogram(images: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel colour histograms of uint8 images, each channel normalised to sum 1.

    Parameters
    ----------
    images
        ``(B, H, W, 3)`` uint8.
    bins
        Bins per channel (a divisor of 256).

    Returns
    -------
    ``(B, 3 * bins)`` float32: red bins, then green, then blue.

    Examples
    --------
    >>> import numpy as np, stimage_sd as ssd
    >>> ssd.ml.color_histogram(np.zeros((1, 2, 2, 3), np.uint8), bins=4)[0].tolist()
    [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    """
    if 256 % bins:
        raise StimageError(f"bins must divide 256, got {bins}")
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise StimageError(f"expected (B, H, W, 3) uint8 images, got {imgs.shape} {imgs.dtype}")
    b = imgs.shape[0]
    idx = (imgs.reshape(b, -1, 3).astype(np.int64) // (256 // bins)) + np.arange(3) * bins
    flat = (idx + (np.arange(b) * 3 * bins)[:, None, None]).ravel()
    counts = np.bincount(flat, minlength=b * 3 * bins).reshape(b, 3 * bins)
    return (counts / max(1, imgs.shape[1] * imgs.shape[2])).astype(np.float32)


@dataclass
class Encoder:
    """An image encoder: uint8 batches ``(B, H, W, 3)`` → features ``(B, D)``.

    Attributes
    ----------
    name
        Name (used as the default embedding key).
    kind
        ``"numpy"`` (``fn`` takes and returns numpy arrays) or ``"torch"`` (``fn`` is a
        ``torch.nn.Module`` or a function of a float tensor batch).
    fn
        The callable.
    size
        Model input side in pixels (``None``: patches as they are).
    mean, std
        Normalisation of ``[0, 1]`` pixel values (``None``: none).
    interpolation
        ``"bicubic"``, ``"bilinear"`` or ``"nearest"`` (torch encoders).
    crop_pct
        Resize to ``floor(size / crop_pct)`` then centre-crop ``size``, as timm's
        evaluation transform does (1.0: resize to ``size``).
    info
        What the encoder is (recorded with the embeddings).
    module
        The ``torch.nn.Module`` (moved to the device by :func:`embed`).
    """

    name: str
    kind: str
    fn: Callable[[Any], Any]
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)
    module: Any = None

    def describe(self) -> dict[str, Any]:
        """JSON-able description (name, preprocessing, source)."""
        return {
            "name": self.name, "kind": self.kind, "size": self.size,
            "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
            "interpolation": self.interpolation, "crop_pct": self.crop_pct, **self.info,
        }

    # ------------------------------------------------------------------ torch side
    def preprocess(self, x: Any) -> Any:
        """Float ``(B, 3, H, W)`` in ``[0, 1]`` → model input (resize, centre crop, normalise)."""
        import torch
        import torch.nn.functional as F

        if self.size is not None:
            scale = math.floor(self.size / self.crop_pct) if self.crop_pct < 1 else self.size
            if x.shape[-2:] != (scale, scale):
                mode = self.interpolation
                kw: dict[str, Any] = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
                x = F.interpolate(x, size=(scale, scale), mode=mode, **kw)
                if mode == "bicubic":
                    x = x.clamp_(0.0, 1.0)
            if scale != self.size:
                top = round((scale - self.size) / 2.0)
                x = x[..., top : top + self.size, top : top + self.size]
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def to_device(self, device: str) -> None:
        """Move the module to ``device`` in evaluation mode."""
        if self.module is not None:
            self.module.to(device).eval()

    def __call__(self, images: np.ndarray, *, device: str = "cpu", amp: bool = False) -> np.ndarray:
        """Features of a uint8 batch ``(B, H, W, 3)`` as float32 ``(B, D)``."""
        if self.kind == "numpy":
            out = np.asarray(self.fn(images), dtype=np.float32)
            return out.reshape(len(images), -1)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = self.preprocess(x)
        dev = torch.device(device).type
        with torch.inference_mode():
            if amp:
                dtype = torch.float16 if dev == "cuda" else torch.bfloat16
                with torch.autocast(device_type=dev, dtype=dtype):
                    out = self.fn(x)
            else:
                out = self.fn(x)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.float().reshape(out.shape[0], -1).cpu().numpy()


def _module_encoder(module: Any, name: str, *, size: int | None, mean: Any, std: Any, interpolation: str, crop_pct: float, info: dict[str, Any]) -> Encoder:
    return Encoder(
        name=name, kind="torch", fn=module, size=size, mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std), interpolation=interpolation, crop_pct=crop_pct, info=info, module=module,
    )


def _timm(name: str, pretrained: bool, seed: int = 0) -> Encoder:
    try:
        import timm
        import torch
    except ImportError as e:
        raise StimageError(f"encoder {name!r} needs timm (and torch): pip install timm ({e})") from None
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as e:
        raise StimageError(f"timm model {name!r}: {e}") from None
    except Exception as e:  # weights download failed (offline, gated, ...)
        if not pretrained:
            raise
        raise StimageError(
            f"timm model {name!r}: pretrained weights could not be loaded ({type(e).__name__}: {e}); "
            "check the network or the Hugging Face cache, or use pretrained=False for random weights"
        ) from None
    cfg = timm.data.resolve_data_config({}, model=model)
    return _module_encoder(
        model.eval(), name, size=int(cfg["input_size"][-1]), mean=cfg["mean"], std=cfg["std"],
        interpolation=str(cfg.get("interpolation", "bicubic")), crop_pct=float(cfg.get("crop_pct", 1.0)),
        info={"source": "timm", "model": name, "pretrained": bool(pretrained)},
    )


def _open_clip(spec: str, pretrained: bool, seed: int = 0) -> Encoder:
    try:
        import torch

        # the distribution is open_clip_torch (declared in the ml extra); its import name differs
        open_clip = importlib.import_module("open_clip")
    except ImportError as e:
        raise StimageError(f"encoder {spec!r} needs open_clip_torch: pip install open_clip_torch ({e})") from None
    name, _, tag = spec.partition(":")
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(name, pretrained=(tag or None) if pretrained else None)
    except RuntimeError as e:
        raise StimageError(f"open_clip model {spec!r}: {e}") from None
    except Exception as e:
        if not pretrained:
            raise
        raise StimageError(
            f"open_clip model {spec!r}: pretrained weights could not be loaded ({type(e).__name__}: {e}); "
            "use pretrained=False for random weights"
        ) from None
    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(visual, "image_size", 224))
    size = int(size[0] if isinstance(size, tuple | list) else size)
    model.eval()
    return Encoder(
        name=f"open_clip:{spec}", kind="torch", fn=model.encode_image, size=size,
        mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=str(cfg.get("interpolation", "bicubic")), crop_pct=1.0,
        info={"source": "open_clip", "model": name, "pretrained": (tag or None) if pretrained else None},
        module=model,
    )


def _torchscript(path: Path, *, size: int | None, mean: Any, std: Any) -> Encoder:
    try:
        import torch
    except ImportError as e:
        raise StimageError(f"{path}: a model file needs torch ({e})") from None
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise StimageError(f"{path}: not a TorchScript model ({type(e).__name__}: {e})") from None
    return _module_encoder(
        module.eval(), path.stem, size=size, mean=mean, std=std, interpolation="bicubic", crop_pct=1.0,
        info={"source": "torchscript", "path": str(path)},
    )


def encoder(
    spec: Any,
    *,
    pretrained: bool = True,
    name: str | None = None,
    size: int | None = None,
    mean: tuple[float, ...] | None = IMAGENET_MEAN,
    std: tuple[float, ...] | None = IMAGENET_STD,
    seed: int = 0,
) -> Encoder:
    """An :class:`Encoder` from a name, a model, a model file or a callable.

    Parameters
    ----------
    spec
        - ``"histogram"`` (or ``"histogram:BINS"``): colour histogram (numpy, no torch).
        - ``"random-resnet18"``: timm's resnet18 with random weights (a weight-free
          baseline); ``"random:NAME"``: any timm model with random weights.
        - a timm model name (``"resnet50"``, ``"hf-hub:..."``; or ``"timm:NAME"``):
          ``timm.create_model(NAME, pretrained=pretrained, num_classes=0)`` with timm's
          own evaluation preprocessing (input size, interpolation, crop, mean/std).
        - ``"open_clip:NAME[:TAG]"``: ``open_clip.create_model(NAME, pretrained=TAG)``,
          image tower (``encode_image``) with open_clip's preprocessing.
        - a path to a TorchScript file (``torch.jit.save``).
        - a ``torch.nn.Module`` (given float ``(B, 3, H, W)`` batches normalised with
          ``mean``/``std``, resized to ``size`` when given).
        - an :class:`Encoder`, returned as is.
        - any other callable: called on uint8 ``(B, H, W, 3)`` numpy batches, returning
          ``(B, D)`` features (no torch involved).
    pretrained
        Load pretrained weights (timm, open_clip). They are downloaded by those libraries'
        own mechanisms (the Hugging Face Hub cache; ``HF_HUB_OFFLINE=1`` to use the cache
        only); ``False`` gives random weights (no download).
    name
        Name of the encoder (default: from ``spec``).
    size, mean, std
        Preprocessing of ``torch.nn.Module`` and TorchScript encoders (``size``: also
        overrides the input size of named models, e.g. to run a small test).
    seed
        Torch seed before building random weights.

    Returns
    -------
    The :class:`Encoder`.

    Examples
    --------
    >>> import numpy as np, stimage_sd as ssd
    >>> enc = ssd.ml.encoder("histogram")
    >>> enc(np.zeros((2, 8, 8, 3), np.uint8)).shape
    (2, 48)
    """
    if isinstance(spec, Encoder):
        enc = spec
    elif isinstance(spec, str | Path) and (isinstance(spec, Path) or Path(spec).suffix in (".pt", ".pth", ".ts") or Path(spec).is_file()):
        path = Path(spec)
        if not path.is_file():
            raise StimageError(f"{path}: no such model file")
        enc = _torchscript(path, size=size, mean=mean, std=std)
    elif isinstance(spec, str):
        if spec == "histogram" or spec.startswith("histogram:"):
            bins = int(spec.split(":", 1)[1]) if ":" in spec else 16
            color_histogram(np.zeros((1, 1, 1, 3), np.uint8), bins)  # validates bins
            enc = Encoder(name=spec, kind="numpy", fn=lambda x, b=bins: color_histogram(x, b), info={"source": "builtin", "bins": bins})
        elif spec == "random-resnet18":
            enc = _timm("resnet18", pretrained=False, seed=seed)
            enc.name = spec
        elif spec.startswith("random:"):
            enc = _timm(spec.split(":", 1)[1], pretrained=False, seed=seed)
            enc.name = spec
        elif spec.startswith("open_clip:"):
            enc = _open_clip(spec.split(":", 1)[1], pretrained, seed)
        elif spec.startswith("timm:"):
            enc = _timm(spec.split(":", 1)[1], pretrained, seed)
        else:
            try:
                import timm
            except ImportError:
                timm = None
            if timm is not None and (spec.startswith("hf-hub:") or timm.is_model(spec)):
                enc = _timm(spec, pretrained, seed)
            else:
                raise StimageError(
                    f"unknown encoder {spec!r}: use one of {', '.join(BUILTIN)}, a timm model name"
                    f"{'' if timm is not None else ' (timm is not installed)'}, 'open_clip:NAME[:TAG]', "
                    "a TorchScript file, a torch.nn.Module or a callable"
                )
    elif _is_module(spec):
        enc = _module_encoder(
            spec.eval(), name or type(spec).__name__, size=size, mean=mean, std=std, interpolation="bicubic",
            crop_pct=1.0, info={"source": "module", "class": type(spec).__name__},
        )
    elif callable(spec):
        enc = Encoder(name=name or getattr(spec, "__name__", "callable"), kind="numpy", fn=spec, info={"source": "callable"})
    else:
        raise StimageError(f"cannot make an encoder from {type(spec).__name__}")
    if name is not None:
        enc.name = name
    if size is not None and enc.kind == "torch":
        enc.size = int(size)
        enc.crop_pct = 1.0
    return enc


def _is_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a module exists only if torch was imported
    return torch is not None and isinstance(obj, torch.nn.Module)
