"""Every key stimage_sd reads or writes in a table: one registry.

As squidpy's ``_constants/_pkg_constants.py``: one class per :class:`anndata.AnnData`
attribute; a plain attribute for a fixed key, a static method for a key derived from a
user-chosen ``key_added``. Code in :mod:`stimage_sd.pp`, :mod:`stimage_sd.tl` and
:mod:`stimage_sd.pl` names keys only through :class:`Key`, so the keys a function writes
are found here, next to the function that writes them.

Keys written by the converter (:mod:`stimage_sd.io`) live in :mod:`stimage_sd._constants`
and are repeated here so that analysis code reads them from one place.
"""

from __future__ import annotations

from ._constants import INSTANCE_KEY, REGION_KEY, UNS_KEY

__all__ = ["Key"]


class Key:
    """Keys of the table's ``layers``, ``obs``, ``var``, ``obsm``, ``varm``, ``obsp`` and ``uns``."""

    class layers:
        """``layers`` keys."""

        #: Raw counts, kept by :func:`stimage_sd.pp.normalize` (``X`` then holds normalised values).
        counts = "counts"

    class obs:
        """``obs`` columns."""

        # written by the converter (io)
        region = REGION_KEY
        instance = INSTANCE_KEY
        annotation = "annotation"
        # pp.qc: scanpy's calculate_qc_metrics (qc_vars "mt", "ribo")
        total_counts = "total_counts"
        n_genes_by_counts = "n_genes_by_counts"
        log1p_total_counts = "log1p_total_counts"
        log1p_n_genes_by_counts = "log1p_n_genes_by_counts"
        pct_counts_mt = "pct_counts_mt"
        pct_counts_ribo = "pct_counts_ribo"
        # pp.qc: our flags
        qc_low_counts = "qc_low_counts"
        qc_low_genes = "qc_low_genes"
        qc_high_mt = "qc_high_mt"
        qc_outlier = "qc_outlier"
        # tl.domains (default ``key_added``)
        domain = "domain"
        # io.read_cohort: the slide of each spot (squidpy's ``library_key``) and its technology
        slide = "slide"
        tech = "tech"

        @staticmethod
        def bin(label: str) -> str:
            """Coarse bin of each fine bin, written by :func:`stimage_sd.pp.bin_hd`."""
            return f"bin_{label}"

    class var:
        """``var`` columns."""

        # written by the converter (io)
        gene_name = "gene_name"
        # pp.qc
        mt = "mt"
        ribo = "ribo"
        # pp.normalize (scanpy's highly_variable_genes)
        highly_variable = "highly_variable"

        @staticmethod
        def svg(key: str) -> str:
            """Moran's I of each tested gene (:func:`stimage_sd.tl.svg`)."""
            return key

        @staticmethod
        def svg_pval(key: str) -> str:
            """Its analytic p-value."""
            return f"{key}_pval"

        @staticmethod
        def svg_fdr(key: str) -> str:
            """Its Benjamini–Hochberg FDR."""
            return f"{key}_fdr"

        @staticmethod
        def svg_rank(key: str) -> str:
            """Its rank (1 = most spatially variable)."""
            return f"{key}_rank"

    class obsm:
        """``obsm`` keys."""

        #: Spot centres in image pixels (converter; squidpy's convention).
        spatial = "spatial"
        #: scVI latent space (:func:`stimage_sd.pp.integrate`, ``method="scvi"``; scvi-tools' name).
        scvi = "X_scVI"

        @staticmethod
        def domain_pca(key: str) -> str:
            """PCA scores computed by :func:`stimage_sd.tl.domains` (scanpy's ``key_added``)."""
            return f"{key}_pca"

        @staticmethod
        def domain_features(key: str) -> str:
            """The features :func:`stimage_sd.tl.domains` clusters."""
            return f"X_{key}"

    class varm:
        """``varm`` keys."""

        @staticmethod
        def domain_pca(key: str) -> str:
            """PCA loadings of :func:`stimage_sd.tl.domains`."""
            return f"{key}_pca"

    class obsp:
        """``obsp`` keys."""

        #: Default prefix of the spatial graph (squidpy's ``key_added``).
        spatial = "spatial"

        @staticmethod
        def spatial_conn(key: str = "spatial") -> str:
            """Spatial graph connectivities (squidpy's naming)."""
            return f"{key}_connectivities"

        @staticmethod
        def spatial_dist(key: str = "spatial") -> str:
            """Spatial graph distances (squidpy's naming)."""
            return f"{key}_distances"

        @staticmethod
        def domain_knn_conn(key: str) -> str:
            """Feature kNN graph of :func:`stimage_sd.tl.domains` (Leiden)."""
            return f"{key}_knn_connectivities"

        @staticmethod
        def domain_knn_dist(key: str) -> str:
            """Its distances."""
            return f"{key}_knn_distances"

    class uns:
        """``uns`` keys."""

        #: Slide metadata written by the converter.
        stimage = UNS_KEY
        #: :func:`stimage_sd.pp.qc` parameters and thresholds.
        qc = "stimage_qc"
        #: :func:`stimage_sd.pp.normalize` parameters.
        normalize = "stimage_normalize"
        #: scanpy's keys written through :func:`stimage_sd.pp.normalize`.
        hvg = "hvg"
        log1p = "log1p"
        pearson = "pearson_residuals_normalization"
        #: :func:`stimage_sd.tl.run_pipeline` parameters.
        analysis = "stimage_analysis"
        #: :func:`stimage_sd.pp.integrate` parameters (Harmony).
        harmony = "harmony"
        #: Parameters and training summary of :func:`stimage_sd.pp.integrate` with ``method="scvi"``.
        scvi = "scvi"
        #: Default ``key_added`` of :func:`stimage_sd.tl.svg` (squidpy's own key).
        moranI = "moranI"

        @staticmethod
        def spatial_neighs(key: str = "spatial") -> str:
            """Spatial graph parameters (squidpy's naming, plus ``["stimage"]``)."""
            return f"{key}_neighbors"

        @staticmethod
        def domain(key: str) -> str:
            """:func:`stimage_sd.tl.domains` parameters."""
            return key

        @staticmethod
        def domain_pca(key: str) -> str:
            """PCA parameters of :func:`stimage_sd.tl.domains` (scanpy's ``key_added``)."""
            return f"{key}_pca"

        @staticmethod
        def domain_knn(key: str) -> str:
            """Neighbours entry of the feature kNN graph (scanpy's ``neighbors_key``)."""
            return f"{key}_knn"

        @staticmethod
        def domain_scores(key: str) -> str:
            """:func:`stimage_sd.tl.score_domains` result."""
            return f"{key}_scores"

        @staticmethod
        def svg(key: str) -> str:
            """The Moran's I table (squidpy's) written by :func:`stimage_sd.tl.svg`."""
            return key

        @staticmethod
        def svg_params(key: str) -> str:
            """:func:`stimage_sd.tl.svg` parameters."""
            return f"{key}_params"
