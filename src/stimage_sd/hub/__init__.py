"""The release on the Hugging Face Hub: the slide catalogue and downloads.

:class:`Catalog` is the release's metadata table with filters, summaries and leak-free
splits; :func:`plan_download` / :func:`download` fetch exactly the files of the slides
asked for into the release layout.
"""

from ._catalog import Catalog, study_of
from ._client import REPO_ID, REPO_TYPE, format_bytes, is_offline
from ._download import (
    DEFAULT_CONFIRM_BYTES,
    DownloadPlan,
    Listing,
    RemoteFile,
    download,
    list_release,
    plan_download,
)

__all__ = [
    "DEFAULT_CONFIRM_BYTES",
    "REPO_ID",
    "REPO_TYPE",
    "Catalog",
    "DownloadPlan",
    "Listing",
    "RemoteFile",
    "download",
    "format_bytes",
    "is_offline",
    "list_release",
    "plan_download",
    "study_of",
]
