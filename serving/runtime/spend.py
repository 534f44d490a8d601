"""The day's coupon spend, shared by every worker: `couponflow.policy.SpendStore` backends
whose check-and-add is atomic across processes, so concurrent requests on any number of
workers never commit more than the day's budget.

SQLite (a file in the workspace) on one machine; Redis (a Lua script) when workers run on
several machines. `open_spend` picks one by `serving.spend_store`.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis

from couponflow.config import RedisSettings, Workspace
from couponflow.policy import DaySpend

SPEND_DB = "spend.db"
SPEND_TIMEOUT_S = 0.25  # default `serving.spend_timeout_s`
KEY_TTL_S = 3 * 86_400  # a day's counter outlives the day, then Redis forgets it
LOCK_RETRY_S = (50e-6, 1e-3)  # a writer waiting for the lock tries again after 50 µs, doubling


def serving_state(ws: Workspace) -> Path:
    """The workspace folder of the service's live state (spend, feedback index, the
    deployment record), `live/`: ignored by the workspace's git, which commits on every
    release while workers write here. Not `serving/`: stages run from the workspace root
    would import it in place of the serving package."""
    folder = ws.root / "live"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / ".gitignore").exists():
        (folder / ".gitignore").write_text("*\n")
    return folder


class Connections:
    """One SQLite connection per thread (a connection must not be shared mid-transaction):
    WAL so readers never wait for the writer, autocommit so each transaction is explicit,
    and a busy timeout so a statement waits its turn, at most `timeout_s`.

    Every write goes through `writing`, which waits for another writer's lock by trying
    again after 50 µs, then 100, 200, ... up to 1 ms. SQLite's own busy handler sleeps 1 ms
    at the first conflict, then 2, 5, 10 ms: two workers writing a decision each (~50 µs
    under the lock) met on ~1 % of decisions, and each such meeting cost a millisecond."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path, self.timeout_s = path, timeout_s
        self._local = threading.local()

    def __call__(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across crashes of the process
            self._local.conn = conn
        return conn

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock (BEGIN IMMEDIATE), so it is
        atomic across threads and processes: committed when the body succeeds, rolled back
        when it raises. Raises sqlite3.OperationalError when the lock stays taken for
        `timeout_s`."""
        conn = self()
        conn.execute("PRAGMA busy_timeout = 0")  # our retries wait, not SQLite's sleeps
        try:
            self._lock(conn)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {round(self.timeout_s * 1000)}")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _lock(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.timeout_s
        pause, longest = LOCK_RETRY_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, longest)


class SqliteSpend:
    """The day's spend in a SQLite file: `add` checks and adds in one write transaction
    (`Connections.writing`), so it is atomic across threads and processes."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = path
        self._conn = Connections(path, timeout_s)
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS spend "
            "(day TEXT PRIMARY KEY, cost REAL NOT NULL, decisions INTEGER NOT NULL)"
        )

    def read(self, day: str) -> DaySpend:
        row = (
            self._conn()
            .execute("SELECT cost, decisions FROM spend WHERE day = ?", (day,))
            .fetchone()
        )
        return DaySpend(*row) if row else DaySpend()

    def add(self, day: str, cost: float, limit: float) -> bool:
        with self._conn.writing() as conn:
            row = conn.execute("SELECT cost FROM spend WHERE day = ?", (day,)).fetchone()
            fits = (row[0] if row else 0.0) + cost <= limit
            conn.execute(
                "INSERT INTO spend (day, cost, decisions) VALUES (?, ?, 1) ON CONFLICT(day) "
                "DO UPDATE SET cost = cost + excluded.cost, decisions = decisions + 1",
                (day, cost if fits else 0.0),
            )
        return fits

    def refund(self, day: str, cost: float) -> None:
        with self._conn.writing() as conn:
            conn.execute("UPDATE spend SET cost = MAX(0.0, cost - ?) WHERE day = ?", (cost, day))


# KEYS[1]: the day's hash; ARGV: cost, limit, ttl. Redis runs a script atomically.
_ADD = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'cost') or '0')
local cost = tonumber(ARGV[1])
local fits = spent + cost <= tonumber(ARGV[2])
if fits then redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'decisions', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return fits and 1 or 0
"""

# KEYS[1]: the day's hash; ARGV: cost. Never below zero, never a key the day did not have.
_REFUND = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'cost') or '0')
local cost = tonumber(ARGV[1])
if spent <= 0 then return 0 end
if spent - cost <= 0 then redis.call('HSET', KEYS[1], 'cost', '0')
else redis.call('HINCRBYFLOAT', KEYS[1], 'cost', -cost) end
return 1
"""


class RedisSpend:
    """The day's spend in a Redis hash `<prefix>:spend:<day>`, checked and added by one
    Lua script (atomic on the server, one round trip)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self._add = client.register_script(_ADD)
        self._refund = client.register_script(_REFUND)

    def key(self, day: str) -> str:
        return f"{self.prefix}:spend:{day}"

    def read(self, day: str) -> DaySpend:
        # a synchronous client: a list, never an awaitable
        values = cast(list[Any], self.client.hmget(self.key(day), ["cost", "decisions"]))
        return DaySpend(float(values[0] or 0.0), int(values[1] or 0))

    def add(self, day: str, cost: float, limit: float) -> bool:
        return bool(self._add(keys=[self.key(day)], args=[repr(cost), repr(limit), KEY_TTL_S]))

    def refund(self, day: str, cost: float) -> None:
        self._refund(keys=[self.key(day)], args=[repr(cost)])


def redis_prefix(ws: Workspace) -> str:
    """Keys of one deployment: the Feast project and the workspace's path, so two
    workspaces sharing a Redis never share a budget."""
    project = ws.params.get("features", {}).get("project", "couponflow")
    where = hashlib.sha1(str(ws.root.resolve()).encode()).hexdigest()[:10]
    return f"couponflow:{project}:{where}"


def redis_client(where: RedisSettings, timeout_s: float = 1.0) -> redis.Redis:
    """A client that fails fast: a request must never hang on Redis."""
    return redis.Redis(
        host=where.host,
        port=where.port,
        password=where.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


def store_timeout_s(ws: Workspace) -> float:
    """How long a decision may wait for a store it writes on the request's event loop
    (the spend store, the feedback index): `serving.spend_timeout_s`."""
    return float(ws.params.get("serving", {}).get("spend_timeout_s", SPEND_TIMEOUT_S))


def open_spend(ws: Workspace) -> SqliteSpend | RedisSpend:
    """The workspace's spend store: `serving.spend_store` sqlite (default) or redis (at
    `features.redis`), each waiting at most `serving.spend_timeout_s`: a decision counts
    its spend on the request's event loop, so a slow store must fail the decision (no
    offer) rather than hold every request of the worker."""
    kind = ws.params.get("serving", {}).get("spend_store", "sqlite")
    timeout_s = store_timeout_s(ws)
    if kind == "sqlite":
        return SqliteSpend(serving_state(ws) / SPEND_DB, timeout_s)
    if kind == "redis":
        return RedisSpend(redis_client(RedisSettings.of(ws), timeout_s), redis_prefix(ws))
    raise ValueError(f"serving.spend_store must be sqlite or redis, not {kind!r}")
