"""Tools: spatial graph, spatial domains, spatially variable genes, the per-slide pipeline."""

from ._domains import domains
from ._graph import detect_lattice, spatial_graph
from ._pipeline import analyze_store, run_pipeline
from ._score import score_domains
from ._svg import svg, top_svg
from ._writeback import recover_store, replace_table

__all__: list[str] = [
    "analyze_store",
    "detect_lattice",
    "domains",
    "recover_store",
    "replace_table",
    "run_pipeline",
    "score_domains",
    "spatial_graph",
    "svg",
    "top_svg",
]
