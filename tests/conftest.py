"""Shared fixtures.

Data comes from the deterministic generator (:mod:`stimage_sd.datasets`); tests never
reach the internet. Real release files are read from ``../shared/real-data`` when present.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("STIMAGE_SD_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "real-data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real release files, or skip."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real release files not available: {REAL_DATA} is absent")
    return REAL_DATA


def once_per_run(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(folder)`` once per test run, its value shared by every pytest-xdist worker.

    For session fixtures whose data is read-only: the first worker to take the lock builds
    it in a folder beside the workers' own temporary folders and pickles the value; the
    others wait for it and read the value back. Without workers, ``build(mktemp(name))``.
    """
    import fcntl
    import pickle
    import shutil

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    folder, value_file = root / f"shared-{name}", root / f"shared-{name}.pickle"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if value_file.exists():
            return pickle.loads(value_file.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # left by a worker whose build failed
        folder.mkdir()
        value = build(folder)
        value_file.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The built-in sample release (generated once per run; read-only for tests)."""
    from stimage_sd import datasets

    return once_per_run(tmp_path_factory, "sample", lambda folder: datasets.sample(folder / "release"))


@pytest.fixture(scope="session")
def sample_stores(sample_root, tmp_path_factory) -> dict[str, Path]:
    """Every sample slide converted once per run: slide id -> store path (read-only)."""
    from stimage_sd.batch import convert_many

    def build(out: Path) -> dict[str, Path]:
        results = convert_many(sample_root, out, progress=False)
        failed = [r for r in results if r.status == "failed"]
        assert not failed, failed
        return {r.slide: r.path for r in results}

    return once_per_run(tmp_path_factory, "stores", build)


# ---- begin: fake Hugging Face Hub fixture (issue 5: catalogue & download; see tests/_hf_server.py) ----
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Start a loopback fake Hub serving a folder: ``fake_hub(folder, **FakeHub_kwargs) -> FakeHub``.

    Points the real ``huggingface_hub`` client at it (``HF_ENDPOINT``), gives it an empty
    cache (``HF_HOME``/``HF_HUB_CACHE`` under ``tmp_path``), unsets ``HF_TOKEN`` and
    ``HF_HUB_OFFLINE``, and stops the servers after the test.
    """
    from _hf_server import FakeHub

    hubs = []
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def start(folder, **kwargs):
        hub = FakeHub(folder, **kwargs).start()
        hubs.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        return hub

    yield start
    for hub in hubs:
        hub.stop()
# ---- end: fake Hugging Face Hub fixture ----


# ---- begin: analysis slides (issue 6: per-slide analysis; tests/test_analysis.py, test_analyze_cli.py) ----
#: Generated slides with clear spatial domains, one per technology (small: a few hundred to
#: ~3,000 spots). Markers are only ~3-4x up in their domain and counts are shallow, so
#: expression alone separates the domains imperfectly and spatial context matters.
ANALYSIS_SPECS = {
    "Visium": dict(
        slide="Human_Brain_Anl_01012020_Visium_151673", tech="Visium", grid=(32, 32), n_genes=800,
        n_domains=5, annotate=True, marker_fold=4.0, n_markers=5,
    ),
    "ST": dict(
        slide="Human_Breast_Anl_10142021_ST_B1", tech="ST", grid=(28, 28), um_per_px=4.0, n_genes=800,
        n_domains=4, domain_layout="blobs", annotate=True, marker_fold=3.0, n_markers=5,
    ),
    "VisiumHD": dict(
        slide="Mouse_Brain_Anl_03292024_VisiumHD", tech="VisiumHD", grid=(60, 60), n_genes=800,
        n_domains=4, species="mouse", marker_fold=4.0, n_markers=5, depth=2.0,
    ),
}


@pytest.fixture(scope="session")
def analysis_slides(tmp_path_factory) -> dict:
    """tech -> (SlideTruth, converted store path) of :data:`ANALYSIS_SPECS` (read-only stores)."""
    from stimage_sd.datasets import SlideSpec, make_slide
    from stimage_sd.io import convert_slide

    def build(folder: Path) -> dict:
        slides = {}
        for tech, kw in ANALYSIS_SPECS.items():
            truth = make_slide(folder / "release", SlideSpec(**kw))
            slides[tech] = (truth, convert_slide(folder / "release", kw["slide"], folder / "stores", checksums=False))
        return slides

    return once_per_run(tmp_path_factory, "analysis", build)
# ---- end: analysis slides ----


# ---- begin: hypothesis profiles (issue 10: fuzzing; see docs/robustness.md) ----
# "ci" (default): derandomized, so CI runs are reproducible, bounded budget, no database.
# "long": for maintainers: `pytest tests/test_fuzz.py --hypothesis-profile=long`.
# (Tests that set max_examples themselves keep their own budget.)
from hypothesis import HealthCheck as _HealthCheck  # noqa: E402
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=100, database=None,
    suppress_health_check=[_HealthCheck.too_slow],
)
_hsettings.register_profile(
    "long", deadline=None, max_examples=5000, suppress_health_check=[_HealthCheck.too_slow],
)
_hsettings.load_profile(os.environ.get("STIMAGE_HYPOTHESIS_PROFILE", "ci"))
# ---- end: hypothesis profiles ----


# ---- begin: oracle fixtures (issue 17: pp/tl against scanpy and squidpy; tests/pp, tests/tl) ----
@pytest.fixture(scope="session")
def real_visium(real_data):
    """The real 10x Visium sample as a raw table (100 spots x 100 genes, 53 genes never
    detected; ``obsm["spatial"]`` full-resolution pixels), and the positions of all 4,992
    spots of its capture area."""
    import warnings

    import numpy as np
    import pandas as pd
    import scanpy as sc
    from scipy import sparse

    folder = real_data / "visium_mouse_brain"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scanpy: "Variable names are not unique"
        adata = sc.read_10x_h5(folder / "filtered_feature_bc_matrix.h5")
    adata.var_names_make_unique()
    pos = pd.read_csv(
        folder / "spatial" / "tissue_positions_list.csv", header=None,
        names=["barcode", "in_tissue", "array_row", "array_col", "y", "x"], index_col="barcode",
    )
    adata.obsm["spatial"] = pos.loc[adata.obs_names, ["x", "y"]].to_numpy(dtype=np.float64)
    adata.X = sparse.csr_matrix(adata.X)
    adata.uns["stimage"] = {"tech": "Visium", "species": "mouse"}
    return adata, pos


@pytest.fixture(scope="session")
def analysis_tables(analysis_slides) -> dict:
    """tech -> the raw table of :data:`ANALYSIS_SPECS`' store, read back (copy before changing it)."""
    from stimage_sd.io import read

    return {tech: read(store)["table"] for tech, (_, store) in analysis_slides.items()}


@pytest.fixture
def oracle_table(analysis_tables, request):
    """``oracle_table(source)``: a fresh raw table of a generated slide (ST, Visium,
    VisiumHD) or of the real sample (``"real"``; skipped without ../shared/real-data)."""

    def get(source: str):
        if source == "real":
            return request.getfixturevalue("real_visium")[0].copy()
        return analysis_tables[source].copy()

    return get
# ---- end: oracle fixtures ----


# ---- begin: cohort stores (issue 16: cohort table, cross-slide analysis) ----
#: One study of three serial sections: shared genes and domain profiles, their own tissue
#: layout, depth and gene-wise batch factors; plus a slide of another human study (its own
#: gene panel) and a mouse slide.
COHORT_STUDY = "Human_Brain_Cohort_01012025"
COHORT_SPECS = [
    dict(slide=f"{COHORT_STUDY}_Visium_{s}", tech="Visium", grid=(30, 30), n_genes=400, annotate=True,
         study=COHORT_STUDY, batch_effect=0.8, depth=d, n_domains=4, seed=i)
    for i, (s, d) in enumerate([("A1", 1.0), ("B1", 0.5), ("C1", 2.0)])
]
COHORT_OTHER = [
    dict(slide="Human_Brain_Other_02022025_Visium_A1", tech="Visium", grid=(12, 12), n_genes=300, seed=7),
    dict(slide="Mouse_Brain_Synth_03032025_Visium_A1", tech="Visium", grid=(12, 12), n_genes=300,
         species="mouse", seed=8),
]


@pytest.fixture(scope="session")
def cohort_stores(tmp_path_factory) -> dict:
    """``{"study": [store, ...], "other": store, "mouse": store, "truths": {slide: SlideTruth}}`` (read-only)."""
    from stimage_sd.datasets import SlideSpec, make_release
    from stimage_sd.io import convert_slide

    def build(folder: Path) -> dict:
        root, out = folder / "release", folder / "stores"
        specs = [SlideSpec(**kw) for kw in COHORT_SPECS + COHORT_OTHER]
        truths = make_release(root, specs)
        stores = [convert_slide(root, s.slide, out / ("study" if s.study else "other"), checksums=False) for s in specs]
        return {"study": stores[:3], "other": stores[3], "mouse": stores[4], "truths": truths}

    return once_per_run(tmp_path_factory, "cohort", build)
# ---- end: cohort stores ----


# ---- begin: a 100k-bin VisiumHD store (issue 16: gene index; tests/io/test_remote.py, test_gene_index.py) ----
HD_SLIDE = "Mouse_Brain_Bins_03292024_VisiumHD"


def make_hd_store(path: Path, *, grid=(317, 317), n_genes: int = 2000, gene_index: bool = True) -> Path:
    """A converted VisiumHD store of ``grid`` bins without image, written by the converter's writer.

    The counts come from :func:`stimage_sd.datasets.make_table` (the counts
    :func:`~stimage_sd.datasets.make_slide` writes, without the CSV round trip), the store from
    :func:`stimage_sd.io.build_sdata` and :func:`stimage_sd.io.write`, as ``convert_slide`` does.
    """
    import logging

    import numpy as np
    import pandas as pd

    import stimage_sd as ssd
    from stimage_sd.datasets import SlideSpec, make_table

    spec = SlideSpec(HD_SLIDE, "VisiumHD", grid=grid, n_genes=n_genes, um_per_px=0.5, tissue_fraction=1.0)
    t = make_table(spec)
    xy = t.obsm["spatial"]
    coords = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "r": t.uns["stimage"]["spot_radius_px"]}, index=t.obs_names)
    counts = ssd.io.Counts(X=t.X.astype(np.int32), spot_ids=t.obs_names.to_numpy(dtype=object),
                           genes=t.var["gene_name"].to_numpy(dtype=object))
    log = logging.getLogger("stimage_sd")
    level = log.level
    log.setLevel(logging.ERROR)  # duplicated generated gene names are reported; not the point here
    try:
        sdata = ssd.io.build_sdata(slide=HD_SLIDE, tech="VisiumHD", coords=coords, counts=counts, image=None)
    finally:
        log.setLevel(level)
    return ssd.io.write(sdata, path, gene_index=gene_index)


@pytest.fixture(scope="session")
def hd_store(tmp_path_factory) -> Path:
    """A 100,489-bin x 2,000-gene VisiumHD store with its gene index (read-only: copy it to change it)."""
    return make_hd_store(tmp_path_factory.mktemp("hd_bins") / f"{HD_SLIDE}.zarr")
# ---- end: a 100k-bin VisiumHD store ----


# ---- skip on a bare machine, require in CI ----
def in_ci() -> bool:
    """Whether this run is CI (``CI`` set to 1/true/yes), where no test may skip for lack of software."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_in_ci(reason: str) -> None:
    """Skip with ``reason`` (and how to get what is missing) on a bare machine; fail in CI."""
    if in_ci():
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


# ---- begin: parallel runs (pytest-xdist: `-n auto --dist loadfile` in pyproject's addopts) ----
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per CPU this process may run on.

    pytest-xdist's own count is psutil's *physical* cores, which is 1 on a 2-vCPU machine
    whose vCPUs are hyper-threads of one core. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides.
    """
    from stimage_sd._utils import cpu_count

    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else cpu_count()


#: The costliest modules, costliest first (seconds in CI: 2 workers on 2 cores, timm installed).
#: Modules are run in this order, then the others in collection order, so that with
#: ``--dist loadfile`` no long module starts last and leaves the other workers idle.
#: Run at the very end of a worker: once napari's PyQt6 is loaded in a process, importing
#: triton (torch._dynamo, via torchvision/timm in tests/ml) segfaulted a CI worker
#: (torch 2.14.1, PyQt6 6.11); in the one-process order (ml before pl) it never did. The
#: headless canvas loads Mesa's OpenGL driver and with it a system libLLVM; triton's own LLVM
#: loaded after it crashes (`ctypes.CDLL("libLLVM-15.so.1", mode=RTLD_GLOBAL); import triton`
#: segfaults alone; `pytest -n 0 tests/pl/test_viewer.py tests/ml/test_embed.py` did too).
LAST_MODULES = ("pl/test_viewer.py",)
HEAVY_MODULES = (
    "io/test_crash.py",  # ~180 s
    "io/test_corpus.py",  # ~170 s
    "docs/test_notebooks.py",  # ~135 s (04_benchmark_encoders alone ~75 s)
    "docs/test_doctests.py",  # ~75 s
    "batch/test_batch.py",  # ~65 s
    "io/test_validate.py",  # ~45 s
    "tl/test_analysis.py",  # ~35 s
    "workflows/test_analyze_cli.py",  # ~33 s
    "ml/test_ml.py",  # ~32 s
    "docs/test_docs.py",  # ~26 s
    "io/test_locks.py",  # ~24 s
    "io/test_cohort_table.py",  # ~23 s
)


def pytest_collection_modifyitems(config, items) -> None:
    tests = Path(__file__).resolve().parent
    rank = {tests / name: i for i, name in enumerate(HEAVY_MODULES)}
    # LAST_MODULES after everything else (rank beyond the unranked modules)
    rank.update({tests / name: len(HEAVY_MODULES) + 1 + i for i, name in enumerate(LAST_MODULES)})
    items.sort(key=lambda item: rank.get(item.path, len(HEAVY_MODULES)))  # stable: same order within a module
# ---- end: parallel runs ----
