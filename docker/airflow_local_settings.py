"""Airflow cluster policy of the images: the DAG's `train` task runs on the Celery queue
named by $COUPONFLOW_TRAIN_QUEUE (compose.yaml: `gpu`, served by the trainer image's
worker); unset, nothing changes. A policy rather than a DAG argument, so the DAG is the
same on one machine, where `airflow dags test` ignores queues.

Airflow imports `airflow_local_settings` from PYTHONPATH (docker/Dockerfile puts this
folder there)."""

from __future__ import annotations

import os
from typing import Any

TRAIN_QUEUE_ENV = "COUPONFLOW_TRAIN_QUEUE"
TRAIN_TASK = ("coupon_retrain", "train")


def task_policy(task: Any) -> None:
    queue = os.environ.get(TRAIN_QUEUE_ENV)
    if queue and (task.dag_id, task.task_id) == TRAIN_TASK:
        task.queue = queue
