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
from pathlib import Path
from typing import Any

import yaml

from couponflow.config import HOME_ENV, PROJECT_ROOT, Workspace, load_params, set_param

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


def init_workspace(root: Path, overrides: dict[str, Any] | None = None) -> Workspace:
    """Create (or re-create the missing parts of) a workspace at `root`."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    if not ws.params_file.exists():
        params = load_params(PROJECT_ROOT / "params.yaml")
        params["code_dir"] = str(PROJECT_ROOT)
        for key, value in (overrides or {}).items():
            set_param(params, key, value)
        ws.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copyfile(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    for folder in (ws.landing, ws.offline, ws.features, ws.models, ws.metrics, ws.champion):
        folder.mkdir(parents=True, exist_ok=True)
    (ws.champion / ".keep").touch()
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
