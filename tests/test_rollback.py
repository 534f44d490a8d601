"""Rolling back: the release before the current one becomes production again, its model
becomes the champion, the history keeps every step, and an impossible rollback says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from couponflow.artefacts import MODEL_FILES, MODEL_NAME
from couponflow.cli import main
from couponflow.config import Workspace
from couponflow.workspace import init_workspace, run
from serving.deploy import bentoml_home
from serving.deploy.release import (
    RollbackImpossible,
    current_release,
    record_release,
    release_history,
    rollback,
)

pytestmark = pytest.mark.integration  # a git + DVC workspace and its BentoML store


def release(ws: Workspace, version: str) -> None:
    """Train-and-release stand-in: the model files in ws.models and in the workspace's
    BentoML store (where serving.deploy.bento.store_model puts them), then the release record."""
    stored = bentoml_home(ws) / "models" / MODEL_NAME / version
    for folder in (ws.models, stored):
        folder.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            (folder / name).write_text(json.dumps({"version": version, "file": name}))
    record_release(ws, f"{MODEL_NAME}:{version}", f"couponflow:{version}", "gate passed")


def champion_version(ws: Workspace) -> str:
    return json.loads((ws.champion / "model.json").read_text())["version"]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = init_workspace(tmp_path / "ws")
    for version in ("v1", "v2", "v3"):
        release(ws, version)
    return ws


def test_rollback_restores_the_previous_release_and_its_champion(ws: Workspace) -> None:
    record = rollback(ws, "conversion dropped")
    assert record["action"] == "rollback" and record["model_version"] == "v2"
    assert current_release(ws)["bento_tag"] == "couponflow:v2"
    assert champion_version(ws) == "v2"
    assert json.loads((ws.champion / "policy.json").read_text())["version"] == "v2"
    assert "rollback v2: conversion dropped" in run(["git", "log", "--format=%s"], ws.root)

    rollback(ws, "still bad")  # one release further back
    assert current_release(ws)["model_version"] == champion_version(ws) == "v1"
    assert [(h["action"], h["model_version"]) for h in release_history(ws)] == [
        ("release", "v1"),
        ("release", "v2"),
        ("release", "v3"),
        ("rollback", "v2"),
        ("rollback", "v1"),
    ]
    with pytest.raises(RollbackImpossible, match="no release before v1"):
        rollback(ws, "once more")
    assert current_release(ws)["model_version"] == "v1"


def test_a_rolled_back_release_is_never_returned_to(ws: Workspace) -> None:
    rollback(ws, "bad v3")
    release(ws, "v4")
    assert rollback(ws, "bad v4")["model_version"] == "v2"


def test_rollback_refuses_when_the_stored_model_is_gone(ws: Workspace) -> None:
    for name in MODEL_FILES:
        (bentoml_home(ws) / "models" / MODEL_NAME / "v2" / name).unlink()
    with pytest.raises(RollbackImpossible, match="lacks"):
        rollback(ws, "bad v3")
    assert current_release(ws)["model_version"] == champion_version(ws) == "v3"


def test_the_cli_rolls_back_or_says_why_not(tmp_path: Path, capsys) -> None:
    ws = init_workspace(tmp_path / "ws")
    with pytest.raises(SystemExit, match="nothing has been released yet"):
        main(["--workspace", str(ws.root), "rollback"])
    release(ws, "v1")
    release(ws, "v2")
    main(["--workspace", str(ws.root), "rollback", "--reason", "paged at 3am"])
    assert "production is now model v1 served by couponflow:v1" in capsys.readouterr().out
    assert current_release(ws)["reason"] == "paged at 3am"
