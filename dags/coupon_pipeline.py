"""couponflow's day as three DAGs joined by Assets, each owning one responsibility.

coupon_ingest (daily): land → validate (GX; a failing batch is quarantined and the run
    fails here) → offline store, which produces the Asset `couponflow_validated_batch`.
coupon_features (on it): Feast apply + materialise, producing `couponflow_user_features`.
coupon_retrain (on that): train (dvc repro: dataset, train, evaluate, gate) →
    gate (a refusal skips the release, visibly) → bento → the candidate served beside the
    live release and checked (golden requests, latency) → traffic switched to it; beside
    them, yesterday's served decisions read out against their holdout (served_readout).

Every task is idempotent for its date and calls one function of a project room; the
workspace is named by $COUPONFLOW_HOME. Each DAG ends with `summary`, which always runs,
rewrites the day's run summary (reports/runs/<day>.json and .md) and fails the DAG run if
a step broke. A scheduled or triggered run works on its logical date; an asset-triggered run
on the day(s) its triggering asset events carry (`extra["day"]`). Transient steps retry with
exponential back-off; a task that fails for good raises an alert (couponflow.alerts), and
coupon_model_deadline (dags/coupon_deadline.py) alerts when the day's model is late.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, TriggerRule, dag, get_current_context, task

from couponflow.alerts import task_failed

VALIDATED = Asset("couponflow_validated_batch", uri="couponflow://offline-store/validated")
FEATURES = Asset("couponflow_user_features", uri="couponflow://feature-store/materialised")

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 0,
    "execution_timeout": timedelta(minutes=30),
    "on_failure_callback": task_failed,
}
# Steps whose failure is usually the world's (a slow disk, a busy store, a flaky build):
# 3 retries after about 30 s, 60 s, 120 s. Validation is never retried: its failure is a verdict.
TRANSIENT = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
# Each DAG's closing `summary`: always runs; it fails only when a step did, and that step
# has already alerted, so it does not alert again.
CLOSING = {
    "trigger_rule": TriggerRule.ALL_DONE,
    "execution_timeout": timedelta(minutes=5),
    "on_failure_callback": [],
}
# What the day's three DAGs share: one day at a time, no catch-up on a first start.
DAG_ARGS = {
    "start_date": datetime(2026, 1, 1),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
    "doc_md": __doc__,
    "tags": ["couponflow"],
}
# When the day's data is there to ingest; "none" leaves ingestion to triggers and backfills.
INGEST_SCHEDULE = os.environ.get("COUPONFLOW_INGEST_SCHEDULE", "@daily")

log = logging.getLogger(__name__)


def _workspace():
    from couponflow.config import Workspace
    from couponflow.logs import quiet_libraries

    quiet_libraries()
    return Workspace.from_env()


def _days(ds: str | None) -> list[str]:
    """The days this run works on: its logical date, else the days its triggering asset
    events carry (several when events queued up while a run was busy), oldest first."""
    if ds:
        return [ds]
    events = get_current_context()["triggering_asset_events"]
    return sorted({event.extra["day"] for queued in events.values() for event in queued})


def _announce(asset: Asset, day: str) -> None:
    """Tell the consumers of `asset` which day it now holds."""
    get_current_context()["outlet_events"][asset].extra = {"day": day}


def _close(steps_by_day: dict[str, dict], last_dag: bool, refusal: dict | None = None) -> dict:
    """Record the steps, rewrite each day's summary (with why a candidate was refused, if
    one was), log it, and fail the run if it broke."""
    from airflow.sdk.exceptions import AirflowFailException

    from couponflow.report import record_steps, run_failed, write_run_summary

    ws = _workspace()
    failures = []
    for day, steps in sorted(steps_by_day.items()):
        summary = write_run_summary(ws, day, record_steps(ws, day, steps), refusal)
        log.info("run summary %s\n\n%s", summary["summary_markdown"], _read(ws, summary))
        if run_failed(summary, last_dag):
            failures.append(f"{day}: {summary['outcome']}")
    if failures:
        raise AirflowFailException("; ".join(failures))
    return {  # paths relative to the workspace, which may move
        "days": sorted(steps_by_day),
        "outcome": summary["outcome"],
        "summary_json": summary["summary_json"],
        "summary_markdown": summary["summary_markdown"],
    }


def _read(ws, summary: dict) -> str:
    return (ws.root / summary["summary_markdown"]).read_text()


def _pulled(task_ids: list[str]) -> dict:
    ti = get_current_context()["ti"]
    return {name: ti.xcom_pull(task_ids=name) for name in task_ids}


@dag(
    dag_id="coupon_ingest",
    schedule=None if INGEST_SCHEDULE == "none" else INGEST_SCHEDULE,
    **DAG_ARGS,
)
def coupon_ingest():
    @task(**TRANSIENT, execution_timeout=timedelta(minutes=10))
    def land(ds: str | None = None) -> dict:
        from couponflow.landing import land_simulated_day

        return land_simulated_day(_workspace(), ds)

    @task(execution_timeout=timedelta(minutes=15))
    def validate(ds: str | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from expectations.validate import QuarantinedBatch, require_valid

        ws = _workspace()
        try:
            outcome = require_valid(ws, ds)
        except QuarantinedBatch as rejected:  # paths relative to the workspace, which may move
            raise AirflowFailException(ws.relative(str(rejected))) from rejected
        # rows, warnings, notes, report, this run's Data Docs pages
        return ws.relative(outcome.brief())

    @task(outlets=[VALIDATED], execution_timeout=timedelta(minutes=10))
    def load_offline_store(ds: str | None = None) -> dict:
        from couponflow.landing import load_offline, read_batch

        ws = _workspace()
        loaded = load_offline(ws, ds, read_batch(ws.landing_partition(ds)))
        _announce(VALIDATED, ds)
        return loaded

    @task(**CLOSING)
    def summary(ds: str | None = None) -> dict:
        """Record the day's ingestion; a rejected batch or a broken step fails the run."""
        return _close({ds: _pulled(INGEST_TASKS)}, last_dag=False)

    land() >> validate() >> load_offline_store() >> summary()


@dag(
    dag_id="coupon_features",
    schedule=[VALIDATED],
    **DAG_ARGS,
)
def coupon_features():
    @task(outlets=[FEATURES], **TRANSIENT, execution_timeout=timedelta(minutes=45))
    def features(ds: str | None = None) -> dict:
        """Materialise every day the triggering events name, oldest first, so the online
        store ends on the newest."""
        from feature_repo.store import materialise_user_features

        ws = _workspace()
        days = _days(ds)
        done = {day: materialise_user_features(ws, day) for day in days}
        _announce(FEATURES, days[-1])
        return done

    @task(**CLOSING)
    def summary(ds: str | None = None) -> dict:
        """Record the day's features; a failed materialisation fails the run."""
        done = _pulled(["features"])["features"] or {}
        return _close({day: {"features": done.get(day)} for day in _days(ds)}, last_dag=False)

    features() >> summary()


# coupon_retrain's tasks, thin and at module level (Airflow's TaskFlow makes each a task when
# the DAG body calls it): the body below only wires them.
@task(execution_timeout=timedelta(minutes=60))
def train(ds: str | None = None) -> dict:
    from training.pipeline import repro

    ws = _workspace()
    return ws.relative(repro(ws, _days(ds)[-1]))  # the run report's path, relative


@task
def served_readout(ds: str | None = None) -> dict:
    """Yesterday's served decisions against their random holdout, from the feedback
    downstream apps reported: what the live policy actually earned."""
    from datetime import date

    from training.served import served_readout

    yesterday = (date.fromisoformat(_days(ds)[-1]) - timedelta(days=1)).isoformat()
    return served_readout(_workspace(), yesterday)


@task(execution_timeout=timedelta(minutes=10))
def forget_feedback(ds: str | None = None) -> dict:
    """Forget decisions older than serving.feedback_retention_days from the feedback
    index, so it does not grow forever (their landed lines stay)."""
    from serving.runtime.feedback import forget_old_feedback

    return forget_old_feedback(_workspace(), _days(ds)[-1])


@task
def gate(trained: dict) -> bool:
    """Continue to the release only if the gate promoted the challenger. A refusal
    skips this task and with it the release path, so a refused day is pink in the
    grid, not green like a release; this task's log lists the checks that failed."""
    from airflow.sdk.exceptions import AirflowSkipException

    checks = trained["gate"]["checks"]
    for check in checks:
        mark = "x" if check["passed"] else " "
        log.info("[%s] %s: %s", mark, check["check"], check["detail"])
    if not trained["gate"]["promote"]:
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in checks if not c["passed"])
        raise AirflowSkipException(f"refused by the gate, nothing released: {failed}")
    return True


@task(**TRANSIENT, execution_timeout=timedelta(minutes=20))
def build_bento(trained: dict) -> dict:
    from serving.deploy.bento import build_bento, store_model

    ws = _workspace()
    model_tag = store_model(ws, ws.models)
    return {"model_tag": model_tag, "bento_tag": build_bento(ws, model_tag)}


@task(execution_timeout=timedelta(minutes=10))
def check_candidate(built: dict) -> dict:
    """Serve the bento beside the live release and check it there; a refusal fails
    this task with the reason, and shoppers never reach the candidate."""
    from airflow.sdk.exceptions import AirflowFailException

    from serving.deploy.deployment import CandidateRefused, start_candidate

    ws = _workspace()
    try:  # the checks name the candidate's log relative to the workspace
        return ws.relative(start_candidate(ws, built["model_tag"], built["bento_tag"]))
    except CandidateRefused as refused:
        raise AirflowFailException(ws.relative(str(refused))) from refused


@task(execution_timeout=timedelta(minutes=5))
def release(checked: dict) -> dict:
    """Switch traffic to the checked candidate and record the release."""
    from serving.deploy.deployment import switch_to_candidate

    return switch_to_candidate(_workspace(), checked["bento_tag"], "gate passed")


@task(task_id="summary", **CLOSING)
def retrain_summary(ds: str | None = None) -> dict:
    """Write what happened to the day; fail the run (never silently green) if a step
    broke, so the run's colour tells the truth. A gate refusal is a good outcome."""
    pulled = _pulled(RETRAIN_TASKS)
    return _close({_days(ds)[-1]: pulled}, last_dag=True, refusal=_refusal(pulled))


@dag(
    dag_id="coupon_retrain",
    schedule=[FEATURES],
    **DAG_ARGS,
)
def coupon_retrain():
    trained = train()
    promoted = gate(trained)
    built = build_bento(trained)
    checked = check_candidate(built)
    released = release(checked)
    promoted >> built
    done = retrain_summary()
    released >> done
    served_readout() >> done
    forget_feedback() >> done


INGEST_TASKS = ["land", "validate", "load_offline_store"]
RETRAIN_TASKS = [
    *["train", "gate", "build_bento", "check_candidate", "release"],
    *["served_readout", "forget_feedback"],
]


def _refusal(pulled: dict) -> dict | None:
    """Why the candidate was refused, when a built bento never took traffic."""
    if pulled["build_bento"] is None or pulled["check_candidate"] is not None:
        return None
    from serving.deploy.deployment import deployment_record

    refusal = deployment_record(_workspace()).get("last_refusal")
    return (
        refusal if refusal and refusal["bento_tag"] == pulled["build_bento"]["bento_tag"] else None
    )


coupon_ingest()
coupon_features()
coupon_retrain()
