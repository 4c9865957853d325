"""The ``Examples`` sections of every public docstring run, and their outputs match.

Equivalent to ``pytest --doctest-modules src/stimage_sd``, but every example runs in one
scratch folder in which the built-in sample has been converted once, so that examples may
refer to ``"stimage_sample"`` and ``"stores/..."`` as a user's notebook would.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import stimage_sd

pytestmark = pytest.mark.slow

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for info in pkgutil.walk_packages(stimage_sd.__path__, "stimage_sd."):
        if info.name.startswith("stimage_sd.cli._view") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        tests += [t for t in finder.find(module, module=module) if t.examples]
    # one test per docstring, each object once (re-exports share a docstring)
    return sorted({t.name: t for t in tests}.values(), key=lambda t: t.name)


TESTS = _docstring_tests()


def test_every_example_line_is_collected():
    """Every ``>>>`` line of the source is in one of the collected tests (none silently missed)."""
    import re
    from pathlib import Path

    in_source = sum(len(re.findall(r"^\s*>>> ", p.read_text(), flags=re.M)) for p in Path(stimage_sd.__file__).parent.rglob("*.py"))
    collected = sum(len(t.examples) for t in TESTS)
    assert collected == in_source > 200


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with the sample release and its converted stores, as the examples expect."""
    import os

    folder = tmp_path_factory.mktemp("doctest")
    old = os.getcwd()
    os.chdir(folder)
    try:
        root = stimage_sd.datasets.sample("stimage_sample")
        for slide in stimage_sd.io.list_slides(root):
            stimage_sd.io.convert_slide(root, slide, "stores")
        yield folder
    finally:
        os.chdir(old)


#: Slides that the download examples name, served by a loopback fake Hub (no internet).
HUB_SLIDES = (
    dict(slide="Human_Breast_Andersson_10142021_ST_A1", tech="ST", tissue="breast", grid=(8, 8), n_genes=80),
    dict(slide="GSE144239_GSM4284316", tech="Visium", tissue="skin", grid=(8, 8), n_genes=80),
    dict(slide="GSE000007_GSM0000007", tech="Visium", tissue="brain", grid=(8, 8), n_genes=80, annotate=True),
)


@pytest.fixture(scope="module")
def hub_release(tmp_path_factory):
    """A small release in the Hub's layout with the slides the hub examples name."""
    from stimage_sd.datasets import SlideSpec, make_release

    root = tmp_path_factory.mktemp("hub_release")
    make_release(root, [SlideSpec(**kw) for kw in HUB_SLIDES])
    return root


@pytest.mark.parametrize("test", TESTS, ids=[t.name.removeprefix("stimage_sd.") for t in TESTS])
def test_docstring(test, scratch, monkeypatch, request):
    monkeypatch.chdir(scratch)
    if test.name.startswith("stimage_sd.hub."):
        # the examples fetch from the Hub: serve them from a loopback fake Hub
        request.getfixturevalue("fake_hub")(request.getfixturevalue("hub_release"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    test.globs = dict(test.globs)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)
