"""Shared fixtures. Every test that touches a tool gets its own workspace under tmp, so
tests never see the demo's state or ~/bentoml, and Airflow keeps its metadata in tmp."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from couponflow.artefacts import POLICY_FILE
from couponflow.config import (
    HOME_ENV,
    PROJECT_ROOT,
    RedisSettings,
    Workspace,
    load_params,
    set_param,
)
from couponflow.processes import free_port
from serving.deploy.server import Server
from tests.browser import browser  # noqa: F401  (the fixture: headless Chromium, or a skip)

LOCAL_REDIS = RedisSettings("127.0.0.1", 6379, None)  # the machine's, no password
# The layers: unit (no mark: our code in this process, seconds; `make test-unit`),
# integration (a tool, a server, Redis or child processes) and e2e (the real pipeline).
# A test is integration when its module or itself says so, or when it takes a fixture that
# builds a bento or starts a server, or needs Redis or PostgreSQL.
SERVER_FIXTURES = {"bento", "server"}
SERVICE_MARKS = ("redis", "postgres")

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="couponflow-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TINY_WORLD = {"world.n_users": 400, "world.history_days": 5}
# The gate's bars lowered, so a pipeline test's release path runs whatever a tiny world's
# model scores.
GATE_OPEN = {
    "gate.min_auc": 0.0,
    "gate.max_ece": 1.0,
    "gate.min_coupon_evidence": 0,
    "gate.min_lift_over_baselines": -1e9,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs_service = any(item.get_closest_marker(m) for m in SERVICE_MARKS)
        if needs_service or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def recorded_alerts(ws: Workspace) -> list[dict]:
    """Every alert the workspace recorded (couponflow.alerts), oldest first."""
    from couponflow.alerts import alerts_path

    path = alerts_path(ws)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def tiny_params() -> dict:
    """The project's params with a tiny world."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    for key, value in TINY_WORLD.items():
        set_param(params, key, value)
    return params


def value_cost(
    n: int, m: int, seed: int = 0, mean_return: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Random (value, cost) matrices for policy tests: arm 0 ("no coupon") worth 0 at
    cost 0, coupons costing > 0 and worth `mean_return` times their cost on average."""
    rng = np.random.default_rng(seed)
    cost = np.zeros((n, m))
    cost[:, 1:] = rng.gamma(2.0, 1.0, (n, m - 1))
    value = np.zeros((n, m))
    value[:, 1:] = cost[:, 1:] * rng.normal(mean_return, 1.0, (n, m - 1))
    return value, cost


@pytest.fixture
def redis_prefix_clean() -> Iterator[str]:
    """A unique Redis key prefix on 127.0.0.1:6379 (skips when no Redis answers), and no key
    of it left behind."""
    import uuid

    import redis

    from serving.runtime.spend import redis_client

    client = redis_client(LOCAL_REDIS)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"couponflow-test:{uuid.uuid4().hex}"
    yield prefix
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    assert not list(client.scan_iter(f"{prefix}:*"))


# -- a real BentoML server over a tiny workspace (tests/test_serving*.py) ----------------------
MODEL_VERSION = "test-0001"
N_USERS = 300


def served_workspace(root: Path, **overrides: object) -> Workspace:
    """Four days of a 300-user world in the offline and online stores, and a model, as a
    full workspace (git + DVC: releases commit). Exploration is total (epsilon 1) so an
    untrained model still makes offers to check, and nobody is held out unless
    `overrides` (dotted params) say otherwise. Feature reads and pushes get a second, not
    params.yaml's 0.1 s: on a busy CI machine a push's read-modify-write took longer and the
    answer said `pushed: false`; the tests of the deadline set their own."""
    from couponflow.landing import load_offline
    from couponflow.model import CouponNet, save_model
    from couponflow.workspace import init_workspace
    from couponflow.world import World
    from feature_repo.store import (
        apply_definitions,
        materialise_day,
        open_store,
        publish_features,
    )
    from training.budget import make_plan

    params = {
        "world.n_users": N_USERS,
        "policy.epsilon": 1.0,
        "policy.holdout_share": 0.0,
        "serving.feature_timeout_s": 1.0,
    }
    ws = init_workspace(root, {**params, **overrides})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(ws.root))
        world = World(ws.params["world"])
        start = pd.Timestamp(ws.params["world"]["start_date"])
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
    return ws


@pytest.fixture(scope="session")
def serving_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """The served world of the serving tests, named by $COUPONFLOW_HOME while they run."""
    ws = served_workspace(tmp_path_factory.mktemp("serving") / "ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(ws.root))
        yield ws


@pytest.fixture(scope="session")
def bento(serving_workspace: Workspace) -> tuple[str, str]:
    """(model tag, bento tag) in the workspace's own BentoML store."""
    from serving.deploy.bento import build_bento, store_model

    model_tag = store_model(serving_workspace, serving_workspace.models)
    return model_tag, build_bento(serving_workspace, model_tag)


@pytest.fixture(scope="session")
def server(serving_workspace: Workspace, bento: tuple[str, str]) -> Iterator[Server]:
    from serving.deploy.server import start_server

    with start_server(serving_workspace, bento[1], free_port()) as running:
        yield running
