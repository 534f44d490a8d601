"""The feedback loop's landing zone: every decision the service makes and every outcome a
downstream app reports about it, as JSON lines the next DAG run can read and join.

`data/landing/feedback/date=D/` holds `decisions-<host>-<pid>.jsonl` and
`events-<host>-<pid>.jsonl` (D is the policy's day of the decision; one file per worker
process, each line appended by one write, so readers never see half a line and workers never
interleave). The host is in the name because O_APPEND is atomic only on one machine, and
pods sharing the workspace over a network filesystem have the same small pids; files of
older versions, named by pid alone, are read all the same.

An index remembers each request id's decision, so an event can be checked against it, and
each (request id, event) pair, so a repeated event is acknowledged without being written
twice: SQLite in the workspace (`live/feedback.db`) on one machine, Redis (the spend
store's) when workers run on several. `open_feedback_index` picks one by
`serving.feedback_index`; `FeedbackLog` lands and indexes through either.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypedDict

import redis

from couponflow.config import RedisSettings, Workspace
from couponflow.landing import feedback_area
from couponflow.records import Forgotten
from serving.runtime.spend import (
    Connections,
    redis_client,
    redis_prefix,
    serving_state,
    store_timeout_s,
)

FEEDBACK_DB = "feedback.db"
PUSH_LOCK = "push.lock"  # held while a worker updates a user's counters online
RETENTION_DAYS = 7  # default `serving.feedback_retention_days`: later feedback is unknown
FORGET_BATCH = 10_000  # decisions forgotten per SQLite transaction (workers wait for it)
PUSH_LOCK_TTL_S = 10.0  # a Redis push lock frees itself after this if its worker dies
PUSH_LOCK_WAIT_S = 1.0  # longer queues for one user's lock skip the push (pushed: false)
EVENTS = ("shown", "redeemed", "purchased")
# This machine in landing file names: a pod's or container's hostname, kept to characters
# every filesystem takes.
HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
logger = logging.getLogger(__name__)


class UnknownRequest(LookupError):
    """Feedback named a request id this deployment never answered."""


class FeedbackUnavailable(RuntimeError):
    """The index or the landing zone failed (Redis down or slow, disk full): the event was
    neither landed nor indexed, so reporting it again later is safe."""


def landing_file(kind: str, pid: int | None = None) -> str:
    """The name of the file of the day's `kind` (decisions or events) one process appends to:
    `<kind>-<host>-<pid>.jsonl`, this process's unless `pid` says another on this host."""
    return f"{kind}-{HOST}-{os.getpid() if pid is None else pid}.jsonl"


@dataclass(frozen=True)
class Indexed:
    """What the index keeps of a decision: enough to join an outcome to it."""

    day: str
    at: str
    user_id: int
    policy_version: str
    coupon_ids: list[str]


class FeedbackIndex(Protocol):
    """Which request ids were answered (with their decision) and which of their events
    were landed, shared by every worker; and the lock under which one user's counters
    are updated online. Its context managers keep a write only if their body (landing
    the line) succeeds, so index and landing zone hold both or neither."""

    def indexed(self, request_id: str, decision: Indexed) -> AbstractContextManager[None]:
        """Index a decision for the body (raises if the request id is indexed already):
        kept when the body succeeds, removed when it raises."""
        ...

    def claimed(
        self, request_id: str, event: str
    ) -> AbstractContextManager[tuple[Indexed | None, bool]]:
        """The request's decision (None: never indexed) and whether `event` of it is new,
        claimed for the body: kept when the body succeeds, released when it raises.
        Concurrent claims of one event: exactly one is new."""
        ...

    def push_lock(self, user_id: int) -> AbstractContextManager[bool]:
        """Held while the user's counters are updated online, by one worker at a time of
        any process; False when it could not be had (the push is then skipped)."""
        ...

    def forget_before(self, day: str) -> int:
        """Forget the decisions of days before `day` and their events (feedback naming
        them is then unknown); how many were forgotten here."""
        ...


class SqliteIndex:
    """The index in a SQLite file of the workspace (`live/feedback.db`), on one machine:
    write transactions (`Connections.writing`, each waiting at most `timeout_s` for the
    lock) make each claim atomic across threads and processes, and an fcntl lock on
    `live/push.lock` serialises pushes."""

    def __init__(self, path: Path, push_lock: Path, timeout_s: float = 10.0) -> None:
        self.conn = Connections(path, timeout_s)
        self.push_lock_path = push_lock
        self.conn().executescript(
            "CREATE TABLE IF NOT EXISTS decisions (request_id TEXT PRIMARY KEY, day TEXT NOT "
            "NULL, at TEXT NOT NULL, user_id INTEGER NOT NULL, policy_version TEXT NOT NULL, "
            "offers TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS events (request_id TEXT NOT NULL, event TEXT NOT NULL, "
            "PRIMARY KEY (request_id, event));"
        )

    @contextmanager
    def indexed(self, request_id: str, decision: Indexed) -> Iterator[None]:
        with self.conn.writing() as conn:
            conn.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, decision.day, decision.at, decision.user_id,
                 decision.policy_version, json.dumps(decision.coupon_ids)),
            )  # fmt: skip
            yield

    @contextmanager
    def claimed(self, request_id: str, event: str) -> Iterator[tuple[Indexed | None, bool]]:
        # The write lock first, so two claims of one event cannot both be new.
        with self.conn.writing() as conn:
            found = conn.execute(
                "SELECT day, at, user_id, policy_version, offers FROM decisions "
                "WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if found is None:
                yield None, False
                return
            day, at, user_id, policy_version, offers = found
            inserted = conn.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?)", (request_id, event)
            ).rowcount
            yield Indexed(day, at, user_id, policy_version, json.loads(offers)), bool(inserted)

    @contextmanager
    def push_lock(self, user_id: int) -> Iterator[bool]:
        with open(self.push_lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield True

    def forget_before(self, day: str, batch: int = FORGET_BATCH) -> int:
        """`batch` decisions a transaction, so a worker indexing a decision waits for one
        batch at most. The oldest rows come first in the table, so finding a batch stops
        early; the reads run outside the write lock (WAL)."""
        conn, forgotten = self.conn(), 0
        while True:
            found = conn.execute(
                "SELECT request_id FROM decisions WHERE day < ? LIMIT ?", (day, batch)
            ).fetchall()
            if not found:
                return forgotten
            with self.conn.writing() as writing:
                writing.executemany("DELETE FROM events WHERE request_id = ?", found)
                writing.executemany("DELETE FROM decisions WHERE request_id = ?", found)
            forgotten += len(found)


# KEYS[1]: the request's hash; ARGV: the decision (JSON), the TTL. 0: indexed already.
_INDEX = """
if redis.call('HSETNX', KEYS[1], 'decision', ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS[1]: the request's hash; ARGV: the event's field. nil: no such decision; else the
# decision and 1 when the event is new. One script: the lookup and the claim are atomic,
# and an event never recreates the hash of a decision that has just expired.
_CLAIM = """
local decision = redis.call('HGET', KEYS[1], 'decision')
if not decision then return nil end
return {decision, redis.call('HSETNX', KEYS[1], ARGV[1], '1')}
"""


class RedisIndex:
    """The index in Redis, for workers on several machines: a hash per request id,
    `<prefix>:feedback:<request id>`, holding the decision and a field per landed event,
    expiring `retention_days` after the decision (feedback later than that is refused as
    unknown). Indexing is one script, a claim one more (HSETNX: exactly one claim of an
    event is new); a write whose line did not land is removed again. Pushes take a Redis
    lock per user, `<prefix>:push:<user id>`.

    Unlike SQLite's transaction, a claim is visible before its line lands: a repeat in
    that instant is acknowledged as one even if the line then fails (its first report got
    the error, and a retry lands it), and a worker killed between the two leaves the
    write without its line (a decision nothing joins to, an event lost).
    ~0.5 KB of Redis a decision, ~0.6 KB with three events (MEMORY USAGE)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        lock_wait_s: float = PUSH_LOCK_WAIT_S,
        retention_days: float = RETENTION_DAYS,
    ) -> None:
        self.client, self.prefix, self.lock_wait_s = client, prefix, lock_wait_s
        self.ttl_s = round(retention_days * 86_400)
        self._index = client.register_script(_INDEX)
        self._claim = client.register_script(_CLAIM)

    def key(self, request_id: str) -> str:
        return f"{self.prefix}:feedback:{request_id}"

    @contextmanager
    def indexed(self, request_id: str, decision: Indexed) -> Iterator[None]:
        key = self.key(request_id)
        if not self._index(keys=[key], args=[json.dumps(asdict(decision)), self.ttl_s]):
            raise ValueError(f"request id {request_id!r} is indexed already")
        with self._undone_on_error(lambda: self.client.delete(key), key):
            yield

    @contextmanager
    def claimed(self, request_id: str, event: str) -> Iterator[tuple[Indexed | None, bool]]:
        key, field = self.key(request_id), f"event:{event}"
        found = self._claim(keys=[key], args=[field])
        if found is None:
            yield None, False
            return
        decision, new = Indexed(**json.loads(found[0])), bool(found[1])
        if not new:
            yield decision, False
            return
        with self._undone_on_error(lambda: self.client.hdel(key, field), f"{key} {field}"):
            yield decision, True

    @contextmanager
    def push_lock(self, user_id: int) -> Iterator[bool]:
        lock = self.client.lock(
            f"{self.prefix}:push:{user_id}",
            timeout=PUSH_LOCK_TTL_S,
            blocking_timeout=self.lock_wait_s,
            sleep=0.01,
        )
        try:
            held = lock.acquire()
        except redis.RedisError as exc:
            logger.warning("push lock of user %s failed: %r", user_id, exc)
            held = False
        if not held:
            logger.warning("push lock of user %s not had: counters left to the batch", user_id)
            yield False
            return
        try:
            yield True
        finally:
            try:
                lock.release()
            except redis.RedisError as exc:  # expired (a push past PUSH_LOCK_TTL_S) or down
                logger.warning("push lock of user %s not released: %r", user_id, exc)

    def forget_before(self, day: str) -> int:
        """Nothing to do: each decision's key expires `retention_days` after it."""
        return 0

    @contextmanager
    def _undone_on_error(self, undo: Callable[[], object], what: str) -> Iterator[None]:
        """Run the body; if it raises, `undo` the write it depended on and re-raise."""
        try:
            yield
        except BaseException:
            try:
                undo()
            except redis.RedisError:  # the original error is the one to raise
                logger.exception("removing %s from the feedback index failed", what)
            raise


def open_feedback_index(ws: Workspace) -> SqliteIndex | RedisIndex:
    """The workspace's feedback index: `serving.feedback_index` sqlite (default, the
    workspace's `live/feedback.db`) or redis (the spend store's Redis and key prefix,
    `features.redis`), each waiting at most `serving.spend_timeout_s` (for SQLite's write
    lock, or a Redis call): a decision is indexed on the request's event loop, so a slow
    index must fail the decision (no offer) rather than hold every request of the worker."""
    kind = ws.params.get("serving", {}).get("feedback_index", "sqlite")
    if kind == "sqlite":
        live = serving_state(ws)
        return SqliteIndex(live / FEEDBACK_DB, live / PUSH_LOCK, store_timeout_s(ws))
    if kind == "redis":
        client = redis_client(RedisSettings.of(ws), store_timeout_s(ws))
        return RedisIndex(client, redis_prefix(ws), retention_days=retention_days(ws))
    raise ValueError(f"serving.feedback_index must be sqlite or redis, not {kind!r}")


def retention_days(ws: Workspace) -> int:
    """How long feedback on a decision is accepted: `serving.feedback_retention_days`."""
    return int(ws.params.get("serving", {}).get("feedback_retention_days", RETENTION_DAYS))


def forget_old_feedback(ws: Workspace, day: str) -> Forgotten:
    """The day's clean-up of the feedback index: forget decisions of days more than
    `serving.feedback_retention_days` before `day`, so the index does not grow forever.
    The landed lines stay in the landing zone; only feedback naming those decisions is
    refused from now on (404), on either index."""
    keep = retention_days(ws)
    before = (date.fromisoformat(day) - timedelta(days=keep)).isoformat()
    index = open_feedback_index(ws)
    return {"before": before, "forgotten": index.forget_before(before), "retention_days": keep}


class FeedbackEvent(TypedDict):
    """One outcome line of the landing zone, with its decision's user, day, time and coupons;
    what the service pushes to the online features (Recommender.push_outcome)."""

    time: str
    request_id: str
    event: str
    amount: float | None
    day: str
    at: str
    user_id: int
    policy_version: str
    coupon_ids: list[str]


class LandedEvent(FeedbackEvent):
    recorded: bool  # False: the same event was landed before


class FeedbackLog:
    """Decisions and outcome events of one workspace, safe across threads and processes:
    the lines land in the landing zone, the index (`open_feedback_index`, unless given)
    keeps which were landed."""

    def __init__(self, ws: Workspace, index: FeedbackIndex | None = None) -> None:
        self.area = feedback_area(ws)
        self.index = open_feedback_index(ws) if index is None else index

    def log_decision(self, decision: dict[str, Any]) -> None:
        """Land a decision (request_id, day, at, user_id, policy_version, offers, ...) and
        index it for the feedback that will name its request id: both or neither, so
        feedback is never accepted for a decision that did not land. Raises if it could not.
        Free-form past the keys read here: the answer as served with its request's context
        (serving.runtime.service), landed as it is.
        """
        indexed = Indexed(
            decision["day"],
            decision["at"],
            decision["user_id"],
            decision["policy_version"],
            [offer["coupon_id"] for offer in decision["offers"]],
        )
        with self.index.indexed(decision["request_id"], indexed):
            self._append(decision["day"], "decisions", {"time": _now(), **decision})

    def record_event(
        self,
        request_id: str,
        event: str,
        amount: float | None,
        on_recorded: Callable[[FeedbackEvent], None] | None = None,
    ) -> LandedEvent:
        """Land one outcome of a decision, once: returns the event with its decision's user,
        day, time (`at`) and coupons, and `recorded` (False when the same event was already
        landed); raises UnknownRequest, or FeedbackUnavailable when the index or the landing
        zone failed (nothing landed). `on_recorded(event)` runs for a new event once it is
        landed, under the index's push lock, so the updates it makes per user are never
        interleaved across workers; the claim on the event is held only to land it, as every
        decision of every worker needs the index too."""
        try:
            with self.index.claimed(request_id, event) as (found, new):
                if found is None:
                    raise UnknownRequest(request_id)
                row: FeedbackEvent = {
                    "time": _now(),
                    "request_id": request_id,
                    "event": event,
                    "amount": amount,
                    "day": found.day,
                    "at": found.at,
                    "user_id": found.user_id,
                    "policy_version": found.policy_version,
                    "coupon_ids": found.coupon_ids,
                }
                if new:
                    self._append(found.day, "events", row)
        except (redis.RedisError, sqlite3.Error, OSError) as exc:
            raise FeedbackUnavailable(f"{request_id} {event}: {exc!r}") from exc
        if new and on_recorded is not None:
            with self.index.push_lock(found.user_id) as held:
                if held:
                    on_recorded(row)
        return {**row, "recorded": new}

    def _append(self, day: str, kind: str, row: Mapping[str, object]) -> None:
        """Append one JSON line with a single write to this process's file of the day."""
        folder = self.area / f"date={day}"
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = os.open(folder / landing_file(kind), flags)
        except FileNotFoundError:  # the day's first line (a mkdir per line cost more)
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / landing_file(kind), flags)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
