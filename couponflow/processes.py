"""Process groups: the bento servers, their front door and Airflow's components each run in
a session of their own, so a stop reaches every process they started. One place to
signal a group that may already be gone and to ask whether one still has members."""

from __future__ import annotations

import contextlib
import os
import signal


def signal_group(pgid: int, sig: signal.Signals | int) -> None:
    """Signal a process group that may already be gone; never our own."""
    if pgid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether the group still has a member (a zombie counts until it is reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
