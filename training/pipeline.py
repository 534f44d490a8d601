"""The training pipeline as one call: version the day's data with DVC, `dvc repro` the
dataset → train → budget → evaluate → gate → report stages, push to the DVC remote, keep
the run's report beside its summary, commit the workspace.

`dvc repro` reruns only what changed, so calling this twice for the same data is cheap
and yields the same model version.
"""

from __future__ import annotations

import json
import shutil

from couponflow.artefacts import MODEL_RECORD, POLICY_FILE
from couponflow.config import Workspace
from couponflow.records import TrainedRun
from couponflow.workspace import commit, dvc
from training.report import REPORT_DIR

VERSIONED_DATA = ("data/offline", "data/features")


def repro(ws: Workspace, day: str) -> TrainedRun:
    """Version the data, reproduce the training stages and return the gate's decision with
    the evaluation behind it and where the run report is."""
    dvc(ws, "add", "-q", *VERSIONED_DATA)
    dvc(ws, "repro", "-q")
    dvc(ws, "push", "-q")
    report = ws.root / "reports" / "runs" / day
    shutil.copytree(ws.root / REPORT_DIR, report, dirs_exist_ok=True)
    sha = commit(ws, f"train on data up to {day}")
    # NaN and infinities (a figure with nothing to measure) read as null: the result goes to
    # Airflow's XCom, which takes strict JSON only.
    read = lambda path: json.loads(path.read_text(), parse_constant=lambda _: None)  # noqa: E731
    return {
        "workspace_commit": sha,
        "model": read(ws.models / MODEL_RECORD),
        "budget_plan": read(ws.models / POLICY_FILE),
        "evaluation": read(ws.metrics / "evaluation.json"),
        "gate": read(ws.metrics / "gate.json"),
        "report": str(report / "report.md"),
    }
