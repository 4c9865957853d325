"""The documentation builds with warnings as errors and documents every public name."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NAMESPACES = ("io", "pp", "tl", "pl", "ml", "datasets")


def _public():
    for ns in NAMESPACES:
        module = importlib.import_module(f"stimage_sd.{ns}")
        for name in module.__all__:
            yield ns, name, getattr(module, name)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_every_public_function_and_class_has_a_numpy_docstring(ns):
    missing, no_params = [], []
    for space, name, obj in _public():
        if space != ns or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        if not doc.strip():
            missing.append(name)
        elif inspect.isfunction(obj) and inspect.signature(obj).parameters and "Parameters\n---" not in doc:
            no_params.append(name)
    assert not missing, f"no docstring: {missing}"
    assert not no_params, f"no Parameters section: {no_params}"


@pytest.mark.timeout(600)
def test_sphinx_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("myst_nb", reason="the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path / "html"
    cmd = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
        "-d", str(tmp_path / "doctrees"), str(REPO / "docs"), str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=540)
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stderr[-6000:]}"
    # a page per public name, and the CLI reference generated from the app
    pages = {p.name for p in (out / "generated").glob("*.html")}
    expected = {f"stimage_sd.{ns}.{name}.html" for ns, name, _ in _public()}
    assert not expected - pages, sorted(expected - pages)
    cli = (out / "cli.html").read_text()
    from typer.main import get_command

    from stimage_sd.cli import app

    for command in get_command(app).commands:
        assert f"stimage-sd {command}" in cli
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert (out / "generated" / "notebooks" / f"{nb.stem}.html").is_file()
