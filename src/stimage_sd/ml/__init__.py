"""Machine-learning data: fixed-physical-scale patch export and a lazy patch dataset.

:func:`export_patches` cuts, for every spot of converted slides, an image patch of a fixed
physical size (default 112 µm at 224 px, i.e. 0.5 µm per pixel, whatever the
technology or image resolution) plus its expression target, into one Zarr *patch
store*; :class:`PatchDataset` reads such a store (or converted slides directly) lazily
for training, e.g. with a :class:`torch.utils.data.DataLoader`.

Patch geometry
--------------
Spot centres ``(x, y)`` are the table's ``obsm["spatial"]`` in image pixels, taken as
*edge* coordinates (pixel ``j`` spans ``[j, j+1)``), as the release's own recipe
``PIL.Image.crop((x - r, y - r, x + r, y + r))`` does.

- ``mode="fixed"``: the box ``[x - s/2, x + s/2) x [y - s/2, y + s/2)`` with
  ``s = size_um / um_per_px`` pixels (the store's pixel-size estimate), resampled to
  ``px x px`` with PIL's ``Image.resize(size, filter, box=...)``: sub-pixel box, default
  filter ``bilinear`` (a triangle filter whose support grows with the reduction, so
  downsampling is antialiased; ``bicubic``, ``lanczos``, ``hamming``, ``box``,
  ``nearest`` on request). When ``s == px`` no resampling happens: the box snaps to
  the pixel grid (``x0 = floor(x - px/2 + 0.5)``) and pixels are copied.
- ``mode="native"``: the release's crop, bounds ``round(x ± r)``, ``round(y ± r)``,
  resized to ``px`` (copied when the crop is ``px`` pixels wide), for comparison.
- Pyramid: when a patch is reduced by 2x or more, level ``k = floor(log2(reduction))``
  (2^k x 2^k block means of level 0) is read instead of level 0 (``pyramid=False``
  turns this off).
- Outside the image, pixels are white (255); such patches are flagged ``edge`` (or
  dropped with ``edge="drop"``). The tissue fraction is the share of pixels whose chroma
  ``max(R,G,B) - min(R,G,B)`` is at least 15 (every 4th pixel); patches below
  ``min_tissue`` (default 0.1) are flagged ``no_tissue``.

Patch store layout (Zarr v3 group)
----------------------------------
=====================  ============================  =======================================
``patches``            ``(N, px, px, 3)`` uint8      sharded (~32 MiB per file); inner
                                                     chunks of ~128 KiB: one patch from
                                                     210 px up (zstd level 1)
``targets``            ``(N, G)`` float32            expression targets (NaN: gene absent)
``genes``              ``(G,)`` str                  shared panel (absent for per-slide HVGs)
``obs/slide``          ``(N,)`` int32                slide code: index into ``attrs`` slides
``obs/row``            ``(N,)`` int64                row of the spot in the slide's table
``obs/spot_id``        ``(N,)`` str                  release spot id
``obs/label``          ``(N,)`` str                  annotation label (``""``: none)
``obs/x``, ``obs/y``   ``(N,)`` float64              spot centre, image pixels
``obs/flags``          ``(N,)`` uint8                bit 1 ``edge``, bit 2 ``no_tissue``
``obs/tissue_fraction``  ``(N,)`` float32            tissue share of the patch
``obs/outside_fraction`` ``(N,)`` float32            share of the box outside the image
=====================  ============================  =======================================

``attrs["stimage_patches"]`` holds ``params`` (size, px, mode, gene panel kind,
target, filter, ...), ``n`` (committed rows) and ``slides``: one record per slide in
order (slide id, tech, source store, ``start``/``stop`` rows, spot/dropped/flag counts,
µm/px, source pixels per patch, pyramid level, per-slide genes for HVG panels). Within a
slide, patches are in tile order (cache-friendly), not table order: ``obs/row`` maps back.

Appending is per slide: arrays are grown and filled, then the slide record is written
last. Opening a store cuts rows past the last record, so an interrupted export is
resumed by running it again; slides already recorded are skipped.
"""

from ._benchmark import benchmark, write_report
from ._dataset import PatchDataset
from ._embed import embed, embed_array, read_embeddings
from ._encoders import BUILTIN, Encoder, color_histogram, encoder
from ._export import export_patches
from ._image import FILTERS
from ._patchstore import EDGE, FLAGS, NO_TISSUE, is_patch_store, read_patch_attrs
from ._predict import ExpressionResult, fold_splits, predict_expression
from ._probe import linear_probe
from ._split import load_split, split_slides
from ._targets import RECIPES, Targets, targets

__all__ = [
    "BUILTIN",
    "EDGE",
    "FILTERS",
    "FLAGS",
    "NO_TISSUE",
    "RECIPES",
    "Encoder",
    "ExpressionResult",
    "PatchDataset",
    "Targets",
    "benchmark",
    "color_histogram",
    "embed",
    "embed_array",
    "encoder",
    "export_patches",
    "fold_splits",
    "is_patch_store",
    "linear_probe",
    "load_split",
    "predict_expression",
    "read_embeddings",
    "read_patch_attrs",
    "split_slides",
    "targets",
    "write_report",
]
