"""Tools: spatial graph, spatial domains, spatially variable genes, the per-slide pipeline.

Tools work on data in memory and do no I/O; :mod:`stimage_sd.workflows` runs them on stores.
"""

from .._deprecation import moved_names
from ._cohort import cohort_domains, score_cohort, slide_graph
from ._domains import domains
from ._graph import detect_lattice, spatial_graph
from ._pipeline import run_pipeline
from ._score import score_domains
from ._svg import svg, top_svg

__all__: list[str] = [
    "cohort_domains",
    "detect_lattice",
    "domains",
    "run_pipeline",
    "score_cohort",
    "score_domains",
    "slide_graph",
    "spatial_graph",
    "svg",
    "top_svg",
]

__getattr__ = moved_names(
    __name__,
    {
        "analyze_store": "stimage_sd.workflows:analyze_store",
        "recover_store": "stimage_sd.io:recover_store",
        "replace_table": "stimage_sd.io:replace_table",
    },
)
