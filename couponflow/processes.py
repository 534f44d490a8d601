"""Process groups: the bento servers, their front door and Airflow's components each run in
a session of their own, so a stop reaches every process they started. One place to
signal a group that may already be gone and to ask whether one still has members, and
to find a free local port or ask whether one is taken."""

from __future__ import annotations

import contextlib
import os
import signal
import socket

import psutil


def signal_group(pgid: int, sig: signal.Signals | int) -> None:
    """Signal a process group that may already be gone; never our own."""
    if pgid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether a member of the group still runs. A zombie does not count: it has exited
    and only waits to be reaped, and an orphan's reaper (PID 1) may take many seconds
    on a busy machine."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0
