"""Alerts: a task that fails for good calls the failure callback, and the alert lands in
the workspace's alerts.jsonl, in the log, at the configured webhook and in the mailbox of
the configured addresses (a real SMTP server on 127.0.0.1), even when a channel is broken."""

from __future__ import annotations

import email
import html
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from couponflow.alerts import (
    EMAIL_ENV,
    SMTP_CONN_ENV,
    WEBHOOK_ENV,
    check_model_on_time,
    send_alert,
    task_failed,
)
from couponflow.config import HOME_ENV, Workspace
from couponflow.processes import free_port
from tests.conftest import recorded_alerts

pytestmark = pytest.mark.integration  # Airflow connections, a mail server and a webhook server


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP endpoint that keeps every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


@pytest.fixture
def mailbox() -> Iterator[tuple[str, list[email.message.Message]]]:
    """A local SMTP server (aiosmtpd, plain SMTP, no auth) that keeps every message, and
    the Airflow connection URL that reaches it."""
    from aiosmtpd.controller import Controller

    received: list[email.message.Message] = []

    class Keep:
        async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd)
            message = email.message_from_bytes(envelope.content)
            message["X-Envelope-From"] = envelope.mail_from
            message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
            received.append(message)
            return "250 kept"

    server = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    server.start()
    yield f"smtp://127.0.0.1:{server.port}?disable_ssl=true&disable_tls=true&timeout=10", received
    server.stop()


def _body(message: email.message.Message) -> str:
    (part,) = [p for p in message.walk() if p.get_content_type() == "text/html"]
    return part.get_payload(decode=True).decode()


def test_a_failure_callback_records_and_posts(tmp_path, monkeypatch, webhook, caplog) -> None:
    url, received = webhook
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.setenv(WEBHOOK_ENV, url)
    ti = SimpleNamespace(
        dag_id="coupon_ingest", task_id="land", run_id="r1", try_number=4, log_url="http://x"
    )
    task_failed({"ti": ti, "exception": OSError("disk full")})

    (alert,) = recorded_alerts(Workspace(tmp_path))
    assert alert["kind"] == "task_failed" and alert["task_id"] == "land"
    assert alert["error"] == "OSError: disk full" and alert["try_number"] == 4
    assert alert["channels"] == {"log": "ok", "webhook": "ok"}
    assert received[0]["alert"]["task_id"] == "land"
    assert "ALERT task_failed" in caplog.text


def test_a_broken_channel_still_leaves_the_local_record(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, "http://127.0.0.1:9/nobody-listens")
    alert = send_alert(Workspace(tmp_path), "test", "something broke", {})
    assert alert["channels"]["webhook"].startswith("failed")
    assert recorded_alerts(Workspace(tmp_path))[0]["summary"] == "something broke"


def test_an_alert_is_mailed_through_the_airflow_smtp_connection(
    tmp_path, monkeypatch, mailbox
) -> None:
    """The connection named by COUPONFLOW_ALERT_SMTP_CONN, its sender from the connection."""
    smtp_url, received = mailbox
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    monkeypatch.setenv(EMAIL_ENV, "oncall@example.com, ml-team@example.com")
    monkeypatch.setenv(SMTP_CONN_ENV, "couponflow_alerts")
    monkeypatch.setenv(
        "AIRFLOW_CONN_COUPONFLOW_ALERTS", f"{smtp_url}&from_email=airflow%40example.com"
    )
    ti = SimpleNamespace(
        dag_id="coupon_retrain", task_id="train", run_id="r2", try_number=1, log_url=None
    )
    task_failed({"ti": ti, "exception": ValueError("the validation loss was <never> finite")})

    (alert,) = recorded_alerts(Workspace(tmp_path))
    assert alert["channels"] == {"log": "ok", "email": "ok"}
    (message,) = received
    assert message["Subject"] == "couponflow: coupon_retrain.train failed (r2)"
    assert message["X-Envelope-From"] == "airflow@example.com"
    assert message["X-Envelope-To"] == "oncall@example.com, ml-team@example.com"
    body = _body(message)
    assert "ValueError: the validation loss was &lt;never&gt; finite" in body  # escaped HTML
    mailed = json.loads(html.unescape(body.removeprefix("<pre>").removesuffix("</pre>")))
    assert mailed["task_id"] == "train" and mailed["try_number"] == 1


def test_a_connection_without_a_sender_still_mails(tmp_path, monkeypatch, mailbox) -> None:
    """The SMTP hook refuses to send without a sender; the alert names one of its own."""
    smtp_url, received = mailbox
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    monkeypatch.delenv(SMTP_CONN_ENV, raising=False)
    monkeypatch.setenv(EMAIL_ENV, "oncall@example.com")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_url)
    alert = send_alert(Workspace(tmp_path), "model_late", "couponflow: the model is late", {})
    assert alert["channels"]["email"] == "ok"
    assert received[0]["X-Envelope-From"].startswith("couponflow@")


def test_an_unreachable_mail_server_still_leaves_the_local_record(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    monkeypatch.delenv(SMTP_CONN_ENV, raising=False)
    monkeypatch.setenv(EMAIL_ENV, "oncall@example.com")
    nobody = f"smtp://127.0.0.1:{free_port()}?disable_ssl=true&disable_tls=true&timeout=5"
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", nobody)
    alert = send_alert(Workspace(tmp_path), "test", "something broke", {})
    assert alert["channels"]["email"].startswith("failed: ")
    assert recorded_alerts(Workspace(tmp_path))[0]["summary"] == "something broke"


def test_a_day_without_a_model_by_the_deadline_alerts(tmp_path, monkeypatch) -> None:
    from couponflow.report import write_run_summary

    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    ws = Workspace(tmp_path)
    assert check_model_on_time(ws, "2026-01-07")["late"]
    write_run_summary(ws, "2026-01-08", {"land": {"users": 1}, "validate": None})
    assert check_model_on_time(ws, "2026-01-08")["outcome"] == "batch rejected by validation"
    late = [(a["day"], a["kind"]) for a in recorded_alerts(Workspace(tmp_path))]
    assert late == [("2026-01-07", "model_late"), ("2026-01-08", "model_late")]


FAILING_DAG = """
from datetime import datetime

from airflow.sdk import dag, task

from couponflow.alerts import task_failed


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     default_args={"on_failure_callback": task_failed})
def always_fails():
    @task
    def broken():
        raise RuntimeError("the landing zone is unreachable")

    broken()


always_fails()
"""


@pytest.mark.e2e
def test_a_failing_airflow_task_lands_an_alert(tmp_path, webhook, mailbox) -> None:
    """The real thing: `airflow dags test` runs a failing task and its callback alerts, by
    webhook and by mail through the connection Airflow reads from its environment."""
    url, received = webhook
    smtp_url, mailed = mailbox
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "always_fails.py").write_text(textwrap.dedent(FAILING_DAG))
    ws = tmp_path / "ws"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        HOME_ENV: str(ws),
        WEBHOOK_ENV: url,
        EMAIL_ENV: "oncall@example.com",
        "AIRFLOW_CONN_SMTP_DEFAULT": smtp_url,
    }
    env.pop(SMTP_CONN_ENV, None)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    run = subprocess.run(
        [airflow, "dags", "test", "always_fails", "2026-01-07"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    (alert,) = recorded_alerts(Workspace(ws))
    assert (alert["dag_id"], alert["task_id"]) == ("always_fails", "broken")
    assert "the landing zone is unreachable" in alert["error"]
    assert received and received[0]["alert"]["task_id"] == "broken"
    assert alert["channels"] == {"log": "ok", "webhook": "ok", "email": "ok"}
    assert [m["Subject"] for m in mailed] == [alert["summary"]]
    assert "the landing zone is unreachable" in _body(mailed[0])
    assert "ALERT task_failed" in run.stdout + run.stderr
