"""The deployment tooling: make the BentoML model and bento, run servers, check a
candidate, switch traffic and record releases. Run by the pipeline (dags/) and the CLI,
always in child processes pointed at the workspace's own BentoML store: the caller never
imports BentoML itself. See serving/__init__.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from couponflow.config import HOME_ENV, Workspace


def bentoml_home(ws: Workspace) -> Path:
    """The workspace's BentoML store (models, bentos), so deployments never share one."""
    return ws.root.resolve() / "bentoml"


def bentoml_env(ws: Workspace, **extra: str) -> dict[str, str]:
    """The environment of a BentoML child process working for `ws`."""
    return {
        **os.environ,
        HOME_ENV: str(ws.root.resolve()),
        "BENTOML_HOME": str(bentoml_home(ws)),
        "BENTOML_DO_NOT_TRACK": "True",
        **extra,
    }
