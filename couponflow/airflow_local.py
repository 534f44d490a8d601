"""Airflow for one workspace: its home (an airflow.cfg of ours, holding no path) and
environment, derived from where the workspace is now; the Airflow CLI; and a day's DAGs
run in order under `airflow dags test`, a line per task as it ends (`couponflow run`).

Imported by the CLI and by couponflow.airflow_services (the long-running components);
Airflow itself only ever runs in the child processes started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from couponflow.config import HOME_ENV, PROJECT_ROOT, Workspace

# One day is these DAGs in order; under `airflow dags test` asset events trigger nothing,
# so the CLI runs each in turn for the day, as the scheduler would on the Assets' events.
DAG_IDS = ("coupon_ingest", "coupon_features", "coupon_retrain")


def airflow_env(ws: Workspace) -> dict[str, str]:
    """Environment for the Airflow CLI: metadata DB and logs inside the workspace, our DAGs,
    no examples, quiet. Every path is derived here, from where the workspace is now, never
    stored in it (`airflow_home`), so a moved or copied workspace runs where it is."""
    home = airflow_home(ws)
    derived = {  # a deployment's own setting (its PostgreSQL, say) wins
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(
            home / "logs" / "dag_processor"
        ),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
    }
    return {
        **derived,
        **os.environ,
        HOME_ENV: str(ws.root),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GX_ANALYTICS_ENABLED": "false",
        "FEAST_USAGE": "False",
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "True",
    }


AIRFLOW_CFG = """# couponflow: Airflow's settings for this workspace come from the environment
# (couponflow.airflow_local.airflow_env), derived from where the workspace is: no path is stored
# here, so the workspace can be moved or copied. Only its generated secrets are kept.
[core]
fernet_key = {fernet}

[api]
secret_key = {secret}

[api_auth]
jwt_secret = {jwt}
"""


def airflow_home(ws: Workspace) -> Path:
    """The workspace's AIRFLOW_HOME, with an airflow.cfg of ours (Airflow would write one
    holding the absolute paths of the folder it was made in)."""
    import base64
    import secrets

    home = ws.root / "airflow"
    cfg = home / "airflow.cfg"
    if not cfg.exists():
        home.mkdir(parents=True, exist_ok=True)
        fernet = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        secret, jwt = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        cfg.write_text(AIRFLOW_CFG.format(fernet=fernet, secret=secret, jwt=jwt))
    return home


def airflow(ws: Workspace, *args: str, log: Path | None = None) -> int:
    """Run the Airflow CLI for this workspace; output goes to `log` when given."""
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    if log is None:
        return subprocess.run(cmd, env=airflow_env(ws)).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        return subprocess.run(
            cmd, env=airflow_env(ws), stdout=fh, stderr=subprocess.STDOUT
        ).returncode


def run_days(ws: Workspace, days: list[str]) -> list[dict]:
    """Run the day's DAGs with `airflow dags test`, each day in turn, and return the run
    summaries. A DAG that fails ends the day: its summary says where and why."""
    from couponflow.report import summary_path

    if not (ws.root / "airflow" / "airflow.db").exists():
        airflow(ws, "db", "migrate", log=ws.root / "logs" / "airflow-db-migrate.log")
    summaries = []
    for day in days:
        started = time.monotonic()
        runs: list[dict[str, str]] = []
        for dag_id in DAG_IDS:
            log = ws.root / "logs" / f"{dag_id}-{day}.log"
            code = dags_test(ws, dag_id, day, log, runs)
            if code != 0:
                break
        fix_dag_runs(ws, runs)
        path = summary_path(ws, day)
        summary = json.loads(path.read_text()) if path.exists() else {"outcome": "no summary"}
        summary["airflow_exit_code"] = code
        summary["wall_seconds"] = round(time.monotonic() - started, 1)
        print(f"{day}: {summary['outcome']} ({summary['wall_seconds']} s, log {log})", flush=True)
        for reason in summary.get("rejection") or []:
            print(f"   - {reason}", flush=True)
        summaries.append(summary)
    return summaries


def run_and_check(ws: Workspace, days: list[str]) -> None:
    """`couponflow run`: run the days; exit non-zero naming each day that was rejected or
    failed (a refusal by the gate is a good outcome)."""
    from couponflow.report import failed_days

    failed = failed_days(run_days(ws, days))
    if failed:
        sys.exit(f"couponflow: {len(failed)} day(s) rejected or failed: {'; '.join(failed)}")


def dags_test(ws: Workspace, dag_id: str, day: str, log: Path, runs: list[dict]) -> int:
    """`airflow dags test` of `dag_id` for `day`, its output in `log` and a line per task
    as it ends; then each task's log where the UI reads it, and the run (with the day's
    summary for its note) appended to `runs` for `fix_dag_runs`. The exit code."""
    from couponflow.airflow_runs import Progress, run_note, write_task_logs
    from couponflow.report import summary_path

    cmd = [str(Path(sys.executable).parent / "airflow"), "dags", "test", dag_id, day]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = airflow_env(ws)
    progress = Progress()
    with open(log, "w") as out:
        process = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace",
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            if said := progress.feed(line):
                print(said, flush=True)
        code = process.wait()
    write_task_logs(progress.tasks, Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]))
    if progress.tasks:
        path = summary_path(ws, day)
        note = run_note(json.loads(path.read_text())) if path.exists() else ""
        runs.append({"dag_id": dag_id, "run_id": progress.tasks[0].run_id, "note": note})
    return code


def fix_dag_runs(ws: Workspace, runs: list[dict]) -> None:
    """The day's runs started when their first task did (`dags test` says at the logical
    date) and noted with the day's decision; a failure here costs the UI, not the day."""
    if not runs:
        return
    request = ws.root / "logs" / "dag-runs-to-fix.json"
    request.write_text(json.dumps(runs))
    done = subprocess.run(
        [sys.executable, "-m", "couponflow.airflow_runs", str(request)],
        env=airflow_env(ws), capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"   (the runs' notes and start times were not set: {done.stderr[-300:]})")
