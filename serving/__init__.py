"""Serving: the BentoML service, how its model and bento are made, run, smoke-tested and
released.

Names shared by the service and the tooling live here so importing them stays cheap:
the pipeline side never imports BentoML itself, it runs the `bentoml` CLI in child
processes whose BENTOML_HOME is the workspace's own store.
"""

from __future__ import annotations

import os
from pathlib import Path

from couponflow.config import HOME_ENV, Workspace

MODEL_NAME = "couponflow-recommender"
BENTO_NAME = "couponflow"
MODEL_TAG_ENV = "COUPONFLOW_MODEL_TAG"
DEFAULT_MODEL_TAG = f"{MODEL_NAME}:latest"
WORKERS_ENV = "COUPONFLOW_SERVING_WORKERS"
ACCESS_LOG_ENV = "COUPONFLOW_ACCESS_LOG"  # 1: BentoML logs every request
POLICY_FILE = "policy.json"  # the budget plan (training/budget.py)
MODEL_FILES = ("model.pt", "model.json", POLICY_FILE)  # what training writes to ws.models
CATALOGUE_FILE = "coupons.parquet"  # the coupon catalogue snapshot inside the model


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
