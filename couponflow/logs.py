"""Quiet logs: our own messages at INFO, the libraries' chatter at WARNING and above."""

from __future__ import annotations

import logging
import os
import warnings

NOISY = (
    "great_expectations",
    "feast",
    "dask",
    "bentoml",
    "urllib3",
    "httpx",
    "alembic",
    "matplotlib",
    "fsspec",
    "dvc",
)


def quiet_libraries() -> None:
    """Raise noisy libraries to WARNING and silence their deprecation chatter."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("FEAST_USAGE", "False")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
