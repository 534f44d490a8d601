"""The live policy in process (no HTTP server; tests/test_serving.py covers that): the
context category, the 7-day cap and the day's budget shape what a shopper is offered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from couponflow.config import HOME_ENV, Workspace
from couponflow.landing import offline_days, read_offline
from couponflow.policy import BudgetPlan
from serving import CATALOGUE_FILE, POLICY_FILE
from serving.recommender import Recommender
from tests.test_budget import N_USERS, simulated_workspace

EXPLORE_ALL = BudgetPlan("2026-01-04", 0.0, 1e6, 1_000.0, 1e3, 1.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
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
    folder.mkdir()
    (folder / "model.pt").write_bytes((ws.models / "model.pt").read_bytes())
    plan.write(folder / POLICY_FILE)
    read_offline(ws, "coupons", offline_days(ws)[-1:]).to_parquet(folder / CATALOGUE_FILE)
    return folder


def recommender(ws: Workspace, plan: BudgetPlan, tmp_path: Path, **kw: int) -> Recommender:
    return Recommender(model_dir(ws, plan, tmp_path), ws, offline_days(ws)[-1], **kw)


def offered(rec: Recommender, **kw: str) -> list[str]:
    """Coupon ids offered to every user once (slates of 3)."""
    return [
        offer["coupon_id"]
        for user in range(N_USERS)
        for offer in rec.recommend(user, 3, **kw)["offers"]
    ]


def test_a_page_category_limits_offers_to_its_own_and_site_wide_coupons(
    workspace: Workspace, tmp_path: Path
) -> None:
    rec = recommender(workspace, EXPLORE_ALL, tmp_path)
    category = rec.catalogue.set_index("coupon_id")["category"]
    anywhere = set(category[offered(rec)])
    on_home = set(category[offered(rec, category="home")])
    assert {"home", "all"} < anywhere  # other categories do get offered elsewhere ...
    assert len(anywhere) > 2
    assert on_home == {"home", "all"}  # ... but not on a home page


def test_users_at_their_weekly_cap_get_nothing(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(workspace.params["policy"], "max_offers_7d", 1)
    rec = recommender(workspace, EXPLORE_ALL, tmp_path)
    offers_7d = read_offline(workspace, "offers", offline_days(workspace))
    capped = set(offers_7d[offers_7d["coupon_id"].notna()]["user_id"])
    assert capped and len(capped) < N_USERS
    got = {user for user in range(N_USERS) if rec.recommend(user, 3)["offers"]}
    assert got and not got & capped


def test_the_days_budget_is_never_overspent(workspace: Workspace, tmp_path: Path) -> None:
    tight = replace(EXPLORE_ALL, daily_budget=2.0, expected_decisions=N_USERS)
    rec = recommender(workspace, tight, tmp_path, workers=2)
    offers = offered(rec)
    day = offline_days(workspace)[-1]
    spent = rec.pacer.store.read(day)
    assert spent.decisions == N_USERS
    assert 0.8 < spent.cost <= 1.0  # this worker's half of the day's budget, spent
    assert 0 < len(offers) < N_USERS  # exploration offers stopped when the money ran out
