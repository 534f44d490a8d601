"""The logging policy that decides the logged offers: a heuristic mixed with a uniform
exploration slice and a random holdout, with each decision's exact propensity, so the log
supports off-policy evaluation and an A/B readout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from couponflow.contract import CATEGORIES, coupon_cost
from couponflow.world.catalogue import CATEGORY_CODE
from couponflow.world.streams import LOGGING, day_rng

REFERENCE_BASKET = 50.0  # the basket at which the logging heuristic ranks coupons


@dataclass(frozen=True)
class Decisions:
    """One day's logged decisions, one row per reached user."""

    reached: np.ndarray  # user ids
    arm: np.ndarray  # index into the day's coupons, -1: no coupon
    propensity: np.ndarray  # exact probability of `arm` over all slices
    slice: np.ndarray  # the slice that decided (contract.SLICES)


def best_per_category(coupons: pd.DataFrame) -> np.ndarray:
    """Per category code, the coupon worth most at a reference basket among those valid in
    it (scoped to it or site-wide); the last slot: the best site-wide one (-1: none)."""
    m = len(coupons)
    worth = coupon_cost(
        coupons["kind"].to_numpy(object),
        coupons["value"].to_numpy(float),
        np.full(m, REFERENCE_BASKET),
    )
    category = coupons["category"].to_numpy(object)
    best = np.full(len(CATEGORIES) + 1, -1)
    for j in np.argsort(-worth, kind="stable")[::-1]:  # the most valuable last, so it wins
        best[CATEGORY_CODE.get(category[j], len(CATEGORIES))] = j
    best[:-1] = np.where(best[:-1] >= 0, best[:-1], best[-1])
    return best


def heuristic_arms(
    best: np.ndarray, n: int, reached: np.ndarray, session_user: np.ndarray, session_cat: np.ndarray
) -> np.ndarray:
    """The heuristic's pick per reached user: the best coupon in the category they browsed
    most today; -1 for a user who did not browse (or with no coupon to give)."""
    counts = np.bincount(
        session_user * len(CATEGORIES) + session_cat, minlength=n * len(CATEGORIES)
    ).reshape(n, len(CATEGORIES))[reached]
    return np.where(counts.sum(axis=1) > 0, best[counts.argmax(axis=1)], -1)


@dataclass(frozen=True)
class LoggingPolicy:
    """The heuristic with a uniform slice over {coupons, none} (`random_share`) and a
    holdout slice (`holdout_share` of the reached users) that gets no coupon."""

    seed: int
    offers_per_user: float
    random_share: float
    holdout_share: float = 0.0

    def decide(
        self,
        day: pd.Timestamp,
        n: int,
        coupons: pd.DataFrame,
        session_user: np.ndarray,
        session_category: np.ndarray,
    ) -> Decisions:
        """Who of the `n` users is reached on `day` and with which arm, drawn from the day's
        logging stream in a fixed order (reach, explore, uniform arm, holdout)."""
        rng = day_rng(self.seed, LOGGING, day)
        share, holdout_share = self.random_share, self.holdout_share
        reached = np.flatnonzero(rng.random(n) < self.offers_per_user)
        m = len(coupons)
        best = best_per_category(coupons)
        heuristic = heuristic_arms(best, n, reached, session_user, session_category)
        heuristic = np.where(heuristic >= 0, heuristic, m)  # arm m: "no coupon"
        explore = rng.random(len(reached)) < share
        arm = np.where(explore, rng.integers(0, m + 1, len(reached)), heuristic)
        holdout = rng.random(len(reached)) < holdout_share  # drawn last: other draws keep
        arm = np.where(holdout, m, arm)
        logging = share / (m + 1) + (1 - share) * (arm == heuristic)
        propensity = (1 - holdout_share) * logging + holdout_share * (arm == m)
        slice_ = np.where(holdout, "holdout", np.where(explore, "explore", "heuristic"))
        return Decisions(reached, np.where(arm == m, -1, arm), propensity, slice_)
