"""The training pipeline as one call: version the day's data with DVC, `dvc repro` the
dataset → train → evaluate → gate stages, push to the DVC remote, commit the workspace.

`dvc repro` reruns only what changed, so calling this twice for the same data is cheap
and yields the same model version.
"""

from __future__ import annotations

import json
from typing import Any

from couponflow.config import Workspace
from couponflow.workspace import commit, dvc

VERSIONED_DATA = ("data/offline", "data/features")


def repro(ws: Workspace, day: str) -> dict[str, Any]:
    """Version the data, reproduce the training stages and return the gate's decision with
    the evaluation behind it."""
    dvc(ws, "add", "-q", *VERSIONED_DATA)
    dvc(ws, "repro", "-q")
    dvc(ws, "push", "-q")
    sha = commit(ws, f"train on data up to {day}")
    evaluation = json.loads((ws.metrics / "evaluation.json").read_text())
    decision = json.loads((ws.metrics / "gate.json").read_text())
    model = json.loads((ws.models / "model.json").read_text())
    return {"workspace_commit": sha, "model": model, "evaluation": evaluation, "gate": decision}
