"""The live policy behind the HTTP service: one user's features, the eligible arms, their
scores and an exploring choice, all through the shared policy code so that shoppers get
exactly what the gate evaluated.

Kept free of BentoML so the service module stays a thin adapter that imports quickly
(bento builds import it) and this logic can be exercised without a server.
"""

from __future__ import annotations

import threading
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from couponflow.config import Workspace
from couponflow.features import default_user_features
from couponflow.model import load_model
from couponflow.policy import (
    INELIGIBLE,
    BudgetPlan,
    LocalSpend,
    Pacer,
    SpendStore,
    choose,
    eligible,
    lagrangian,
    score,
    user_cap_mask,
    with_control,
)
from feature_repo.store import online_coupon_stats, online_user_features, open_store
from serving import CATALOGUE_FILE, POLICY_FILE


class Recommender:
    """A loaded model, its coupon catalogue, its budget plan and the workspace's policy knobs.

    `model_dir` holds model.pt, the budget plan and the catalogue snapshot, kept in memory
    with each coupon's stats read once from the online store (per request only the user's
    row is read online); `as_of` is the snapshot's day and the policy's clock unless a
    request names another time: the world is simulated, so the wall clock says nothing
    about which coupons are valid, and offline evaluation judges eligibility at the
    catalogue's day too.

    The day's budget is paced over `spend` (default: an in-process counter). An in-process
    counter sees only this worker's requests, so it paces this worker's share of the plan:
    with `workers` such processes behind a balancer the day stays within its budget.
    """

    def __init__(
        self,
        model_dir: Path,
        ws: Workspace,
        as_of: str,
        workers: int = 1,
        spend: SpendStore | None = None,
    ) -> None:
        torch.set_num_threads(1)  # tiny per-request batches; parallelism comes from workers
        self.net, meta = load_model(model_dir / "model.pt")
        self.model_version: str = meta["version"]
        store = open_store(ws)
        self.catalogue = online_coupon_stats(store, pd.read_parquet(model_dir / CATALOGUE_FILE))
        self.as_of = pd.Timestamp(as_of)
        self.margin = float(ws.params["world"]["margin"])
        self.max_offers_7d = ws.params["policy"].get("max_offers_7d")
        plan = BudgetPlan.read(model_dir / POLICY_FILE)
        self.epsilon = plan.epsilon  # the exploration the plan's spend was planned with
        # A shared store counts every worker's spend against the whole plan; the in-process
        # default counts this worker's alone, against its share.
        self.pacer = Pacer(plan, spend) if spend else Pacer(plan.split(workers), LocalSpend())
        self.policy_version = (
            f"{self.model_version}-eps{self.epsilon:g}-lambda{plan.multiplier:.3g}"
        )
        self.user_features = partial(online_user_features, store)
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()  # requests run on a thread pool; Generator isn't safe
        self._warm_up()

    def recommend(
        self, user_id: int, k: int, now: datetime | None = None, category: str | None = None
    ) -> dict[str, Any]:
        """Up to k offers for a user, each with its expected incremental profit, P(redeem)
        and the propensity of its choice (what off-policy evaluation needs logged).

        `category`, the page's category when the request names one, rules out coupons
        scoped to other categories; a user at the 7-day offer cap gets none; the day's
        pacing prices cost and stops offers the budget cannot pay for.
        """
        features = self.user_features(user_id)
        cold_start = features is None
        if features is None:
            features = default_user_features()
        clock = self._clock(now)
        day = clock.strftime("%Y-%m-%d")
        arms = with_control(eligible(self.catalogue, clock, category))
        scores = score(self.net, features[None, :], arms, self.margin)
        cost = scores.expected_cost[0]
        pace = self.pacer.pace(day)
        value = lagrangian(scores.incremental_profit[0], cost, pace.multiplier)
        if user_cap_mask(features[None, :], self.max_offers_7d)[0]:
            value[1:] = INELIGIBLE
        with self._rng_lock:
            picks = choose(value, k, self.epsilon, self._rng, cost, pace.allowance)
        if not self.pacer.record(day, float(sum(cost[arm] for arm, _ in picks))):
            picks = []  # another request spent the rest of the budget meanwhile
        offers = [
            {
                "coupon_id": str(arms["coupon_id"].iloc[arm]),
                "score": float(scores.incremental_profit[0, arm]),
                "p_redeem": float(scores.p_redeem[0, arm]),
                "propensity": propensity,
            }
            for arm, propensity in picks
        ]
        return {
            "model_version": self.model_version,
            "policy_version": self.policy_version,
            "cold_start": cold_start,
            "offers": offers,
        }

    def _warm_up(self) -> None:
        """Run Feast and torch once, or the first shopper waits ~0.5 s; the decision is
        not counted against the day's budget."""
        features = default_user_features()[None, :]
        self.user_features(-1)
        score(self.net, features, with_control(eligible(self.catalogue, self.as_of)), self.margin)

    def _clock(self, now: datetime | None) -> pd.Timestamp:
        """The moment eligibility is judged at, naive UTC like the catalogue's columns."""
        if now is None:
            return self.as_of
        stamp = pd.Timestamp(now)
        return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
