"""The service under faults, against a real BentoML server (conftest's tiny workspace): its
OpenAPI schema fuzzed, a worker killed mid-load, the decision log and the online store
failing. Only the faults are injected on purpose; BentoML, Feast and the stores are real."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from couponflow.config import Workspace
from couponflow.landing import offline_days
from couponflow.processes import free_port
from serving.deploy.server import Server
from tests.conftest import MODEL_VERSION
from tests.helpers.serving import metric, noon_after, recommend

pytestmark = pytest.mark.integration  # bento servers under load and faults

FUZZ_EXAMPLES = 40  # per endpoint and mode: ~160 requests, a few seconds
WHOLE_BODY_ERRORS = {"json_invalid", "model_type", "model_attributes_type"}  # no field to name
CLIENT_TIMEOUT_S = 5.0  # longer than any answer of a healthy worker (traffic timeout is 10 s)
RESTART_BOUND_S = 90.0  # circus restarts a dead worker, which loads the model and Feast again


# -- the schema, fuzzed ------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/recommend", "/feedback"])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_the_live_schema_finds_no_server_error(
    server: Server, path: str, mode: str
) -> None:
    """Bodies made from the schema the server publishes (/docs.json), valid and invalid:
    never a 5xx, and a refusal names the field at fault."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.base_url}/docs.json", timeout=10)
    operation = schema[path]["POST"]
    body_schema = operation.definition.raw["requestBody"]["content"]["application/json"]
    fields = list(body_schema["schema"].get("properties", {}))
    assert "request_id" in fields or "user_id" in fields, body_schema

    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,  # the same bodies every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure reports at once
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(GenerationMode(mode)))
    def no_server_error(case: Any) -> None:
        answer = case.call(base_url=server.base_url, timeout=10)
        body = f"{case.body!r} -> {answer.status_code} {answer.text[:300]}"
        assert answer.status_code < 500, body
        if answer.status_code in (400, 422):
            for error in answer.json()["errors"]:  # the field at fault, or the whole body
                assert error["loc"][:1] in ([field] for field in fields) or (
                    not error["loc"] and error["type"] in WHOLE_BODY_ERRORS
                ), body
        if answer.status_code == 404:
            assert "request_id" in answer.text, body

    no_server_error()


# -- a worker killed mid-load ------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One request of the stream: when it started and ended, and its status or error."""

    started: float
    ended: float
    status: int | None
    error: str | None


def stream(url: str, body: dict, stop: threading.Event, calls: list[Call]) -> None:
    """POST `body` to `url` until `stop`, each with a bounded client timeout."""
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, error = client.post(url, json=body).status_code, None
            except httpx.HTTPError as exc:
                status, error = None, type(exc).__name__
            calls.append(Call(started, time.monotonic(), status, error))


def wait_for(condition: Callable[[], bool], timeout_s: float) -> float:
    """Poll `condition` until true; when it became true (monotonic), or fail."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f}s"
        time.sleep(0.1)
    return time.monotonic()


def ready(server: Server) -> bool:
    try:
        return httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_worker_killed_mid_load_loses_few_requests_cleanly_and_comes_back(
    serving_workspace: Workspace, bento: tuple[str, str]
) -> None:
    from couponflow.landing import feedback_area
    from serving.deploy.server import start_server
    from serving.runtime.feedback import landing_file

    now = noon_after(serving_workspace, 10)  # a day of its own: its decisions land per worker pid
    landed = feedback_area(serving_workspace) / f"date={now:%Y-%m-%d}"
    body = {"user_id": 7, "k": 3, "context": {"now": now.isoformat()}}
    threads = 4
    calls: list[Call] = []
    stop = threading.Event()
    with start_server(serving_workspace, bento[1], free_port()) as server:
        workers = server.workers()
        assert len(workers) == int(serving_workspace.params["serving"]["workers"]) == 2
        url = f"{server.base_url}/recommend"
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(threads):
                pool.submit(stream, url, body, stop, calls)
            try:
                time.sleep(2.0)
                victim = workers[0]
                killed_at = time.monotonic()
                os.kill(victim.pid, signal.SIGKILL)
                back_at = wait_for(lambda: replaced(server, victim.pid), RESTART_BOUND_S)
                (replacement,) = {w.pid for w in server.workers()} - {w.pid for w in workers}
                # Serving again: its own decisions land. The streams' kept-alive connections
                # all sit on the surviving worker now, so new connections go looking.
                new_log = landed / landing_file("decisions", replacement)
                wait_for(lambda: recommend(server, body) and new_log.exists(), RESTART_BOUND_S)
                assert ready(server)
            finally:
                stop.set()  # else the pool waits for the streams forever
        after = [recommend(server, body) for _ in range(20)]
        groups = server.pgids
    assert all(a.status_code == 200 for a in after), [a.text for a in after]
    assert all(c.ended - c.started < CLIENT_TIMEOUT_S + 1.0 for c in calls)  # none hung
    failed = [c for c in calls if c.status != 200]
    assert all(c.error not in ("ReadTimeout", "PoolTimeout") for c in failed), failed
    assert all(c.error or c.status >= 500 for c in failed), failed  # clean: reset or 5xx
    assert len(failed) <= 2 * threads, failed  # only what was in flight on the dead worker
    while_down = [c for c in calls if killed_at < c.started and c.ended < back_at]
    assert sum(c.status == 200 for c in while_down) >= 10  # the other worker kept answering
    assert calls[-1].status == 200
    assert wait_gone(groups)  # the replacement worker was stopped with the server too


def replaced(server: Server, pid: int) -> bool:
    """Whether the server runs its full set of workers again, none of them `pid`."""
    workers = server.workers()
    return len(workers) == 2 and pid not in {w.pid for w in workers}


def wait_gone(groups: set[int]) -> bool:
    """Whether every process of the groups in `groups` ends within 15 s. A zombie has
    ended: a SIGKILLed orphan waits for init to reap it, which some containers' init does
    late or never."""

    def running_in_groups() -> bool:
        for proc in psutil.process_iter(["pid", "status"]):
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in groups:
                    return True
        return False

    deadline = time.monotonic() + 15.0
    while running_in_groups():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- the decision log failing ------------------------------------------------------------------
def test_an_unloggable_decision_is_answered_without_offers_and_its_spend_given_back(
    server: Server, serving_workspace: Workspace
) -> None:
    from couponflow.landing import feedback_area
    from serving.runtime.spend import SqliteSpend

    now = noon_after(serving_workspace, 11)
    day = now.strftime("%Y-%m-%d")
    blocker = feedback_area(serving_workspace) / f"date={day}"  # a file where the day's folder goes
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder\n")
    body = {"k": 3, "context": {"now": now.isoformat()}}
    try:
        answers = [recommend(server, {**body, "user_id": user}) for user in range(20)]
    finally:
        blocker.unlink()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert all(a.json()["degraded"] and a.json()["offers"] == [] for a in answers)
    spent = SqliteSpend(serving_workspace.root / "live" / "spend.db").read(day)
    assert spent.decisions == 20  # each was decided (epsilon 1 offers) ...
    assert spent.cost == pytest.approx(0.0, abs=1e-9)  # ... and its spend given back
    unknown = httpx.post(
        f"{server.base_url}/feedback",
        json={"request_id": answers[0].json()["request_id"], "event": "shown"},
        timeout=10,
    )
    assert unknown.status_code == 404  # never indexed: no outcome joins an unlogged decision
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert metric(text, 'couponflow_degraded_answers_total{reason="decision_log"}') >= 20
    healed = [recommend(server, {**body, "user_id": user}) for user in range(20, 30)]
    assert not any(a.json()["degraded"] for a in healed)
    assert any(a.json()["offers"] for a in healed)  # the same day's budget was left to spend
    assert 1 <= server.log.read_text().count("decision log failing") <= 2  # once per worker


# -- the feedback index failing -----------------------------------------------------------------
def test_feedback_that_cannot_land_answers_503_and_lands_when_reported_again(
    server: Server, serving_workspace: Workspace
) -> None:
    """An event whose line cannot land (here the day's folder is a file) is neither landed
    nor indexed: a 503, logged once rather than per request, and the same report later is
    recorded as new."""
    from couponflow.landing import feedback_area, read_feedback

    now = noon_after(serving_workspace, 13)
    day = now.strftime("%Y-%m-%d")
    answer = recommend(server, {"user_id": 5, "k": 1, "context": {"now": now.isoformat()}})
    assert answer.status_code == 200 and not answer.json()["degraded"], answer.text
    body = {"request_id": answer.json()["request_id"], "event": "shown"}
    url = f"{server.base_url}/feedback"
    folder = feedback_area(serving_workspace) / f"date={day}"
    aside = folder.with_name(f"{folder.name}.aside")
    before = server.log.read_text()
    folder.rename(aside)
    folder.write_text("not a folder\n")
    try:
        failed = [httpx.post(url, json=body, timeout=10) for _ in range(4)]
    finally:
        folder.unlink()
        aside.rename(folder)
    assert [f.status_code for f in failed] == [503] * 4, [f.text for f in failed]
    landed = httpx.post(url, json=body, timeout=10)
    again = httpx.post(url, json=body, timeout=10)
    assert landed.status_code == again.status_code == 200, [landed.text, again.text]
    assert landed.json()["recorded"] and not again.json()["recorded"]
    events = read_feedback(serving_workspace, day, "events")
    assert [e["event"] for e in events if e["request_id"] == body["request_id"]] == ["shown"]
    log = server.log.read_text()[len(before) :]
    assert 1 <= log.count("feedback index failing") <= 2, log  # once per worker at most
    assert "FeedbackUnavailableError" not in log  # no traceback per 503


# -- the online store hanging under feedback ---------------------------------------------------
def test_a_hung_online_store_bounds_feedback_and_the_event_still_lands(
    serving_workspace: Workspace, bento: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.runtime.recommender
    from couponflow.landing import read_feedback
    from serving.deploy import bentoml_home
    from serving.runtime.feedback import FeedbackLog
    from serving.runtime.recommender import Recommender

    stored = bentoml_home(serving_workspace) / "models" / "couponflow-recommender" / MODEL_VERSION
    rec = Recommender(stored, serving_workspace, as_of=offline_days(serving_workspace)[-1])
    rec.feature_timeout_s = 0.5  # the deadline under test; roomy for a busy machine
    log = FeedbackLog(serving_workspace)
    user, now = 299, noon_after(serving_workspace, 12)  # a user no other test pushes to
    decision = rec.recommend(user, 3, now)
    request_id = uuid4().hex
    log.log_decision({**decision, "request_id": request_id, "user_id": user})

    def record(event: str) -> tuple[dict[str, Any], list[bool], float]:
        pushed: list[bool] = []
        started = time.perf_counter()
        row = log.record_event(
            request_id, event, 10.0, lambda r: pushed.append(rec.push_outcome(r))
        )
        return row, pushed, time.perf_counter() - started

    row, pushed, _ = record("shown")
    assert row["recorded"] and pushed == [True]  # a healthy store takes the push

    def hung(*args: object) -> None:
        time.sleep(3.0)

    monkeypatch.setattr(serving.runtime.recommender, "push_user_features", hung)  # the write hangs
    row, pushed, took = record("redeemed")
    assert row["recorded"] and pushed == [False] and took < rec.feature_timeout_s + 1.0
    monkeypatch.undo()
    rec.user_features = hung  # the read hangs
    row, pushed, took = record("purchased")
    assert row["recorded"] and pushed == [False] and took < rec.feature_timeout_s + 1.0
    events = read_feedback(serving_workspace, now.strftime("%Y-%m-%d"), "events")
    landed = [e["event"] for e in events if e["request_id"] == request_id]
    assert sorted(landed) == ["purchased", "redeemed", "shown"]


# -- the server log ----------------------------------------------------------------------------
def test_the_server_log_stays_quiet_at_info(server: Server) -> None:
    """Requests good and bad add nothing to the log: no access line, no deprecation warning
    from BentoML's request handling, no traceback for a refused body."""
    before = server.log.read_text()
    for body in ({"user_id": 3}, {"user_id": "abc"}, {"user_id": 1, "k": 0}):
        recommend(server, body)
    httpx.post(
        f"{server.base_url}/feedback", json={"request_id": "x", "event": "shown"}, timeout=10
    )
    time.sleep(0.5)  # the workers' lines reach the file through the arbiter
    added = server.log.read_text()[len(before) :]
    assert added == "", added
    whole = server.log.read_text()
    assert "PydanticDeprecatedSince211" not in whole and "path=/recommend" not in whole
