"""Negative-binomial counts with domain marker genes, streamed to a dense CSV.

Model: every domain ``d`` has an expression profile ``P[d]`` (gene proportions: a heavy
tailed base, abundant housekeeping, ribosomal and mitochondrial genes, ``n_markers``
marker genes up-regulated ``marker_fold`` times in their own domain and mild shifts of
other genes). A spot mixes the profiles of the domains its footprint covers; its mean
is ``library_size * mix @ P``. Genes with a non-negligible mean get negative-binomial
(gamma–Poisson) counts; the long tail of genes whose mean is tiny everywhere — where
the negative binomial is indistinguishable from a Poisson — is sampled sparsely as
Poisson reads, which keeps huge, very sparse slides (VisiumHD) fast.

Rows are generated and formatted in blocks (a compiled formatter writes the digits), so
memory is bounded by the block size whatever the slide size.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._logging import logger, progress_bar
from ._genes import GenePanel
from ._geometry import Layout
from ._noise import rng_for
from ._spec import SlideSpec

__all__ = ["CountModel", "write_counts"]

#: Median library size per gene column, by technology (tuned to the release's sparsity:
#: Visium ~5-15 % non-zero, ST denser, VisiumHD ~1-3 %).
_DEPTH_PER_GENE = {"ST": 0.35, "Visium": 0.2, "VisiumHD": 0.02}
#: Default mean count of a marker gene in its own domain.
_MARKER_MEAN = {"ST": 10.0, "Visium": 6.0, "VisiumHD": 1.5}
#: Mean (at the median library size) below which a gene is sampled as sparse Poisson reads.
_LOW_MEAN = 0.2
#: Target number of cells per generated block.
_BLOCK_CELLS = 1 << 23


def _depth_for_density(
    prof: np.ndarray, weight: np.ndarray, dom_lib: np.ndarray, theta: np.ndarray, density: float
) -> float:
    """Median library size whose expected fraction of non-zero counts is ``density``.

    Expectation of ``1 - P(0)`` under the negative binomial, over domains (weighted by
    their share of spots), genes and the log-normal library-size spread.
    """
    z, wz = np.polynomial.hermite_e.hermegauss(7)
    wz = wz / wz.sum()
    lf = np.exp(0.45 * z)

    def nnz(med: float) -> float:
        mu = med * lf[:, None, None] * (dom_lib[:, None] * prof)[None, :, :]  # (Q, D, G)
        p0 = (1.0 + mu / theta) ** (-theta)
        return float(((1.0 - p0).mean(axis=2) * weight[None, :]).sum(axis=1) @ wz)

    lo, hi = 1e-2, 1e8
    for _ in range(25):
        mid = math.sqrt(lo * hi)
        if nnz(mid) < density:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


class CountModel:
    """Expression profiles and library sizes of one slide."""

    def __init__(self, spec: SlideSpec, layout: Layout, genes: GenePanel):
        rng = rng_for(*spec.panel_key, "model")  # shared by the slides of a study
        own_rng = rng if spec.study is None else rng_for(spec.seed, spec.slide, "library")
        G = len(genes.names)
        D = spec.n_domains
        kind = genes.kind
        base = rng.lognormal(0.0, 1.6, size=G)
        base[kind == "hk"] = rng.lognormal(np.log(60.0), 0.5, size=int((kind == "hk").sum()))
        base[kind == "ribo"] = rng.lognormal(np.log(25.0), 0.5, size=int((kind == "ribo").sum()))
        base[kind == "mt"] = rng.lognormal(np.log(40.0), 0.6, size=int((kind == "mt").sum()))
        prof = np.tile(base, (D, 1))
        for d in range(D):
            shift = rng.random(G) < 0.08
            prof[d, shift] *= rng.lognormal(0.0, 0.5, size=int(shift.sum()))
            prof[d, kind == "mt"] *= rng.lognormal(0.0, 0.2)
        # markers: a mean of ~marker_mean counts in their own domain at the median library
        # size, marker_fold times less elsewhere
        is_marker = genes.marker_of >= 0
        n_mark = int(is_marker.sum())
        own_f = rng.lognormal(0.0, 0.3, size=n_mark)
        fold_f = [rng.lognormal(0.0, 0.2, size=n_mark) for _ in range(D)]
        n = len(layout.ids)
        dom_lib = rng.lognormal(0.0, 0.2, size=D)
        lib_f = own_rng.lognormal(0.0, 0.45, size=n)
        self.theta = rng.uniform(1.5, 6.0, size=G)  # NB size per gene
        batch = None
        if spec.batch_effect > 0:  # slide-specific gene-wise capture efficiency
            batch = rng_for(spec.seed, spec.slide, "batch").lognormal(0.0, spec.batch_effect, size=G)

        def profiles(med: float) -> np.ndarray:
            own_p = np.zeros(G)
            m_mean = spec.marker_mean if spec.marker_mean is not None else min(_MARKER_MEAN[spec.tech], 0.025 * med)
            own_p[is_marker] = m_mean * own_f / med
            mk = np.zeros((D, G))
            for d in range(D):
                mk[d, is_marker] = own_p[is_marker] / (spec.marker_fold * fold_f[d])
                own = genes.marker_of == d
                mk[d, own] = own_p[own]
            mass = mk.sum(axis=1, keepdims=True)
            if (mass > 0.6).any():  # keep markers below 60 % of a spot's counts
                mk *= 0.6 / mass.max()
                mass = mk.sum(axis=1, keepdims=True)
            rest = prof.copy()
            rest[:, is_marker] = 0.0
            out = rest / rest.sum(axis=1, keepdims=True) * (1.0 - mass) + mk  # (D, G)
            if batch is not None:
                out = out * batch[None, :]
                out /= out.sum(axis=1, keepdims=True)
            return out

        med = _DEPTH_PER_GENE[spec.tech] * G * spec.depth
        if spec.density is not None:  # calibrate the depth to the requested non-zero fraction
            for _ in range(2):
                med = _depth_for_density(profiles(med), layout.mix.mean(axis=0), dom_lib, self.theta, spec.density)
        self.median_library = med
        self.profiles = profiles(med)
        self.library = med * lib_f * (layout.mix @ dom_lib)
        self.mix = layout.mix
        top = self.profiles.max(axis=0) * med
        self.dense = (top >= _LOW_MEAN) | (kind != "filler")
        self.low = np.flatnonzero(~self.dense)
        self.high = np.flatnonzero(self.dense)
        low_p = self.profiles[:, self.low]
        self.low_mass = low_p.sum(axis=1)  # (D,)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.low_cdf = np.cumsum(low_p, axis=1) / np.where(self.low_mass > 0, self.low_mass, 1)[:, None]

    def block(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Non-zero counts of the spots ``rows`` (indices into the layout).

        Returns sorted codes ``block_row * n_genes + gene`` and their positive values.
        """
        G = self.profiles.shape[1]
        R = len(rows)
        lib = self.library[rows]
        mix = self.mix[rows]
        codes: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        if len(self.high):
            mu = lib[:, None] * (mix @ self.profiles[:, self.high])
            th = self.theta[self.high][None, :]
            lam = rng.gamma(np.broadcast_to(th, mu.shape), mu / th)
            dense = rng.poisson(lam)
            r, c = np.nonzero(dense)
            codes.append(r * G + self.high[c])
            vals.append(dense[r, c])
        if len(self.low):
            wd = mix * self.low_mass[None, :]  # (R, D) low-gene mass per domain
            n_reads = rng.poisson(lib * wd.sum(axis=1))
            tot = int(n_reads.sum())
            if tot:
                r_idx = np.repeat(np.arange(R, dtype=np.int64), n_reads)
                if wd.shape[1] > 1:
                    cw = np.cumsum(wd, axis=1)
                    cw /= np.where(cw[:, -1:] > 0, cw[:, -1:], 1)
                    u = rng.random(tot)
                    dom = (u[:, None] > cw[r_idx, :-1]).sum(axis=1)
                else:
                    dom = np.zeros(tot, dtype=np.int64)
                v = rng.random(tot)
                g = np.empty(tot, dtype=np.int64)
                for d in range(wd.shape[1]):
                    sel = dom == d
                    if sel.any():
                        g[sel] = np.minimum(np.searchsorted(self.low_cdf[d], v[sel], side="right"), len(self.low) - 1)
                uniq, cnt = np.unique(r_idx * G + self.low[g], return_counts=True)
                codes.append(uniq)
                vals.append(cnt)
        if not codes:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        code = np.concatenate(codes).astype(np.int64)
        val = np.concatenate(vals).astype(np.int64)
        order = np.argsort(code, kind="stable")
        return code[order], val[order]


# --------------------------------------------------------------------------------------
def _kernel() -> Callable | None:
    try:
        from ._csv_kernel import format_sparse_rows
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return format_sparse_rows


_KERNEL: list = []


def format_rows(codes: np.ndarray, vals: np.ndarray, n_genes: int, ids: list[str], float_suffix: bool) -> memoryview:
    r"""Dense CSV text of sparse rows: ``id,v1,v2,...\n`` (``v.0`` when ``float_suffix``).

    ``codes`` (sorted) are ``row * n_genes + gene`` of the positive ``vals``.
    """
    if not _KERNEL:
        _KERNEL.append(_kernel())
    kernel = _KERNEL[0]
    tok = ",0.0" if float_suffix else ",0"
    if kernel is None:  # pragma: no cover - pure Python fallback
        suf = ".0" if float_suffix else ""
        dense = np.zeros((len(ids), n_genes), dtype=np.int64)
        dense.flat[codes] = vals
        text = "".join(i + "," + ",".join(f"{v}{suf}" for v in row) + "\n" for i, row in zip(ids, dense.tolist(), strict=True))
        return memoryview(text.encode("utf-8"))
    enc = [s.encode("utf-8") for s in ids]
    id_off = np.zeros(len(enc) + 1, dtype=np.int64)
    id_off[1:] = np.cumsum([len(b) for b in enc])
    id_bytes = np.frombuffer(b"".join(enc), dtype=np.uint8) if id_off[-1] else np.zeros(0, np.uint8)
    zeros = np.frombuffer((tok * n_genes).encode("ascii"), dtype=np.uint8)
    vmax = int(vals.max()) if vals.size else 0
    extra = len(vals) * (len(str(vmax)) + 3)
    out = np.empty(int(id_off[-1]) + len(ids) * (n_genes * len(tok) + 1) + extra, dtype=np.uint8)
    n = kernel(
        len(ids), n_genes, codes, vals, id_bytes, id_off, zeros, len(tok), bool(float_suffix), out
    )
    return memoryview(out)[:n]


class _BackgroundWriter:
    """Writes buffers to a file from a thread, in order, at most ``depth`` buffers behind."""

    def __init__(self, fh: BinaryIO, depth: int = 2):
        self._fh = fh
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._err: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="stimage_sd-counts-writer", daemon=True)

    def _run(self) -> None:
        while True:
            buf = self._q.get()
            if buf is None:
                return
            if self._err is None:
                try:
                    self._fh.write(buf)
                except BaseException as e:  # re-raised in the producer
                    self._err = e

    def write(self, buf: memoryview) -> None:
        if self._err is not None:
            raise self._err
        self._q.put(buf)

    def __enter__(self) -> _BackgroundWriter:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._q.put(None)
        self._t.join()
        if self._err is not None and exc[0] is None:
            raise self._err


def write_counts(
    path: str | Path,
    spec: SlideSpec,
    layout: Layout,
    genes: GenePanel,
    *,
    progress: bool | None = False,
) -> np.ndarray:
    """Write the dense count CSV in blocks; returns the row order (indices into the layout)."""
    path = Path(path)
    n = len(layout.ids)
    order = rng_for(spec.seed, spec.slide, "order").permutation(n) if spec.shuffle_rows else np.arange(n)
    model = CountModel(spec, layout, genes)
    rng = rng_for(spec.seed, spec.slide, "counts")
    G = len(genes.names)
    rows_per_block = max(1, min(n, _BLOCK_CELLS // max(G, 1)))
    suffix = not spec.integer_counts
    header = ("," + ",".join(genes.names) + "\n").encode("utf-8")
    logger.debug("writing %s: %d spots x %d genes", path, n, G)
    with open(path, "wb") as fh, progress_bar(f"counts {spec.slide}", n, progress=progress) as bar:
        fh.write(header)
        with _BackgroundWriter(fh) as out:  # disk writes overlap the next block's generation
            for b0 in range(0, n, rows_per_block):
                rows = order[b0 : b0 + rows_per_block]
                codes, vals = model.block(rows, rng)
                out.write(format_rows(codes, vals, G, list(layout.ids[rows]), suffix))
                bar(len(rows))
    return order
