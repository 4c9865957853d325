"""Workflows over converted stores: read, run the tools, write back crash-safely, report.

:func:`analyze_store` runs :func:`stimage_sd.tl.run_pipeline` on a store and writes the
table back with :func:`stimage_sd.io.replace_table`; ``stimage-sd analyze`` runs it on many
stores.
"""

from ._analyze import analyze_store

__all__ = ["analyze_store"]
