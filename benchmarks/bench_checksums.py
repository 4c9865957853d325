"""Cost of the content checksums (issue 15) next to what conversion does anyway.

- counts: :func:`stimage_sd.io._checksums.csr_digest` of a VisiumHD-like raw count matrix
  (int32 CSR, default 100,000 bins x 18,085 genes, 1.5 % non-zero) against writing the same
  table with AnnData (``write_zarr``, what every conversion does), in the same process;
- image chunks: CRC-32 (the scheme) and SHA-256 of one 3 x 1024 x 1024 uint8 H&E-like chunk
  (``bench_image._pixels``) against
  compressing it with the store's codec (zstd level 1).

Prints a markdown table of times and ratios (fastest of ``--repeat`` runs).

Example::

    python benchmarks/bench_checksums.py --bins 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
import warnings
import zlib

import numpy as np


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bins", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=18_085)
    p.add_argument("--density", type=float, default=0.015)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()

    import anndata as ad
    import scipy.sparse as sp
    from numcodecs import Zstd

    from stimage_sd.io._checksums import csr_digest

    rng = np.random.default_rng(0)
    nnz = int(a.bins * a.genes * a.density)
    indptr = np.linspace(0, nnz, a.bins + 1).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(a.genes, int(n), replace=False))
                              for n in np.diff(indptr)]).astype(np.int32)
    data = rng.integers(1, 20, nnz, dtype=np.int32)
    X = sp.csr_matrix((data, indices, indptr), shape=(a.bins, a.genes))
    tmp = tempfile.mkdtemp()
    try:
        def write():
            shutil.rmtree(f"{tmp}/t.zarr", ignore_errors=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ad.AnnData(X).write_zarr(f"{tmp}/t.zarr")

        t_write = _best(write, a.repeat)
        t_digest = _best(lambda: csr_digest(X), a.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_image import _pixels  # the H&E-like pixels of the image benchmark

    chunk = np.ascontiguousarray(np.moveaxis(_pixels(0, 0, 1024, 1024), -1, 0))
    n = 20
    z = Zstd(level=1)
    t_zstd = _best(lambda: [z.encode(chunk) for _ in range(n)], a.repeat) / n
    t_crc = _best(lambda: [zlib.crc32(memoryview(chunk).cast("B")) for _ in range(n)], a.repeat) / n
    t_sha = _best(lambda: [hashlib.sha256(memoryview(chunk).cast("B")).hexdigest() for _ in range(n)], a.repeat) / n
    print(f"counts: {a.bins:,} x {a.genes:,}, {nnz:,} non-zero (int32 CSR, {X.data.nbytes * 2 / 1e6:.0f} MB)\n")
    print("| step | time (s) | ratio |")
    print("|---|---:|---:|")
    print(f"| AnnData write_zarr of the table (baseline) | {t_write:.2f} | 1.00 |")
    print(f"| csr_digest (CRC-32 of the decoded matrix) | {t_digest:.2f} | {t_digest / t_write:.2f} |")
    print(f"| zstd:1 compression of a 3x1024² chunk (baseline) | {t_zstd * 1e3:.1f} ms | 1.00 |")
    print(f"| CRC-32 of the chunk (the scheme) | {t_crc * 1e3:.1f} ms | {t_crc / t_zstd:.2f} |")
    print(f"| SHA-256 of the chunk (for comparison) | {t_sha * 1e3:.1f} ms | {t_sha / t_zstd:.2f} |")


if __name__ == "__main__":
    main()
