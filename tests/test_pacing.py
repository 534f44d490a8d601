"""Online pacing: a simulated day of requests against known costs spends close to the
budget and never past it, whatever the plan's multiplier got wrong."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from couponflow.policy import (
    BudgetPlan,
    DaySpend,
    LocalSpend,
    Pacer,
    best_arms,
    choose,
    lagrangian,
    solve_multiplier,
)
from tests.conftest import value_cost

DAY = "2026-01-10"
EPSILON = 0.05


def plan(multiplier: float, budget: float = 100.0, decisions: float = 1_000.0) -> BudgetPlan:
    return BudgetPlan(DAY, multiplier, budget, decisions, budget / decisions, EPSILON, 0.5, budget)


def simulate_day(
    plan_multiplier: float | None, demand: float, decisions: int = 4_000, seed: int = 1
) -> tuple[np.ndarray, float, float]:
    """Requests from random users, each decided like the service does (pace, price cost,
    choose within the allowance, record). The unconstrained policy would spend 2.5 times
    the budget. `plan_multiplier` None: the right one. `demand`: actual over expected
    decisions. Returns the spend after each decision, the budget and the right multiplier."""
    rng = np.random.default_rng(seed)
    value, cost = value_cost(20_000, 6, mean_return=0.8)
    per_decision = cost[np.arange(len(cost)), best_arms(value, cost, 0.0)].mean() / 2.5
    right = solve_multiplier(value, cost, per_decision * len(value), epsilon=EPSILON)
    budget = per_decision * decisions
    pacer = Pacer(
        plan(right if plan_multiplier is None else plan_multiplier, budget, decisions),
        LocalSpend(),
    )
    spent = []
    for user in rng.integers(len(value), size=int(decisions * demand)):
        pace = pacer.pace(DAY)
        net = lagrangian(value[user], cost[user], pace.multiplier)
        picks = choose(net, 1, EPSILON, rng, cost[user], pace.allowance)
        assert pacer.record(DAY, sum(cost[user, arm] for arm, _ in picks))
        spent.append(pacer.store.read(DAY).cost)
    return np.array(spent), budget, right


@pytest.mark.parametrize("plan_multiplier", [None, 0.0, 5.0])
def test_a_day_of_requests_tracks_the_budget_and_never_exceeds_it(
    plan_multiplier: float | None,
) -> None:
    spent, budget, right = simulate_day(plan_multiplier, demand=1.0)
    assert plan_multiplier is None or abs(plan_multiplier - right) > 1.0  # really off
    assert spent.max() <= budget
    assert spent[-1] >= 0.95 * budget
    n = len(spent)
    for share in (0.25, 0.5, 0.75):  # on the plan's pace through the day
        assert spent[int(share * n) - 1] == pytest.approx(share * budget, abs=0.06 * budget)


def test_more_requests_than_expected_stop_at_the_budget() -> None:
    spent, budget, _ = simulate_day(None, demand=1.3)
    assert spent.max() <= budget
    assert spent[-1] >= 0.98 * budget


def test_the_multiplier_follows_spend_against_the_plan() -> None:
    pacer = Pacer(plan(1.0), LocalSpend())
    on_plan = pacer.multiplier(DaySpend(cost=50.0, decisions=500))
    lagging = pacer.multiplier(DaySpend(cost=40.0, decisions=500))
    ahead = pacer.multiplier(DaySpend(cost=60.0, decisions=500))
    assert on_plan == pytest.approx(1.0)
    assert lagging < on_plan < ahead
    assert pacer.multiplier(DaySpend(cost=0.0, decisions=1_000)) >= 0.0
    bounded = pacer.multiplier(DaySpend(cost=100.0, decisions=0))
    assert bounded == pytest.approx(np.expm1(np.log(2.0) + pacer.max_shift))


def test_a_plan_at_zero_can_still_be_raised() -> None:
    pacer = Pacer(plan(0.0), LocalSpend())
    assert pacer.multiplier(DaySpend(cost=60.0, decisions=500)) > 0.0
    assert pacer.multiplier(DaySpend(cost=40.0, decisions=500)) == 0.0


def test_the_hard_stop_refuses_what_the_budget_cannot_pay() -> None:
    pacer = Pacer(plan(1.0, budget=10.0), LocalSpend())
    assert pacer.record(DAY, 9.0)
    assert pacer.pace(DAY).allowance == pytest.approx(1.0)
    assert not pacer.record(DAY, 2.0)  # would take the day to 11
    assert pacer.store.read(DAY) == DaySpend(cost=9.0, decisions=2)
    assert pacer.pace("2026-01-11").allowance == 10.0  # a new day, a new budget


def test_concurrent_requests_never_overspend() -> None:
    store, limit = LocalSpend(), 50.0

    def spend() -> None:
        for _ in range(500):
            store.add(DAY, 0.3, limit)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read(DAY).decisions == 4_000
    assert limit - 0.3 < store.read(DAY).cost <= limit


def test_a_plan_round_trips_and_splits_across_workers(tmp_path: Path) -> None:
    original = plan(0.7)
    original.write(tmp_path / "policy.json")
    assert BudgetPlan.read(tmp_path / "policy.json") == original
    half = original.split(2)
    assert half.daily_budget == 50.0 and half.expected_decisions == 500.0
    assert half.multiplier == 0.7 and half.budget_per_decision == original.budget_per_decision
