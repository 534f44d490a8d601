"""The feedback landing zone without a server: decisions are landed and indexed, an event
of an unknown request is refused, and the same event reported many times, by threads of two
processes at once, is landed exactly once."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from couponflow.config import Workspace
from serving.feedback import (
    EVENTS,
    FeedbackLog,
    UnknownRequest,
    feedback_area,
    fresh_counters,
    landing_file,
    read_feedback,
)

DAY = "2026-01-05"


def decision(request_id: str, user_id: int = 7) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "day": DAY,
        "at": f"{DAY}T10:00:00",
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


def test_landing_files_are_named_by_host_and_pid_and_old_names_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pods sharing the workspace have the same small pids: each appends to a file of
    its own host. Files of older versions, named by pid alone, are read all the same."""
    import serving.feedback

    ws = Workspace(tmp_path)
    log = FeedbackLog(ws)
    for host in ("couponflow-stable-7d9f-abcde", "couponflow-canary-5c4b-fghij"):
        monkeypatch.setattr(serving.feedback, "HOST", host)
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


def test_fresh_counters_follow_each_outcome() -> None:
    from couponflow.features import USER_FEATURES, default_user_features

    def f(row: np.ndarray, name: str) -> float:
        return float(row[USER_FEATURES.index(name)])

    start = default_user_features()
    shown = fresh_counters(start, "shown", ["percent_off", "amount_off"], None)
    assert [f(shown, f"offers_{w}d") for w in (1, 7, 30)] == [2.0, 2.0, 2.0]
    assert f(shown, "offers_percent_off_30d") == f(shown, "offers_amount_off_30d") == 1.0
    assert f(shown, "redemption_rate_7d") == 0.0
    redeemed = fresh_counters(shown, "redeemed", ["percent_off", "amount_off"], None)
    assert f(redeemed, "redemptions_30d") == 1.0 and f(redeemed, "redemption_rate_30d") == 0.5
    assert f(redeemed, "redemption_rate_percent_off_30d") == 0.0  # which coupon is unknown
    one = fresh_counters(fresh_counters(start, "shown", ["free_shipping"], None), "redeemed",
                         ["free_shipping"], None)  # fmt: skip
    assert f(one, "redemption_rate_free_shipping_30d") == 1.0
    bought = fresh_counters(redeemed, "purchased", [], 80.0)
    bought = fresh_counters(bought, "purchased", [], 20.0)
    assert f(bought, "orders_1d") == 2.0 and f(bought, "spend_30d") == 100.0
    assert f(bought, "avg_basket_30d") == 50.0 and f(bought, "days_since_last_order") == 0.0
    assert f(bought, "redemption_rate_30d") == 0.5  # untouched by a purchase
