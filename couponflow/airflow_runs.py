"""The runs of `airflow dags test` made to read in the Airflow UI like the scheduler's, and
every run's decision at a glance.

`couponflow run` runs a day's DAGs with `airflow dags test`, which runs the tasks in its
own process: their output goes to the command's stdout (our `logs/<dag_id>-<day>.log`),
not to the task log files the UI reads ("Log file not found on worker"), and it records
the run as started at its logical date (the simulated world's day, months ago), so the UI
showed a 100 s run as lasting weeks. After each day, this module

- follows that output while it runs: a progress line per task as it ends (`Progress`);
- splits it into each task's log file where the UI looks for it (`write_task_logs`);
- sets each DAG run's start to its first task's start, and its note to the day's decision
  and reasons (`python -m couponflow.airflow_runs RUNS.json`, in the workspace's Airflow
  environment: the metadata DB is Airflow's to write).

For runs the scheduler makes, `couponflow airflow` writes the same note through the REST
API once a run ends (couponflow.airflow_services); their logs and durations are right.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only the type: this module imports nothing of couponflow at run time
    from couponflow.records import RunSummary

RUNNING = re.compile(
    r"\[DAG TEST\] running task <TaskInstance: (?P<dag>[^.\s]+)\.(?P<task>\S+) (?P<run>\S+) "
    r".*ti_id=(?P<ti>[0-9a-f-]+)>"
)
NEW_STATE = re.compile(r"Task instance state updated\b.*\bnew_state=(?P<state>\w+)")
TI_ID = re.compile(r"\bti_id=(?P<ti>[0-9a-f-]+)")
NOTE_LIMIT = 1000  # characters: the metadata DB's dag_run_note.content


@dataclass
class TaskRun:
    """One attempt of a task in a `dags test` log, with its lines."""

    dag_id: str
    task_id: str
    run_id: str
    ti_id: str
    attempt: int
    started: str | None
    lines: list[str] = field(default_factory=list)
    state: str | None = None
    ended: str | None = None

    @property
    def seconds(self) -> float | None:
        if not (self.started and self.ended):
            return None
        took = datetime.fromisoformat(self.ended) - datetime.fromisoformat(self.started)
        return took.total_seconds()


def _stamp(line: str) -> str | None:
    """The ISO timestamp a log line starts with, if any."""
    head = line.split(" ", 1)[0]
    try:
        datetime.fromisoformat(head)
    except ValueError:
        return None
    return head


class Progress:
    """Reads a `dags test` log line by line; `feed` answers a progress line when a task
    ends. `tasks` keeps every attempt seen, with its lines."""

    def __init__(self) -> None:
        self.tasks: list[TaskRun] = []
        self._by_ti: dict[str, TaskRun] = {}

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\n")
        if match := RUNNING.search(line):
            attempt = 1 + sum(
                t.task_id == match["task"] and t.run_id == match["run"] for t in self.tasks
            )
            started = TaskRun(match["dag"], match["task"], match["run"], match["ti"], attempt,
                              _stamp(line))  # fmt: skip
            self.tasks.append(started)
            self._by_ti[started.ti_id] = started
        if self.tasks:
            self.tasks[-1].lines.append(line)
        state, ti = NEW_STATE.search(line), TI_ID.search(line)
        if state and ti and (task := self._by_ti.get(ti["ti"])) and task.state is None:
            task.state, task.ended = state["state"], _stamp(line)
            took = f" ({task.seconds:.0f} s)" if task.seconds is not None else ""
            return f"   {task.dag_id}.{task.task_id}: {task.state}{took}"
        return None


def write_task_logs(tasks: list[TaskRun], base_log_folder: Path) -> list[Path]:
    """Each task attempt's lines in the file the UI reads for it (Airflow's default
    log_filename_template); a file already there (a real worker's) is left alone."""
    written = []
    for task in tasks:
        path = (
            base_log_folder / f"dag_id={task.dag_id}" / f"run_id={task.run_id}"
            / f"task_id={task.task_id}" / f"attempt={task.attempt}.log"
        )  # fmt: skip
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(task.lines) + "\n")
        written.append(path)
    return written


# -- the note -------------------------------------------------------------------------------
def run_note(summary: RunSummary) -> str:
    """The day's decision and its reasons in a few lines, for a DAG run's note: what a
    reviewer needs before opening anything. The UI shows the first line under the run's
    header and renders the whole note as Markdown when it is opened, so each part is a
    paragraph or a list of its own (single line breaks would run together)."""
    steps = summary.get("steps", {})
    outcome = str(summary.get("outcome"))
    if outcome.startswith("waiting for") and (validated := steps.get("validate")):
        rows = sum(validated.get("rows", {}).values())
        waiting = outcome.removeprefix("waiting for ")
        outcome = f"batch accepted ({rows:,} rows validated); next: {waiting}"
    parts = [f"{summary.get('day')}: {outcome}"]
    if rejection := summary.get("rejection"):
        parts.append("\n".join(f"- rejected: {reason}" for reason in rejection))
    trained = steps.get("train")
    if trained and (gate := trained.get("gate")):
        failed = [c for c in gate["checks"] if not c["passed"]]
        checks = f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed"
        verdict = "promote" if gate["promote"] else f"refuse ({checks})"
        parts.append(
            "\n".join([f"gate: {verdict}"] + [f"- {c['check']}: {c['detail']}" for c in failed])
        )
    if refused := summary.get("candidate_refused"):
        parts.append(f"candidate refused: {refused.get('reason')}")
    if released := steps.get("release"):
        parts.append(
            f"released: model {released.get('model_version')} ({released.get('bento_tag')})"
        )
    parts.append("The `summary` task's log has the whole summary.")
    note = "\n\n".join(parts)
    return note if len(note) <= NOTE_LIMIT else note[: NOTE_LIMIT - 1] + "…"


def fix_runs(runs: list[dict[str, str]]) -> None:
    """In the workspace's Airflow environment: for each {dag_id, run_id, note}, start the
    run when its first task started and set its note."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        for wanted in runs:
            run = session.scalar(
                select(DagRun).where(
                    DagRun.dag_id == wanted["dag_id"], DagRun.run_id == wanted["run_id"]
                )
            )
            if run is None:
                continue
            first = session.scalar(
                select(func.min(TaskInstance.start_date)).where(
                    TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
                )
            )
            started = [t for t in (first, run.run_after) if t is not None]
            if started:
                run.start_date = min(started)
            if wanted.get("note"):
                run.note = wanted["note"]


def note_finished_runs(api: Any, summary_of: Any, dag_ids: tuple[str, ...], noted: set) -> int:
    """Give each ended run of `dag_ids` without a note the day's decision as its note,
    through the REST client `api` (a task cannot write its own run's note): the day is
    the one its `summary` task returned, else its logical date; `summary_of(day)` is that
    day's summary or None. `noted` remembers the runs seen. How many were noted."""
    from urllib.parse import quote

    count = 0
    for dag_id in dag_ids:
        listed = api.get(
            f"/api/v2/dags/{dag_id}/dagRuns",
            params={"state": ["success", "failed"], "order_by": "-end_date", "limit": 20},
        )
        for run in listed.json().get("dag_runs", []) if listed.status_code == 200 else []:
            key = (dag_id, run["dag_run_id"])
            if key in noted or run.get("note"):
                noted.add(key)
                continue
            path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'], safe='')}"
            xcom = api.get(f"{path}/taskInstances/summary/xcomEntries/return_value")
            value = xcom.json().get("value") if xcom.status_code == 200 else None
            if isinstance(value, str):
                value = json.loads(value)
            days = (value or {}).get("days") or [str(run.get("logical_date") or "")[:10]]
            summary = summary_of(days[-1]) if days[-1] else None
            noted.add(key)
            if summary is None:
                continue
            api.patch(path, json={"note": run_note(summary)}, params={"update_mask": "note"})
            count += 1
    return count


def repair_start_dates() -> int:
    """In the workspace's Airflow environment: every run recorded as started before it was
    even due (`airflow dags test` of older versions of `couponflow run`) started when its
    first task did. How many were repaired."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        wrong = session.scalars(select(DagRun).where(DagRun.start_date < DagRun.run_after)).all()
        runs = [{"dag_id": run.dag_id, "run_id": run.run_id} for run in wrong]
    fix_runs(runs)
    return len(runs)


if __name__ == "__main__":
    if sys.argv[1] == "--repair":
        print(f"{repair_start_dates()} runs' start dates repaired")
    else:
        fix_runs(json.loads(Path(sys.argv[1]).read_text()))
