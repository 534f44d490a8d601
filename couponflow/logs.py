"""Quiet logs: our own messages at INFO, the libraries' chatter at WARNING and above."""

from __future__ import annotations

import logging
import os
import re
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


# Where the warnings we silence come from: the tools' own deprecations, and pandas' or
# pydantic's about how a tool calls them (they point their warnings at the caller, so at
# the tool). A warning about how *our* code calls a library points at our module and still
# shows, so an upgrade that deprecates something we use is announced.
WARNING_SOURCES = (*NOISY, "airflow", "_bentoml_impl", "_bentoml_sdk", "pydantic", "sqlalchemy")
_FROM_TOOLS = r"(" + "|".join(re.escape(name) for name in WARNING_SOURCES) + r")(\.|$)"


def quiet_libraries() -> None:
    """Raise noisy libraries to WARNING and silence the deprecation chatter raised inside
    them (not a warning about our own code)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("FEAST_USAGE", "False")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_FROM_TOOLS)
