"""Talking to the Hugging Face Hub: endpoint, cache, offline mode, token and error messages.

``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` are read
when a function is called (not only when ``huggingface_hub`` is imported). The token is
passed to the client and never logged.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .._compat import hub_network_errors
from ..errors import SlideNotFoundError, StimageError

__all__ = [
    "REPO_ID",
    "REPO_TYPE",
    "cache_dir_of",
    "endpoint_url",
    "escape_glob",
    "first_line",
    "format_bytes",
    "hub_errors",
    "is_offline",
    "silent_tqdm",
    "slide_not_found",
]

#: The Hugging Face dataset repository of STimage-1K4M.
REPO_ID = "jiawennnn/STimage-1K4M"
REPO_TYPE = "dataset"


def escape_glob(text: str) -> str:
    """Escape ``fnmatch`` wildcards (``*``, ``?``, ``[``, ``]``) so that ``text`` matches itself only."""
    return re.sub(r"([*?\[\]])", r"[\1]", text)


def format_bytes(n: float | None) -> str:
    """Human-readable byte count (binary units): ``1.5 GiB``."""
    if n is None:
        return "unknown size"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def endpoint_url(endpoint: str | None) -> str | None:
    ep = endpoint or os.environ.get("HF_ENDPOINT") or None
    return ep.rstrip("/") if ep else None


def cache_dir_of(cache_dir: str | Path | None) -> str | None:
    """``cache_dir``, else ``HF_HUB_CACHE`` or ``HF_HOME/hub`` read now, else the client's default."""
    if cache_dir is not None:
        return str(Path(cache_dir).expanduser())
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def is_offline(offline: bool | None = None) -> bool:
    """Whether to stay off the network: ``offline`` if given, else ``HF_HUB_OFFLINE`` (read now)."""
    if offline is not None:
        return bool(offline)
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


@contextmanager
def hub_errors(repo_id: str, endpoint: str | None) -> Iterator[None]:
    """Turn ``huggingface_hub``/network errors into one-line :class:`StimageError` messages."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint or "https://huggingface.co"
    try:
        yield
    except StimageError:
        raise
    except GatedRepoError as e:
        raise StimageError(
            f"{repo_id}: access is gated; accept the terms on the Hub and set HF_TOKEN ({first_line(e)})"
        ) from e
    except RepositoryNotFoundError as e:
        raise StimageError(
            f"{repo_id}: repository not found on {where}, or not accessible with the current token "
            f"(HF_TOKEN) ({first_line(e)})"
        ) from e
    except RevisionNotFoundError as e:
        raise StimageError(f"{repo_id}: revision not found ({first_line(e)})") from e
    except LocalEntryNotFoundError as e:
        raise StimageError(f"{repo_id}: not available offline and the Hub cannot be reached ({first_line(e)})") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = "; check HF_TOKEN" if status in (401, 403) else ""
        raise StimageError(f"{repo_id}: the Hub answered an error ({first_line(e)}){hint}") from e
    except hub_network_errors() as e:
        raise StimageError(f"cannot reach the Hub at {where}: {first_line(e)}") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def slide_not_found(missing: list[str], known: Iterable[str], where: str) -> SlideNotFoundError:
    known = sorted(set(known))
    lines = []
    for s in missing[:10]:
        close = difflib.get_close_matches(s, known, n=5, cutoff=0.6)
        lines.append(f"{s!r}" + (f" (close matches: {', '.join(close)})" if close else " (no close match)"))
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return SlideNotFoundError(f"{len(missing)} slide id(s) not found in {where}: {'; '.join(lines)}{more}")


def silent_tqdm():
    from tqdm.auto import tqdm

    class _Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent
