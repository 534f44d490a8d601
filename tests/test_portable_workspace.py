"""A workspace is not tied to the folder it was made in (issue #18): one day is run, the
workspace is moved, and the next day runs where it is now, writing nothing at the old
place; what the tools keep (Airflow's settings, the DVC remote, BentoML's links) holds
no absolute path of it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from couponflow.cli import airflow_env, next_days, run_days, seed_history
from couponflow.config import HOME_ENV, Workspace
from couponflow.workspace import init_workspace
from tests.conftest import TINY_WORLD

pytestmark = pytest.mark.e2e

# Where a path of the workspace may still be written after a move, and why (the run
# summaries, validation reports and their XComs are written by couponflow/report.py,
# training/* and expectations/validate.py, which name the files they wrote as absolute
# paths: the new place, never the old one).
TEXT_SUFFIXES = {".json", ".md", ".yaml", ".yml", ".cfg", ".lock", ".txt", ".log", ""}


def files_naming(root: Path, needle: str, since: float) -> list[Path]:
    """Files under `root` changed after `since` whose text contains `needle`."""
    found = []
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or ".git" in path.parts:
            continue
        if path.stat().st_mtime < since or path.suffix not in TEXT_SUFFIXES:
            continue
        if needle in path.read_text(errors="replace"):
            found.append(path)
    return found


def test_a_moved_workspace_runs_its_next_day_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "made-here" / "ws"
    ws = init_workspace(old, dict(TINY_WORLD))
    monkeypatch.setenv(HOME_ENV, str(ws.root))
    seed_history(ws)
    (first,) = run_days(ws, next_days(ws, 1))
    assert first["airflow_exit_code"] == 0, first

    # what the tools keep names no absolute path of the workspace
    assert str(old) not in (old / "airflow" / "airflow.cfg").read_text()
    assert str(old) not in (old / ".dvc" / "config").read_text()
    for link in (old / "bentoml").rglob("*"):
        if link.is_symlink():
            assert not os.path.isabs(os.readlink(link)), link

    new = tmp_path / "moved-there" / "ws"
    new.parent.mkdir()
    shutil.move(old, new)
    moved = time.time()
    moved_ws = Workspace(new)
    monkeypatch.setenv(HOME_ENV, str(new))
    env = airflow_env(moved_ws)
    assert str(new) in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    (second,) = run_days(moved_ws, next_days(moved_ws, 1))
    assert second["airflow_exit_code"] == 0, second
    assert second["day"] > first["day"]
    assert second["outcome"] in ("released", "refused by gate"), second["outcome"]
    assert not old.exists(), "something wrote into the workspace's old folder"
    assert files_naming(new, str(old), moved) == []  # nothing written since names it
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
