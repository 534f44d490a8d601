"""The deployment's command-line verbs (`couponflow rollback`, `serve`, `stop`): each does
its job through `serving.deploy.deployment` and says in one line what happened; a refusal
exits non-zero with its reason, having changed nothing.
"""

from __future__ import annotations

import sys
import time

from couponflow.config import Workspace
from serving.deploy.deployment import (
    CandidateRefused,
    front_door,
    serve_production,
    stop_deployment,
)
from serving.deploy.deployment import roll_back as restore_previous
from serving.deploy.release import RollbackImpossible


def roll_back(ws: Workspace, reason: str) -> None:
    """Restore the previous release (traffic first, then its record and champion) and say
    what is live now."""
    started = time.monotonic()
    try:
        record = restore_previous(ws, reason)
    except (RollbackImpossible, CandidateRefused) as impossible:
        sys.exit(f"rollback refused: {impossible}")
    print(
        f"rolled back in {time.monotonic() - started:.1f} s: production is now model "
        f"{record['model_version']} served by {record['bento_tag']}"
    )


def serve(ws: Workspace) -> None:
    """Put the production release behind the front door (it keeps running: `stop`)."""
    try:
        record = serve_production(ws)
    except CandidateRefused as refused:
        sys.exit(f"not serving: {refused}")
    print(f"{record['live']['bento_tag']} live at {front_door(ws)}; `couponflow stop` stops it")


def stop(ws: Workspace) -> None:
    """Stop the front door and every server; say which were running."""
    stopped = stop_deployment(ws)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
