"""The live policy in process (no HTTP server; tests/test_serving.py covers that): the
context category, the 7-day cap and the day's budget shape what a shopper is offered."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from couponflow.artefacts import CATALOGUE_FILE, POLICY_FILE
from couponflow.config import HOME_ENV, Workspace
from couponflow.features import USER_FEATURES
from couponflow.landing import offline_days, read_offline
from couponflow.policy import BudgetPlan, LocalSpend, SpendStore, eligible, score, with_control
from serving.runtime.recommender import Recommender
from tests.conftest import LOCAL_REDIS
from tests.helpers.workspaces import N_USERS, simulated_workspace

pytestmark = pytest.mark.integration  # a Feast store, SQLite and Redis spend stores

EXPLORE_ALL = BudgetPlan("2026-01-04", 0.0, 1e6, 1_000.0, 1e3, 1.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def recommender_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The budget tests' world, materialised in its SQLite online store."""
    from feature_repo.store import apply_definitions, materialise_day, open_store

    with pytest.MonkeyPatch.context() as mp:
        ws = simulated_workspace(tmp_path_factory.mktemp("recommender"))
        mp.setenv(HOME_ENV, str(ws.root))
        store = open_store(ws)
        apply_definitions(store)
        for day in offline_days(ws):
            materialise_day(store, day)
    return ws


def model_dir(ws: Workspace, plan: BudgetPlan, tmp_path: Path) -> Path:
    """What the service loads: the weights, the plan and the newest catalogue."""
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes((ws.models / "model.pt").read_bytes())
    plan.write(folder / POLICY_FILE)
    read_offline(ws, "coupons", offline_days(ws)[-1:]).to_parquet(folder / CATALOGUE_FILE)
    return folder


def recommender(
    ws: Workspace, plan: BudgetPlan, tmp_path: Path, **kw: int | SpendStore | np.random.Generator
) -> Recommender:
    return Recommender(model_dir(ws, plan, tmp_path), ws, offline_days(ws)[-1], **kw)


def offered(rec: Recommender, **kw: str) -> list[str]:
    """Coupon ids offered to every user once (slates of 3)."""
    return [
        offer["coupon_id"]
        for user in range(N_USERS)
        for offer in rec.recommend(user, 3, **kw)["offers"]
    ]


def test_a_page_category_limits_offers_to_its_own_and_site_wide_coupons(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    rec = recommender(recommender_workspace, EXPLORE_ALL, tmp_path)
    category = rec.catalogue.set_index("coupon_id")["category"]
    anywhere = set(category[offered(rec)])
    on_home = set(category[offered(rec, category="home")])
    assert {"home", "all"} < anywhere  # other categories do get offered elsewhere ...
    assert len(anywhere) > 2
    assert on_home == {"home", "all"}  # ... but not on a home page


def test_users_at_their_weekly_cap_get_nothing(
    recommender_workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(recommender_workspace.params["policy"], "max_offers_7d", 1)
    rec = recommender(recommender_workspace, EXPLORE_ALL, tmp_path)
    offers_7d = read_offline(recommender_workspace, "offers", offline_days(recommender_workspace))
    capped = set(offers_7d[offers_7d["coupon_id"].notna()]["user_id"])
    assert capped and len(capped) < N_USERS
    got = {user for user in range(N_USERS) if rec.recommend(user, 3)["offers"]}
    assert got and not got & capped


def test_the_days_budget_is_never_overspent(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    tight = replace(EXPLORE_ALL, daily_budget=2.0, expected_decisions=N_USERS)
    rec = recommender(recommender_workspace, tight, tmp_path, workers=2)
    offers = offered(rec)
    day = offline_days(recommender_workspace)[-1]
    spent = rec.pacer.store.read(day)
    assert spent.decisions == N_USERS
    assert 0.8 < spent.cost <= 1.0  # this worker's half of the day's budget, spent
    assert 0 < len(offers) < N_USERS  # exploration offers stopped when the money ran out


def share_a_budget(
    recommender_workspace: Workspace, tmp_path: Path, stores: list[SpendStore]
) -> None:
    """Two recommenders (two workers) over one spend store, 8 threads at once: together
    they spend the whole day's budget, never more."""
    tight = replace(EXPLORE_ALL, daily_budget=2.0, expected_decisions=N_USERS)
    recs = [
        recommender(recommender_workspace, tight, tmp_path / str(i), spend=store)
        for i, store in enumerate(stores)
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: recs[u % 2].recommend(u, 3), range(N_USERS)))
    spent = stores[0].read(offline_days(recommender_workspace)[-1])
    assert spent.decisions == N_USERS
    assert 1.6 < spent.cost <= 2.0  # the whole day's budget, not a share, and never more
    assert sum(a["spent"] for a in answers) == pytest.approx(spent.cost)


def test_two_workers_sharing_a_sqlite_spend_never_overspend_the_day(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    from serving.runtime.spend import SqliteSpend

    share_a_budget(
        recommender_workspace, tmp_path, [SqliteSpend(tmp_path / "spend.db") for _ in range(2)]
    )


@pytest.mark.redis
def test_two_workers_sharing_a_redis_spend_never_overspend_the_day(
    recommender_workspace: Workspace, tmp_path: Path, redis_prefix_clean: str
) -> None:
    from serving.runtime.spend import RedisSpend, redis_client

    client = redis_client(LOCAL_REDIS)
    share_a_budget(
        recommender_workspace, tmp_path, [RedisSpend(client, redis_prefix_clean) for _ in range(2)]
    )


class BrokenStore:
    """A feature reader whose store is down (it raises) or hung (it never answers in
    time), for the service's loop (`read_async`) and for threads (a call)."""

    def __init__(self, hangs: bool) -> None:
        self.hangs = hangs

    def __call__(self, user_id: int) -> None:
        if self.hangs:
            time.sleep(5)
        raise ConnectionError("feature store unreachable")

    async def read_async(self, user_id: int) -> None:
        if self.hangs:
            await asyncio.sleep(5)
        raise ConnectionError("feature store unreachable")


def test_a_failing_or_slow_feature_store_gives_a_fast_degraded_answer(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    rec = recommender(recommender_workspace, EXPLORE_ALL, tmp_path, rng=np.random.default_rng(0))
    assert rec.recommend(1, 3)["degraded"] is None
    assert asyncio.run(rec.recommend_async(1, 3))["degraded"] is None

    for hangs in (False, True):
        rec.user_features = BrokenStore(hangs)
        for recommend in (rec.recommend, lambda *a: asyncio.run(rec.recommend_async(*a))):
            answers = []
            for _ in range(5):
                started = time.perf_counter()
                answers.append(answer := recommend(1, 3))
                assert time.perf_counter() - started < rec.feature_timeout_s + 0.5
                assert answer["degraded"] == "features" and answer["cold_start"] is False
            # cold-start features still make offers (exploration may pick none at times)
            assert any(answer["offers"] for answer in answers)


def test_a_failing_spend_store_makes_no_offer(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    class Broken(LocalSpend):
        def add(self, day: str, cost: float, limit: float) -> bool:
            raise ConnectionError("spend store unreachable")

    rec = recommender(recommender_workspace, EXPLORE_ALL, tmp_path, spend=Broken())
    answer = rec.recommend(1, 3)
    assert answer["degraded"] == "spend" and answer["offers"] == [] and answer["spent"] == 0.0


def test_explain_names_the_inputs_that_drove_each_offer(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    rec = recommender(recommender_workspace, EXPLORE_ALL, tmp_path)
    offers = [o for user in range(20) for o in rec.recommend(user, 3, explain=True)["offers"]]
    assert offers
    for offer in offers:
        drivers = offer["drivers"]
        assert 0 < len(drivers) <= 3 and {d["feature"] for d in drivers} <= set(USER_FEATURES)
        effects = [abs(d["effect"]) for d in drivers]
        assert effects == sorted(effects, reverse=True)
        assert all(d["value"] != d["baseline"] for d in drivers)
    cold = rec.recommend(10**9, 3, explain=True)["offers"]
    assert all(offer["drivers"] == [] for offer in cold)  # nothing differs from cold start
    assert all(o["drivers"] is None for o in rec.recommend(1, 3)["offers"])


def test_a_driver_effect_is_the_profit_its_value_adds(
    recommender_workspace: Workspace, tmp_path: Path
) -> None:
    """Honest: resetting the top driver to its baseline changes the score by its effect."""
    rec = recommender(recommender_workspace, EXPLORE_ALL, tmp_path)
    user, offer = next(
        (u, answer["offers"][0])
        for u in range(N_USERS)
        if (answer := rec.recommend(u, 1, explain=True))["offers"]
    )
    top = offer["drivers"][0]
    features = rec.user_features(user)
    arms = with_control(eligible(rec.catalogue, rec.as_of))
    arm = int(np.flatnonzero(arms["coupon_id"].eq(offer["coupon_id"]).fillna(False))[0])
    reset, at = features.copy(), USER_FEATURES.index(top["feature"])
    reset[at] = top["baseline"]
    full = score(rec.net, features[None, :], arms, rec.margin).incremental_profit[0, arm]
    without = score(rec.net, reset[None, :], arms, rec.margin).incremental_profit[0, arm]
    assert full - without == pytest.approx(top["effect"], rel=1e-4, abs=1e-6)
