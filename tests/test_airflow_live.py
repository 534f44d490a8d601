"""Airflow as it runs in production, on a tiny world: PostgreSQL metadata (a fresh database
per run, dropped afterwards), LocalExecutor, api-server, scheduler and dag-processor as
child processes in their own process groups. A run of coupon_ingest triggered through the
REST API v2 (JWT from the simple auth manager) must carry the day through the Assets to
coupon_features and coupon_retrain. Then the scheduler is SIGKILLed mid-run and restarted,
and on another day a worker (the task's supervisor and its task runner) is SIGKILLed
mid-task: each day must still complete, and no step with side effects may have run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from couponflow.airflow_services import COMPONENTS, AirflowServices, api_client, service_env
from couponflow.config import Workspace
from couponflow.landing import next_days
from couponflow.processes import group_alive
from couponflow.report import GOOD_OUTCOMES, summary_path
from couponflow.seeding import seed_history
from couponflow.workspace import init_workspace
from tests.conftest import GATE_OPEN, TINY_WORLD, free_port, recorded_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
USER, PASSWORD = "tester", uuid.uuid4().hex
DAG_IDS = ("coupon_ingest", "coupon_features", "coupon_retrain")


def _postgres():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {PG['host']}:{PG['port']}: {error}")
    conn.autocommit = True
    return conn


@dataclass
class Live:
    ws: Workspace
    services: AirflowServices
    api: httpx.Client

    def trigger(self, day: str) -> str:
        run_id = f"live__{day}"
        answer = self.api.post(
            "/api/v2/dags/coupon_ingest/dagRuns",
            json={"dag_run_id": run_id, "logical_date": f"{day}T00:00:00Z"},
        )
        assert answer.status_code == 200, answer.text
        return run_id

    def runs(self, dag_id: str) -> list[dict]:
        answer = self.api.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "id"})
        answer.raise_for_status()
        return answer.json()["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        answer = self.api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        answer.raise_for_status()
        return {ti["task_id"]: ti for ti in answer.json()["task_instances"]}

    def wait_for(self, what, timeout: float, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := what():
                return found
            time.sleep(every)
        states = {d: [(r["dag_run_id"], r["state"]) for r in self.runs(d)] for d in DAG_IDS}
        raise TimeoutError(f"gave up after {timeout} s; runs: {states}")

    def finished_run(self, dag_id: str, n: int) -> dict | None:
        """The n-th run of `dag_id` once finished (failing the test if it failed)."""
        runs = self.runs(dag_id)
        if len(runs) < n or runs[n - 1]["state"] not in ("success", "failed"):
            return None
        assert runs[n - 1]["state"] == "success", (dag_id, runs[n - 1], self._summaries())
        return runs[n - 1]

    def _summaries(self) -> list[str]:
        return [p.read_text() for p in sorted((self.ws.root / "reports" / "runs").glob("*.md"))]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    admin = _postgres()
    database = f"couponflow_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    root = tmp_path_factory.mktemp("live") / "ws"
    port = free_port()
    overrides = {
        **TINY_WORLD,
        **GATE_OPEN,
        "serving.port": free_port(),
    }
    ws = init_workspace(root, overrides)
    seed_history(ws)
    env = service_env(
        ws,
        port,
        {USER: PASSWORD},
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}"
            ),
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "BENTOML_HOME": str(root / "bentoml"),
            "COUPONFLOW_INGEST_SCHEDULE": "none",  # only the runs this test triggers
            "COUPONFLOW_MODEL_DEADLINE": "none",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            # a dead scheduler's tasks are reset within a minute, not five; the health
            # threshold stays at its default 30 s: at 10 s a busy machine's own scheduler
            # was declared dead and its running task reset
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
            # a killed worker's task is failed (and retried) a minute after its last
            # heartbeat, not five; live supervisors heartbeat every few seconds
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        },
    )
    services = AirflowServices(env, root / "logs" / "airflow")
    try:
        migrated = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert migrated.returncode == 0, migrated.stdout[-3000:]
        for component in COMPONENTS:
            services.start(component)
        base_url = env["AIRFLOW__API__BASE_URL"]
        services.wait_healthy(base_url)
        api = api_client(base_url, USER, PASSWORD)  # a JWT from POST /auth/token
        live = Live(ws, services, api)
        live.wait_for(
            lambda: all(api.get(f"/api/v2/dags/{d}").status_code == 200 for d in DAG_IDS), 180
        )
        yield live
    finally:
        from serving.deploy.deployment import stop_deployment

        pgids = [proc.pid for proc in services.procs.values()]
        services.stop()
        stop_deployment(ws)  # a release leaves its bento servers and front door up
        leaked = [pgid for pgid in pgids if group_alive(pgid)]
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        assert not leaked, f"process groups still alive: {leaked}"
        assert not _stray_processes(root), "task processes outlived their supervisors"


def _stray_processes(root) -> list[str]:
    """Processes still working for this workspace (a task runner in a group of its own);
    killed, and returned (pid and command) so the test can fail on them."""
    import psutil

    strays = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get("COUPONFLOW_HOME") == str(root):
                strays.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return strays


def _summary(ws: Workspace, day: str) -> dict:
    return json.loads(summary_path(ws, day).read_text())


def test_a_triggered_ingest_runs_the_asset_chain_to_a_release(live: Live) -> None:
    (day,) = next_days(live.ws, 1)
    run_id = live.trigger(day)

    live.wait_for(lambda: live.finished_run("coupon_retrain", 1), timeout=900)

    assert live.finished_run("coupon_ingest", 1)["dag_run_id"] == run_id
    features = live.finished_run("coupon_features", 1)
    assert features["run_type"] == "asset_triggered" and features["logical_date"] is None
    summary = _summary(live.ws, day)
    assert summary["outcome"] == "released", summary["outcome"]
    assert summary["steps"]["features"]["users"] == TINY_WORLD["world.n_users"]
    tis = live.task_instances("coupon_retrain", live.runs("coupon_retrain")[0]["dag_run_id"])
    assert tis["summary"]["state"] == "success"
    xcom = live.api.get(
        f"/api/v2/dags/coupon_retrain/dagRuns/{tis['summary']['dag_run_id']}"
        "/taskInstances/summary/xcomEntries/return_value"
    )
    assert xcom.status_code == 200, xcom.text
    assert day in xcom.text and "summary_markdown" in xcom.text


def test_killing_the_scheduler_mid_run_neither_loses_nor_repeats_a_step(live: Live) -> None:
    (day,) = next_days(live.ws, 1)
    releases_before = _release_count(live.ws)
    live.trigger(day)

    def features_running() -> bool:
        runs = live.runs("coupon_features")
        if len(runs) < 2:
            return False
        return (
            live.task_instances("coupon_features", runs[1]["dag_run_id"])
            .get("features", {})
            .get("state")
            == "running"
        )

    live.wait_for(features_running, timeout=600, every=0.5)
    landed = _mtimes(live.ws.landing_partition(day))
    live.services.kill("scheduler", signal.SIGKILL)
    time.sleep(5)
    live.services.start("scheduler")

    live.wait_for(lambda: live.finished_run("coupon_retrain", 2), timeout=1200)

    summary = _summary(live.ws, day)
    assert summary["outcome"] in GOOD_OUTCOMES, summary["outcome"]
    ingest = live.task_instances("coupon_ingest", f"live__{day}")
    assert [ingest[t]["try_number"] for t in ("land", "validate", "load_offline_store")] == [
        1,
        1,
        1,
    ]
    assert _mtimes(live.ws.landing_partition(day)) == landed
    features_run = live.runs("coupon_features")[1]["dag_run_id"]
    features_try = live.task_instances("coupon_features", features_run)["features"]["try_number"]
    assert features_try in (1, 2), features_try  # re-run at most once, and idempotent
    retrain = live.task_instances("coupon_retrain", live.runs("coupon_retrain")[1]["dag_run_id"])
    assert retrain["train"]["try_number"] == 1
    released = summary["outcome"] == "released"
    assert _release_count(live.ws) == releases_before + released
    assert len(live.runs("coupon_retrain")) == 2  # one retrain per day, none doubled


def _mtimes(folder) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in sorted(folder.glob("*.parquet"))}


def _release_count(ws: Workspace) -> int:
    history = ws.releases / "history.jsonl"
    return len(history.read_text().splitlines()) if history.exists() else 0


def test_killing_a_worker_mid_task_retries_it_without_doubling_anything(live: Live) -> None:
    """SIGKILL the process running `features` and the task runner it forked, as a worker
    dies to the OOM killer or a lost host: nobody reports the task, so the scheduler must
    notice its missing heartbeats, retry it, and the day must end as if nothing happened."""
    from couponflow.features import USER_FEATURES, compute_user_features
    from couponflow.landing import read_offline
    from feature_repo.store import online_user_features, open_store

    (day,) = next_days(live.ws, 1)
    releases_before = _release_count(live.ws)
    n = len(live.runs("coupon_retrain")) + 1  # this day's run of each DAG is the n-th
    live.trigger(day)

    features_ti = live.wait_for(lambda: _task_instance(live, "coupon_features", n, "features"), 600)
    written = live.ws.features / "user_activity" / f"date={day}" / "part.parquet"

    def killed_mid_task() -> list[str]:
        """Once try 1 has written its first partition (Feast is still to come)."""
        if not written.exists():
            return []
        killed = _kill_worker(features_ti["id"])
        assert killed, "features finished before its worker could be killed"
        return killed

    killed = live.wait_for(killed_mid_task, timeout=600, every=0.2)
    print(f"killed the worker of features try 1: {killed}")
    landed = _mtimes(live.ws.landing_partition(day))

    live.wait_for(lambda: live.finished_run("coupon_retrain", n), timeout=1200)

    summary = _summary(live.ws, day)
    assert summary["outcome"] in GOOD_OUTCOMES, summary["outcome"]
    features_run = live.runs("coupon_features")[n - 1]["dag_run_id"]
    features = live.task_instances("coupon_features", features_run)["features"]
    assert (features["state"], features["try_number"]) == ("success", 2), features
    ingest = live.task_instances("coupon_ingest", f"live__{day}")
    assert [ingest[t]["try_number"] for t in INGEST_TASKS] == [1, 1, 1]
    assert _mtimes(live.ws.landing_partition(day)) == landed
    for table, rows in summary["steps"]["validate"]["rows"].items():  # nothing lost or doubled
        assert len(read_offline(live.ws, table, [day])) == rows, table
    expected = compute_user_features(live.ws, day)  # what one clean run computes
    expected["event_timestamp"] = expected["event_timestamp"].dt.tz_localize("UTC")
    pd.testing.assert_frame_equal(pd.read_parquet(written), expected, check_dtype=False)
    first = expected.iloc[0]  # and the online store holds the same row
    online = online_user_features(open_store(live.ws), int(first["user_id"]))
    np.testing.assert_array_equal(online, first[USER_FEATURES].to_numpy("float32"))
    assert len(live.runs("coupon_features")) == n and len(live.runs("coupon_retrain")) == n
    assert _task_instance(live, "coupon_retrain", n, "train")["try_number"] == 1
    trained = _workspace_commits(live.ws, f"train on data up to {day}")
    assert len(trained) == 1, trained  # one DVC training run, one model version for the day
    model = json.loads((live.ws.models / "model.json").read_text())
    assert model["version"] == summary["steps"]["train"]["model"]["version"]
    assert _release_count(live.ws) == releases_before + (summary["outcome"] == "released")
    alerted = [a["task_id"] for a in recorded_alerts(live.ws) if a.get("run_id") == features_run]
    assert not alerted, alerted  # a retried blip alerts nobody


INGEST_TASKS = ("land", "validate", "load_offline_store")


def _task_instance(live: Live, dag_id: str, n: int, task_id: str) -> dict | None:
    """The task instance `task_id` of the n-th run of `dag_id`, once that run exists."""
    runs = live.runs(dag_id)
    if len(runs) < n:
        return None
    return live.task_instances(dag_id, runs[n - 1]["dag_run_id"]).get(task_id)


def _kill_worker(ti_id: str) -> list[str]:
    """SIGKILL the LocalExecutor worker supervising task instance `ti_id` and the task
    runner it forked (its own process group, so everything the task started), once the
    runner is running the task; what was killed, or nothing yet."""
    import psutil

    from couponflow.processes import signal_group

    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [""])[0] != f"airflow worker -- {ti_id}":
            continue  # the runner names itself so once it starts the task
        try:
            supervisor = proc.parent()
            killed = [f"{p.pid} {' '.join(p.cmdline()).strip()}" for p in (supervisor, proc)]
            assert "LocalExecutor" in killed[0], f"not forked by a LocalExecutor worker: {killed}"
            supervisor.kill()  # first, so no one is left to report the runner's death
            signal_group(proc.pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            return []  # gone between the scan and the kill: look again
        return killed
    return []


def _workspace_commits(ws: Workspace, message: str) -> list[str]:
    log = subprocess.run(
        ["git", "log", "--format=%h %s", f"--grep={message}", "--fixed-strings"],
        cwd=ws.root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return log.stdout.splitlines()
