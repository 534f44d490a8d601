"""The feedback landing zone without a server: decisions are landed and indexed, an event
of an unknown request is refused, and the same event reported many times, by threads of two
processes at once, is landed exactly once."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from couponflow.config import Workspace
from serving.feedback import EVENTS, FeedbackLog, UnknownRequest, feedback_area, read_feedback

DAY = "2026-01-05"


def decision(request_id: str, user_id: int = 7) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "day": DAY,
        "user_id": user_id,
        "policy_version": "v1-eps0.05-lambda0.1",
        "offers": [{"coupon_id": "C001", "propensity": 0.96}],
    }


def _report_all(root: Path, out: multiprocessing.Queue) -> None:
    """In a child: every event of every request, from 8 threads, twice; how many landed."""
    log = FeedbackLog(Workspace(root))
    jobs = [(f"r{i}", event) for i in range(10) for event in EVENTS] * 2
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda job: log.record_event(*job, None), jobs))
    out.put(sum(row["recorded"] for row in rows))


def test_the_same_event_from_two_processes_lands_once(tmp_path: Path) -> None:
    log = FeedbackLog(Workspace(tmp_path))
    for i in range(10):
        log.log_decision(decision(f"r{i}"))
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    children = [ctx.Process(target=_report_all, args=(tmp_path, out)) for _ in range(2)]
    for child in children:
        child.start()
    landed = sum(out.get(timeout=60) for _ in children)
    for child in children:
        child.join(timeout=10)
    events = read_feedback(Workspace(tmp_path), DAY, "events")
    assert landed == len(events) == 10 * len(EVENTS)  # the rest were acknowledged repeats
    assert {(e["request_id"], e["event"]) for e in events} == {
        (f"r{i}", event) for i in range(10) for event in EVENTS
    }
    assert all(e["user_id"] == 7 and e["coupon_ids"] == ["C001"] for e in events)


def test_decisions_land_by_day_and_unknown_requests_are_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    log = FeedbackLog(ws)
    log.log_decision(decision("a", user_id=3))
    (landed,) = read_feedback(ws, DAY, "decisions")
    assert landed["request_id"] == "a" and landed["offers"][0]["propensity"] == 0.96
    assert "time" in landed
    assert list((feedback_area(ws) / f"date={DAY}").glob("decisions-*.jsonl"))
    with pytest.raises(UnknownRequest):
        log.record_event("b", "shown", None)
    row = log.record_event("a", "purchased", 19.9)
    assert row["recorded"] and row["amount"] == 19.9 and row["user_id"] == 3
