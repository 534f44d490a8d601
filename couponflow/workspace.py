"""Create a workspace: its own params.yaml and dvc.yaml, a git + DVC project with a local
DVC remote, and the folders every room expects.

Keeping run-time state out of the project checkout means the demo, the tests and a
production deployment never tread on each other, and each is versioned on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from couponflow.config import (
    HOME_ENV,
    PROJECT_ROOT,
    Overrides,
    ParamsError,
    Workspace,
    check_params,
    checked_params,
    load_params,
    set_param,
)

GITIGNORE = "\n".join(
    ["/dvc-remote", "/bentoml", "/airflow", "/gx/uncommitted", "/feature_store", "/data/landing"]
    + ["/data/quarantine", "/logs", "/releases/champion/*.pt", ""]
)


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command, raising with the tail of its output on failure."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout[-1500:] + "\n" + done.stderr[-3000:]).strip()
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
    return done.stdout


def dvc(ws: Workspace, *args: str) -> str:
    """Run the DVC CLI of this interpreter's environment inside the workspace (its stages
    find `python` and the workspace through PATH and $COUPONFLOW_HOME). The project is on
    PYTHONPATH because a stage runs `python -m` in the workspace, whose `serving/` folder
    (the spend and feedback stores) would otherwise shadow the `serving` package: the
    editable install's finder comes after the namespace package Python makes of it."""
    pythonpath = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        HOME_ENV: str(ws.root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "DVC_NO_ANALYTICS": "1",
    }
    return run([sys.executable, "-m", "dvc", *args], ws.root, env)


class WorkspaceError(Exception):
    """A workspace cannot be created or used as asked; the message says what to do."""


def init_workspace(root: Path, overrides: Overrides | None = None) -> Workspace:
    """Create (or re-create the missing parts of) a workspace at `root`.

    The params are checked against the schema (`config.check_params`) before anything is
    written: a bad `--set` leaves no workspace behind. Overrides apply only when creating
    one: on an existing workspace they are refused (its params.yaml is the place to change
    them). Creating is all or nothing: when a step fails, what this call made is removed,
    so re-running starts clean."""
    root = root.resolve()
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{root} is a file, not a folder: pass --workspace a folder")
    ws = Workspace(root)
    if ws.params_file.exists():
        if overrides:
            keys = ", ".join(sorted(overrides))
            raise WorkspaceError(
                f"workspace {root} exists: --set ({keys}) applies only when creating one; "
                f"edit {ws.params_file} or init a new --workspace"
            )
        checked_params(ws.params_file, complete=True)
        return _create(ws, None)
    params = load_params(PROJECT_ROOT / "params.yaml")
    params["code_dir"] = str(PROJECT_ROOT)
    for key, value in (overrides or {}).items():
        set_param(params, key, value.isoformat() if isinstance(value, date) else value)
    problems = check_params(params)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ParamsError(f"--set: {problems[0]}{more}")
    fresh = not root.exists() or not any(root.iterdir())
    try:
        return _create(ws, params)
    except BaseException:
        if fresh:  # all or nothing: leave no half-built workspace
            shutil.rmtree(root, ignore_errors=True)
        raise


def _create(ws: Workspace, params: dict[str, Any] | None) -> Workspace:
    # `params`: the YAML to write (None: keep the workspace's), built free-form from the
    # template and the dotted `--set` overrides, any key and value; the caller checked it
    root = ws.root
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    for folder in (ws.landing, ws.offline, ws.features, ws.models, ws.metrics, ws.champion):
        folder.mkdir(parents=True, exist_ok=True)
    (ws.champion / ".keep").touch()
    if params is not None:
        tmp = ws.params_file.with_name("params.yaml.tmp")
        tmp.write_text(yaml.safe_dump(params, sort_keys=False))
        tmp.replace(ws.params_file)
    if not (root / ".git").exists():
        (root / ".gitignore").write_text(GITIGNORE)
        run(["git", "init", "-q", "-b", "main"], root)
        run(["git", "config", "user.email", "couponflow@localhost"], root)
        run(["git", "config", "user.name", "couponflow"], root)
    if not (root / ".dvc").exists():
        dvc(ws, "init", "-q")
        dvc(ws, "config", "core.autostage", "true")
        dvc(ws, "remote", "add", "-d", "-f", "local", "dvc-remote")  # relative: portable
        commit(ws, "workspace created")
    return ws


def commit(ws: Workspace, message: str) -> str:
    """Commit the workspace's versioned state (params, dvc.lock, metrics); returns the sha."""
    run(["git", "add", "-A"], ws.root)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], ws.root)
    return run(["git", "rev-parse", "--short", "HEAD"], ws.root).strip()
