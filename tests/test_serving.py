"""Serving against a real BentoML server: a tiny workspace (4 simulated days, features
materialised in the SQLite online store, an untrained model) is packaged, built and served
over HTTP; no mocks. Also the release record."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import yaml

from couponflow.artefacts import POLICY_FILE
from couponflow.config import Workspace, load_params, set_param
from couponflow.features import USER_FEATURES
from couponflow.policy import BudgetPlan
from couponflow.processes import free_port, group_alive
from serving.client import CouponflowClient
from serving.deploy.server import Server
from tests.conftest import MODEL_VERSION, N_USERS
from tests.helpers.serving import metric, noon_after, recommend

pytestmark = pytest.mark.integration  # a bento built and served


def test_the_model_and_bento_live_in_the_workspace_store(
    serving_workspace: Workspace, bento: tuple[str, str]
) -> None:
    from serving.deploy import bentoml_home
    from serving.deploy.bento import store_model

    model_tag, bento_tag = bento
    assert model_tag == f"couponflow-recommender:{MODEL_VERSION}"
    assert bento_tag == f"couponflow:{MODEL_VERSION}"
    stored = bentoml_home(serving_workspace) / "models" / "couponflow-recommender" / MODEL_VERSION
    assert {"model.pt", "model.json", "coupons.parquet"} <= {p.name for p in stored.iterdir()}
    assert (bentoml_home(serving_workspace) / "bentos" / "couponflow" / MODEL_VERSION).is_dir()
    assert store_model(serving_workspace, serving_workspace.models) == model_tag  # idempotent


def test_a_known_user_gets_scored_offers(server: Server) -> None:
    answers = [recommend(server, {"user_id": user, "k": 3}) for user in range(10)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json() for a in answers]
    for user, body in enumerate(bodies):
        assert body["user_id"] == user and not body["cold_start"] and not body["degraded"]
        assert body["model_version"] == MODEL_VERSION
        assert body["policy_version"].startswith(MODEL_VERSION)
        assert len(body["offers"]) <= 3 and body["request_id"]
    offers = [offer for body in bodies for offer in body["offers"]]
    assert offers, "epsilon 1 should have offered something in 10 tries"
    for offer in offers:
        assert set(offer) == {"coupon_id", "score", "p_redeem", "propensity", "drivers"}
        assert offer["drivers"] is None  # only when explain is asked
        assert offer["coupon_id"].startswith("C")
        assert 0.0 < offer["propensity"] <= 1.0 and 0.0 <= offer["p_redeem"] <= 1.0


def test_an_unknown_user_is_a_cold_start(server: Server) -> None:
    answer = recommend(server, {"user_id": 10**9})
    assert answer.status_code == 200, answer.text
    assert answer.json()["cold_start"] is True
    assert len(answer.json()["offers"]) <= 1  # k defaults to 1


def test_the_context_clock_judges_coupon_validity(server: Server) -> None:
    before_any_coupon = {"now": "2000-01-01T00:00:00Z", "page": "home"}
    answer = recommend(server, {"user_id": 1, "k": 10, "context": before_any_coupon})
    assert answer.status_code == 200, answer.text
    assert answer.json()["offers"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": 1, "k": 0}, "k"),
        ({"user_id": 1, "k": 11}, "k"),
        ({"user_id": "abc"}, "user_id"),
        ({"user_id": -1}, "user_id"),
        ({"k": 2}, "user_id"),
        ({"user_id": 1, "context": {"now": "someday"}}, "now"),
    ],
)
def test_a_malformed_request_is_a_4xx_naming_the_field(
    server: Server, body: dict, field: str
) -> None:
    answer = recommend(server, body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert field in {str(part) for error in answer.json()["errors"] for part in error["loc"]}


def test_smoke_test_passes_and_stop_leaves_no_process(
    serving_workspace: Workspace, bento: tuple[str, str]
) -> None:
    from serving.deploy.server import start_server
    from serving.deploy.smoke import smoke_test

    with start_server(serving_workspace, bento[1], free_port()) as server:
        answer = smoke_test(server.base_url)
        groups = server.pgids
    assert answer["model_version"] == MODEL_VERSION
    workers = int(serving_workspace.params["serving"]["workers"])
    assert len(groups) >= 1 + workers  # circus gives every worker a session of its own
    deadline = time.monotonic() + 15.0  # a stopped worker may take a moment to exit
    while (alive := [g for g in groups if group_alive(g)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, [p.info for p in psutil.process_iter(["pid", "status", "cmdline"])
                       if _pgid(p.info["pid"]) in alive]  # fmt: skip


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_busy_port_is_refused_rather_than_mistaken_for_ready(
    serving_workspace: Workspace, bento: tuple[str, str], server: Server
) -> None:
    from serving.deploy.server import ServerFailed, start_server

    busy = int(server.base_url.rsplit(":", 1)[1])
    with pytest.raises(ServerFailed, match="in use"):
        start_server(serving_workspace, bento[1], busy)


def test_smoke_test_fails_when_nothing_answers() -> None:
    from serving.deploy.smoke import SmokeTestFailed, smoke_test

    with pytest.raises(SmokeTestFailed):
        smoke_test(f"http://127.0.0.1:{free_port()}", timeout_s=2)


def test_a_release_is_recorded_and_becomes_the_champion(tmp_path) -> None:
    from couponflow.workspace import init_workspace, run
    from serving.deploy.release import current_release, record_release

    ws = init_workspace(tmp_path / "ws")
    assert current_release(ws) is None
    for version in ("v1", "v2"):
        (ws.models / "model.json").write_text(json.dumps({"version": version}))
        (ws.models / POLICY_FILE).write_text("{}")
        (ws.models / "model.pt").write_bytes(f"weights {version}".encode())
        record = record_release(
            ws, f"couponflow-recommender:{version}", f"couponflow:{version}", "gate passed"
        )
        assert record["model_version"] == version
    assert current_release(ws)["bento_tag"] == "couponflow:v2"
    history = [
        json.loads(line) for line in (ws.releases / "history.jsonl").read_text().splitlines()
    ]
    assert [h["model_version"] for h in history] == ["v1", "v2"]
    assert {"time", "model_tag", "bento_tag", "reason"} <= set(history[0])
    assert (ws.champion / "model.pt").read_bytes() == b"weights v2"
    assert json.loads((ws.champion / "model.json").read_text())["version"] == "v2"
    assert "release v2: gate passed" in run(["git", "log", "--format=%s"], ws.root)
    with pytest.raises(ValueError, match="not the released"):
        record_release(ws, "couponflow-recommender:v3", "couponflow:v3", "stale weights")
    assert current_release(ws)["model_version"] == "v2"


# -- spend, explanations, feedback, metrics, the client ---------------------------------------


def test_explain_names_the_inputs_behind_each_offer(
    server: Server, serving_workspace: Workspace
) -> None:
    with CouponflowClient(server.base_url, timeout_s=10) as client:
        answers = [
            client.recommend(user, 3, explain=True, now=noon_after(serving_workspace, 1))
            for user in range(10)
        ]
    offers = [offer for answer in answers for offer in answer.offers]
    assert offers
    for offer in offers:
        assert offer.drivers and len(offer.drivers) <= 3
        assert {d.feature for d in offer.drivers} <= set(USER_FEATURES)


def test_parallel_requests_on_every_worker_never_overspend_the_day(
    server: Server, serving_workspace: Workspace
) -> None:
    """240 requests for slates of 10 from 32 connections at once, on a day whose budget pays
    for far fewer: both workers race for it through the shared store, and neither the store
    nor the landed decisions count more than the budget."""
    from couponflow.landing import feedback_area, read_feedback
    from serving.runtime.spend import SqliteSpend

    requests, connections = 240, 32
    now = noon_after(serving_workspace, 2)
    day = now.strftime("%Y-%m-%d")
    body = {"user_id": 0, "k": 10, "context": {"now": now.isoformat()}}
    with ThreadPoolExecutor(connections) as pool:
        answers = list(
            pool.map(lambda u: recommend(server, {**body, "user_id": u % N_USERS}), range(requests))
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.is_error]
    budget = BudgetPlan.read(serving_workspace.models / POLICY_FILE).daily_budget
    spent = SqliteSpend(serving_workspace.root / "live" / "spend.db").read(day)
    assert spent.decisions == requests
    assert 0.5 * budget < spent.cost <= budget  # spent, and never more
    decisions = read_feedback(serving_workspace, day, "decisions")
    assert len(decisions) == requests
    by_worker = list((feedback_area(serving_workspace) / f"date={day}").glob("decisions-*.jsonl"))
    assert len(by_worker) == int(serving_workspace.params["serving"]["workers"]) == 2  # both served
    assert sum(d["spent"] for d in decisions) == pytest.approx(spent.cost)
    assert sum(not a.json()["offers"] for a in answers[-40:]) > 20  # the money ran out


def test_feedback_lands_once_and_joins_its_decision(
    server: Server, serving_workspace: Workspace
) -> None:
    from couponflow.landing import read_feedback
    from feature_repo.store import online_user_features, open_store

    now = noon_after(serving_workspace, 3)
    store = open_store(serving_workspace)
    with CouponflowClient(server.base_url, timeout_s=10) as client:
        answer = next(
            a for u in range(50) if (a := client.recommend(u, 3, now=now)).offers
        )  # the day's budget is fresh: an offer comes soon
        before = online_user_features(store, answer.user_id)
        first = client.feedback(answer.request_id, "shown")
        again = client.feedback(answer.request_id, "shown")
        bought = client.feedback(answer.request_id, "purchased", amount=42.5)
        after = online_user_features(store, answer.user_id)
    assert first.recorded and not again.recorded and bought.recorded
    assert first.pushed and not again.pushed and bought.pushed
    assert first.user_id == answer.user_id
    # The online store already counts the offers shown (once) and the order.
    for name, added in [("offers_7d", len(answer.offers)), ("orders_1d", 1), ("spend_30d", 42.5)]:
        at = USER_FEATURES.index(name)
        assert after[at] == pytest.approx(before[at] + added), name
    day = now.strftime("%Y-%m-%d")
    events = [
        e
        for e in read_feedback(serving_workspace, day, "events")
        if e["request_id"] == answer.request_id
    ]
    assert sorted(e["event"] for e in events) == ["purchased", "shown"]
    assert {e["amount"] for e in events} == {None, 42.5}
    assert all(e["coupon_ids"] == [o.coupon_id for o in answer.offers] for e in events)
    (decision,) = [
        d
        for d in read_feedback(serving_workspace, day, "decisions")
        if d["request_id"] == answer.request_id
    ]
    assert decision["user_id"] == answer.user_id
    assert decision["policy_version"] == answer.policy_version
    assert [o["propensity"] for o in decision["offers"]] == [o.propensity for o in answer.offers]


def test_feedback_refuses_unknown_requests_and_bad_fields(server: Server) -> None:
    from serving.client import UnknownRequest

    with (
        CouponflowClient(server.base_url, timeout_s=10) as client,
        pytest.raises(UnknownRequest, match="request_id"),
    ):
        client.feedback("no-such-request", "shown")
    for body, field in [
        ({"request_id": "x", "event": "clicked"}, "event"),
        ({"request_id": "x", "event": "purchased", "amount": -1}, "amount"),
        ({"event": "shown"}, "request_id"),
    ]:
        answer = httpx.post(f"{server.base_url}/feedback", json=body, timeout=10)
        assert answer.status_code == 400
        assert answer.headers["content-type"] == "application/problem+json"
        assert field in {str(part) for error in answer.json()["errors"] for part in error["loc"]}


def test_metrics_count_decisions_latency_offers_and_spend(
    server: Server, serving_workspace: Workspace
) -> None:
    fresh_day = {"now": noon_after(serving_workspace, 4).isoformat()}  # a budget to spend
    for user in range(5):
        recommend(server, {"user_id": user, "k": 3, "context": fresh_day})
    recommend(server, {"user_id": 10**9})
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert metric(text, 'couponflow_decisions_total{kind="known"}') >= 1
    assert metric(text, 'couponflow_decisions_total{kind="cold_start"}') >= 1
    assert metric(text, "couponflow_decision_seconds_count") >= 2
    assert metric(text, "couponflow_offers_total") >= 1
    assert metric(text, "couponflow_budget_spent_total") > 0


def test_the_client_reports_health_and_clear_errors(server: Server) -> None:
    from serving.client import BadRequest, Unavailable

    with CouponflowClient(server.base_url, timeout_s=10) as client:
        assert client.health().live and client.health().ready
        with pytest.raises(BadRequest, match="k"):
            client.recommend(1, k=0)
    with CouponflowClient(f"http://127.0.0.1:{free_port()}", timeout_s=1) as dead:
        assert not dead.health().live and not dead.health().ready
        with pytest.raises(Unavailable):
            dead.recommend(1)


# -- a guarded server whose feature store is down ---------------------------------------------
API_KEY = "test-key-0123"


@pytest.fixture(scope="module")
def guarded_degraded(
    serving_workspace: Workspace, bento: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The same bento behind an API key, in a workspace whose online store is a Redis
    nobody listens on (the feature store unreachable from the start)."""
    from serving.deploy.server import start_server
    from serving.runtime.auth import API_KEY_ENV

    root = tmp_path_factory.mktemp("degraded") / "ws"
    root.mkdir()
    params = load_params(serving_workspace.params_file)
    set_param(params, "features.online_store", "redis")
    set_param(params, "features.redis", f"127.0.0.1:{free_port()}")
    set_param(params, "serving.feature_timeout_s", 0.1)  # the deadline under test
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "bentoml").symlink_to(serving_workspace.root / "bentoml")
    shutil.copytree(serving_workspace.feature_store, root / "feature_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, API_KEY)
        with start_server(Workspace(root), bento[1], free_port()) as running:
            yield running


def test_an_unreachable_feature_store_gives_fast_degraded_answers(
    guarded_degraded: Server,
) -> None:
    with CouponflowClient(guarded_degraded.base_url, api_key=API_KEY, timeout_s=10) as client:
        assert client.health().ready  # it serves rather than refusing to start
        started = time.perf_counter()
        answers = [client.recommend(user, 3) for user in range(5)]
        took = (time.perf_counter() - started) / len(answers)
    assert all(a.degraded and not a.cold_start for a in answers)
    assert took < 0.5  # the lookup gives up after serving.feature_timeout_s
    text = httpx.get(f"{guarded_degraded.base_url}/metrics", timeout=10).text
    assert metric(text, 'couponflow_degraded_answers_total{reason="features"}') >= 5


def test_with_an_api_key_only_callers_presenting_it_are_answered(
    guarded_degraded: Server,
) -> None:
    from serving.client import Unauthorized

    url = guarded_degraded.base_url
    body = {"user_id": 1}
    assert httpx.post(f"{url}/recommend", json=body, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{url}/recommend", json=body, headers=wrong, timeout=10).status_code == 401
    assert httpx.post(f"{url}/feedback", json={}, timeout=10).status_code == 401
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"x-api-key": API_KEY}):
        answer = httpx.post(f"{url}/recommend", json=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
    for probe in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{url}{probe}", timeout=10).status_code == 200
    with CouponflowClient(url, timeout_s=10) as keyless, pytest.raises(Unauthorized):
        keyless.recommend(1)
