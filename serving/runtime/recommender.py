"""The live policy behind the HTTP service: one user's features, the eligible arms, their
scores and an exploring choice, all through the shared policy code so that shoppers get
exactly what the gate evaluated.

Kept free of BentoML so the service module stays a thin adapter that imports quickly
(bento builds import it) and this logic can be exercised without a server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pandas as pd
import torch

from couponflow.artefacts import CATALOGUE_FILE, MODEL_WEIGHTS, POLICY_FILE
from couponflow.config import Workspace
from couponflow.contract import HOLDOUT_SUFFIX
from couponflow.features import (
    COUPON_FEATURES,
    USER_FEATURES,
    default_user_features,
    fresh_counters,
)
from couponflow.model import load_model
from couponflow.policy import (
    INELIGIBLE,
    Arms,
    BudgetPlan,
    LocalSpend,
    Pacer,
    Scores,
    SpendStore,
    choose_or_hold_out,
    lagrangian,
    score,
    user_cap_mask,
)
from couponflow.records import Driver, Offer
from feature_repo.store import (
    OnlineUserReader,
    online_coupon_stats,
    open_store,
    push_user_features,
)

if TYPE_CHECKING:
    from serving.runtime.feedback import FeedbackEvent

logger = logging.getLogger(__name__)
FEATURE_TIMEOUT_S = 0.1  # default `serving.feature_timeout_s`: then answer without the store
WARM_UP_TIMEOUT_S = 10.0
DRIVERS = 3  # inputs named per offer when a request asks for an explanation


class Decision(TypedDict):
    """`Recommender.recommend`'s decision: what the service answers and logs."""

    model_version: str
    policy_version: str
    cold_start: bool
    degraded: str | None  # why, when degraded
    offers: list[Offer]
    day: str  # the policy's day and time
    at: str
    spent: float  # the cost committed against the day's budget
    seconds: dict[str, float]  # per stage: features, scoring, policy


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
    with `workers` such processes behind a balancer the day stays within its budget. The
    service passes the workspace's shared store (serving.runtime.spend), which paces the whole plan.

    A decision never waits more than `serving.feature_timeout_s` for the feature store nor
    fails with it: a failing or slow store (or spend store) gives a degraded answer, from
    cold-start features (or with no offer, when the spend cannot be counted).
    """

    def __init__(
        self,
        model_dir: Path,
        ws: Workspace,
        as_of: str,
        workers: int = 1,
        spend: SpendStore | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        torch.set_num_threads(1)  # tiny per-request batches; parallelism comes from workers
        self.net, meta = load_model(model_dir / MODEL_WEIGHTS)
        self.model_version: str = meta["version"]
        store = open_store(ws)
        catalogue = pd.read_parquet(model_dir / CATALOGUE_FILE)
        try:
            self.catalogue = online_coupon_stats(store, catalogue)
            self.stats_missing = False
        except Exception:  # any failure of the store: serve, degraded, rather than not at all
            logger.exception("coupon stats unreadable; every answer is degraded")
            self.catalogue = catalogue.assign(**dict.fromkeys(COUPON_FEATURES, np.nan))
            self.stats_missing = True
        self.arms = Arms.of(self.catalogue)  # prepared once: per request a mask and an index
        # Most requests share a clock (the catalogue's day) and a page category or none.
        self._opening = functools.lru_cache(maxsize=256)(self._open)
        serving = ws.params.get("serving", {})
        self.feature_timeout_s = float(serving.get("feature_timeout_s", FEATURE_TIMEOUT_S))
        self.as_of = pd.Timestamp(as_of)
        self.margin = float(ws.params["world"]["margin"])
        self.max_offers_7d = ws.params["policy"].get("max_offers_7d")
        plan = BudgetPlan.read(model_dir / POLICY_FILE)
        self.epsilon = plan.epsilon  # the exploration the plan's spend was planned with
        self.holdout_share = float(ws.params["policy"].get("holdout_share", 0.0))
        # A shared store counts every worker's spend against the whole plan; the in-process
        # default counts this worker's alone, against its share.
        self.pacer = Pacer(plan, spend) if spend else Pacer(plan.split(workers), LocalSpend())
        self.policy_version = (
            f"{self.model_version}-eps{self.epsilon:g}-lambda{plan.multiplier:.3g}"
        )
        self.kinds: dict[str, str] = dict(
            zip(catalogue["coupon_id"], catalogue["kind"], strict=True)
        )
        self.store = store
        self.user_features = OnlineUserReader(store)
        # Lookups run here so a hung store costs a request feature_timeout_s, not its thread.
        self._lookups = ThreadPoolExecutor(4, thread_name_prefix="feature-lookup")
        self._store_failing = False
        self._model_failing = False
        self._rng = rng or np.random.default_rng()  # exploration; seeded for reproducible runs
        self._rng_lock = threading.Lock()  # callers may use threads; a Generator is not thread-safe
        self._warm_up()

    def recommend(
        self,
        user_id: int,
        k: int,
        now: datetime | None = None,
        category: str | None = None,
        explain: bool = False,
    ) -> Decision:
        """Up to k offers for a user, each with its expected incremental profit, P(redeem)
        and the propensity of its choice (what off-policy evaluation needs logged).

        `category`, the page's category when the request names one, rules out coupons
        scoped to other categories; a user at the 7-day offer cap gets none; the day's
        pacing prices cost and stops offers the budget cannot pay for. With `explain`,
        each offer names the inputs that drove it (`drivers`). Also returns the policy's
        `day` and time (`at`), the cost committed (`spent`), why the answer is degraded,
        if it is, and the `seconds` spent on each stage (features, scoring, policy).
        """
        started = time.perf_counter()
        return self._decide(self._features(user_id), started, k, now, category, explain)

    async def recommend_async(
        self,
        user_id: int,
        k: int,
        now: datetime | None = None,
        category: str | None = None,
        explain: bool = False,
    ) -> Decision:
        """`recommend` for an event loop, all of it on the loop (~0.5 ms): the feature
        read is the store's own for a loop (OnlineUserReader.read_async), bounded by
        feature_timeout_s; no hand-over to a thread and back."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.feature_timeout_s):
                features = await self.user_features.read_async(user_id)
        except Exception as exc:  # TimeoutError included
            return self._decide(self._read_failed(exc), started, k, now, category, explain)
        return self._decide(self._read(features), started, k, now, category, explain)

    def _decide(
        self,
        looked_up: tuple[np.ndarray | None, str | None],
        started: float,
        k: int,
        now: datetime | None,
        category: str | None,
        explain: bool,
    ) -> Decision:
        """The decision of `recommend` once the user's features are read (or not)."""
        features, degraded = looked_up
        looked_up_at = time.perf_counter()
        cold_start = features is None and degraded is None
        if features is None:
            features = default_user_features()
        degraded = degraded or ("coupon_stats" if self.stats_missing else None)
        day, at, arms = self._opening(self._clock(now), category)
        scores = score(self.net, features[None, :], arms, self.margin)
        scored = time.perf_counter()
        picks: list[tuple[int, float]] = []
        spent, held_out = 0.0, False
        if not np.isfinite([scores.incremental_profit[0], scores.expected_cost[0]]).all():
            if not self._model_failing:  # log the fault once, not every request
                logger.error("model %s gives non-finite scores: no offers", self.model_version)
            self._model_failing = True
            degraded = "model"  # a decision it cannot price is never made
        else:
            picks, spent, degraded, held_out = self._choose(scores, features, day, k, degraded)
        drivers = self._drivers(features, arms, [arm for arm, _ in picks]) if explain else {}
        offers: list[Offer] = [
            {
                "coupon_id": str(arms.coupon_ids[arm]),
                "score": float(scores.incremental_profit[0, arm]),
                "p_redeem": float(scores.p_redeem[0, arm]),
                "propensity": propensity,
                "drivers": drivers.get(arm),
            }
            for arm, propensity in picks
        ]
        return {
            "model_version": self.model_version,
            # the holdout slice is logged as a policy of its own, as the A/B readout reads it
            "policy_version": self.policy_version + (HOLDOUT_SUFFIX if held_out else ""),
            "cold_start": cold_start,
            "degraded": degraded,
            "offers": offers,
            "day": day,
            "at": at,
            "spent": spent,
            "seconds": {
                "features": looked_up_at - started,
                "scoring": scored - looked_up_at,
                "policy": time.perf_counter() - scored,
            },
        }

    def _choose(
        self, scores: Scores, features: np.ndarray, day: str, k: int, degraded: str | None
    ) -> tuple[list[tuple[int, float]], float, str | None, bool]:
        """The served choice within the day's pacing: (arm, propensity) picks, the cost
        committed, why the answer is degraded (`degraded` unless the spend store fails:
        then no offer, since one it cannot count is never made) and whether the request
        fell in the random holdout slice."""
        cost = scores.expected_cost[0]
        try:
            pace = self.pacer.pace(day)
            value = lagrangian(scores.incremental_profit[0], cost, pace.multiplier)
            if user_cap_mask(features[None, :], self.max_offers_7d)[0]:
                value[1:] = INELIGIBLE
            with self._rng_lock:
                picks, held_out = choose_or_hold_out(
                    value, k, self.epsilon, self._rng, self.holdout_share, cost, pace.allowance
                )
            spent = float(sum(cost[arm] for arm, _ in picks))
            if not self.pacer.record(day, spent):
                return [], 0.0, degraded, False  # another request spent the rest meanwhile
            return picks, spent, degraded, held_out
        except Exception:
            logger.exception("spend store failed; answering without offers")
            return [], 0.0, "spend", False

    def withdraw(self, decision: Decision, reason: str) -> Decision:
        """`decision` without its offers, degraded for `reason`, and its committed spend
        given back to the day's budget: for an answer that cannot stand as decided (its
        decision could not be logged, so no outcome of it could ever be joined to it). If
        the refund fails too the cost stays counted: the day underspends, never overspends.
        """
        if decision["spent"]:
            try:
                self.pacer.refund(decision["day"], decision["spent"])
            except Exception:
                logger.exception("refunding %.4f of %s failed", decision["spent"], decision["day"])
        return {**decision, "offers": [], "spent": 0.0, "degraded": reason}

    def push_outcome(self, event: FeedbackEvent) -> bool:
        """Push the user's counters after a feedback `event` (user_id, event, coupon_ids,
        amount, at) to the online store, so their next request already sees them. Waits at
        most `feature_timeout_s`, like a read (feedback holds the workspace's push lock
        meanwhile); False when the store has no row for the user (a cold start has nothing
        to update), fails or is late. A late push may still land: the day's next
        materialisation replaces the row either way."""
        try:
            future = self._lookups.submit(self._push, event)
            return future.result(timeout=self.feature_timeout_s)
        except Exception as exc:  # TimeoutError included; the event is landed all the same
            logger.warning("pushing fresh counters of user %s failed: %r", event["user_id"], exc)
            return False

    def _push(self, event: FeedbackEvent) -> bool:
        """The read-modify-write of one push (see push_outcome), on the lookup pool."""
        features = self.user_features(event["user_id"])
        if features is None:
            return False
        kinds = [self.kinds[c] for c in event["coupon_ids"] if c in self.kinds]
        fresh = fresh_counters(features, event["event"], kinds, event["amount"])
        push_user_features(self.store, event["user_id"], fresh, pd.Timestamp(event["at"]))
        return True

    def _features(self, user_id: int) -> tuple[np.ndarray | None, str | None]:
        """The user's online features (None: no row), or (None, "features") when the store
        fails or takes longer than feature_timeout_s."""
        try:
            future = self._lookups.submit(self.user_features, user_id)
            features = future.result(timeout=self.feature_timeout_s)
        except Exception as exc:  # TimeoutError included
            return self._read_failed(exc)
        return self._read(features)

    def _read(self, features: np.ndarray | None) -> tuple[np.ndarray | None, None]:
        if self._store_failing:
            logger.warning("feature store answering again")
        self._store_failing = False
        return features, None

    def _read_failed(self, exc: Exception) -> tuple[None, str]:
        if not self._store_failing:  # log the change, not every request while it lasts
            logger.warning("feature store failing (%r): degraded answers", exc)
        self._store_failing = True
        return None, "features"

    def _drivers(
        self, features: np.ndarray, arms: Arms, offered: list[int]
    ) -> dict[int, list[Driver]]:
        """Per offered arm, the user inputs that moved its expected incremental profit
        most: each input in turn set to its cold-start value (a user nobody has seen), the
        offers rescored in one batch, and the change each input makes. A cold-start user
        has none."""
        base = default_user_features()
        changed = np.flatnonzero(features != base)
        if not changed.size:
            return {arm: [] for arm in offered}
        probes = np.repeat(features[None, :], len(changed) + 1, axis=0)
        probes[np.arange(1, len(changed) + 1), changed] = base[changed]
        rescored = arms.take(np.array([0, *offered]))
        profit = score(self.net, probes, rescored, self.margin).incremental_profit
        effects = profit[0, 1:] - profit[1:, 1:]  # (inputs, offers): what each value adds
        return {
            arm: [
                {
                    "feature": USER_FEATURES[changed[i]],
                    "value": float(features[changed[i]]),
                    "baseline": float(base[changed[i]]),
                    "effect": float(effect[i]),
                }
                for i in np.argsort(-np.abs(effect))[:DRIVERS]
            ]
            for arm, effect in zip(offered, effects.T, strict=True)
        }

    def _warm_up(self) -> None:
        """Run Feast and torch once, or the first shopper waits ~0.5 s; the decision is
        not counted against the day's budget."""
        features = default_user_features()[None, :]
        try:  # the first read is slow: warm up on the lookup pool with time to spare
            self._lookups.submit(self.user_features, -1).result(timeout=WARM_UP_TIMEOUT_S)
        except Exception:  # the worker still starts, and answers degraded meanwhile
            logger.exception("feature store failing at start")
        score(self.net, features, self._opening(self.as_of, None)[2], self.margin)

    def _open(self, clock: pd.Timestamp, category: str | None) -> tuple[str, str, Arms]:
        """The policy's day and time at `clock`, and the arms open then on a page of
        `category`; memoised by `_opening` (formatting a Timestamp and masking the
        catalogue cost a request ~30 µs in process)."""
        return clock.strftime("%Y-%m-%d"), clock.isoformat(), self.arms.open(clock, category)

    def _clock(self, now: datetime | None) -> pd.Timestamp:
        """The moment eligibility is judged at, naive UTC like the catalogue's columns."""
        if now is None:
            return self.as_of
        stamp = pd.Timestamp(now)
        return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
