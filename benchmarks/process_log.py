"""Per-process exit records for benchmarks that time work done in child processes.

A `sitecustomize` put first on a child's PYTHONPATH makes every Python process under it
(a DAG task, a `dvc repro` stage, a DVC stage's own children) append one JSON line when it
exits: its command, start and end times and peak resident memory. Nothing in the pipeline's
code changes to be measured. VmHWM is the process's own peak: unlike ru_maxrss it does not
inherit the parent's peak across fork + exec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypedDict

from couponflow.config import PROJECT_ROOT

PROCESS_LOG_ENV = "BENCH_PROCESS_LOG"
SITECUSTOMIZE = """\
import atexit, json, os, re, sys, time

_started = time.time()


def _record():
    with open("/proc/self/status") as status:
        peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))
    line = {"pid": os.getpid(), "argv": sys.argv, "start": _started, "end": time.time(),
            "rss_mb": peak_kb / 1024}
    with open(os.environ["BENCH_PROCESS_LOG"], "a") as fh:
        fh.write(json.dumps(line) + "\\n")


if os.environ.get("BENCH_PROCESS_LOG"):
    atexit.register(_record)
"""


class ProcessExit(TypedDict):
    """One line of the log: a Python process that exited."""

    pid: int
    argv: list[str]
    start: float
    end: float
    rss_mb: float


def hooked_env(
    env: dict[str, str], hooks: Path, log: Path, code: Path = PROJECT_ROOT
) -> dict[str, str]:
    """`env` with the hook written into `hooks` and first on PYTHONPATH, the tree of `code`
    after it (children run benchmarks as `-m benchmarks.<name>`), and exits logged to `log`."""
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log.touch()
    path = [str(hooks), str(code), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path), PROCESS_LOG_ENV: str(log)}


def exits_between(log: Path, started: float, ended: float) -> list[ProcessExit]:
    """The processes logged in `log` that started and ended within [started, ended]."""
    lines = log.read_text().splitlines() if log.exists() else []
    records: list[ProcessExit] = [json.loads(line) for line in lines]
    return [r for r in records if r["start"] >= started and r["end"] <= ended]
