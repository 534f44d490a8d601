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
from couponflow.policy import choose, eligible, lagrangian, score, with_control
from feature_repo.store import online_coupon_stats, online_user_features, open_store
from serving import CATALOGUE_FILE


class Recommender:
    """A loaded model, its coupon catalogue and the workspace's policy knobs.

    `model_dir` holds model.pt and the catalogue snapshot, kept in memory with each
    coupon's stats read once from the online store (per request only the user's row is
    read online); `as_of` is the snapshot's day
    and the policy's clock unless a request names another time: the world is simulated,
    so the wall clock says nothing about which coupons are valid, and offline evaluation
    judges eligibility at the catalogue's day too.
    """

    def __init__(self, model_dir: Path, ws: Workspace, as_of: str) -> None:
        torch.set_num_threads(1)  # tiny per-request batches; parallelism comes from workers
        self.net, meta = load_model(model_dir / "model.pt")
        self.model_version: str = meta["version"]
        store = open_store(ws)
        self.catalogue = online_coupon_stats(store, pd.read_parquet(model_dir / CATALOGUE_FILE))
        self.as_of = pd.Timestamp(as_of)
        self.margin = float(ws.params["world"]["margin"])
        self.epsilon = float(ws.params["policy"]["epsilon"])
        self.multiplier = float(ws.params["policy"]["cost_multiplier"])
        self.policy_version = f"{self.model_version}-eps{self.epsilon:g}-lambda{self.multiplier:g}"
        self.user_features = partial(online_user_features, store)
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()  # requests run on a thread pool; Generator isn't safe
        self.recommend(user_id=-1, k=1)  # warm Feast and torch, or the first shopper waits ~0.5s

    def recommend(self, user_id: int, k: int, now: datetime | None = None) -> dict[str, Any]:
        """Up to k offers for a user, each with its expected incremental profit, P(redeem)
        and the propensity of its choice (what off-policy evaluation needs logged)."""
        features = self.user_features(user_id)
        cold_start = features is None
        if features is None:
            features = default_user_features()
        arms = with_control(eligible(self.catalogue, self._clock(now)))
        scores = score(self.net, features[None, :], arms, self.margin)
        value = lagrangian(scores, self.multiplier)[0]
        with self._rng_lock:
            picks = choose(value, k, self.epsilon, self._rng)
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

    def _clock(self, now: datetime | None) -> pd.Timestamp:
        """The moment eligibility is judged at, naive UTC like the catalogue's columns."""
        if now is None:
            return self.as_of
        stamp = pd.Timestamp(now)
        return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
