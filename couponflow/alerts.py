"""Alerts: a failed task or a late model reaches a person, and always leaves a trace.

Every alert is a JSON line in `<workspace>/alerts.jsonl` and a WARNING log line (so it is in
the task log in the Airflow UI). Where the environment names them, it also goes to:

    COUPONFLOW_ALERT_WEBHOOK    a URL that gets the alert as a JSON POST (Slack, Teams, ...)
    COUPONFLOW_ALERT_EMAIL      addresses (comma-separated) mailed through the Airflow SMTP
                                connection COUPONFLOW_ALERT_SMTP_CONN (default smtp_default,
                                e.g. AIRFLOW_CONN_SMTP_DEFAULT set to an smtp:// URL with the
                                account and host; its extras choose TLS and the sender,
                                `from_email`, else couponflow@<this host>)

A channel that fails is logged and never hides the alert's local record or the task's own
failure. The Airflow callback `task_failed` only reads its context and the deadline check
(`check_model_on_time`) only reads the workspace, so this module imports nothing of Airflow
at import time: DAG files stay cheap to parse.
"""

from __future__ import annotations

import html
import json
import logging
import os
import socket
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from couponflow.config import Workspace
from couponflow.records import Alert, LateCheck

WEBHOOK_ENV = "COUPONFLOW_ALERT_WEBHOOK"
EMAIL_ENV = "COUPONFLOW_ALERT_EMAIL"
SMTP_CONN_ENV = "COUPONFLOW_ALERT_SMTP_CONN"

log = logging.getLogger("couponflow.alerts")


def alerts_path(ws: Workspace) -> Path:
    """Where the workspace keeps its alerts, one JSON object a line."""
    return ws.root / "alerts.jsonl"


def send_alert(ws: Workspace, kind: str, summary: str, details: Mapping[str, object]) -> Alert:
    """Record the alert locally, then try every configured channel; return the record with
    what each channel did. `details` are the alert's own (free-form), stored flat."""
    # paths inside the workspace relative to it: the record stays true if it moves
    alert = cast(
        Alert,  # its `channels` follow
        {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "kind": kind,
            "summary": summary,
            **ws.relative(details),
        },
    )
    alert["channels"] = {"log": "ok"}  # after the details, as stored
    if webhook := os.environ.get(WEBHOOK_ENV):
        alert["channels"]["webhook"] = _try(_post_webhook, webhook, alert)
    if emails := os.environ.get(EMAIL_ENV):
        alert["channels"]["email"] = _try(_send_email, emails, alert)
    log.warning("ALERT %s: %s", kind, summary)
    path = alerts_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(alert, default=str) + "\n")
    return alert


def _try(send: Callable[[str, Alert], None], target: str, alert: Alert) -> str:
    try:
        send(target, alert)
    except Exception as error:  # a broken channel must not hide the alert
        log.error("alert channel %s failed: %s", send.__name__, error)
        return f"failed: {error}"
    return "ok"


def _post_webhook(url: str, alert: Alert) -> None:
    body = json.dumps({"text": alert["summary"], "alert": alert}, default=str).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _send_email(to: str, alert: Alert) -> None:
    """Mail the alert through the Airflow SMTP connection. The hook refuses to send without a
    sender, so a connection that names none still mails from couponflow@<this host>."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    body = "<pre>" + html.escape(json.dumps(alert, indent=2, default=str)) + "</pre>"
    with SmtpHook(smtp_conn_id=os.environ.get(SMTP_CONN_ENV, "smtp_default")) as hook:
        hook.send_email_smtp(
            to=[a.strip() for a in to.split(",")],
            subject=alert["summary"],
            html_content=body,
            from_email=hook.from_email or f"couponflow@{socket.gethostname()}",
        )


def task_failed(context: Mapping[str, Any]) -> None:  # Airflow's task context: free-form
    """Airflow `on_failure_callback`: a task failed for good (its retries are spent)."""
    ti = context["ti"]
    error = context.get("exception")
    summary = f"couponflow: {ti.dag_id}.{ti.task_id} failed ({ti.run_id})"
    send_alert(
        Workspace.from_env(),
        "task_failed",
        summary,
        {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "try_number": ti.try_number,
            "error": f"{type(error).__name__}: {error}" if error else None,
            "log_url": getattr(ti, "log_url", None),
        },
    )


def check_model_on_time(ws: Workspace, day: str) -> LateCheck:
    """The deadline check: by now the day's chain must have ended in a release or a gate
    refusal. If not (still running, stuck, failed, never started), alert and say so."""
    from couponflow.report import GOOD_OUTCOMES, summary_path

    path = summary_path(ws, day)
    outcome = json.loads(path.read_text())["outcome"] if path.exists() else "no run yet"
    late = outcome not in GOOD_OUTCOMES
    if late:
        send_alert(
            ws,
            "model_late",
            f"couponflow: the model for {day} is late ({outcome})",
            {"day": day, "outcome": outcome, "summary": str(path)},
        )
    return {"day": day, "outcome": outcome, "late": late}
