"""The ``stimage-sd`` command line.

A thin layer over the same functions that notebooks call. Each subcommand lives in its
own private module and registers itself on :data:`app`. Errors on bad input are printed
as one clear message, without a traceback, with a non-zero exit status.
"""

from __future__ import annotations

import logging

import typer

from .._compat import click_exception_classes
from .._logging import set_progress
from ..errors import StimageError

_CLICK_ERRORS = click_exception_classes("ClickException")
_ABORTS = (*click_exception_classes("Abort"), typer.Abort)
_EXITS = (*click_exception_classes("Exit"), typer.Exit)

app = typer.Typer(
    name="stimage-sd",
    help=(
        "Turn STimage-1K4M slides into SpatialData Zarr stores and analyse them.\n\n"
        "Typical use: 'stimage-sd demo' for a first look; 'stimage-sd convert ROOT OUT' "
        "on a local copy of the release."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="No progress bars; warnings and errors only. Goes before the command: stimage-sd -q convert ROOT OUT.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    """Configure logging and progress bars for every subcommand."""
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    _configure_logging(level)
    if quiet:
        set_progress(False)


def _configure_logging(level: int) -> None:
    from rich.logging import RichHandler

    log = logging.getLogger("stimage_sd")
    log.handlers.clear()
    handler = RichHandler(
        console=_stderr_console(), show_time=False, show_path=False, rich_tracebacks=False
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


# register subcommands (each module adds its commands to ``app``)
from . import (  # noqa: E402, F401
    _analyze,
    _benchmark,
    _catalog,
    _cohort,
    _convert,
    _patches,
    _publish,
    _validate,
    _view,
)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input gives a one-line error and exit status 1, never a traceback."""
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="stimage-sd")
    except StimageError as e:
        from rich.markup import escape

        _stderr_console().print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except _ABORTS:
        _stderr_console().print("aborted")
        return 130
    except _CLICK_ERRORS as e:
        e.show()
        return e.exit_code
    except _EXITS as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # read-only folder, full disk, unreadable file: a message, not a traceback
        from rich.markup import escape

        from .._utils import os_error_message

        _stderr_console().print(f"[bold red]error:[/] {escape(os_error_message(e))}", highlight=False, soft_wrap=True)
        return 1
    return rv if isinstance(rv, int) else 0
