"""coupon_model_deadline: alert when the day's model is late.

Every day at the deadline it reads the day's run summary: unless the chain (coupon_ingest →
coupon_features → coupon_retrain) ended in a release or a gate refusal, it sends a
`model_late` alert (couponflow.alerts) and goes red. The deadline is a cron expression,
$COUPONFLOW_MODEL_DEADLINE (default 06:00 UTC; "none": only when triggered), for the run
whose logical date is that day.

A check task rather than Airflow 3.3's DeadlineAlert: under `airflow dags test` (how
`couponflow run` and `make demo` drive the DAGs) a DAG with a DeadlineAlert crashes when its
run succeeds (Airflow 3.3.2, DagRun.update_state reads the alert ids back as dicts), and a
DeadlineAlert cannot see a run that never started, which a check of the outcome does.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task

DEADLINE = os.environ.get("COUPONFLOW_MODEL_DEADLINE", "0 6 * * *")


@dag(
    dag_id="coupon_model_deadline",
    schedule=None if DEADLINE == "none" else DEADLINE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"owner": "ml-platform", "retries": 0},
    doc_md=__doc__,
    tags=["couponflow"],
)
def coupon_model_deadline():
    @task(execution_timeout=timedelta(minutes=5))
    def check_model_on_time(ds: str | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from couponflow.alerts import check_model_on_time
        from couponflow.config import Workspace

        checked = check_model_on_time(Workspace.from_env(), ds)
        if checked["late"]:
            raise AirflowFailException(f"the model for {ds} is late: {checked['outcome']}")
        return checked

    check_model_on_time()


coupon_model_deadline()
