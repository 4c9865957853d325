"""Sphinx configuration of the stimage_sd documentation (scverse style).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (no network needed; the notebooks
are rendered without executing them: they are executed by the test suite instead).
"""

from __future__ import annotations

import sys
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import stimage_docs  # noqa: E402

# generated/api.rst (every public name) and generated/notebooks/ (copies of notebooks/)
stimage_docs.prepare(HERE)

project = "stimage_sd"
author = "stimage_sd developers"
copyright = f"{date.today().year}, {author}"
try:
    release = _version("stimage-sd")
except Exception:  # pragma: no cover - building from a source tree without installing
    release = "0.0.0"
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "stimage_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "_ext"]
default_role = "literal"
smartquotes = False  # keep "--option" and quotes as typed
nitpicky = False

# autodoc / autosummary / napoleon (numpy-style docstrings)
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_use_ivar = True
napoleon_custom_sections = [("Writes", "params_style")]

# myst / myst-nb: notebooks are stored without outputs and not executed here
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "tasklist"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True

# HTML (sphinx-book-theme, as scverse projects use)
html_theme = "sphinx_book_theme"
html_title = "stimage_sd"
html_static_path: list[str] = []
html_theme_options = {
    "repository_url": "https://github.com/stimage-sd/stimage_sd",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sourcelink = False
