"""What a reviewer of a day's run meets outside the API (issue #18): progress while a day
runs, each task's log and the day's decision where the Airflow UI shows them, runs that
last as long as they did, the CLI's help, and `serve`/`status --live` that start nothing
they should not."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from couponflow.airflow_runs import NOTE_LIMIT, Progress, run_note, write_task_logs

RUN = "manual__2026-12-04T20:36:24.910533+00:00"


def running(task: str, ti: str, at: str) -> str:
    return (
        f"{at} [info     ] [DAG TEST] running task <TaskInstance: coupon_retrain.{task} {RUN} "
        f"[TaskInstanceState.SCHEDULED] ti_id={ti}> [airflow.sdk.definitions.dag] loc=dag.py:1504"
    )


def updated(ti: str, at: str, state: str | None) -> str:
    new = f" new_state={state}" if state else ""
    return (
        f"{at} [info     ] Task instance state updated    [airflow.api_fastapi.execution_api."
        f"routes.task_instances] correlation_id=01a2 loc=task_instances.py:485{new} "
        f"rows_affected=1 ti_id={ti}"
    )


DAG_TEST_LOG = [
    "2026-12-04T20:36:24.100000Z [info     ] Created dag run.",
    running("train", "01a2-aaaa", "2026-12-04T20:36:25.000000Z"),
    updated("01a2-aaaa", "2026-12-04T20:36:25.100000Z", None),  # running: no progress line
    "2026-12-04T20:36:40.000000Z [info     ] training: epoch 3",
    updated("01a2-aaaa", "2026-12-04T20:37:18.000000Z", "success"),
    running("gate", "01a2-bbbb", "2026-12-04T20:37:18.500000Z"),
    "refused by the gate, nothing released: AUC: 0.51 vs floor 0.55",
    updated("01a2-bbbb", "2026-12-04T20:37:19.000000Z", "skipped"),
]


def test_progress_says_when_each_task_ends_and_how_long_it_took() -> None:
    progress = Progress()
    said = [line for line in map(progress.feed, DAG_TEST_LOG) if line]
    assert said == [
        "   coupon_retrain.train: success (53 s)",
        "   coupon_retrain.gate: skipped (0 s)",
    ]
    assert [t.task_id for t in progress.tasks] == ["train", "gate"]


def test_each_task_log_lands_where_the_ui_reads_it(tmp_path: Path) -> None:
    progress = Progress()
    for line in DAG_TEST_LOG:
        progress.feed(line)
    written = write_task_logs(progress.tasks, tmp_path)
    gate_log = (
        tmp_path / "dag_id=coupon_retrain" / f"run_id={RUN}" / "task_id=gate" / "attempt=1.log"
    )
    assert gate_log in written
    assert "refused by the gate" in gate_log.read_text()
    train_log = gate_log.parent.parent / "task_id=train" / "attempt=1.log"
    assert "epoch 3" in train_log.read_text() and "refused" not in train_log.read_text()
    gate_log.write_text("a worker's own log")
    write_task_logs(progress.tasks, tmp_path)  # a real worker's file is kept
    assert gate_log.read_text() == "a worker's own log"


def test_a_retried_task_gets_an_attempt_file_each() -> None:
    progress = Progress()
    for line in [
        running("train", "0a1", "2026-12-04T20:00:00Z"),
        updated("0a1", "2026-12-04T20:00:01Z", "up_for_retry"),
        running("train", "0b2", "2026-12-04T20:00:31Z"),
    ]:
        progress.feed(line)
    assert [t.attempt for t in progress.tasks] == [1, 2]


def summary(outcome: str, **more: object) -> dict:
    checks = [
        {"check": "AUC at least the floor", "passed": True, "detail": "0.62 vs 0.55"},
        {"check": "beats no_coupon", "passed": False, "detail": "lead -0.13 [-0.31, +0.03]"},
    ]
    promote = outcome == "released"
    steps = {"train": {"gate": {"promote": promote, "checks": checks}}}
    if promote:
        steps["release"] = {"model_version": "20260107-abc", "bento_tag": "couponflow:20260107"}
    return {"day": "2026-01-07", "outcome": outcome, "steps": steps, **more}


def test_the_note_gives_the_decision_and_its_reasons() -> None:
    refused = run_note(summary("refused by gate"))
    assert refused.startswith("2026-01-07: refused by gate")
    assert "beats no_coupon: lead -0.13" in refused and "AUC at least" not in refused
    # Markdown in the UI: each part a paragraph or list of its own, not one run-on line
    assert "\n\ngate: refuse (1 check failed)\n- beats no_coupon" in refused
    released = run_note(summary("released"))
    assert "released: model 20260107-abc" in released
    rejected = run_note(
        {"day": "2026-01-08", "outcome": "batch rejected by validation", "steps": {},
         "rejection": ["orders.amount: 3% below 0"]}
    )  # fmt: skip
    assert "rejected: orders.amount: 3% below 0" in rejected
    assert len(run_note(summary("refused by gate", rejection=["x" * 5000]))) <= NOTE_LIMIT


# -- the CLI ---------------------------------------------------------------------------------
def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from couponflow.cli import main

    with pytest.raises(SystemExit):
        main([*argv, "-h"])
    return capsys.readouterr().out


def test_help_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    top = help_of(capsys)
    assert "and read back what happened." in " ".join(top.split())  # not cut mid-sentence
    serve = " ".join(help_of(capsys, "serve").split())
    assert "serving.port" in serve and "3300" in serve and "refused at once" in serve
    rollback = " ".join(help_of(capsys, "rollback").split())
    assert "previous" in rollback or "before the current one" in rollback
    assert "no earlier release" in rollback
    for verb in ("init", "run", "status", "stop", "demo", "airflow"):
        text = help_of(capsys, verb)
        assert len(text.split("\n\n")) >= 3, (verb, text)  # usage, a description, options


@pytest.mark.integration  # a git + DVC workspace
def test_serve_refuses_a_taken_port_at_once_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from couponflow.config import HOME_ENV
    from couponflow.workspace import init_workspace
    from serving.deploy import deployment

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ws = init_workspace(tmp_path / "ws", {"serving.port": port})
        monkeypatch.setenv(HOME_ENV, str(ws.root))
        release = {"model_tag": "couponflow-recommender:v1", "bento_tag": "couponflow:v1"}
        monkeypatch.setattr(deployment, "current_release", lambda ws: release)
        started: list[str] = []
        monkeypatch.setattr(deployment, "start_candidate", lambda *a: started.append("x"))
        begun = time.monotonic()
        with pytest.raises(deployment.CandidateRefused, match=f"port {port}"):
            deployment.serve_production(ws)
        assert time.monotonic() - begun < 2.0
        assert started == []  # no candidate server was started
        assert deployment.deployment_record(ws)["candidate"] is None


@pytest.mark.integration  # a git + DVC workspace
def test_status_live_asks_the_serving_deployment_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from couponflow.config import HOME_ENV
    from couponflow.workspace import init_workspace
    from serving.deploy import deployment, server

    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv(HOME_ENV, str(ws.root))

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("status --live started a server")

    monkeypatch.setattr(server, "start_server", no_server)
    monkeypatch.setattr(deployment, "start_server", no_server)
    with pytest.raises(deployment.NotServing, match="couponflow serve"):
        deployment.ask_live(ws)


def test_the_gate_skips_the_release_path_visibly() -> None:
    """A refusal must not look like a release in the grid: the gate task is skipped (its
    log has the failed checks) and the release path with it."""
    import inspect

    from airflow.dag_processing.dagbag import DagBag

    dags = Path(__file__).resolve().parent.parent / "dags"
    retrain = DagBag(dag_folder=str(dags)).dags["coupon_retrain"]
    gate = retrain.get_task("gate")
    source = inspect.getsource(gate.python_callable)
    assert "AirflowSkipException" in source
    refused = {"gate": {"promote": False, "checks": [
        {"check": "beats no_coupon", "passed": False, "detail": "lead -0.13"}]}}  # fmt: skip
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="beats no_coupon: lead -0.13"):
        gate.python_callable(refused)
    assert gate.python_callable({"gate": {"promote": True, "checks": []}}) is True
    assert json.dumps(retrain.get_task("build_bento").trigger_rule) == '"all_success"'


def test_runs_the_scheduler_made_get_the_days_decision_as_their_note() -> None:
    """`couponflow airflow` notes ended runs through the REST API: the day comes from the
    summary task's XCom, a run already noted is left alone."""
    import httpx

    from couponflow.airflow_runs import note_finished_runs

    runs = {
        "coupon_retrain": [
            {"dag_run_id": "asset_triggered__1+00:00", "note": None, "logical_date": None},
            {"dag_run_id": "scheduled__2", "note": "a person's note", "logical_date": None},
        ]
    }
    patched: dict[str, dict] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/dagRuns"):
            return httpx.Response(200, json={"dag_runs": runs.get(path.split("/")[4], [])})
        if request.method == "GET" and path.endswith("/xcomEntries/return_value"):
            return httpx.Response(200, json={"value": {"days": ["2026-01-07"]}})
        if request.method == "PATCH":
            patched[path] = json.loads(request.content)
            assert request.url.params["update_mask"] == "note"
            return httpx.Response(200, json={})
        return httpx.Response(404)

    api = httpx.Client(base_url="http://airflow", transport=httpx.MockTransport(answer))
    noted: set = set()
    days = {"2026-01-07": summary("refused by gate")}
    dag_ids = ("coupon_ingest", "coupon_retrain")
    assert note_finished_runs(api, days.get, dag_ids, noted) == 1
    ((path, body),) = patched.items()
    assert path.endswith("/dagRuns/asset_triggered__1+00:00") or "asset_triggered__1" in path
    assert body["note"].startswith("2026-01-07: refused by gate")
    assert note_finished_runs(api, days.get, dag_ids, noted) == 0  # each run once


# -- the run summary and `couponflow status` read well ----------------------------------------
def test_the_summary_reads_as_tables_and_words_not_python() -> None:
    """Rows validated as a table, the candidate's latency in words, and every policy's true
    profit against the oracle's beside its estimate (issue #18)."""
    from couponflow.evaluation import OracleTruth, policy_table
    from couponflow.report import latency_text
    from couponflow.status import rows_table
    from tests.helpers.evaluation import est, evaluation, model

    table = rows_table({"users": 30000, "coupon_events": 7})
    assert (
        "{" not in table
        and "30,000" in table
        and table.splitlines()[0].split()
        == [
            "table",
            "rows",
        ]
    )
    assert latency_text({"requests": 100, "p50_ms": 1.934, "p99_ms": 10.78}) == (
        "100 requests, p50 1.9 ms, p99 10.8 ms"
    )
    report = evaluation(model("c"))
    truth = {"challenger": {"incremental_profit": 45.0, "share_of_oracle": 0.5}}
    truth["random"] = {"incremental_profit": -90.0, "share_of_oracle": -1.0}
    report.oracle = OracleTruth(3000, 150.0, 90.0, 140.0, truth, {"random": est(135.0)})
    lines = policy_table(report)
    assert "true share of the oracle's" in lines[0]
    row = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert "| 50% |" in row["challenger"] and "| -100% |" in row["random"]
