"""``stimage_sd._isolate``: a crash in a worker process is an outcome, not the end of the run."""

from __future__ import annotations

import math
import os
import signal

import pytest

from stimage_sd._isolate import Isolated
from stimage_sd.errors import FormatError

pytestmark = pytest.mark.timeout(120)


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)  # a real SIGSEGV, as native code raises it


def _abort() -> None:
    os.abort()


def _bad_input() -> None:
    raise FormatError("counts.csv", "not a number", line=3)


def test_crash_is_reported_and_the_next_call_runs():
    with Isolated() as iso:
        assert iso.call(math.sqrt, 9.0).value == 3.0
        out = iso.call(_segfault)
        assert out.status == "crashed" and out.signal == signal.SIGSEGV
        assert "SIGSEGV" in out.describe()
        out = iso.call(_abort)
        assert out.status == "crashed" and out.signal_name == "SIGABRT"
        err = iso.call(_bad_input)
        assert err.status == "error" and err.stimage_error and "counts.csv (line 3)" in err.describe()
        assert iso.call(math.hypot, 3.0, 4.0).value == 5.0
