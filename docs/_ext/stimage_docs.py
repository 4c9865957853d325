"""Sphinx helpers for the stimage_sd documentation.

``prepare`` (called by ``conf.py``, before Sphinx looks for documents):

- :func:`write_api_page` writes ``generated/api.rst``: an autosummary table of every name in
  ``__all__`` of each public namespace, so that the API reference cannot miss a public
  function (autosummary then writes one page per object).
- :func:`copy_notebooks` copies ``notebooks/*.ipynb`` into ``generated/notebooks`` for myst-nb.
- numpy ``Returns`` sections written as free text render as such (napoleon would read
  each line as a type), and re-exported constants show their ``#:`` comments.
- The ``typer-cli`` directive renders the ``stimage-sd`` command line from the typer app
  itself: usage, help and every argument and option of every command.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
from pathlib import Path
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import Directive, directives

NAMESPACES = {
    "io": "Reading the release, converting slides, store I/O",
    "hub": "The release on the Hugging Face Hub: catalogue and downloads",
    "batch": "Converting many slides (dask.distributed)",
    "pp": "Preprocessing",
    "tl": "Tools",
    "pl": "Plotting and viewing",
    "workflows": "Workflows over stores",
    "ml": "Training patches",
    "datasets": "Synthetic slides and the built-in sample",
    "errors": "Exceptions",
}


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "classes"
    if callable(obj):
        return "functions"
    return "data"


def api_page() -> str:
    """The reStructuredText of the API reference."""
    lines = [
        "API reference",
        "=============",
        "",
        "Import the package as ``import stimage_sd as ssd``; every public function lives in",
        "one of its namespaces and is implemented in a private module (scverse style).",
        "",
    ]
    for ns, title in NAMESPACES.items():
        module = importlib.import_module(f"stimage_sd.{ns}")
        heading = f"``ssd.{ns}``: {title}"
        lines += [heading, "-" * len(heading), "", f".. module:: stimage_sd.{ns}", ""]
        lines += [".. currentmodule:: stimage_sd", ""]
        summary = inspect.cleandoc(module.__doc__ or "").split("\n\n")[0]
        if summary:
            lines += [summary, ""]
        groups: dict[str, list[str]] = {"functions": [], "classes": [], "data": []}
        for name in sorted(module.__all__, key=str.lower):
            groups[_kind(getattr(module, name))].append(name)
        for kind, names in groups.items():
            if not names:
                continue
            template = {"classes": "class.rst", "data": "data.rst"}.get(kind)
            lines += [f".. rubric:: {kind.capitalize()}", "", ".. autosummary::", "   :toctree: ."]
            if template:
                lines.append(f"   :template: {template}")
            lines += ["", *(f"   {ns}.{n}" for n in names), ""]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def write_api_page(srcdir: Path) -> None:
    """Write ``generated/api.rst`` (before autosummary reads the sources)."""
    _write_if_changed(srcdir / "generated" / "api.rst", api_page())


def copy_notebooks(srcdir: Path) -> list[str]:
    """Copy the repository's notebooks next to the docs; returns their document names."""
    src = srcdir.parent / "notebooks"
    dst = srcdir / "generated" / "notebooks"
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for nb in sorted(src.glob("*.ipynb")):
        target = dst / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, target)
        names.append(f"generated/notebooks/{nb.stem}")
    return names


_SECTION_RULE = re.compile(r"^\s*-{3,}\s*$")
_TYPED_FIELD = re.compile(r"^\s*[\w.*]+\s+:\s+\S")


def _free_text_returns(app, what, name, obj, options, lines: list[str]) -> None:
    """Let a numpy ``Returns`` section be free text, as scverse docstrings write it.

    napoleon reads each unindented line of ``Returns`` as a return *type*; a section such as
    ``Returns / ------- / A copy of the table with ...`` (several lines, maybe a list) is
    indented under an empty ``name : type`` line before napoleon sees it, which napoleon
    renders as a plain ``:returns:`` field. Typed sections
    (``name : type`` or a type line followed by an indented description) are left alone.
    """
    for i in range(len(lines) - 1):
        if lines[i].strip() in ("Returns", "Yields") and _SECTION_RULE.match(lines[i + 1]):
            break
    else:
        return
    start = i + 2
    end = start
    while end < len(lines):
        if end + 1 < len(lines) and lines[end].strip() and _SECTION_RULE.match(lines[end + 1]):
            break
        end += 1
    body = lines[start:end]
    content = [line for line in body if line.strip()]
    if not content:
        return
    indent = min(len(line) - len(line.lstrip()) for line in content)
    first = content[0]
    typed = _TYPED_FIELD.match(first) or (
        len(content) > 1 and len(content[1]) - len(content[1].lstrip()) > indent
        and not content[1].lstrip().startswith(("-", "*"))
    )
    if typed:
        return
    while body and not body[-1].strip():
        body.pop()
    # an empty "name : type" line, then the text as its description: napoleon renders a
    # plain ":returns: <text>" field (lists and paragraphs kept)
    new = [":", *("    " + line[indent:] if line.strip() else "" for line in body), ""]
    lines[start:end] = new


def _data_doc_comment(app, what, name, obj, options, lines: list[str]) -> None:
    """Document a constant re-exported by a namespace with its ``#:`` comment.

    autodoc looks for the comment in the namespace's ``__init__``; the constants are defined
    in private modules, so without this it shows the docstring of ``dict`` or ``int``.
    """
    if what != "data" or not name.startswith("stimage_sd."):
        return
    from sphinx.pycode import ModuleAnalyzer

    package, attr = name.rsplit(".", 1)
    module = importlib.import_module(package)
    candidates = [package]
    if hasattr(module, "__path__"):
        import pkgutil

        candidates += [f"{package}.{m.name}" for m in pkgutil.iter_modules(module.__path__)]
    for candidate in candidates:
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:
            continue
        if ("", attr) in docs:
            lines[:] = [*docs[("", attr)]]
            return
    type_doc = inspect.getdoc(type(obj)) or ""
    if type_doc and "\n".join(lines).strip() == type_doc.strip():
        lines[:] = []


class TyperCLI(Directive):
    """``.. typer-cli:: module:attribute`` renders a typer app and its commands."""

    required_arguments = 1
    option_spec: ClassVar[dict] = {"prog": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        """Render the app's usage, help and options, then one section per command."""
        import typer

        module_name, attr = self.arguments[0].split(":")
        app = getattr(importlib.import_module(module_name), attr)
        group = typer.main.get_command(app)
        prog = self.options.get("prog", group.name or "cli")
        context_cls = type(group).context_class
        root = context_cls(group, info_name=prog)
        out: list[nodes.Node] = [*self._describe(group, root, with_usage=True)]
        for name in group.list_commands(root):
            command = group.get_command(root, name)
            if command is None or command.hidden:
                continue
            ctx = context_cls(command, info_name=name, parent=root)
            section = nodes.section(ids=[nodes.make_id(f"cli-{prog}-{name}")])
            section += nodes.title(text=f"{prog} {name}")
            section.extend(self._describe(command, ctx, with_usage=True))
            out.append(section)
        return out

    def _describe(self, command, ctx, *, with_usage: bool) -> list[nodes.Node]:
        found: list[nodes.Node] = []
        if with_usage:
            usage = command.get_usage(ctx).strip()
            found.append(nodes.literal_block(usage, usage, language="text"))
        for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
            if paragraph.strip():
                found.append(nodes.paragraph(text=" ".join(paragraph.split())))
        records = [p.get_help_record(ctx) for p in command.get_params(ctx)]
        records = [r for r in records if r]
        if records:
            items = nodes.definition_list()
            for opts, help_text in records:
                item = nodes.definition_list_item()
                term = nodes.term()
                term += nodes.literal(text=opts)
                item += term
                definition = nodes.definition()
                definition += nodes.paragraph(text=" ".join(help_text.split()))
                item += definition
                items += item
            found.append(items)
        return found


def prepare(srcdir: Path) -> None:
    """Write the generated sources; ``conf.py`` calls it, before Sphinx looks for documents."""
    write_api_page(srcdir)
    copy_notebooks(srcdir)


def setup(app):
    """Register the ``typer-cli`` directive."""
    app.add_directive("typer-cli", TyperCLI)
    # before napoleon (priority 500) turns numpy sections into fields
    app.connect("autodoc-process-docstring", _free_text_returns, priority=400)
    app.connect("autodoc-process-docstring", _data_doc_comment, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
