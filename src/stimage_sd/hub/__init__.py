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
from ._publish import PublishPlan, dataset_card, publish
from ._remote import read_store, storage_options, store_url
from ._resolution import RESOLUTION_COLUMNS, magnification

__all__ = [
    "DEFAULT_CONFIRM_BYTES",
    "REPO_ID",
    "REPO_TYPE",
    "RESOLUTION_COLUMNS",
    "Catalog",
    "DownloadPlan",
    "Listing",
    "PublishPlan",
    "RemoteFile",
    "dataset_card",
    "download",
    "format_bytes",
    "is_offline",
    "list_release",
    "magnification",
    "plan_download",
    "publish",
    "read_store",
    "storage_options",
    "store_url",
    "study_of",
]
