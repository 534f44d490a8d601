"""`couponflow status`: what each day's runs did and the production release, for a person to
read. The run summaries (reports/runs/) are the record; this only prints them, and with
`live` asks the serving deployment for one answer (it starts nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from couponflow.config import Workspace

if TYPE_CHECKING:
    from couponflow.records import RunSummary, TrainedRun


def print_status(ws: Workspace, live: bool) -> None:
    """What the runs did, the live release, and (with `live`) one answer from its server."""
    from couponflow.report import summary_path

    for path in sorted(summary_path(ws, "x").parent.glob("*.json")):
        print_day(json.loads(path.read_text()), ws.root)
    print_release(ws, live)


def print_day(s: RunSummary, root: Path) -> None:
    """One day's summary: its outcome and what each step that ran left to read."""
    from couponflow.report import served_line

    steps = s["steps"]
    print(f"\n== {s['day']}: {s['outcome']}")
    if validated := steps.get("validate"):
        print("   rows validated:\n" + rows_table(validated["rows"], "     "))
    elif rejection := s.get("rejection"):
        print("   rejected because:\n" + "\n".join(f"     - {r}" for r in rejection))
    if f := steps.get("features"):
        print(f"   features materialised: {f['users']} users x {f['features']} features")
    if trained := steps.get("train"):
        print_training(trained, root)
    if built := steps.get("build_bento"):
        print(f"   bento: {built['bento_tag']}")
    if s.get("candidate_refused"):
        print(f"   candidate refused: {s['candidate_refused']['reason']}")
    if served := steps.get("served_readout"):
        print(f"   served on {served['day']}: {served_line(served)}")


def print_release(ws: Workspace, live: bool) -> None:
    """The production release and the servers on this host, or why nothing is released;
    with `live`, one recommendation asked of the front door."""
    from serving.deploy.release import current_release

    release = current_release(ws)
    if release is None:
        print(
            "\nproduction release: none. No challenger has passed the gate and the release "
            "checks yet (each run's outcome and checks are above, its report under "
            "reports/runs/): shipping nothing is right for a model the evidence does not "
            "support. docs/runbook.md explains each refusal."
        )
        return
    print(f"\nproduction release: {json.dumps(release, indent=2)}")
    from serving.deploy.deployment import deployment_record, front_door

    record = deployment_record(ws)
    for slot in ("live", "standby", "candidate"):
        if held := record[slot]:
            print(f"{slot} server: {held['bento_tag']} on port {held['port']}")
    if record["router"]:
        print(f"front door: {front_door(ws)}")
    if live:
        from serving.deploy.deployment import NotServing, ask_live

        try:
            answer = ask_live(ws)
        except NotServing as idle:
            print(f"\nno live recommendation: {idle}")
        else:
            print(f"\none live recommendation, from {front_door(ws)}:")
            print(json.dumps(answer, indent=2))


def print_training(trained: TrainedRun, root: Path) -> None:
    """The challenger against the champion and the baselines, the truth where the data is
    simulated, and every check of the gate: the evaluation's one renderer, indented."""
    from couponflow.evaluation import refit_line, render_summary

    for line in render_summary(trained["evaluation"], trained["gate"]):
        print(f"   {line}" if line else "")
    if shipped := refit_line(trained["model"]):
        print(f"   {shipped}")
    plan = trained["budget_plan"]
    print(
        f"   budget plan: multiplier {plan['multiplier']:.3f}, "
        f"daily budget {plan['daily_budget']:.0f}"
    )
    print(f"   report: {root / trained['report']}")  # stored relative to the workspace


def rows_table(rows: dict[str, int], indent: str = "") -> str:
    """Rows per table as an aligned table, for a person (not a Python dict)."""
    width = max(len("table"), *map(len, rows))
    lines = [f"{'table':<{width}}  {'rows':>9}"]
    lines += [f"{table:<{width}}  {n:>9,}" for table, n in rows.items()]
    return "\n".join(indent + line for line in lines)
