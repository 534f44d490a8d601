"""coupon_pipeline: one day of couponflow, from fresh events to a released recommender.

land → validate (GX; a failing batch is quarantined and the run fails here) → offline
store → features (Feast apply + materialise) → train (dvc repro: dataset, train, evaluate,
gate) → gate (a refusal skips the release, visibly) → bento → the candidate served beside
the live release and checked (golden requests, latency) → traffic switched to it.
Every task is idempotent for its date and calls one function of a project room; the
workspace is named by $COUPONFLOW_HOME. `summary` always runs and writes what happened.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import TriggerRule, dag, get_current_context, task

DEFAULT_ARGS = {"owner": "ml-platform", "retries": 0, "execution_timeout": timedelta(minutes=30)}


def _workspace():
    from couponflow.config import Workspace
    from couponflow.logs import quiet_libraries

    quiet_libraries()
    return Workspace.from_env()


@dag(
    dag_id="coupon_pipeline",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["couponflow"],
)
def coupon_pipeline():
    @task
    def land(ds: str | None = None) -> dict:
        from couponflow.landing import land_simulated_day

        return land_simulated_day(_workspace(), ds)

    @task
    def validate(ds: str | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from expectations.validate import QuarantinedBatch, require_valid

        try:
            outcome = require_valid(_workspace(), ds)
        except QuarantinedBatch as rejected:
            raise AirflowFailException(str(rejected)) from rejected
        return outcome.brief()  # rows, warnings, notes, report, this run's Data Docs pages

    @task
    def load_offline_store(ds: str | None = None) -> dict:
        from couponflow.landing import load_offline, read_batch

        ws = _workspace()
        return load_offline(ws, ds, read_batch(ws.landing_partition(ds)))

    @task
    def features(ds: str | None = None) -> dict:
        from feature_repo.store import materialise_user_features

        return materialise_user_features(_workspace(), ds)

    @task
    def train(ds: str | None = None) -> dict:
        from training.pipeline import repro

        return repro(_workspace(), ds)

    @task
    def served_readout(ds: str | None = None) -> dict:
        """Yesterday's served decisions against their random holdout, from the feedback
        downstream apps reported: what the live policy actually earned."""
        from datetime import date

        from training.served import served_readout

        yesterday = (date.fromisoformat(ds) - timedelta(days=1)).isoformat()
        return served_readout(_workspace(), yesterday)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def gate(trained: dict) -> bool:
        """Continue to the release only if the gate promoted the challenger."""
        return bool(trained["gate"]["promote"])

    @task
    def build_bento(trained: dict) -> dict:
        from serving.bento import build_bento, store_model

        ws = _workspace()
        model_tag = store_model(ws, ws.models)
        return {"model_tag": model_tag, "bento_tag": build_bento(ws, model_tag)}

    @task
    def check_candidate(built: dict) -> dict:
        """Serve the bento beside the live release and check it there; a refusal fails
        this task with the reason, and shoppers never reach the candidate."""
        from airflow.sdk.exceptions import AirflowFailException

        from serving.deployment import CandidateRefused, start_candidate

        try:
            return start_candidate(_workspace(), built["model_tag"], built["bento_tag"])
        except CandidateRefused as refused:
            raise AirflowFailException(str(refused)) from refused

    @task
    def release(checked: dict) -> dict:
        """Switch traffic to the checked candidate and record the release."""
        from serving.deployment import switch_to_candidate

        return switch_to_candidate(_workspace(), checked["bento_tag"], "gate passed")

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summary(ds: str | None = None) -> dict:
        """Write what happened; fail the run (never silently green) if the batch was
        rejected or a step broke, so the run's colour tells the truth."""
        from airflow.sdk.exceptions import AirflowFailException

        from couponflow.report import write_run_summary

        ti = get_current_context()["ti"]
        pulled = {name: ti.xcom_pull(task_ids=name) for name in TASK_IDS}
        written = write_run_summary(_workspace(), ds, pulled, refusal=_refusal(pulled))
        if written["outcome"] not in ("released", "refused by gate"):
            raise AirflowFailException(f"{ds}: {written['outcome']}")
        return written

    landed = land()
    validated = validate()
    loaded = load_offline_store()
    materialised = features()
    trained = train()
    promoted = gate(trained)
    built = build_bento(trained)
    checked = check_candidate(built)
    released = release(checked)
    landed >> validated >> loaded >> materialised >> trained
    promoted >> built
    done = summary()
    released >> done
    served_readout() >> done


TASK_IDS = [
    "land",
    "served_readout",
    "validate",
    "load_offline_store",
    "features",
    "train",
    "gate",
    "build_bento",
    "check_candidate",
    "release",
]


def _refusal(pulled: dict) -> dict | None:
    """Why the candidate was refused, when a built bento never took traffic."""
    if pulled["build_bento"] is None or pulled["check_candidate"] is not None:
        return None
    from serving.deployment import deployment_record

    refusal = deployment_record(_workspace()).get("last_refusal")
    return (
        refusal if refusal and refusal["bento_tag"] == pulled["build_bento"]["bento_tag"] else None
    )


coupon_pipeline()
