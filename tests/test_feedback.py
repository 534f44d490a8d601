"""The feedback landing zone without a server, on either index (SQLite, and Redis on
127.0.0.1:6379, marked `redis`): decisions are landed and indexed both or neither, an event
of an unknown request is refused, the same event reported many times, by threads of two
processes at once, is landed exactly once and pushed under a lock no two pushes share, and
each host's processes append to files of their own."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from couponflow.config import RedisSettings, Workspace
from couponflow.landing import feedback_area, read_feedback
from serving.runtime.feedback import (
    EVENTS,
    FEEDBACK_DB,
    PUSH_LOCK,
    PUSH_LOCK_WAIT_S,
    RETENTION_DAYS,
    FeedbackLog,
    FeedbackUnavailable,
    RedisIndex,
    SqliteIndex,
    UnknownRequest,
    forget_old_feedback,
    landing_file,
    open_feedback_index,
)
from serving.runtime.spend import redis_client, redis_prefix
from tests.conftest import LOCAL_REDIS

DAY = "2026-01-05"
Factory = Callable[[], SqliteIndex | RedisIndex]


def decision(request_id: str, user_id: int = 7, day: str = DAY) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "day": day,
        "at": f"{day}T10:00:00",
        "user_id": user_id,
        "policy_version": "v1-eps0.05-lambda0.1",
        "offers": [{"coupon_id": "C001", "propensity": 0.96}],
    }


class SqliteAt:
    """A picklable factory: each process opens its own connections to the workspace's file."""

    def __init__(self, root: Path) -> None:
        self.live = root / "live"

    def __call__(self) -> SqliteIndex:
        self.live.mkdir(exist_ok=True)
        return SqliteIndex(self.live / FEEDBACK_DB, self.live / PUSH_LOCK)


class RedisAt:
    def __init__(self, prefix: str, lock_wait_s: float = PUSH_LOCK_WAIT_S) -> None:
        self.prefix, self.lock_wait_s = prefix, lock_wait_s

    def __call__(self) -> RedisIndex:
        return RedisIndex(redis_client(LOCAL_REDIS), self.prefix, self.lock_wait_s)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Each index in turn, over the test's workspace `tmp_path` (Redis: keys under a prefix
    of the test's own, none left behind). Pushes may queue as long as a busy machine needs."""
    if request.param == "sqlite":
        return SqliteAt(tmp_path)
    return RedisAt(request.getfixturevalue("redis_prefix_clean"), lock_wait_s=60.0)


class PushAlone:
    """A push (`on_recorded`) that counts itself in a file by read-modify-write, and notes
    any other push inside at the same time: what the push lock must rule out."""

    def __init__(self, root: Path) -> None:
        self.inside, self.count, self.overlaps = (
            root / "pushing",
            root / "pushes",
            root / "overlaps",
        )

    def __call__(self, row: dict[str, Any]) -> None:
        try:
            fd = os.open(self.inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with open(self.overlaps, "a") as fh:
                fh.write(f"{row['request_id']} {row['event']}\n")
            return
        try:
            seen = int(self.count.read_text()) if self.count.exists() else 0
            time.sleep(0.002)  # widens the window a second push would have to overlap in
            self.count.write_text(str(seen + 1))
        finally:
            os.close(fd)
            os.unlink(self.inside)


def _report_all(root: Path, make: Factory, out: multiprocessing.Queue) -> None:
    """In a child: every event of every request, from 8 threads, twice; how many landed."""
    log = FeedbackLog(Workspace(root), make())
    push = PushAlone(root)
    jobs = [(f"r{i}", event) for i in range(10) for event in EVENTS] * 2
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda job: log.record_event(*job, None, push), jobs))
    out.put(sum(row["recorded"] for row in rows))


@pytest.mark.integration  # two processes
def test_the_same_event_from_two_processes_lands_once(tmp_path: Path, make_index: Factory) -> None:
    log = FeedbackLog(Workspace(tmp_path), make_index())
    for i in range(10):
        log.log_decision(decision(f"r{i}"))
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    children = [ctx.Process(target=_report_all, args=(tmp_path, make_index, out)) for _ in range(2)]
    for child in children:
        child.start()
    landed = sum(out.get(timeout=300) for _ in children)
    for child in children:
        child.join(timeout=30)
    events = read_feedback(Workspace(tmp_path), DAY, "events")
    assert landed == len(events) == 10 * len(EVENTS)  # the rest were acknowledged repeats
    assert {(e["request_id"], e["event"]) for e in events} == {
        (f"r{i}", event) for i in range(10) for event in EVENTS
    }
    assert all(e["user_id"] == 7 and e["coupon_ids"] == ["C001"] for e in events)
    # Each new event was pushed once, and never beside another push of the user's.
    assert not (tmp_path / "overlaps").exists()
    assert int((tmp_path / "pushes").read_text()) == landed


def test_decisions_land_by_day_and_unknown_requests_are_refused(
    tmp_path: Path, make_index: Factory
) -> None:
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws, make_index())
    log.log_decision(decision("a", user_id=3))
    (landed,) = read_feedback(ws, DAY, "decisions")
    assert landed["request_id"] == "a" and landed["offers"][0]["propensity"] == 0.96
    assert "time" in landed
    assert list((feedback_area(ws) / f"date={DAY}").glob("decisions-*.jsonl"))
    with pytest.raises(UnknownRequest):
        log.record_event("b", "shown", None)
    row = log.record_event("a", "purchased", 19.9)
    assert row["recorded"] and row["amount"] == 19.9 and row["user_id"] == 3
    assert row["day"] == DAY and row["coupon_ids"] == ["C001"]
    again = log.record_event("a", "purchased", 19.9)
    assert not again["recorded"] and again["user_id"] == 3
    assert len(read_feedback(ws, DAY, "events")) == 1


def failing_append(kind: str) -> Callable[..., None]:
    """FeedbackLog._append that fails for lines of `kind`, as on a full disk."""
    append = FeedbackLog._append

    def append_or_fail(self: FeedbackLog, day: str, what: str, row: dict[str, Any]) -> None:
        if what == kind:
            raise OSError(28, "No space left on device")
        append(self, day, what, row)

    return append_or_fail


def test_a_line_that_fails_to_land_is_not_indexed(
    tmp_path: Path, make_index: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both or neither: a decision whose line failed is unknown to feedback, and an event
    whose line failed is new again when it is reported again."""
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws, make_index())
    with monkeypatch.context() as mp:
        mp.setattr(FeedbackLog, "_append", failing_append("decisions"))
        with pytest.raises(OSError, match="No space"):
            log.log_decision(decision("a"))
    with pytest.raises(UnknownRequest):
        log.record_event("a", "shown", None)
    assert read_feedback(ws, DAY, "decisions") == []
    log.log_decision(decision("a"))  # the failed one left no index entry behind

    with monkeypatch.context() as mp:
        mp.setattr(FeedbackLog, "_append", failing_append("events"))
        with pytest.raises(FeedbackUnavailable, match="No space"):
            log.record_event("a", "shown", None, on_recorded=pytest.fail)  # never pushed
    assert read_feedback(ws, DAY, "events") == []
    assert log.record_event("a", "shown", None)["recorded"]  # the retry lands it
    assert not log.record_event("a", "shown", None)["recorded"]
    assert len(read_feedback(ws, DAY, "events")) == 1


def test_a_request_id_is_indexed_once(tmp_path: Path, make_index: Factory) -> None:
    """A second decision under a request id is refused and leaves the first one standing."""
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws, make_index())
    log.log_decision(decision("a", user_id=3))
    with pytest.raises(Exception, match="UNIQUE|indexed already"):
        log.log_decision(decision("a", user_id=4))
    assert log.record_event("a", "shown", None)["user_id"] == 3
    assert [d["user_id"] for d in read_feedback(ws, DAY, "decisions")] == [3]


@pytest.mark.redis
def test_redis_keys_stay_under_the_prefix_and_expire(
    tmp_path: Path, redis_prefix_clean: str
) -> None:
    index = RedisAt(redis_prefix_clean)()
    log = FeedbackLog(Workspace(tmp_path), index)
    log.log_decision(decision("a"))
    pushed: list[dict[str, Any]] = []
    log.record_event("a", "shown", None, pushed.append)
    assert len(pushed) == 1
    client = redis_client(LOCAL_REDIS)
    (key,) = client.scan_iter(f"{redis_prefix_clean}:*")  # the push lock is gone again
    assert key.decode() == index.key("a") == f"{redis_prefix_clean}:feedback:a"
    assert RETENTION_DAYS * 86_400 - 60 < client.ttl(key) <= index.ttl_s == RETENTION_DAYS * 86_400
    assert set(client.hkeys(key)) == {b"decision", b"event:shown"}


@pytest.mark.redis
def test_a_push_lock_held_elsewhere_skips_the_push_not_the_event(
    tmp_path: Path, redis_prefix_clean: str
) -> None:
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws, RedisAt(redis_prefix_clean, lock_wait_s=0.2)())
    log.log_decision(decision("a"))
    other = redis_client(LOCAL_REDIS).lock(f"{redis_prefix_clean}:push:7", timeout=60)
    assert other.acquire(blocking=False)
    try:
        row = log.record_event("a", "shown", None, on_recorded=pytest.fail)
    finally:
        other.release()
    assert row["recorded"]
    assert [e["event"] for e in read_feedback(ws, DAY, "events")] == ["shown"]


@pytest.mark.integration  # waits out Redis timeouts
def test_a_redis_that_does_not_answer_fails_the_calls(tmp_path: Path) -> None:
    """Nothing listens: indexing a decision and recording an event raise (the service
    answers the first without offers and the second with a 503), and nothing lands."""
    from couponflow.processes import free_port

    nowhere = RedisSettings("127.0.0.1", free_port(), None)
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws, RedisIndex(redis_client(nowhere, 0.5), "couponflow-test:nowhere"))
    with pytest.raises(redis.ConnectionError):
        log.log_decision(decision("a"))
    with pytest.raises(FeedbackUnavailable) as failed:
        log.record_event("a", "shown", None)
    assert isinstance(failed.value.__cause__, redis.ConnectionError)
    assert not feedback_area(ws).exists()


def test_decisions_past_retention_are_forgotten_and_their_feedback_refused(
    tmp_path: Path,
) -> None:
    """The SQLite index forgets decisions of days more than the retention before the
    DAG's day, with their events, a batch at a time; later ones, and every landed line,
    stay. (Redis forgets by each key's expiry: see the test above.)"""
    (tmp_path / "params.yaml").write_text("serving: {feedback_retention_days: 7}\n")
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws)
    days = {"old": "2026-01-01", "edge": "2026-01-03", "kept": "2026-01-04", "new": "2026-01-10"}
    for name, day in days.items():
        for i in range(3):
            log.log_decision(decision(f"{name}{i}", day=day))
            log.record_event(f"{name}{i}", "shown", None)
    assert isinstance(log.index, SqliteIndex)
    assert log.index.forget_before("2026-01-02", batch=2) == 3  # 2 + 1: two transactions

    outcome = forget_old_feedback(ws, "2026-01-10")  # keeps 7 days: from 2026-01-03
    assert outcome == {"before": "2026-01-03", "forgotten": 0, "retention_days": 7}
    outcome = forget_old_feedback(ws, "2026-01-11")
    assert outcome["before"] == "2026-01-04" and outcome["forgotten"] == 3  # the edge day's
    for name in ("old", "edge"):
        with pytest.raises(UnknownRequest):
            log.record_event(f"{name}0", "purchased", 5.0)
    for name in ("kept", "new"):
        assert not log.record_event(f"{name}0", "shown", None)["recorded"]  # still indexed
        assert log.record_event(f"{name}0", "purchased", 5.0)["recorded"]
    left = sqlite3.connect(tmp_path / "live" / FEEDBACK_DB)
    assert left.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 6 + 2  # 3+3 shown, 2 bought
    assert len(read_feedback(ws, days["old"], "decisions")) == 3  # the landing zone is kept


def test_open_feedback_index_follows_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("serving: {spend_timeout_s: 0.25}\n")
    ws = Workspace(tmp_path)
    assert isinstance(open_feedback_index(ws), SqliteIndex)  # the default
    assert (tmp_path / "live" / FEEDBACK_DB).exists()
    ws.params["serving"]["feedback_index"] = "redis"
    ws.params["features"] = {"redis": "127.0.0.1:6379", "project": "p1"}
    ws.params["serving"]["feedback_retention_days"] = 2
    index = open_feedback_index(ws)  # connects lazily: no key is written
    assert isinstance(index, RedisIndex) and index.prefix == redis_prefix(ws)
    assert index.ttl_s == 2 * 86_400
    settings = index.client.connection_pool.connection_kwargs
    assert settings["socket_timeout"] == settings["socket_connect_timeout"] == 0.25
    ws.params["serving"]["feedback_index"] = "postgres"
    with pytest.raises(ValueError, match="sqlite or redis"):
        open_feedback_index(ws)


def test_landing_files_are_named_by_host_and_pid_and_old_names_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pods sharing the workspace have the same small pids: each appends to a file of
    its own host. Files of older versions, named by pid alone, are read all the same."""
    import serving.runtime.feedback

    ws = Workspace(tmp_path)
    log = FeedbackLog(ws, SqliteAt(tmp_path)())
    for host in ("couponflow-stable-7d9f-abcde", "couponflow-canary-5c4b-fghij"):
        monkeypatch.setattr(serving.runtime.feedback, "HOST", host)
        log.log_decision(decision(f"from-{host}"))
        log.record_event(f"from-{host}", "shown", None)
        assert landing_file("events") == f"events-{host}-{os.getpid()}.jsonl"
    folder = feedback_area(ws) / f"date={DAY}"
    assert len(list(folder.glob("decisions-*.jsonl"))) == len(list(folder.glob("events-*"))) == 2
    old = {**decision("old"), "time": f"{DAY}T10:00:01+00:00"}
    (folder / "decisions-12.jsonl").write_text(json.dumps(old) + "\n")
    landed = read_feedback(ws, DAY, "decisions")
    assert len(landed) == 3 and "old" in {d["request_id"] for d in landed}
    assert len(read_feedback(ws, DAY, "events")) == 2
