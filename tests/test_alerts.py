"""Alerts: a task that fails for good calls the failure callback, and the alert lands in
the workspace's alerts.jsonl, in the log and at the configured webhook, even when a channel
is broken."""

from __future__ import annotations

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

from couponflow.alerts import WEBHOOK_ENV, check_model_on_time, send_alert, task_failed
from couponflow.config import HOME_ENV, Workspace


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


def _alerts(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "alerts.jsonl").read_text().splitlines()]


def test_a_failure_callback_records_and_posts(tmp_path, monkeypatch, webhook, caplog) -> None:
    url, received = webhook
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.setenv(WEBHOOK_ENV, url)
    ti = SimpleNamespace(
        dag_id="coupon_ingest", task_id="land", run_id="r1", try_number=4, log_url="http://x"
    )
    task_failed({"ti": ti, "exception": OSError("disk full")})

    (alert,) = _alerts(tmp_path)
    assert alert["kind"] == "task_failed" and alert["task_id"] == "land"
    assert alert["error"] == "OSError: disk full" and alert["try_number"] == 4
    assert alert["channels"] == {"log": "ok", "webhook": "ok"}
    assert received[0]["alert"]["task_id"] == "land"
    assert "ALERT task_failed" in caplog.text


def test_a_broken_channel_still_leaves_the_local_record(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, "http://127.0.0.1:9/nobody-listens")
    alert = send_alert(Workspace(tmp_path), "test", "something broke", {})
    assert alert["channels"]["webhook"].startswith("failed")
    assert _alerts(tmp_path)[0]["summary"] == "something broke"


def test_a_day_without_a_model_by_the_deadline_alerts(tmp_path, monkeypatch) -> None:
    from couponflow.report import write_run_summary

    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    ws = Workspace(tmp_path)
    assert check_model_on_time(ws, "2026-01-07")["late"]
    write_run_summary(ws, "2026-01-08", {"land": {"users": 1}, "validate": None})
    assert check_model_on_time(ws, "2026-01-08")["outcome"] == "batch rejected by validation"
    late = [(a["day"], a["kind"]) for a in _alerts(tmp_path)]
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
def test_a_failing_airflow_task_lands_an_alert(tmp_path, webhook) -> None:
    """The real thing: `airflow dags test` runs a failing task and its callback alerts."""
    url, received = webhook
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
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    run = subprocess.run(
        [airflow, "dags", "test", "always_fails", "2026-01-07"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    (alert,) = _alerts(ws)
    assert (alert["dag_id"], alert["task_id"]) == ("always_fails", "broken")
    assert "the landing zone is unreachable" in alert["error"]
    assert received and received[0]["alert"]["task_id"] == "broken"
    assert "ALERT task_failed" in run.stdout + run.stderr
