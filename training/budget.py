"""DVC stage `budget`: the day's spending plan shipped with the model (models/policy.json).

Tomorrow's population (every known user's features as of the newest feature day) is
scored with the trained model against the catalogue that is valid tomorrow, and the
multiplier is found that spends the daily budget (`policy.budget_per_user` x users) over
the decisions the service should expect (the logged decisions per day over the last week),
exploration included. The service starts the day at that multiplier and paces from there.

Run from the workspace root: `python -m training.budget`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from couponflow.artefacts import MODEL_WEIGHTS, POLICY_FILE
from couponflow.config import Workspace
from couponflow.features import COUPON_FEATURES, USER_FEATURES
from couponflow.landing import offline_days, read_offline
from couponflow.model import Recommender, load_model
from couponflow.policy import (
    INELIGIBLE,
    BudgetPlan,
    best_arms,
    eligible,
    exploration_cost,
    solve_multiplier,
    user_cap_mask,
    with_control,
)
from training.scoring import score_users

DECISION_DAYS = 7  # logged days the expected number of decisions is averaged over


def population_scores(
    net: Recommender,
    users: np.ndarray,
    arms: pd.DataFrame,
    margin: float,
    max_offers_7d: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(value, cost) of every user and arm: expected incremental profit, INELIGIBLE for the
    coupons of users at their 7-day offer cap, and expected cost."""
    scores = score_users(net, users, arms, margin, progress=True)
    value = np.array(scores.incremental_profit)
    value[user_cap_mask(users, max_offers_7d), 1:] = INELIGIBLE
    return value, scores.expected_cost


def plan_budget(
    value: np.ndarray,
    cost: np.ndarray,
    day: str,
    daily_budget: float,
    expected_decisions: float,
    epsilon: float,
) -> BudgetPlan:
    """The plan for `day`: the multiplier at which decisions like these rows (a random
    user each) spend `daily_budget` over `expected_decisions`, epsilon-greedy as served."""
    budget_per_decision = daily_budget / expected_decisions
    multiplier = solve_multiplier(value, cost, budget_per_decision * len(value), epsilon)
    greedy = best_arms(value, cost, multiplier)
    offered = np.broadcast_to(np.arange(value.shape[1]) > 0, value.shape).astype(float)

    def per_decision(x: np.ndarray) -> float:
        """Mean of x over the rows under the epsilon-greedy choice."""
        chosen = x[np.arange(len(x)), greedy]
        return float(np.mean((1 - epsilon) * chosen + epsilon * exploration_cost(value, x)))

    return BudgetPlan(
        day=day,
        multiplier=multiplier,
        daily_budget=daily_budget,
        expected_decisions=expected_decisions,
        budget_per_decision=budget_per_decision,
        epsilon=epsilon,
        planned_offer_rate=per_decision(offered),
        planned_spend=per_decision(cost) * expected_decisions,
    )


def newest_partition(ws: Workspace, view: str) -> str:
    """The newest date of a feature view's offline partitions."""
    days = sorted(p.name.removeprefix("date=") for p in (ws.features / view).glob("date=*"))
    if not days:
        raise FileNotFoundError(f"no {view} features in {ws.features}: publish a day first")
    return days[-1]


def expected_decisions(ws: Workspace, n_users: int) -> float:
    """Mean logged decisions (offers rows, "no coupon" included) per day over the last
    DECISION_DAYS offline days; every user once when nothing is logged yet."""
    days = offline_days(ws)[-DECISION_DAYS:]
    counts = [len(read_offline(ws, "offers", [d])) for d in days]
    return float(np.mean(counts)) if counts and sum(counts) else float(n_users)


def make_plan(ws: Workspace) -> BudgetPlan:
    """Score tomorrow's population with models/model.pt and plan the day's budget."""
    params = ws.params["policy"]
    newest = newest_partition(ws, "user_activity")
    day = pd.Timestamp(newest) + pd.Timedelta(days=1)  # the day these features serve
    frame = pd.read_parquet(ws.features / "user_activity" / f"date={newest}" / "part.parquet")
    users = frame[USER_FEATURES].to_numpy(np.float32)
    catalogue = read_offline(ws, "coupons", offline_days(ws)[-1:])
    stats = pd.read_parquet(ws.features / "coupon_stats" / f"date={newest}" / "part.parquet")
    catalogue = catalogue.merge(
        stats[["coupon_id", *COUPON_FEATURES]].astype({"coupon_id": "string"}),
        on="coupon_id",
        how="left",  # a coupon launched today has no record yet
    )
    arms = with_control(eligible(catalogue, day))
    net, _ = load_model(ws.models / MODEL_WEIGHTS)
    value, cost = population_scores(
        net, users, arms, float(ws.params["world"]["margin"]), params.get("max_offers_7d")
    )
    return plan_budget(
        value,
        cost,
        day=str(day.date()),
        daily_budget=float(params["budget_per_user"]) * len(users),
        expected_decisions=expected_decisions(ws, len(users)),
        epsilon=float(params["epsilon"]),
    )


def main() -> None:
    ws = Workspace(Path.cwd())
    plan = make_plan(ws)
    plan.write(ws.models / POLICY_FILE)
    print(
        f"budget {plan.day}: {plan.daily_budget:.2f} over ~{plan.expected_decisions:.0f} "
        f"decisions, multiplier {plan.multiplier:.3f}, offer rate {plan.planned_offer_rate:.1%},"
        f" planned spend {plan.planned_spend:.2f}"
    )


if __name__ == "__main__":
    main()
