"""The run summary an ML engineer reads: what came in, what was rejected and why, what
the challenger scored against the champion, and whether it shipped.

A day runs through three DAGs (ingest, features, retrain). Each one's closing task records
its steps' results for the day (`reports/steps/<day>.json`) and rewrites the day's summary
from everything recorded so far, so the summary is true after every DAG: a step not yet
reached is "waiting", a step that did not finish is None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from couponflow.config import Workspace
from couponflow.evaluation import ab_line, refit_line, render_summary
from couponflow.records import (
    LatencyCheck,
    Refusal,
    RunSummary,
    ServedReadout,
    Steps,
    TrainedRun,
)

# The steps of one day in order, and the DAG that runs them.
STEPS = {
    "land": "coupon_ingest",
    "validate": "coupon_ingest",
    "load_offline_store": "coupon_ingest",
    "features": "coupon_features",
    "train": "coupon_retrain",
    "gate": "coupon_retrain",
    "build_bento": "coupon_retrain",
    "check_candidate": "coupon_retrain",
    "release": "coupon_retrain",
    "served_readout": "coupon_retrain",
    "forget_feedback": "coupon_retrain",
}
GOOD_OUTCOMES = ("released", "refused by gate")


def failed_days(summaries: list[dict]) -> list[str]:
    """`day: outcome` of each day that did not end in a release or a refusal by the gate."""
    return [
        f"{s.get('day', '?')}: {s['outcome']}"
        for s in summaries
        if s.get("airflow_exit_code") or s["outcome"] not in GOOD_OUTCOMES
    ]


def summary_path(ws: Workspace, day: str) -> Path:
    return ws.root / "reports" / "runs" / f"{day}.json"


def markdown_path(ws: Workspace, day: str) -> Path:
    return ws.root / "reports" / "runs" / f"{day}.md"


def steps_path(ws: Workspace, day: str) -> Path:
    return ws.root / "reports" / "steps" / f"{day}.json"


def outcome_of(steps: Steps) -> str:
    """One phrase for the run: where it stopped and why, or what it waits for."""
    by_name: Mapping[str, object] = steps
    for step in ("land", "validate", "load_offline_store", "features", "train"):
        if step not in steps:
            return f"waiting for {STEPS[step]} ({step})"
        if by_name[step] is None:
            if step == "validate" and steps.get("land"):
                return "batch rejected by validation"
            return "landing failed" if step == "land" else f"{step} failed"
    if not (trained := steps["train"]) or not trained["gate"]["promote"]:
        return "refused by gate"
    for step in ("build_bento", "check_candidate", "release"):
        if steps.get(step) is None:
            return f"{step} failed; the live release is unchanged"
    return "released"


def run_failed(summary: RunSummary, last_dag: bool) -> bool:
    """Whether the DAG that wrote `summary` must go red: something broke, or (for the last
    DAG of the day) the day did not end in a release or a refusal."""
    outcome = summary["outcome"]
    if outcome in GOOD_OUTCOMES:
        return False
    return last_dag or not outcome.startswith("waiting for")


def record_steps(ws: Workspace, day: str, steps: Steps) -> Steps:
    """Merge one DAG's step results into the day's record and return the whole record.
    Landing starts a day afresh, so a re-ingested day forgets its older downstream steps."""
    path = steps_path(ws, day)
    known: Steps = {} if "land" in steps or not path.exists() else json.loads(path.read_text())
    known.update(ws.relative(steps))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2, default=str))
    return known


def write_run_summary(
    ws: Workspace, day: str, steps: Steps, refusal: Refusal | None = None
) -> RunSummary:
    """Write reports/runs/<day>.json and .md from the steps' results (None where a step did
    not finish, absent where it has not run yet) and, when a candidate was refused, why;
    return the summary with both paths. Every path in it is relative to the workspace's
    root (`Workspace.relative`), so the summary stays true when the workspace moves."""
    # built in the order its JSON keeps; a RunSummary once its paths are in
    summary: dict[str, object] = {"day": day, "outcome": outcome_of(steps), "steps": steps}
    if refusal is not None:
        summary["candidate_refused"] = refusal
    validation = ws.validation_reports / f"{day}.json"
    if "validate" in steps and steps["validate"] is None and validation.exists():
        report = json.loads(validation.read_text())
        summary["rejection"] = report.get("failures")
        summary["data_docs"] = report.get("data_docs_pages")
    elif brief := steps.get("validate"):
        summary["validation_warnings"] = brief.get("warnings", [])
    path = summary_path(ws, day)
    summary["summary_json"] = str(path)
    summary["summary_markdown"] = str(markdown_path(ws, day))
    written: RunSummary = ws.relative(summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(written, indent=2, default=str))
    markdown_path(ws, day).write_text(render_markdown(written))
    return written


def render_markdown(summary: RunSummary) -> str:
    """The summary as a page a person reads in the task log: rows in, rejected and why,
    features, challenger against champion, the gate's decision, the release."""
    steps = summary["steps"]
    out = [f"# couponflow {summary['day']}: {summary['outcome']}", ""]
    if brief := steps.get("validate"):
        rows = brief["rows"]
        out += ["## Rows in", "", "| table | rows |", "|---|---:|"]
        out += [f"| {table} | {n} |" for table, n in rows.items()]
        warnings = summary.get("validation_warnings") or []
        out += ["", f"Validation warnings: {len(warnings)}"] + [f"- {w}" for w in warnings]
    if rejection := summary.get("rejection"):
        out += ["## Rejected, and why", ""] + [f"- {r}" for r in rejection]
        out += [f"- Data Docs: {page}" for page in (summary.get("data_docs") or {}).values()]
    if f := steps.get("features"):
        out += [
            "",
            "## Features materialised",
            "",
            f"{f['users']} users x {f['features']} features, "
            f"{f['coupons']} coupons x {f['coupon_features']} features",
        ]
    if trained := steps.get("train"):
        out += _training_markdown(trained)
    if r := steps.get("release"):
        checks = latency_text(r["checks"]["latency"] if r["checks"] else None)
        out += ["", "## Release", "", f"model {r['model_version']} served by {r['bento_tag']} "
                f"at {r['url']}; candidate checks: {checks}"]  # fmt: skip
    elif steps.get("train"):
        out += ["", "## Release", "", "none: the live release is unchanged"]
        if refused := summary.get("candidate_refused"):
            out += ["", f"The candidate was refused: {refused['reason']}"]
    if served := steps.get("served_readout"):
        out += ["", f"## Served on {served['day']}", "", served_line(served)]
    if forgot := steps.get("forget_feedback"):
        out += ["", f"Feedback index: {forgot['forgotten']} decisions of days before "
                f"{forgot['before']} forgotten ({forgot['retention_days']} days kept)"]  # fmt: skip
    out += ["", f"Summary: {summary['summary_json']} (paths relative to the workspace)"]
    return "\n".join(out) + "\n"


def latency_text(latency: LatencyCheck | None) -> str:
    """The candidate's latency check in words, e.g. `100 requests, p50 1.9 ms, p99 10.8 ms`."""
    if not isinstance(latency, dict) or "requests" not in latency:
        return str(latency)
    quantiles = [
        f"{k.removesuffix('_ms')} {v:.1f} ms" for k, v in latency.items() if k.endswith("_ms")
    ]
    return ", ".join([f"{latency['requests']} requests", *quantiles])


def served_line(readout: ServedReadout) -> str:
    """The A/B readout of the day's served decisions against the holdout, in a line."""
    return ab_line(readout)


def _training_markdown(trained: TrainedRun) -> list[str]:
    """The evaluation and the gate's verdict, by the one renderer (couponflow.evaluation)."""
    out = ["", "## Challenger against champion", ""]
    out += render_summary(trained["evaluation"], trained["gate"])
    if shipped := refit_line(trained["model"]):
        out += ["", shipped]
    out += ["", f"Run report: {trained['report']}"]
    return out
