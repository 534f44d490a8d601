"""The run summary an ML engineer reads: what came in, what was rejected and why, what
the challenger scored against the champion, and whether it shipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from couponflow.config import Workspace


def summary_path(ws: Workspace, day: str) -> Path:
    return ws.root / "reports" / "runs" / f"{day}.json"


def outcome_of(steps: dict[str, Any]) -> str:
    """One phrase for the run: where it stopped and why."""
    if steps.get("validate") is None:
        return "batch rejected by validation" if steps.get("land") else "landing failed"
    for step in ("load_offline_store", "features", "train"):
        if steps.get(step) is None:
            return f"{step} failed"
    if not steps["train"]["gate"]["promote"]:
        return "refused by gate"
    for step in ("build_bento", "check_candidate", "release"):
        if steps.get(step) is None:
            return f"{step} failed; the live release is unchanged"
    return "released"


def write_run_summary(
    ws: Workspace, day: str, steps: dict[str, Any], refusal: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write reports/runs/<day>.json from the steps' results (None where a step did not
    finish) and, when a candidate was refused, why; return it."""
    summary: dict[str, Any] = {"day": day, "outcome": outcome_of(steps), "steps": steps}
    if refusal is not None:
        summary["candidate_refused"] = refusal
    validation = ws.validation_reports / f"{day}.json"
    if steps.get("validate") is None and validation.exists():
        report = json.loads(validation.read_text())
        summary["rejection"] = report.get("failures")
        summary["data_docs"] = report.get("data_docs_pages")
    elif steps.get("validate"):
        summary["validation_warnings"] = steps["validate"].get("warnings", [])
    path = summary_path(ws, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str))
    return summary
