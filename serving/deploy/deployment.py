"""The live deployment on one host, blue/green: a front door (serving.deploy.router) on
`serving.port` forwards every new connection to the live slot, a bento server on a port of
its own.

A roll-out starts the candidate beside the live server and checks it there (readiness,
golden requests, latency: serving.deploy.smoke) while shoppers still reach the live one; only a
candidate that passed takes traffic. The old live server stays up as the warm standby, so
rolling back to it is one switch, not a server start. Everything is in the deployment
record (`<ws>/live/deployment.json`), so the DAG's tasks, `couponflow rollback` and
`couponflow stop` act on the same servers from different processes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import httpx
import psutil

from couponflow.config import PROJECT_ROOT, Workspace
from couponflow.processes import free_port, listening
from couponflow.records import Answer, Refusal, Release, Slot, SwitchedRelease
from serving.deploy import bentoml_home
from serving.deploy.release import (
    current_release,
    record_release,
    rollback,
    rollback_target,
    write_atomic,
)
from serving.deploy.server import Server, ServerFailed, start_server
from serving.deploy.smoke import SmokeTestFailed, canary_checks
from serving.runtime.spend import serving_state

logger = logging.getLogger(__name__)
RECORD_FILE = "deployment.json"
SlotName = Literal["live", "standby", "candidate"]
SLOTS: tuple[SlotName, ...] = ("live", "standby", "candidate")
# The front door's module; a router started before serving/ was split runs under the old
# name, and is still ours to find and stop.
ROUTER_MODULES = ("serving.deploy.router", "serving.router")


class RouterHandle(TypedDict):
    """The front door's process, as the record keeps it."""

    pid: int
    port: int
    log: str
    since: str


class DeploymentRecord(TypedDict):
    """live/deployment.json: the front door and the slots (each None or a bento server),
    the last refusal and the last switch, if any. serving.deploy.router reads `live`."""

    router: RouterHandle | None
    live: Slot | None
    standby: Slot | None
    candidate: Slot | None
    last_refusal: NotRequired[Refusal]
    switched: NotRequired[str]


class Serving(TypedDict):
    """The record once `serve_production` has made sure the release takes traffic."""

    router: RouterHandle
    live: Slot
    standby: Slot | None
    candidate: Slot | None
    last_refusal: NotRequired[Refusal]
    switched: NotRequired[str]


class CandidateRefused(RuntimeError):
    """The candidate did not start or failed a check; the live release is unchanged."""


def record_path(ws: Workspace) -> Path:
    return serving_state(ws) / RECORD_FILE


def deployment_record(ws: Workspace) -> DeploymentRecord:
    """The router and the slots (`live`, `standby`, `candidate`: each None or a bento, its
    model and its server's handle), and the last refusal, if any."""
    path = record_path(ws)
    empty = {"router": None, "live": None, "standby": None, "candidate": None}
    stored = _logs_resolved(ws, json.loads(path.read_text())) if path.exists() else {}
    return cast(DeploymentRecord, {**empty, **stored})


def start_candidate(ws: Workspace, model_tag: str, bento_tag: str) -> Slot:
    """Serve `bento_tag` beside the live release on a free port and check it there. A
    candidate that passes stays up as the record's `candidate` for `switch_to_candidate`;
    one that fails is stopped, the refusal is recorded and CandidateRefused says why.
    Returns the checks' results."""
    record = deployment_record(ws)
    _stop_slot(record, "candidate")  # a candidate left by an interrupted run is stale
    started = time.monotonic()
    server: Server | None = None
    try:
        server = start_server(ws, bento_tag, free_port())
        ready_s = round(time.monotonic() - started, 1)
        checks = canary_checks(
            server.base_url, model_tag.partition(":")[2], ws.params["serving"]["rollout"]
        )
    except (ServerFailed, SmokeTestFailed) as failed:
        if server is not None:
            server.stop()
        refusal: Refusal = {"time": _now(), "bento_tag": bento_tag, "reason": str(failed)}
        _write(ws, {**record, "candidate": None, "last_refusal": refusal})
        raise CandidateRefused(f"{bento_tag} refused, the live release stays: {failed}") from None
    slot: Slot = {**_slot(model_tag, bento_tag, server), "ready_s": ready_s, "checks": checks}
    _write(ws, {**record, "candidate": slot})
    return slot


def switch_to_candidate(ws: Workspace, bento_tag: str, reason: str) -> SwitchedRelease:
    """Send traffic to the checked candidate `bento_tag` and record its release: the live
    server becomes the standby (the previous standby is stopped). Returns the release
    record with the front door's URL. Idempotent: when `bento_tag` is already live and
    released, nothing changes."""
    record = deployment_record(ws)
    candidate = record["candidate"]
    live, release = record["live"], current_release(ws)
    if candidate is None and live and live["bento_tag"] == bento_tag and _running(live):
        if release and release["bento_tag"] == bento_tag:
            return {**release, "url": front_door(ws), "checks": live.get("checks")}
        candidate = live  # switched, but the record was not written: finish the job
    elif candidate is None or candidate["bento_tag"] != bento_tag or not _running(candidate):
        raise CandidateRefused(f"{bento_tag} is not a checked, running candidate: check it first")
    else:
        _switch(ws, record, candidate)
    release = record_release(ws, candidate["model_tag"], candidate["bento_tag"], reason)
    return {**release, "url": front_door(ws), "checks": candidate["checks"]}


def roll_back(ws: Workspace, reason: str) -> Release:
    """Make the previous release production again: traffic first (the standby when it is
    that release, a freshly started and checked server otherwise), then the record. With
    nothing deployed on this host only the record changes. Returns the new record."""
    target = rollback_target(ws)  # RollbackImpossible before anything moves
    record = deployment_record(ws)
    if _router_running(record) and record["live"] is not None:
        standby = record["standby"]
        if standby and standby["bento_tag"] == target["bento_tag"] and _running(standby):
            _switch(ws, record, standby)
        else:
            start_candidate(ws, target["model_tag"], target["bento_tag"])
            record = deployment_record(ws)
            _switch(ws, record, _candidate(record))
    return rollback(ws, reason)


def serve_production(ws: Workspace) -> Serving:
    """Make sure the production release takes traffic behind the front door (after a
    restart of the host, or `couponflow stop`): start and check it if it is not live."""
    release = current_release(ws)
    if release is None:
        raise CandidateRefused("nothing has been released yet")
    record = deployment_record(ws)
    if not _router_running(record):
        _front_door_free(ws)  # at once: not after starting a server it could never front
    live = record["live"]
    if not (live and live["bento_tag"] == release["bento_tag"] and _running(live)):
        start_candidate(ws, release["model_tag"], release["bento_tag"])
        record = deployment_record(ws)
        _switch(ws, record, _candidate(record))
    elif not _router_running(record):
        _write(ws, {**record, "router": _start_router(ws)})
    return cast(Serving, deployment_record(ws))  # a router and a live slot, as just made sure


def stop_deployment(ws: Workspace) -> list[str]:
    """Stop the front door and every slot's server; what was stopped."""
    record = deployment_record(ws)
    stopped = [f"{slot} {held['bento_tag']}" for slot in SLOTS if (held := record[slot])]
    for slot in SLOTS:
        _stop_slot(record, slot)
    router = record["router"]
    if router is not None and _router_running(record):
        _terminate(router["pid"])
        stopped.append(f"router on port {router['port']}")
    _write(ws, {**record, "router": None, "live": None, "standby": None, "candidate": None})
    return stopped


class NotServing(RuntimeError):
    """No front door and live server answer for the workspace on this host."""


def ask_live(ws: Workspace, user_id: int = 0) -> Answer:
    """One answer of the deployment that is serving, through its front door, as a shopper's
    app would get it (a `golden` request: readers of the decision log can tell it apart).
    NotServing when nothing serves: starting a server just to answer would say nothing
    about the one shoppers reach."""
    record = deployment_record(ws)
    if not (_router_running(record) and record["live"] and _running(record["live"])):
        raise NotServing("nothing is serving: `couponflow serve` puts the release behind it")
    body = {
        "user_id": user_id,
        "k": int(ws.params["policy"]["k"]),
        "context": {"channel": "golden"},
    }
    try:
        response = httpx.post(f"{front_door(ws)}/recommend", json=body, timeout=10)
    except httpx.HTTPError as failed:
        raise NotServing(f"the front door {front_door(ws)} did not answer: {failed!r}") from None
    if response.status_code != 200:
        raise NotServing(f"the front door answered {response.status_code}: {response.text[:300]}")
    return response.json()


def front_door(ws: Workspace) -> str:
    """The URL downstream apps call."""
    cfg = ws.params["serving"]
    return f"http://{cfg['host']}:{cfg['port']}"


# -- the switch -----------------------------------------------------------------------------
def _switch(ws: Workspace, record: DeploymentRecord, new_live: Slot) -> None:
    """Point the front door at `new_live` and check the answer through it; the old live
    server becomes the standby, any other server is stopped."""
    try:
        router = record["router"] if _router_running(record) else _start_router(ws)
    except CandidateRefused:
        if record["candidate"] and record["candidate"]["bento_tag"] == new_live["bento_tag"]:
            _stop_slot(record, "candidate")  # nothing may stay running that no record shows
            _write(ws, {**record, "candidate": None})
        raise
    old_live = record["live"]
    for slot in ("standby", "candidate"):
        if record[slot] and record[slot] is not new_live and record[slot] != new_live:
            _stop_slot(record, slot)
    _write(ws, {**record, "router": router, "live": new_live, "standby": old_live,
                "candidate": None, "switched": _now()})  # fmt: skip
    _wait_for_version(front_door(ws), new_live["model_version"])


def _wait_for_version(url: str, version: str, timeout_s: float = 10.0) -> None:
    """Until a new connection through the front door is answered by `version`."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError, ValueError, KeyError):
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                body = {"user_id": 0, "context": {"channel": "golden"}}
                seen = httpx.post(f"{url}/recommend", json=body, timeout=5).json()["model_version"]
                if seen == version:
                    return
        time.sleep(0.1)
    raise CandidateRefused(f"the front door {url} still answers with {seen}, not {version}")


# -- the router and the slots ----------------------------------------------------------------
def _front_door_free(ws: Workspace) -> None:
    """CandidateRefused unless the front door's port is free for it to take."""
    cfg = ws.params["serving"]
    if listening(int(cfg["port"]), cfg["host"]):
        raise CandidateRefused(
            f"port {cfg['port']} (serving.port) on {cfg['host']} is taken by another process: "
            f"stop it, or set serving.port in {ws.params_file}"
        )


def _start_router(ws: Workspace) -> RouterHandle:
    """Start the front door on `serving.port`, in a session of its own so it outlives the
    task that started it."""
    cfg = ws.params["serving"]
    port = int(cfg["port"])
    _front_door_free(ws)
    log = bentoml_home(ws) / "logs" / "router.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", ROUTER_MODULES[0], "--port", str(port), "--host", cfg["host"],
           "--record", str(record_path(ws))]  # fmt: skip
    with open(log, "ab") as out:
        process = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 10.0
    while not listening(port, cfg["host"]):
        if process.poll() is not None or time.monotonic() > deadline:
            raise CandidateRefused(f"the router did not start on port {port}: see {log}")
        time.sleep(0.05)
    return {"pid": process.pid, "port": port, "log": str(log), "since": _now()}


def _router_running(record: DeploymentRecord) -> bool:
    router = record.get("router")
    if not router:
        return False
    try:
        proc = psutil.Process(router["pid"])
        alive = proc.status() != psutil.STATUS_ZOMBIE
        return alive and not set(ROUTER_MODULES).isdisjoint(proc.cmdline())
    except psutil.NoSuchProcess:
        return False


def _terminate(pid: int) -> None:
    with suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout=10)


def _slot(model_tag: str, bento_tag: str, server: Server) -> Slot:
    return {
        "bento_tag": bento_tag,
        "model_tag": model_tag,
        "model_version": model_tag.partition(":")[2],
        "port": server.port,
        "since": _now(),
        "server": server.handle(),
    }


def _candidate(record: DeploymentRecord) -> Slot:
    """The candidate `start_candidate` has just recorded."""
    if record["candidate"] is None:
        raise CandidateRefused("the started candidate is missing from the deployment record")
    return record["candidate"]


def _running(slot: Slot) -> bool:
    return Server.attach(slot["server"]).running()


def _stop_slot(record: DeploymentRecord, slot: SlotName) -> None:
    """Stop the server of `slot`, if any (the record is rewritten by the caller)."""
    if held := record[slot]:
        Server.attach(held["server"]).stop()


def _write(ws: Workspace, record: DeploymentRecord) -> None:
    """Replace the record in one step: the router never reads half of it. Its log paths
    are stored relative to the workspace (`deployment_record` resolves them)."""
    write_atomic(record_path(ws), (json.dumps(ws.relative(record), indent=2) + "\n").encode())


def _logs_resolved(ws: Workspace, part: Any) -> Any:
    """`part` of a stored record with each relative `log` path resolved in the workspace."""
    if isinstance(part, dict):
        return {
            key: str(ws.root / value)
            if key == "log" and isinstance(value, str) and not os.path.isabs(value)
            else _logs_resolved(ws, value)
            for key, value in part.items()
        }
    return part


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
