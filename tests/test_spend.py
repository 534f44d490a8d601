"""The shared spend counter: many threads and two processes racing for a small budget never
commit more than it, on SQLite and on Redis (127.0.0.1:6379, marked `redis`)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from couponflow.config import Workspace
from couponflow.policy import DaySpend, LocalSpend, SpendStore
from serving.runtime.feedback import Indexed, open_feedback_index
from serving.runtime.spend import (
    RedisSpend,
    SqliteSpend,
    open_spend,
    redis_client,
    redis_prefix,
    serving_state,
)
from tests.conftest import LOCAL_REDIS

DAY = "2026-01-07"
LIMIT = 10.0
COST = 0.7  # 14 of them fit in LIMIT; the 15th does not
ATTEMPTS = 40
Factory = Callable[[], SqliteSpend | RedisSpend]


def _race(make: Factory, attempts: int) -> int:
    """`attempts` adds from 8 threads; how many were accepted."""
    store = make()
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(lambda _: store.add(DAY, COST, LIMIT), range(attempts)))


def _race_in_child(make: Factory, out: multiprocessing.Queue) -> None:
    out.put(_race(make, ATTEMPTS))


def race_two_processes(make: Factory) -> int:
    """Two processes, each racing 8 threads: accepted adds in total."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding connections
    out: multiprocessing.Queue = ctx.Queue()
    children = [ctx.Process(target=_race_in_child, args=(make, out)) for _ in range(2)]
    for child in children:
        child.start()
    accepted = [out.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
    return sum(accepted)


class SqliteAt:
    """A picklable factory: each process opens its own connections to the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> SqliteSpend:
        return SqliteSpend(self.path)


class RedisAt:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self) -> RedisSpend:
        return RedisSpend(redis_client(LOCAL_REDIS), self.prefix)


def check_no_overspend(make: Factory, accepted: int) -> None:
    spent = make().read(DAY)
    assert accepted == int(LIMIT // COST)  # every fitting add was accepted, none more
    assert spent.cost == pytest.approx(accepted * COST) and spent.cost <= LIMIT + 1e-9
    assert spent.decisions == 2 * ATTEMPTS


@pytest.mark.integration  # two processes
def test_sqlite_threads_and_two_processes_never_overspend(tmp_path: Path) -> None:
    make = SqliteAt(tmp_path / "spend.db")
    make()  # the table exists before the children race to create it
    check_no_overspend(make, race_two_processes(make))


def test_sqlite_threads_alone_never_overspend(tmp_path: Path) -> None:
    make = SqliteAt(tmp_path / "spend.db")
    accepted = _race(make, 2 * ATTEMPTS)
    check_no_overspend(make, accepted)


def test_a_day_starts_empty_and_days_are_apart(tmp_path: Path) -> None:
    store = SqliteSpend(tmp_path / "spend.db")
    assert store.read(DAY).cost == 0.0 and store.read(DAY).decisions == 0
    assert store.add(DAY, 3.0, 3.0) and not store.add(DAY, 0.5, 3.0)
    assert store.add("2026-01-08", 3.0, 3.0)
    assert store.read(DAY).decisions == 2 and store.read("2026-01-08").cost == 3.0


def check_refund(store: SpendStore) -> None:
    """A refund frees the budget an accepted add took, keeps the decision counted and never
    takes a day below zero."""
    assert store.add(DAY, 3.0, 3.0) and not store.add(DAY, 1.0, 3.0)
    store.refund(DAY, 3.0)
    assert store.read(DAY) == DaySpend(0.0, 2)
    assert store.add(DAY, 3.0, 3.0)  # the budget is free again
    store.refund("2026-01-08", 1.0)  # a day nothing was added to stays empty
    assert store.read("2026-01-08").cost == 0.0


def test_a_refund_frees_the_budget_it_took(tmp_path: Path) -> None:
    check_refund(LocalSpend())
    check_refund(SqliteSpend(tmp_path / "spend.db"))


@pytest.mark.redis
def test_a_redis_refund_frees_the_budget_it_took(redis_prefix_clean: str) -> None:
    check_refund(RedisAt(redis_prefix_clean)())


@pytest.mark.redis
def test_redis_threads_and_two_processes_never_overspend(redis_prefix_clean: str) -> None:
    make = RedisAt(redis_prefix_clean)
    check_no_overspend(make, race_two_processes(make))


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection holding `path`'s write lock for `seconds`, from now."""
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    return holder


@pytest.mark.integration  # waits out held locks (seconds), timing-sensitive
def test_a_writer_waits_out_a_short_lock_and_gives_up_at_its_deadline(tmp_path: Path) -> None:
    """The stores every decision writes (the spend store and the SQLite feedback index) wait
    for another writer's lock, and fail once `serving.spend_timeout_s` has passed rather
    than hold the request's event loop for SQLite's default of seconds."""
    (tmp_path / "params.yaml").write_text("serving: {spend_timeout_s: 0.3}\n")
    ws = Workspace(tmp_path)
    spend, index = open_spend(ws), open_feedback_index(ws)
    decision = Indexed(DAY, f"{DAY}T12:00:00", 7, "v1", ["c1"])

    def index_decision(n: int) -> None:
        with index.indexed(f"r{n}", decision):
            pass

    writes = [
        (serving_state(ws) / "spend.db", lambda n: spend.add(DAY, 0.1, LIMIT)),
        (serving_state(ws) / "feedback.db", index_decision),
    ]
    for path, write in writes:
        holder = hold_write_lock(path, 0.1)
        started = time.monotonic()
        write(1)  # waits for the lock, then writes
        waited = time.monotonic() - started
        holder.join()
        assert 0.05 < waited < 0.3, (path, waited)
        holder = hold_write_lock(path, 1.5)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            write(2)
        assert 0.25 < time.monotonic() - started < 0.6, path
        holder.join()
    assert spend.read(DAY) == DaySpend(0.1, 1)


def test_open_spend_follows_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("serving: {}\n")
    ws = Workspace(tmp_path)
    assert isinstance(open_spend(ws), SqliteSpend)
    assert (tmp_path / "live" / "spend.db").exists()
    assert (tmp_path / "live" / ".gitignore").read_text() == "*\n"  # live state, not history
    ws.params["serving"]["spend_store"] = "redis"
    ws.params["features"] = {"redis": "127.0.0.1:6379", "project": "p1"}
    store = open_spend(ws)
    assert isinstance(store, RedisSpend) and store.prefix == redis_prefix(ws)
    other = tmp_path / "other"
    other.mkdir()
    (other / "params.yaml").write_text("features: {project: p1}\n")
    assert redis_prefix(ws) != redis_prefix(Workspace(other))  # same project, other place
    ws.params["serving"]["spend_store"] = "memcached"
    with pytest.raises(ValueError, match="sqlite or redis"):
        open_spend(ws)
