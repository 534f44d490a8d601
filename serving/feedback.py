"""The feedback loop's landing zone: every decision the service makes and every outcome a
downstream app reports about it, as JSON lines the next DAG run can read and join.

`data/landing/feedback/date=D/` holds `decisions-<host>-<pid>.jsonl` and
`events-<host>-<pid>.jsonl` (D is the policy's day of the decision; one file per worker
process, each line appended by one write, so readers never see half a line and workers never
interleave). The host is in the name because O_APPEND is atomic only on one machine, and
pods sharing the workspace over a network filesystem have the same small pids; files of
older versions, named by pid alone, are read all the same. An index in the
workspace (`live/feedback.db`, SQLite) remembers each request id's decision, so an
event can be checked against it, and each (request id, event) pair, so a repeated event
is acknowledged without being written twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from couponflow.config import Workspace
from couponflow.contract import COUPON_KINDS
from couponflow.features import USER_FEATURES, WINDOWS
from serving.spend import Connections, serving_state

FEEDBACK_DB = "feedback.db"
PUSH_LOCK = "push.lock"  # held while a worker updates a user's counters online
EVENTS = ("shown", "redeemed", "purchased")
# This machine in landing file names: a pod's or container's hostname, kept to characters
# every filesystem takes.
HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


class UnknownRequest(LookupError):
    """Feedback named a request id this deployment never answered."""


def feedback_area(ws: Workspace) -> Path:
    """Where decisions and outcome events land, by date."""
    return ws.landing / "feedback"


def landing_file(kind: str, pid: int | None = None) -> str:
    """The name of the file of the day's `kind` (decisions or events) one process appends to:
    `<kind>-<host>-<pid>.jsonl`, this process's unless `pid` says another on this host."""
    return f"{kind}-{HOST}-{os.getpid() if pid is None else pid}.jsonl"


class FeedbackLog:
    """Decisions and outcome events of one workspace, safe across threads and processes."""

    def __init__(self, ws: Workspace) -> None:
        self.area = feedback_area(ws)
        self.conn = Connections(serving_state(ws) / FEEDBACK_DB)
        self.push_lock = serving_state(ws) / PUSH_LOCK
        self.conn().executescript(
            "CREATE TABLE IF NOT EXISTS decisions (request_id TEXT PRIMARY KEY, day TEXT NOT "
            "NULL, at TEXT NOT NULL, user_id INTEGER NOT NULL, policy_version TEXT NOT NULL, "
            "offers TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS events (request_id TEXT NOT NULL, event TEXT NOT NULL, "
            "PRIMARY KEY (request_id, event));"
        )

    def log_decision(self, decision: dict[str, Any]) -> None:
        """Land a decision (request_id, day, at, user_id, policy_version, offers, ...) and
        index it for the feedback that will name its request id: both or neither, so
        feedback is never accepted for a decision that did not land. Raises if it could not.
        """
        offers = json.dumps([offer["coupon_id"] for offer in decision["offers"]])
        conn = self.conn()
        conn.execute("BEGIN")
        try:
            conn.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                (decision["request_id"], decision["day"], decision["at"], decision["user_id"],
                 decision["policy_version"], offers),
            )  # fmt: skip
            self._append(decision["day"], "decisions", {"time": _now(), **decision})
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def record_event(
        self,
        request_id: str,
        event: str,
        amount: float | None,
        on_recorded: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Land one outcome of a decision, once: returns the event with its decision's user,
        day, time (`at`) and coupons, and `recorded` (False when the same event was already
        landed). `on_recorded(event)` runs for a new event once it is landed, under the
        workspace's push lock, so the updates it makes per user are never interleaved
        across workers; the index's own write lock is held only to land the event, as
        every decision of every worker needs it too."""
        found = (
            self.conn()
            .execute(
                "SELECT day, at, user_id, policy_version, offers FROM decisions "
                "WHERE request_id = ?",
                (request_id,),
            )
            .fetchone()
        )
        if found is None:
            raise UnknownRequest(request_id)
        day, at, user_id, policy_version, offers = found
        row = {
            "time": _now(),
            "request_id": request_id,
            "event": event,
            "amount": amount,
            "day": day,
            "at": at,
            "user_id": user_id,
            "policy_version": policy_version,
            "coupon_ids": json.loads(offers),
        }
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?)", (request_id, event)
            ).rowcount
            if inserted:
                self._append(day, "events", row)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if inserted and on_recorded is not None:
            with open(self.push_lock, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                on_recorded(row)
        return {**row, "recorded": bool(inserted)}

    def _append(self, day: str, kind: str, row: dict[str, Any]) -> None:
        """Append one JSON line with a single write to this process's file of the day."""
        folder = self.area / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        fd = os.open(folder / landing_file(kind), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def read_feedback(ws: Workspace, day: str, kind: str) -> list[dict[str, Any]]:
    """Every landed `kind` (decisions or events) row of `day`, for the DAG and tests: every
    process's file, named by host and pid or (older versions) by pid alone."""
    folder = feedback_area(ws) / f"date={day}"
    return [
        json.loads(line)
        for path in sorted(folder.glob(f"{kind}-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def fresh_counters(
    features: np.ndarray, event: str, kinds: list[str], amount: float | None
) -> np.ndarray:
    """A user's feature row after one outcome, updated as couponflow.features computes it
    from the day's events: `shown` counts the decision's offers (`kinds`, one per coupon)
    in every window, `redeemed` one redemption (by kind only when a single coupon was
    offered: otherwise which one is unknown), `purchased` an order of `amount`; rates,
    the average basket and the recency follow."""
    out = np.asarray(features, dtype=np.float64).copy()
    at = {name: i for i, name in enumerate(USER_FEATURES)}

    def add(name: str, value: float) -> None:
        out[at[name]] += value

    used = {k: out[at[f"redemption_rate_{k}_30d"]] * max(out[at[f"offers_{k}_30d"]], 1.0)
            for k in COUPON_KINDS}  # fmt: skip
    for w in WINDOWS:
        if event == "shown":
            add(f"offers_{w}d", len(kinds))
        elif event == "redeemed":
            add(f"redemptions_{w}d", 1.0)
        elif event == "purchased":
            add(f"orders_{w}d", 1.0)
            add(f"spend_{w}d", amount or 0.0)
        out[at[f"redemption_rate_{w}d"]] = out[at[f"redemptions_{w}d"]] / max(
            out[at[f"offers_{w}d"]], 1.0
        )
    if event == "shown":
        for kind in kinds:
            add(f"offers_{kind}_30d", 1.0)
    elif event == "redeemed" and len(kinds) == 1:
        used[kinds[0]] += 1.0
    for k in COUPON_KINDS:
        out[at[f"redemption_rate_{k}_30d"]] = used[k] / max(out[at[f"offers_{k}_30d"]], 1.0)
    if event == "purchased":
        out[at["avg_basket_30d"]] = out[at["spend_30d"]] / max(out[at["orders_30d"]], 1.0)
        out[at["days_since_last_order"]] = 0.0
    return out.astype(np.float32)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
