"""params.yaml has one typed schema, and the command line answers every mistake with one line
and a non-zero exit (issue 17): unknown keys with the nearest known one, wrong types and
values out of range named by their path, bad dates, `--set` on an existing workspace, a
workspace that is a file, `run` before `init`; `init` leaves nothing half-built; `run` exits
non-zero when a day was rejected or failed."""

from __future__ import annotations

import copy

import pytest
import yaml

from couponflow import airflow_local, cli
from couponflow.config import (
    PROJECT_ROOT,
    ParamsError,
    Workspace,
    check_params,
    load_params,
    params_notices,
)
from couponflow.workspace import WorkspaceError, init_workspace


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(load_params(PROJECT_ROOT / "params.yaml"))


def test_the_project_params_meet_the_schema(params) -> None:
    assert check_params(params) == []
    assert params_notices(params) == []  # the first DAG day after init is judged


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("world.n_user", 200, "unknown key `world.n_user` (did you mean `world.n_users`?)"),
        ("validation.trailing_dys", 3, "did you mean `validation.trailing_days`?"),
        ("world.n_users", "3k", "`world.n_users` is '3k', not an integer"),
        ("world.n_users", 400.5, "`world.n_users` is 400.5, not an integer"),
        ("world.history_days", 0, "`world.history_days` is 0, out of range: it must be at least 1"),
        ("world.start_date", "2026-02-30", "`world.start_date` is '2026-02-30', not a date"),
        ("policy.epsilon", 1.5, "`policy.epsilon` is 1.5, out of range"),
        ("features.online_store", "mysql", "must be one of sqlite, redis"),
        ("features.engine", "spark", "`features.engine` is 'spark': it must be one of local, ray"),
        ("features.ray_cpus", 0, "`features.ray_cpus` is 0, out of range"),
        ("features.ray_address", "head", "`features.ray_address` is 'head': write auto"),
        ("features.ray_address", 10001, "`features.ray_address` is 10001, not a string"),
        ("model.lr", True, "`model.lr` is True, not a number"),
        ("validation.tolerance.volume.warning", -1, "out of range"),
        ("gate", 3, "`gate` is 3, not a section"),
        ("world.seed", None, "`world.seed` is empty (null)"),
    ],
)
def test_a_broken_key_is_named_with_what_to_do(params, path, value, expected) -> None:
    *parents, leaf = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value

    problems = check_params(params)

    assert len(problems) == 1 and expected in problems[0], problems


def test_nullable_keys_and_dates_as_yaml_dates_pass(params) -> None:
    import datetime as dt

    params["world"]["drift"]["price_shock_date"] = dt.date(2026, 2, 1)
    params["model"]["processes"] = 2
    params["evaluation"]["population_sample"] = None
    params["model"]["check_rows"] = None  # checks once an epoch
    params["validation"]["reference_from"] = "2026-01-10"
    params["gate"]["max_ece"] = 1  # an int where a float is expected
    assert check_params(params) == []


def test_missing_keys_are_refused_only_when_complete(params) -> None:
    del params["validation"]["reference_days"]
    assert check_params(params, complete=False) == []
    (problem,) = check_params(params)
    assert problem.startswith("`validation.reference_days` is missing: copy it from")


def test_rules_between_keys(params) -> None:
    params["validation"]["min_trailing_days"] = 20
    params["world"]["history_days"] = 3
    assert any("min_trailing_days` is above" in p for p in check_params(params))
    params["validation"]["min_trailing_days"] = 5
    (notice,) = params_notices(params)
    assert "will not be judged" in notice


def test_a_misspelt_validation_key_fails_at_the_task_start_not_deep_in_it(tmp_path, params):
    params["validation"]["min_row"] = params["validation"].pop("min_rows")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    with pytest.raises(ParamsError, match=r"unknown key `validation.min_row` \(did you mean"):
        Workspace(tmp_path).params  # noqa: B018 - what every task reads first


# -- the command line ---------------------------------------------------------------------------
def one_line_error(capsys, argv: list[str], code: int | None = None) -> str:
    """The one line `main` ends with; `code`: the process's exit status (sys.exit of a
    message exits 1)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    raised = exit_.value.code
    status, err = (1, raised) if isinstance(raised, str) else (raised, capsys.readouterr().err)
    assert status not in (0, None)
    if code is not None:
        assert status == code
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["init", "--set", "world.n_users"], "write KEY=VALUE"),
        (["init", "--set", "world.n_users=3k"], "`world.n_users` is '3k', not an integer"),
        (["init", "--set", "world.n_user=200"], "did you mean `world.n_users`?"),
        (["init", "--set", "world.history_days=0"], "it must be at least 1"),
        (["init", "--set", "world.start_date=2026-02-30"], "not a date: write it as YYYY-MM-DD"),
        (["run", "2026-01-08"], "no workspace at"),
        (["status"], "create it with `couponflow init` first"),
    ],
)
def test_bad_command_lines_are_one_line_and_leave_no_workspace(tmp_path, capsys, args, expected):
    root = tmp_path / "ws"

    line = one_line_error(capsys, ["--workspace", str(root), *args])

    assert expected in line
    assert not root.exists()  # nothing half-built to mend


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--next", "-1"], "--next: -1 days: give at least 1"),
        (["run", "--next", "two"], "is not a whole number"),
        (["run", "2026-13-01"], "'2026-13-01' is not a date"),
    ],
)
def test_bad_run_arguments(tmp_path, capsys, args, expected) -> None:
    line = one_line_error(capsys, ["--workspace", str(tmp_path), *args], code=2)
    assert expected in line


def test_a_workspace_that_is_a_file(tmp_path, capsys) -> None:
    path = tmp_path / "ws"
    path.write_text("not a folder")
    line = one_line_error(capsys, ["--workspace", str(path), "status"])
    assert "is a file, not a folder" in line


def fake_workspace(root) -> None:
    """A params.yaml is what makes a folder a workspace to the command line."""
    root.mkdir()
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())


def test_init_set_on_an_existing_workspace_is_refused(tmp_path, capsys) -> None:
    root = tmp_path / "ws"
    fake_workspace(root)
    before = (root / "params.yaml").read_text()

    line = one_line_error(capsys, ["--workspace", str(root), "init", "--set", "world.n_users=9"])

    assert "exists: --set (world.n_users) applies only when creating one" in line
    assert (root / "params.yaml").read_text() == before
    with pytest.raises(WorkspaceError):
        init_workspace(root, {"world.n_users": 9})


def test_init_leaves_nothing_when_a_step_fails(tmp_path, monkeypatch) -> None:
    import couponflow.workspace as workspace

    def broken(*args, **kwargs):
        raise RuntimeError("dvc is not installed")

    monkeypatch.setattr(workspace, "dvc", broken)
    root = tmp_path / "ws"

    with pytest.raises(RuntimeError, match="dvc"):
        init_workspace(root, {"world.n_users": 200})

    assert not root.exists()


def test_run_exits_non_zero_naming_the_rejected_days(tmp_path, capsys, monkeypatch) -> None:
    root = tmp_path / "ws"
    fake_workspace(root)
    summaries = [
        {"day": "2026-01-08", "outcome": "released", "airflow_exit_code": 0},
        {"day": "2026-01-09", "outcome": "batch rejected by validation", "airflow_exit_code": 1},
        {"day": "2026-01-10", "outcome": "refused by gate", "airflow_exit_code": 0},
    ]
    monkeypatch.setattr(airflow_local, "run_days", lambda ws, days: summaries[: len(days)])

    line = one_line_error(
        capsys, ["--workspace", str(root), "run", "2026-01-08", "2026-01-09", "2026-01-10"], 1
    )

    assert (
        line == "couponflow: 1 day(s) rejected or failed: 2026-01-09: batch rejected by validation"
    )
    monkeypatch.setattr(airflow_local, "run_days", lambda ws, days: [summaries[0]])
    cli.main(["--workspace", str(root), "run", "2026-01-08"])  # all released: exit 0
