"""Every ``stimage-sd`` command line shown in the README parses with the real command line.

Each command is parsed by the typer/click application itself (options, arguments and
subcommands, as a shell would pass them) without running it, so a README that shows an
option the program does not have (``convert ... --quiet`` once) fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from stimage_sd.cli import app

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    fence = None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence in ("bash", "sh", "console", ""):
            for part in re.split(r"&&|;", line.split("  #", 1)[0]):
                part = part.strip()
                if part.startswith("stimage-sd"):
                    commands.append(part)
    for inline in re.findall(r"`(stimage-sd [^`]+)`", text):
        if "..." not in inline:  # prose shorthand, not a full command
            commands.append(inline)
    return commands


COMMANDS = _readme_commands()


def test_readme_shows_commands():
    assert len(COMMANDS) >= 15, COMMANDS
    assert any(c.startswith("stimage-sd demo") for c in COMMANDS)


def _parse(argv: list[str]) -> None:
    """Parse ``argv`` with click's parsers, group then subcommand, without invoking anything."""
    group = typer.main.get_command(app)
    ctx = group.make_context("stimage-sd", list(argv), resilient_parsing=False)
    rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
    if not rest:
        return
    name, cmd, sub_args = group.resolve_command(ctx, rest)
    assert cmd is not None, f"unknown command {name!r}"
    cmd.make_context(name, sub_args, parent=ctx, resilient_parsing=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[1:]
    # placeholders and example paths become real folders, so path checks (exists=...) pass
    for i, arg in enumerate(argv):
        if not arg.startswith("-") and ("/" in arg or arg.isupper() or arg.endswith((".zarr", ".csv"))):
            target = tmp_path / arg.strip("[]").replace("*", "x").lstrip("/")
            if target.suffix == ".csv":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("slide,split\n")
            else:
                target.mkdir(parents=True, exist_ok=True)
            argv[i] = str(target)
        argv[i] = argv[i].strip("[]") if argv[i].startswith("[") else argv[i]
    if argv and argv[-1] in ("--help", "-h"):
        argv = argv[:-1]
        if not argv:
            return
    _parse(argv)  # raises click's UsageError, naming the option or argument


def test_quiet_goes_before_the_command():
    """One form of --quiet: the global option; the help says where it goes."""
    _parse(["--quiet", "convert", "r", "o"])
    with pytest.raises(Exception, match="--quiet") as info:
        _parse(["convert", "r", "o", "--quiet"])
    assert type(info.value).__name__ == "NoSuchOption"
    group = typer.main.get_command(app)
    quiet = next(p for p in group.params if p.name == "quiet")
    assert "before the command" in quiet.help
