"""Helpers shared by :mod:`stimage_sd.pp`, :mod:`stimage_sd.tl` and :mod:`stimage_sd.pl`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._constants import TABLE_KEY, UNS_KEY
from ..errors import StimageError

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["get_table", "quiet", "slide_info", "table_to_modify"]


def get_table(data: AnnData | SpatialData, table_key: str = TABLE_KEY) -> AnnData:
    """The :class:`anndata.AnnData` table of ``data`` (a SpatialData, or already a table).

    The table is returned by reference: functions that modify it modify ``data``.
    """
    from anndata import AnnData

    if isinstance(data, AnnData):
        return data
    tables = getattr(data, "tables", None)
    if tables is None:
        raise TypeError(f"expected a SpatialData or an AnnData, got {type(data).__name__}")
    if table_key not in tables:
        raise StimageError(f"the SpatialData object has no table {table_key!r} (tables: {list(tables)})")
    return tables[table_key]


def table_to_modify(data: AnnData | SpatialData, table_key: str = TABLE_KEY, copy: bool = False) -> AnnData:
    """The table a pp/tl function writes into: ``data``'s own table, or a copy when ``copy``."""
    adata = get_table(data, table_key)
    return adata.copy() if copy else adata


def slide_info(adata: AnnData) -> dict[str, Any]:
    """The slide metadata ``uns["stimage"]`` of a table (empty dict if absent)."""
    info = adata.uns.get(UNS_KEY, {})
    return dict(info) if isinstance(info, dict) else {}


@contextmanager
def quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of third-party loggers (e.g. squidpy's info messages) for a block."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old, strict=True):
            lg.setLevel(lv)
