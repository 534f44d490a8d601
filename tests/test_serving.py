"""Serving against a real BentoML server: a tiny workspace (4 simulated days, features
materialised in the SQLite online store, an untrained model) is packaged, built and served
over HTTP; no mocks. Also the release record."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
import yaml

from couponflow.config import HOME_ENV, PROJECT_ROOT, Workspace, load_params, set_param
from serving import POLICY_FILE
from serving.server import Server
from tests.conftest import free_port

MODEL_VERSION = "test-0001"
N_USERS = 300


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """Four days of a 300-user world in the offline and online stores, and a model.

    Exploration is total (epsilon 1) so an untrained model still makes offers to check.
    """
    from couponflow.landing import load_offline
    from couponflow.model import CouponNet, save_model
    from couponflow.world import World
    from feature_repo.store import (
        apply_definitions,
        materialise_day,
        open_store,
        publish_features,
    )
    from training.budget import make_plan

    root = tmp_path_factory.mktemp("serving") / "ws"
    root.mkdir()
    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", N_USERS)
    set_param(params, "policy.epsilon", 1.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(root))
        ws = Workspace(root)
        world = World(params["world"])
        start = pd.Timestamp(params["world"]["start_date"])
        days = [(start + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(4)]
        for day in days:
            load_offline(ws, day, world.simulate_day(day))
        store = open_store(ws)
        apply_definitions(store)
        for day in days:
            publish_features(ws, day)
            materialise_day(store, day)
        meta = {"version": MODEL_VERSION, "hidden": 64}
        save_model(CouponNet(hidden=64), ws.models / "model.pt", meta)
        (ws.models / "model.json").write_text(json.dumps(meta))
        make_plan(ws).write(ws.models / POLICY_FILE)
        yield ws


@pytest.fixture(scope="session")
def bento(workspace: Workspace) -> tuple[str, str]:
    """(model tag, bento tag) in the workspace's own BentoML store."""
    from serving.bento import build_bento, store_model

    model_tag = store_model(workspace, workspace.models)
    return model_tag, build_bento(workspace, model_tag)


@pytest.fixture(scope="session")
def server(workspace: Workspace, bento: tuple[str, str]) -> Iterator[Server]:
    from serving.server import start_server

    with start_server(workspace, bento[1], free_port()) as running:
        yield running


def recommend(server: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/recommend", json=body, timeout=10)


def test_the_model_and_bento_live_in_the_workspace_store(
    workspace: Workspace, bento: tuple[str, str]
) -> None:
    from serving import bentoml_home
    from serving.bento import store_model

    model_tag, bento_tag = bento
    assert model_tag == f"couponflow-recommender:{MODEL_VERSION}"
    assert bento_tag == f"couponflow:{MODEL_VERSION}"
    stored = bentoml_home(workspace) / "models" / "couponflow-recommender" / MODEL_VERSION
    assert {"model.pt", "model.json", "coupons.parquet"} <= {p.name for p in stored.iterdir()}
    assert (bentoml_home(workspace) / "bentos" / "couponflow" / MODEL_VERSION).is_dir()
    assert store_model(workspace, workspace.models) == model_tag  # idempotent


def test_a_known_user_gets_scored_offers(server: Server) -> None:
    answers = [recommend(server, {"user_id": user, "k": 3}) for user in range(10)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json() for a in answers]
    for user, body in enumerate(bodies):
        assert body["user_id"] == user and not body["cold_start"]
        assert body["model_version"] == MODEL_VERSION
        assert body["policy_version"].startswith(MODEL_VERSION)
        assert len(body["offers"]) <= 3 and body["request_id"]
    offers = [offer for body in bodies for offer in body["offers"]]
    assert offers, "epsilon 1 should have offered something in 10 tries"
    for offer in offers:
        assert set(offer) == {"coupon_id", "score", "p_redeem", "propensity"}
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
    assert 400 <= answer.status_code < 500
    assert field in {str(part) for error in answer.json()["detail"] for part in error["loc"]}


def test_smoke_test_passes_and_stop_leaves_no_process(
    workspace: Workspace, bento: tuple[str, str]
) -> None:
    from serving.server import start_server
    from serving.smoke import smoke_test

    with start_server(workspace, bento[1], free_port()) as server:
        answer = smoke_test(server.base_url)
        groups = server.pgids
    assert answer["model_version"] == MODEL_VERSION
    workers = int(workspace.params["serving"]["workers"])
    assert len(groups) >= 1 + workers  # circus gives every worker a session of its own
    for pgid in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)


def test_a_busy_port_is_refused_rather_than_mistaken_for_ready(
    workspace: Workspace, bento: tuple[str, str], server: Server
) -> None:
    from serving.server import ServerFailed, start_server

    busy = int(server.base_url.rsplit(":", 1)[1])
    with pytest.raises(ServerFailed, match="in use"):
        start_server(workspace, bento[1], busy)


def test_smoke_test_fails_when_nothing_answers() -> None:
    from serving.smoke import SmokeTestFailed, smoke_test

    with pytest.raises(SmokeTestFailed):
        smoke_test(f"http://127.0.0.1:{free_port()}", timeout_s=2)


def test_a_release_is_recorded_and_becomes_the_champion(tmp_path) -> None:
    from couponflow.workspace import init_workspace, run
    from serving.release import current_release, record_release

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
