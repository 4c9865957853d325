"""Shared fixtures.

Data comes from the deterministic generator (:mod:`stimage_sd.datasets`); tests never
reach the internet. Real release files are read from ``../shared/real-data`` when present.
"""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The built-in sample release (generated once per session; read-only for tests)."""
    from stimage_sd import datasets

    return datasets.sample(tmp_path_factory.mktemp("sample") / "release")


@pytest.fixture(scope="session")
def sample_stores(sample_root, tmp_path_factory) -> dict[str, Path]:
    """Every sample slide converted once per session: slide id -> store path (read-only)."""
    from stimage_sd.io._batch import convert_many

    out = tmp_path_factory.mktemp("stores")
    results = convert_many(sample_root, out, progress=False)
    failed = [r for r in results if r.status == "failed"]
    assert not failed, failed
    return {r.slide: r.path for r in results}
