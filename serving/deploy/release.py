"""The release record: which model and bento are in production, and why.

`production.json` names the live release, `history.jsonl` keeps every release in order
(the trail a rollback reads), and the champion folder gets the released weights so the
next evaluation compares the challenger against what shoppers actually get.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from couponflow.artefacts import MODEL_FILES, MODEL_RECORD
from couponflow.config import Workspace
from couponflow.records import Release
from couponflow.workspace import commit
from serving.deploy import bentoml_home


def record_release(ws: Workspace, model_tag: str, bento_tag: str, reason: str) -> Release:
    """Make `model_tag` (served by `bento_tag`) the production release; returns the record.

    The weights in ws.models must be that model's: they become the champion.
    """
    version = model_tag.partition(":")[2]
    meta = json.loads((ws.models / MODEL_RECORD).read_text())
    if meta["version"] != version:
        raise ValueError(f"{ws.models} holds model {meta['version']}, not the released {version}")
    return _make_production(ws, model_tag, bento_tag, "release", reason, ws.models)


def rollback_target(ws: Workspace) -> Release:
    """The release a rollback returns to: the one live before the current one (a release
    already rolled back from is never returned to). RollbackImpossible when there is none
    or its model is gone from the workspace's BentoML store."""
    if current_release(ws) is None:
        raise RollbackImpossible("nothing has been released yet")
    live: list[Release] = []  # the releases a rollback can return to, newest last
    for record in release_history(ws):
        if record.get("action", "release") == "rollback":
            live.pop()
        else:
            live.append(record)
    if len(live) < 2:
        raise RollbackImpossible(f"no release before {live[-1]['model_version']}")
    target = live[-2]
    stored = _stored(ws, target)
    missing = [f for f in MODEL_FILES if not (stored / f).exists()]
    if missing:
        raise RollbackImpossible(f"{target['model_tag']} lacks {missing} in {stored.parent}")
    return target


def rollback(ws: Workspace, reason: str) -> Release:
    """Record the `rollback_target` as production again, with its model files (from the
    workspace's BentoML store, where every released model lives) as the champion, so the
    next evaluation compares against what shoppers get. Rolling back again goes one
    release further back. Returns the new record; serving.deploy.deployment moves the traffic."""
    target = rollback_target(ws)
    return _make_production(
        ws, target["model_tag"], target["bento_tag"], "rollback", reason, _stored(ws, target)
    )


def _stored(ws: Workspace, release: Release) -> Path:
    """Where the workspace's BentoML store keeps a release's model files."""
    name, _, version = release["model_tag"].partition(":")
    return bentoml_home(ws) / "models" / name / version


class RollbackImpossible(RuntimeError):
    """There is no earlier release to go back to, or its model is gone from the store."""


def _make_production(
    ws: Workspace, model_tag: str, bento_tag: str, action: str, reason: str, files: Path
) -> Release:
    """Record `model_tag` (served by `bento_tag`) as production, copy its model files from
    `files` to the champion, append the history and commit the workspace."""
    version = model_tag.partition(":")[2]
    record: Release = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "model_version": version,
        "model_tag": model_tag,
        "bento_tag": bento_tag,
        "reason": reason,
    }
    ws.champion.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        write_atomic(ws.champion / name, (files / name).read_bytes())
    write_atomic(ws.releases / "production.json", (json.dumps(record, indent=2) + "\n").encode())
    with open(ws.releases / "history.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    commit(ws, f"{action} {version}: {reason}")
    return record


def release_history(ws: Workspace) -> list[Release]:
    """Every release and rollback, oldest first."""
    path = ws.releases / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def current_release(ws: Workspace) -> Release | None:
    """The production release, or None before the first one."""
    path = ws.releases / "production.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_atomic(target: Path, data: bytes) -> None:
    """Write `target` through a temporary file so readers never see half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
