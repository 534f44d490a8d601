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
from typing import Any

from couponflow.config import Workspace
from couponflow.workspace import commit
from serving import MODEL_FILES


def record_release(ws: Workspace, model_tag: str, bento_tag: str, reason: str) -> dict[str, Any]:
    """Make `model_tag` (served by `bento_tag`) the production release; returns the record.

    The weights in ws.models must be that model's: they become the champion.
    """
    version = model_tag.partition(":")[2]
    meta = json.loads((ws.models / "model.json").read_text())
    if meta["version"] != version:
        raise ValueError(f"{ws.models} holds model {meta['version']}, not the released {version}")
    record = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": version,
        "model_tag": model_tag,
        "bento_tag": bento_tag,
        "reason": reason,
    }
    ws.champion.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        _write_atomic(ws.champion / name, (ws.models / name).read_bytes())
    _write_atomic(ws.releases / "production.json", (json.dumps(record, indent=2) + "\n").encode())
    with open(ws.releases / "history.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    commit(ws, f"release {version}: {reason}")
    return record


def current_release(ws: Workspace) -> dict[str, Any] | None:
    """The production release, or None before the first one."""
    path = ws.releases / "production.json"
    return json.loads(path.read_text()) if path.exists() else None


def _write_atomic(target: Path, data: bytes) -> None:
    """Write `target` through a temporary file so readers never see half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
