"""A workspace is not tied to the folder it was made in (issue #18): one day is run, the
workspace is moved, and the next day runs where it is now, writing nothing at the old
place. No text file of the workspace names its absolute path, after `init`, after a day
that released a model, and after the move and another day: every record names the
workspace's files relative to it (`Workspace.relative`), and the tools keep none
(Airflow's settings, the DVC remote, BentoML's links)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from couponflow.airflow_local import airflow_env, run_days
from couponflow.config import HOME_ENV, Workspace
from couponflow.landing import next_days
from couponflow.processes import free_port
from couponflow.seeding import seed_history
from couponflow.workspace import init_workspace
from tests.conftest import GATE_OPEN, TINY_WORLD

pytestmark = pytest.mark.e2e

# The only text files that may name the workspace's absolute path, and why. Nothing reads
# either back: each is rewritten where the workspace is at the next use.
UNAVOIDABLE = {
    # Airflow logs its metadata database's URL, which it requires absolute for SQLite
    # (a relative sqlite:/// URL is refused); couponflow derives it from where the workspace
    # is at every start (couponflow.airflow_local.airflow_env) and stores it nowhere.
    "logs/airflow-db-migrate.log",
}


def files_naming(root: Path, needle: str, since: float = 0.0) -> list[str]:
    """The text files under `root` (changed after `since`) whose contents name `needle`,
    relative to `root`: every file but binary ones (a NUL byte: SQLite, parquet, git's
    packed objects, pickles), whatever its name, the workspace's git folder included."""
    found = []
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.stat().st_mtime < since:
            continue
        data = path.read_bytes()
        if b"\0" not in data and needle.encode() in data:
            found.append(str(path.relative_to(root)))
    return sorted(found)


def stored_paths(root: Path, needle: str | None = None) -> list[str]:
    """What `files_naming` finds of `needle` (the root's own path) beyond UNAVOIDABLE."""
    return [f for f in files_naming(root, needle or str(root)) if f not in UNAVOIDABLE]


def test_a_moved_workspace_runs_its_next_day_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.deploy.deployment import stop_deployment

    old = tmp_path / "made-here" / "ws"
    ws = init_workspace(old, {**TINY_WORLD, **GATE_OPEN, "serving.port": free_port()})
    assert stored_paths(old) == []
    monkeypatch.setenv(HOME_ENV, str(ws.root))
    seed_history(ws)
    try:
        (first,) = run_days(ws, next_days(ws, 1))
    finally:
        stop_deployment(ws)  # the release's servers: a workspace is moved stopped
    assert first["airflow_exit_code"] == 0, first
    assert first["outcome"] == "released", first["outcome"]  # its records hold the most

    # what the tools keep names no absolute path of the workspace; nor does anything else
    assert str(old) not in (old / "airflow" / "airflow.cfg").read_text()
    assert str(old) not in (old / ".dvc" / "config").read_text()
    for link in (old / "bentoml").rglob("*"):
        if link.is_symlink():
            assert not os.path.isabs(os.readlink(link)), link
    assert stored_paths(old) == []

    new = tmp_path / "moved-there" / "ws"
    new.parent.mkdir()
    shutil.move(old, new)
    moved = time.time()
    moved_ws = Workspace(new)
    monkeypatch.setenv(HOME_ENV, str(new))
    env = airflow_env(moved_ws)
    assert str(new) in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    try:
        (second,) = run_days(moved_ws, next_days(moved_ws, 1))
    finally:
        stop_deployment(moved_ws)
    assert second["airflow_exit_code"] == 0, second
    assert second["day"] > first["day"]
    assert second["outcome"] in ("released", "refused by gate"), second["outcome"]
    assert not old.exists(), "something wrote into the workspace's old folder"
    assert files_naming(new, str(old), moved) == []  # nothing written since names it
    assert stored_paths(new) == [] and stored_paths(new, str(old)) == []
    assert (new / "airflow" / "logs").is_dir()
    assert_readable_in_the_ui(new, second["day"])


def assert_readable_in_the_ui(root: Path, day: str) -> None:
    """What `couponflow run` adds to its `airflow dags test` runs (issue #18): each run
    started when it did, not at its logical date, noted with the day's decision, and the
    `summary` task's log where the UI reads it."""
    import sqlite3

    with sqlite3.connect(root / "airflow" / "airflow.db") as db:
        runs = db.execute(
            "select dag_id, run_id, start_date, run_after, end_date, content from dag_run"
            " left join dag_run_note on dag_run_note.dag_run_id = dag_run.id"
            " where logical_date like ?",
            (f"{day}%",),
        ).fetchall()
    assert {dag_id for dag_id, *_ in runs} == {"coupon_ingest", "coupon_features", "coupon_retrain"}
    for dag_id, run_id, start, run_after, end, note in runs:
        assert start >= run_after[:19] and start <= end, (dag_id, start, run_after, end)
        assert note and note.startswith(day), (dag_id, note)
        log = (
            root / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
            / "task_id=summary" / "attempt=1.log"
        )  # fmt: skip
        assert f"# couponflow {day}" in log.read_text(), log
