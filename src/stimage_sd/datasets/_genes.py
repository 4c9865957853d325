"""Gene names of a synthetic slide: symbols, Ensembl ids, clone names, MT and ribosomal genes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._noise import rng_for
from ._spec import SlideSpec

__all__ = ["GenePanel", "build_genes"]

_MT = (
    "ND1", "ND2", "CO1", "CO2", "ATP8", "ATP6", "CO3", "ND3", "ND4L", "ND4", "ND5", "ND6", "CYB",
)
_RIBO = (
    "RPL3 RPL4 RPL5 RPL6 RPL7 RPL7A RPL8 RPL9 RPL10 RPL10A RPL11 RPL12 RPL13 RPL13A RPL14 "
    "RPL15 RPL18 RPL18A RPL19 RPL21 RPL22 RPL23 RPL23A RPL24 RPL26 RPL27 RPL27A RPL28 RPL29 "
    "RPL30 RPL31 RPL32 RPL34 RPL35 RPL35A RPL36 RPL37 RPL37A RPL38 RPL39 RPL41 RPLP0 RPLP1 "
    "RPLP2 RPS2 RPS3 RPS3A RPS4X RPS5 RPS6 RPS7 RPS8 RPS9 RPS10 RPS11 RPS12 RPS13 RPS14 "
    "RPS15 RPS15A RPS16 RPS17 RPS18 RPS19 RPS20 RPS21 RPS23 RPS24 RPS25 RPS26 RPS27 RPS27A "
    "RPS28 RPS29"
).split()
#: Abundant housekeeping genes (never markers).
_HOUSEKEEPING = (
    "MALAT1 ACTB GAPDH TMSB4X FTL FTH1 EEF1A1 TPT1 B2M UBC UBB HSP90AB1 PPIA CFL1 MYL6 "
    "TMSB10 EEF2 NEAT1 CALM2 HSPA8"
).split()
#: Plausible marker genes (brain layers, tumour, stroma, immune, epithelia, ...).
_MARKERS = (
    "MBP PLP1 MOBP MAG MOG CNP GFAP AQP4 RELN CUX2 RORB PCP4 NEFL NEFM SNAP25 SYT1 CAMK2A "
    "NRGN VIP SST PVALB CCK NPY HPCAL1 FEZF2 BCL11B TBR1 SATB2 FOXP2 NTS CARTPT PENK TAC1 "
    "KRT8 KRT18 KRT19 EPCAM ERBB2 ESR1 PGR MKI67 TOP2A CCND1 MUC1 CDH1 KRT5 KRT14 TP63 "
    "COL1A1 COL1A2 COL3A1 DCN LUM FN1 SPARC POSTN ACTA2 TAGLN MYH11 PDGFRB THY1 "
    "PTPRC CD3E CD3D CD2 CD8A CD4 MS4A1 CD79A CD19 CXCL13 CCL19 CCL21 LTB IGHM IGKC JCHAIN "
    "MZB1 CD68 CD163 LYZ C1QA C1QB APOE TYROBP FCER1G PECAM1 VWF CLDN5 KDR ALB APOA1 "
    "TTR HBB HBA1 SFTPC SFTPB NKX2-1 MYH6 TNNT2 NPPA UMOD SLC34A1 NPHS2 PTGDS DEFA5 LGR5 "
    "OLFM4 VIL1 TFF3 AGR2 SCGB2A2 CPB1 KRT81 S100A8 S100A9 SPP1 MMP9 MMP11"
).split()
_MOUSE_MT = ("Nd1", "Nd2", "Co1", "Co2", "Atp8", "Atp6", "Co3", "Nd3", "Nd4l", "Nd4", "Nd5", "Nd6", "Cytb")


def _mouse(sym: str) -> str:
    return sym[0] + sym[1:].lower()


@dataclass
class GenePanel:
    """Gene columns of a slide and what each one is.

    ``names`` is the header order (duplicates included); the other arrays are aligned with
    it. ``kind`` is one of ``"mt"``, ``"ribo"``, ``"hk"``, ``"marker"``, ``"filler"``;
    ``marker_of`` is the domain a marker belongs to (-1 otherwise).
    """

    names: list[str]
    kind: np.ndarray
    marker_of: np.ndarray

    @property
    def markers(self) -> dict[int, list[str]]:
        """Domain -> its marker names."""
        out: dict[int, list[str]] = {}
        for n, d in zip(self.names, self.marker_of, strict=True):
            if d >= 0:
                out.setdefault(int(d), []).append(n)
        return out


def _filler(rng: np.random.Generator, human: bool) -> str:
    k = int(rng.integers(16))
    i = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    L = lambda s: chr(ord("A") + int(rng.integers(s)))  # noqa: E731
    if human:
        forms = (
            lambda: f"ZNF{i(100, 999)}",
            lambda: f"SLC{i(1, 45)}A{i(1, 14)}",
            lambda: f"KIAA{i(1000, 2000)}",
            lambda: f"C{i(1, 23)}orf{i(1, 200)}",
            lambda: f"FAM{i(10, 250)}{L(3)}",
            lambda: f"LINC{i(100, 2800):05d}",
            lambda: f"TMEM{i(1, 270)}",
            lambda: f"CCDC{i(1, 190)}",
            lambda: f"ANKRD{i(1, 60)}",
            lambda: f"ENSG00000{i(100000, 290000)}.{i(1, 4)}",
            lambda: f"ENSG00000{i(200000, 290000)}.1",
            lambda: f"RP11-{i(1, 999)}{L(16)}{i(1, 24)}.{i(1, 9)}",
            lambda: f"RP{i(1, 13)}-{i(1, 999)}{L(16)}{i(1, 24)}.{i(1, 5)}",
            lambda: f"AC0{i(10000, 99999)}.{i(1, 6)}",
            lambda: f"LRRC{i(1, 70)}",
            lambda: f"ZBTB{i(1, 48)}",
        )
    else:
        forms = (
            lambda: f"Gm{i(1000, 50000)}",
            lambda: f"Zfp{i(1, 999)}",
            lambda: f"Slc{i(1, 45)}a{i(1, 14)}",
            lambda: f"Tmem{i(1, 270)}",
            lambda: f"Ccdc{i(1, 190)}",
            lambda: f"ENSMUSG00000{i(10000, 120000):06d}.{i(1, 3)}",
            lambda: f"{i(1110, 9930)}{L(16)}{i(1, 24):02d}Rik",
            lambda: f"Fam{i(10, 250)}{L(3).lower()}",
            lambda: f"Ankrd{i(1, 60)}",
            lambda: f"Lrrc{i(1, 70)}",
            lambda: f"Gm{i(10000, 50000)}",
            lambda: f"A{i(230000, 930000)}{L(16)}{i(1, 24):02d}Rik",
            lambda: f"Zbtb{i(1, 48)}",
            lambda: f"Olfr{i(1, 1500)}",
            lambda: f"Vmn1r{i(1, 250)}",
            lambda: f"Cyp{i(1, 40)}a{i(1, 30)}",
        )
    return forms[k]()


def build_genes(spec: SlideSpec) -> GenePanel:
    """The gene columns of a spec, deterministic in its seed and slide id (or its study)."""
    rng = rng_for(*spec.panel_key, "genes")
    human = spec.species.strip().lower().startswith("human")
    conv = (lambda s: s) if human else _mouse
    mt = [f"MT-{g}" for g in _MT] if human else [f"mt-{g}" for g in _MOUSE_MT]
    n_ribo = int(np.clip(spec.n_genes // 40, 8, len(_RIBO)))
    ribo = [conv(g) for g in rng.choice(_RIBO, size=n_ribo, replace=False)]
    hk = [conv(g) for g in _HOUSEKEEPING[: int(np.clip(spec.n_genes // 100, 4, len(_HOUSEKEEPING)))]]
    n_mark = spec.n_domains * spec.n_markers
    pool = [conv(g) for g in _MARKERS]
    taken = set(mt) | set(ribo) | set(hk)
    pool = [g for g in dict.fromkeys(pool) if g not in taken]
    picked = [pool[j] for j in rng.permutation(len(pool))[: min(n_mark, len(pool))]]
    used = taken | set(picked)
    while len(picked) < n_mark:
        g = _filler(rng, human)
        if g not in used:
            picked.append(g)
            used.add(g)
    n_fill = spec.n_genes - len(mt) - len(ribo) - len(hk) - n_mark - spec.duplicate_genes
    fill: list[str] = []
    while len(fill) < n_fill:
        g = _filler(rng, human)
        if g not in used:
            fill.append(g)
            used.add(g)
    dups = [fill[j] for j in rng.choice(len(fill), size=min(spec.duplicate_genes, len(fill)), replace=False)]

    names = ribo + hk + picked + fill + dups
    kind = ["ribo"] * len(ribo) + ["hk"] * len(hk) + ["marker"] * n_mark + ["filler"] * (len(fill) + len(dups))
    marker_of = [-1] * (len(ribo) + len(hk)) + [j // spec.n_markers for j in range(n_mark)] + [-1] * (len(fill) + len(dups))
    order = rng.permutation(len(names))
    # mitochondrial genes come as one block near the end, as in 10x feature order
    names = [names[j] for j in order] + mt
    kind = np.array([kind[j] for j in order] + ["mt"] * len(mt), dtype=object)
    marker_of = np.array([marker_of[j] for j in order] + [-1] * len(mt), dtype=np.int64)
    return GenePanel(names=names, kind=kind, marker_of=marker_of)
