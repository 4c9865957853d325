"""Running risky work in a child process, so that a crash in native code is a report, not the end.

A segmentation fault or abort inside a compiled library (scipy, numba, BLAS, codecs) kills
the process that runs it; no ``try``/``except`` can catch it. :class:`Isolated` runs calls
in a spawned worker process, one at a time; when the worker dies, the call's
:class:`Outcome` says so (with the signal), a fresh worker is started for the next call,
and the caller goes on. ``stimage-sd analyze`` and ``stimage-sd validate`` run each store
this way.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal as _signal
from dataclasses import dataclass
from typing import Any

__all__ = ["Isolated", "Outcome"]


@dataclass
class Outcome:
    """What happened to one isolated call.

    Attributes
    ----------
    status
        ``"ok"`` (``value`` holds the result), ``"error"`` (an exception: ``error_type``,
        ``message``, ``stimage_error`` whether it was a :class:`~stimage_sd.StimageError`)
        or ``"crashed"`` (the worker died: ``exitcode``, ``signal``).
    """

    status: str
    value: Any = None
    error_type: str = ""
    message: str = ""
    stimage_error: bool = False
    exitcode: int | None = None
    signal: int | None = None

    @property
    def signal_name(self) -> str:
        """``"SIGSEGV"`` etc., or ``"exit status N"``."""
        if self.signal is not None:
            try:
                return _signal.Signals(self.signal).name
            except ValueError:
                return f"signal {self.signal}"
        return f"exit status {self.exitcode}"

    def describe(self) -> str:
        """One line: the error, or how the worker died."""
        if self.status == "crashed" and self.signal is not None:
            return f"crashed in native code ({self.signal_name}); the worker process died"
        if self.status == "crashed":
            return f"the worker process died ({self.signal_name})"
        if self.status == "error":
            return self.message if self.stimage_error else f"{self.error_type}: {self.message}"
        return "ok"


def _serve(conn: Any, log_level: int | None, progress: bool | None) -> None:  # runs in the worker
    from . import _logging
    from .errors import StimageError

    if log_level is not None:  # as the CLI's: rich, on standard error
        from rich.console import Console
        from rich.logging import RichHandler

        log = logging.getLogger("stimage_sd")
        handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.handlers[:] = [handler]
        log.setLevel(log_level)
        log.propagate = False
    _logging.set_progress(progress)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fn, args, kwargs = task
        try:
            conn.send(("ok", fn(*args, **kwargs)))
        except BaseException as e:  # reported to the parent, never raised here
            conn.send(("error", type(e).__name__, str(e), isinstance(e, StimageError)))


class Isolated:
    """A spawned worker process that runs calls one at a time and survives their crashes.

    ``fn`` must be importable by name (a module-level function) and its arguments and
    result picklable. Use as a context manager; the worker is started on the first call
    and again after a crash.

    Examples
    --------
    >>> from stimage_sd._isolate import Isolated
    >>> import math
    >>> with Isolated() as iso:
    ...     iso.call(math.sqrt, 4.0).value
    2.0
    """

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        from . import _logging

        log = logging.getLogger("stimage_sd")
        level = log.level if log.handlers else None  # the CLI configured logging: mirror it
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_serve, args=(child, level, _logging._PROGRESS), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Outcome:
        """Run ``fn(*args, **kwargs)`` in the worker; never raises for the call's own failures."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((fn, args, kwargs))
            while not self._conn.poll(0.2):
                if not self._proc.is_alive() and not self._conn.poll(0):
                    raise EOFError
            msg = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            return self._crashed()
        if msg[0] == "ok":
            return Outcome("ok", value=msg[1])
        return Outcome("error", error_type=msg[1], message=msg[2], stimage_error=msg[3])

    def _crashed(self) -> Outcome:
        self._proc.join(timeout=10)
        code = self._proc.exitcode
        self._conn.close()
        self._proc = self._conn = None
        sig = -code if code is not None and code < 0 else None
        return Outcome("crashed", exitcode=code, signal=sig)

    def close(self) -> None:
        """Stop the worker."""
        if self._proc is not None:
            try:
                self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._conn.close()
            self._proc = self._conn = None

    def __enter__(self) -> Isolated:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
