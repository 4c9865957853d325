"""Deprecated aliases of renamed or moved public names, kept for one release."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved_names"]


def moved_names(module: str, moved: dict[str, str], since: str = "0.2.0") -> Callable[[str], Any]:
    """A module ``__getattr__`` serving names that moved elsewhere, with a :class:`FutureWarning`.

    Parameters
    ----------
    module
        The module that used to hold the names (``__name__``).
    moved
        Old name -> ``"package.module:new_name"``.
    since
        Release that moved them; they are removed in the next one.

    Returns
    -------
    A function to assign to the module's ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, new = target.split(":")
        warnings.warn(
            f"{module}.{name} moved to {where}.{new} in stimage_sd {since}; the old name will be "
            "removed in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(where), new)

    return __getattr__
