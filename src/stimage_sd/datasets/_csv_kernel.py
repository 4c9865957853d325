"""Compiled formatter of sparse count rows into dense CSV text (numba)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["format_sparse_rows"]


@njit(cache=True, nogil=True)
def format_sparse_rows(n_rows, n_genes, codes, vals, ids, id_off, zeros, zero_width, suffix, out):  # pragma: no cover
    r"""Write ``id,v,v,...\n`` rows into ``out``; returns the number of bytes written.

    ``codes`` (sorted) are ``row * n_genes + gene`` of the non-zero ``vals``; ``zeros``
    holds ``n_genes`` copies of the zero token (``,0.0`` or ``,0``), each ``zero_width``
    bytes, copied in runs between non-zeros.
    """
    pos = 0
    k = 0
    nnz = codes.shape[0]
    digits = np.empty(20, np.uint8)
    for i in range(n_rows):
        a, b = id_off[i], id_off[i + 1]
        out[pos : pos + (b - a)] = ids[a:b]
        pos += b - a
        j = 0
        base = i * n_genes
        while k < nnz and codes[k] < base + n_genes:
            g = codes[k] - base
            n = (g - j) * zero_width
            out[pos : pos + n] = zeros[:n]
            pos += n
            out[pos] = 44
            pos += 1
            v = vals[k]
            m = 0
            while True:
                digits[m] = 48 + v % 10
                v //= 10
                m += 1
                if v == 0:
                    break
            for q in range(m - 1, -1, -1):
                out[pos] = digits[q]
                pos += 1
            if suffix:
                out[pos] = 46
                out[pos + 1] = 48
                pos += 2
            j = g + 1
            k += 1
        n = (n_genes - j) * zero_width
        out[pos : pos + n] = zeros[:n]
        pos += n
        out[pos] = 10
        pos += 1
    return pos
