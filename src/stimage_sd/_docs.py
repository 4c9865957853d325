"""Shared docstring fragments (as squidpy's ``_docs.py``), substituted by :func:`dedent`.

A docstring names a fragment as ``%(name)s`` alone on a line; :func:`dedent` replaces the
line with the fragment, indented like the placeholder. Unknown names raise at import time,
so a typo cannot reach the documentation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

__all__ = ["FRAGMENTS", "dedent"]

F = TypeVar("F", bound=Callable)

FRAGMENTS: dict[str, str] = {
    "data": """\
data
    A converted slide (:class:`spatialdata.SpatialData`) or its table
    (:class:`anndata.AnnData`).""",
    "table_key": """\
table_key
    Table of a :class:`spatialdata.SpatialData` (ignored for an :class:`anndata.AnnData`).""",
    "copy": """\
copy
    Work on a copy of the table and return it; ``data`` is left unchanged.""",
    "returns_copy": """\
``None`` (``data`` is modified), or the modified copy of the table
(:class:`anndata.AnnData`) when ``copy=True``.""",
    "seed": """\
seed
    Random seed; the same input and seed give the same result.""",
    "graph_key": """\
graph_key
    Prefix of the spatial graph in ``obsp`` (``"{graph_key}_connectivities"``); built
    with :func:`stimage_sd.tl.spatial_graph` when missing.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def _substitute(doc: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in FRAGMENTS:
            raise KeyError(f"unknown docstring fragment %({name})s")
        indent = m.group("indent")
        return "\n".join(indent + line if line else line for line in FRAGMENTS[name].splitlines())

    return _PLACEHOLDER.sub(repl, doc)


def dedent(fn: F) -> F:
    """Replace the ``%(name)s`` lines of ``fn``'s docstring with :data:`FRAGMENTS`."""
    if fn.__doc__:
        fn.__doc__ = _substitute(fn.__doc__)
    return fn
