"""Airflow as it runs for real: api-server, scheduler and dag-processor as child processes
of one supervisor, each in its own process group, so stopping (or killing) a component
stops everything it started.

`couponflow airflow` (`make airflow`) uses it for a local UI over a workspace; the
integration test uses it against PostgreSQL and kills the scheduler mid-run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from couponflow.airflow_local import DAG_IDS, airflow, airflow_env
from couponflow.config import Workspace
from couponflow.processes import group_alive, signal_group

COMPONENTS = ("api-server", "scheduler", "dag-processor")


def service_env(
    ws: Workspace, port: int, users: dict[str, str], extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The workspace's Airflow environment for long-running components: LocalExecutor,
    the api-server on 127.0.0.1:`port` (tasks reach its execution API there), simple auth
    with `users` (name: password, all admins), DAGs live as soon as they are parsed."""
    passwords = ws.root / "airflow" / "passwords.json"
    passwords.parent.mkdir(parents=True, exist_ok=True)
    passwords.write_text(json.dumps(users))
    base_url = f"http://127.0.0.1:{port}"
    return {
        **airflow_env(ws),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:admin" for u in users),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        **(extra or {}),
    }


@dataclass
class AirflowServices:
    """The running components; `start`, `kill` and `stop` act on whole process groups."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, component: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{component}.log", "a") as log:
            self.procs[component] = subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), component],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: pgid == pid
            )

    def kill(self, component: str, sig: int = signal.SIGKILL, grace: float = 30.0) -> None:
        """Send `sig` to the component's whole group; SIGKILL what is left after `grace`."""
        proc = self.procs.pop(component)
        signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + grace
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        signal_group(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop every component gracefully (SIGTERM), then kill what lingers."""
        for component in list(self.procs):
            self.kill(component, signal.SIGTERM)

    def wait_healthy(self, base_url: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for component, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {component} exited: see {self.log_dir}")
            try:
                if httpx.get(f"{base_url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"the api-server did not answer within {timeout} s")


def api_client(base_url: str, user: str, password: str) -> httpx.Client:
    """A REST API v2 client with a JWT from the simple auth manager's token endpoint."""
    token = httpx.post(
        f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=30
    )
    token.raise_for_status()
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    return httpx.Client(base_url=base_url, headers=bearer, timeout=30)


def unpause_couponflow(api: httpx.Client) -> list[str]:
    """Unpause the DAGs tagged couponflow (`airflow dags test` registered them paused), so
    a triggered ingestion carries on through the Assets."""
    dags = api.get("/api/v2/dags", params={"tags": "couponflow", "paused": True}).json()["dags"]
    for found in dags:
        api.patch(f"/api/v2/dags/{found['dag_id']}", json={"is_paused": False}).raise_for_status()
    return [found["dag_id"] for found in dags]


def note_runs(ws: Workspace, api: httpx.Client, noted: set) -> None:
    """The day's decision as the note of each couponflow run that ended (the scheduler's
    runs; `couponflow run` notes its own). Never fatal: a note is for reading."""
    from couponflow.airflow_runs import note_finished_runs
    from couponflow.report import summary_path

    def summary_of(day: str) -> dict | None:
        path = summary_path(ws, day)
        return json.loads(path.read_text()) if path.exists() else None

    try:
        note_finished_runs(api, summary_of, DAG_IDS, noted)
    except (httpx.HTTPError, ValueError, KeyError) as failed:
        print(f"(could not note the runs: {failed!r})", flush=True)


def run_ui(ws: Workspace, port: int, user: str, password: str) -> None:
    """Migrate the metadata DB and run the three components until Ctrl-C. Nothing runs on
    a clock: the workspace's world is simulated, so runs are triggered from the UI (or
    `couponflow run`) for the dates the world has."""
    manual = {"COUPONFLOW_INGEST_SCHEDULE": "none", "COUPONFLOW_MODEL_DEADLINE": "none"}
    env = service_env(ws, port, {user: password}, manual)
    if airflow(ws, "db", "migrate", log=ws.root / "logs" / "airflow-db-migrate.log"):
        sys.exit("airflow db migrate failed: see logs/airflow-db-migrate.log")
    # runs of older `couponflow run`s recorded as started at their logical date
    subprocess.run([sys.executable, "-m", "couponflow.airflow_runs", "--repair"], env=env,
                   capture_output=True, check=False)  # fmt: skip
    services = AirflowServices(env, ws.root / "logs" / "airflow")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the components are in
        signal.signal(sig, signal.default_int_handler)  # other groups: stop them too
    try:
        for component in COMPONENTS:
            services.start(component)
        services.wait_healthy(env["AIRFLOW__API__BASE_URL"])
        api = api_client(env["AIRFLOW__API__BASE_URL"], user, password)
        unpause_couponflow(api)
        print(
            f"Airflow UI: {env['AIRFLOW__API__BASE_URL']}  (user {user}, password {password}); "
            f"workspace {ws.root}; logs {services.log_dir}. Ctrl-C stops it.",
            flush=True,
        )
        noted: set = set()
        polls = 0
        while all(proc.poll() is None for proc in services.procs.values()):
            time.sleep(2)
            polls += 1
            if polls % 5 == 0:  # every 10 s
                note_runs(ws, api, noted)
        print("a component exited; stopping the others", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
