"""The budget stage: the plan that ships with the model spends the day's budget over the
decisions the service should expect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from couponflow.artefacts import POLICY_FILE
from couponflow.config import Workspace
from couponflow.features import USER_FEATURES, default_user_features
from couponflow.model import CouponNet
from couponflow.policy import INELIGIBLE, BudgetPlan, best_arms, with_control
from tests.conftest import value_cost
from tests.helpers.catalogue import catalogue
from tests.helpers.workspaces import N_USERS, simulated_workspace
from training.budget import main, make_plan, plan_budget, population_scores

EPSILON = 0.05


def unconstrained_spend(value: np.ndarray, cost: np.ndarray) -> float:
    return float(cost[np.arange(len(cost)), best_arms(value, cost, 0.0)].sum())


@pytest.mark.parametrize("decision_share", [1.0, 0.5])
def test_a_binding_budget_is_planned_to_be_spent(decision_share: float) -> None:
    value, cost = value_cost(4_000, 6)
    budget = 0.3 * unconstrained_spend(value, cost)
    decisions = decision_share * len(value)
    plan = plan_budget(value, cost, "2026-01-10", budget, decisions, EPSILON)
    assert plan.multiplier > 0
    assert plan.budget_per_decision == pytest.approx(budget / decisions)
    assert 0.97 * budget < plan.planned_spend <= budget * (1 + 1e-9)
    assert 0 < plan.planned_offer_rate < 1


def test_fewer_decisions_mean_a_bigger_budget_each_and_a_lower_multiplier() -> None:
    value, cost = value_cost(4_000, 6)
    budget = 0.3 * unconstrained_spend(value, cost)
    every = plan_budget(value, cost, "2026-01-10", budget, len(value), EPSILON)
    half = plan_budget(value, cost, "2026-01-10", budget, len(value) / 2, EPSILON)
    assert half.multiplier < every.multiplier
    assert half.planned_offer_rate > every.planned_offer_rate


def test_a_loose_budget_plans_the_unconstrained_policy() -> None:
    value, cost = value_cost(4_000, 6)
    plan = plan_budget(value, cost, "2026-01-10", 1e9, len(value), 0.0)
    assert plan.multiplier == 0.0
    assert plan.planned_offer_rate == pytest.approx((value[:, 1:].max(axis=1) > 0).mean())
    assert plan.planned_spend == pytest.approx(unconstrained_spend(value, cost))


def test_users_at_their_cap_get_no_coupon_arm() -> None:
    users = np.stack([default_user_features()] * 4)
    users[:, USER_FEATURES.index("offers_7d")] = [0, 2, 5, 9]
    arms = with_control(catalogue())
    value, cost = population_scores(CouponNet(), users, arms, 0.3, max_offers_7d=5)
    assert (value[2:, 1:] == INELIGIBLE).all() and np.isfinite(value[:2]).all()
    assert (cost[:, 1:] > 0).all() and (cost[:, 0] == 0).all()


@pytest.fixture(scope="module")
def budget_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return simulated_workspace(tmp_path_factory.mktemp("budget"))


def test_the_stage_plans_tomorrow_from_the_newest_features(
    budget_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from couponflow.landing import offline_days, read_offline

    monkeypatch.chdir(budget_workspace.root)
    main()
    plan = BudgetPlan.read(budget_workspace.models / POLICY_FILE)
    assert plan == make_plan(budget_workspace)  # deterministic
    days = offline_days(budget_workspace)
    assert plan.day == str((pd.Timestamp(days[-1]) + pd.Timedelta(days=1)).date())
    policy = budget_workspace.params["policy"]
    assert plan.daily_budget == pytest.approx(policy["budget_per_user"] * N_USERS)
    logged = np.mean([len(read_offline(budget_workspace, "offers", [d])) for d in days])
    assert plan.expected_decisions == pytest.approx(logged)
    assert 0.3 * N_USERS < plan.expected_decisions < N_USERS
    assert plan.epsilon == policy["epsilon"]
    assert 0 < plan.planned_spend <= plan.daily_budget  # exploration spends, within budget
