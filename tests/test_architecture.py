"""The package's layers and imports, checked on the source (an AST walk; nothing is imported).

Dependencies point down: ``cli`` → ``workflows``/``batch``/``hub`` → ``ml``/``tl``/``pl``/``pp``
→ ``io`` → the shared private modules (``_constants``, ``errors``, ``_logging``, ``_utils``,
``_compat``). ``io`` imports none of the layers above it; there are no import cycles at
module level; every third-party package imported by ``src/`` is declared in
``pyproject.toml``; private third-party APIs are used only in ``_compat.py``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = SRC / "stimage_sd"

#: What each layer may import from the package (besides itself and the shared modules).
ALLOWED = {
    "io": set(),
    "pp": {"io"},
    "tl": {"io", "pp"},
    "pl": {"io", "pp", "tl"},
    "ml": {"io", "pp", "tl", "hub"},
    "hub": {"io"},
    "batch": {"io"},
    "datasets": {"io"},
    "workflows": {"io", "pp", "tl", "pl"},
    "cli": {"io", "pp", "tl", "pl", "ml", "hub", "batch", "workflows", "datasets"},
}
SHARED = {"_constants", "errors", "_logging", "_utils", "_compat", "_deprecation", "_keys", "_docs", "_isolate", "__init__", "__main__"}
#: import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn", "PIL": "pillow", "ome_zarr": "ome-zarr", "google_crc32c": "google-crc32c",
        "skmisc": "scikit-misc", "yaml": "pyyaml", "skimage": "scikit-image", "huggingface_hub": "huggingface-hub",
        "open_clip": "open-clip-torch", "scvi": "scvi-tools"}


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = (f, ast.parse(f.read_text(encoding="utf-8")))
    return out


MODULES = _modules()


def _imports(name: str, tree: ast.Module, *, top_level: bool) -> list[str]:
    f = MODULES[name][0]
    pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level else list(ast.walk(tree))
    out = []
    for n in nodes:
        if isinstance(n, ast.Import):
            out += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                mod = ".".join(base + ([n.module] if n.module else []))
                out.append(mod)
                out += [f"{mod}.{a.name}" for a in n.names if f"{mod}.{a.name}" in MODULES]
            else:
                out.append(n.module or "")
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "stimage_sd" else None


def test_layers_point_down():
    bad = []
    for name, (f, tree) in MODULES.items():
        layer = _layer(name)
        if layer is None or layer in SHARED:
            continue
        assert layer in ALLOWED, f"{f}: package {layer!r} has no place in the layer table"
        for m in _imports(name, tree, top_level=False):
            target = _layer(m)
            if target is None or target == layer or target in SHARED:
                continue
            if target not in ALLOWED[layer]:
                bad.append(f"{f.relative_to(REPO)}: {layer} imports {m}")
    assert not bad, "\n".join(bad)


def test_io_has_no_cluster_or_hub_code():
    for name, (f, tree) in MODULES.items():
        if _layer(name) != "io":
            continue
        assert not re.search(r"catalog|hub|batch|download", f.stem), f"{f}: belongs outside io"
        for m in _imports(name, tree, top_level=False):
            assert not m.startswith(("distributed", "dask.distributed")), f"{f}: io imports {m}"


def test_no_import_cycles():
    graph = {n: {m for m in _imports(n, t, top_level=True) if m in MODULES and m != n} for n, (_, t) in MODULES.items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = [*stack[stack.index(m):], m]
                # a package __init__ registering its own submodules (the CLI's commands) is fine
                head = cycle[0]
                if not all(c == head or c.startswith(head + ".") for c in cycle):
                    cycles.append(" -> ".join(cycle))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "\n".join(cycles)


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[<>=!\[; ~]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_import_is_declared():
    declared = _declared()
    missing = set()
    for name, (f, tree) in MODULES.items():
        for m in _imports(name, tree, top_level=False):
            top = m.split(".")[0]
            if not top or top == "stimage_sd" or top in sys.stdlib_module_names:
                continue
            dist = DIST.get(top, top).lower().replace("_", "-")
            if dist not in declared:
                missing.add(f"{dist} ({f.relative_to(REPO)})")
    assert not missing, f"undeclared imports: {sorted(missing)}"


def test_private_third_party_apis_only_in_compat():
    found = []
    for _name, (f, tree) in MODULES.items():
        if f.name == "_compat.py":
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and not n.level and n.module:
                private_module = any(p.startswith("_") for p in n.module.split(".")[1:])
                private_name = any(a.name.startswith("_") for a in n.names)
                if n.module.split(".")[0] != "stimage_sd" and (private_module or private_name):
                    found.append(f"{f.relative_to(REPO)}: from {n.module} import ...")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", ["StimageError", "FormatError", "SlideNotFoundError", "IncompleteStoreError"])
def test_exceptions_are_public(name):
    import stimage_sd
    import stimage_sd.errors

    assert getattr(stimage_sd, name) is getattr(stimage_sd.errors, name)


def test_the_costliest_test_modules_named_for_scheduling_exist():
    """``HEAVY_MODULES`` (the order in which pytest-xdist hands out modules) names real files."""
    from conftest import HEAVY_MODULES, LAST_MODULES

    missing = [name for name in (*HEAVY_MODULES, *LAST_MODULES) if not (REPO / "tests" / name).is_file()]
    assert not missing, f"moved or renamed? update HEAVY_MODULES in tests/conftest.py: {missing}"
