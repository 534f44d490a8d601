"""The simulated marketplace: shoppers with hidden causal traits, a coupon catalogue and
daily events logged by a known logging policy with exact propensities.

Deterministic for a seed: the population and catalogue come from `seed`, each day's events
from `(seed, day index)`, so any day can be regenerated alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from couponflow.contract import (
    AGE_BANDS,
    ALL_CATEGORIES,
    CATEGORIES,
    COUPON_KINDS,
    DEVICES,
    REGIONS,
    SHIPPING_COST,
    TABLES,
    coupon_cost,
)


@dataclass
class Population:
    """Observable user attributes plus the hidden traits only the simulator (and oracle) see."""

    users: pd.DataFrame
    base_logit: np.ndarray  # daily purchase propensity without a coupon
    basket: np.ndarray  # mean order amount
    sensitivity: np.ndarray  # response to a coupon's relative value (< 0: "sleeping dog")
    preference: np.ndarray  # (n_users, n_categories) category preference, rows sum to 1


class World:
    """A marketplace defined by the `world` section of params.yaml."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.start = pd.Timestamp(cfg["start_date"])
        self.population = self._make_population(int(cfg["n_users"]))
        self.coupons = self._make_coupons(int(cfg["n_coupons"]))

    # -- the fixed parts -------------------------------------------------------------
    def _make_population(self, n: int) -> Population:
        rng = np.random.default_rng([self.seed, 0])
        signup_days = rng.integers(1, 720, size=n)
        users = pd.DataFrame(
            {
                "user_id": np.arange(n, dtype="int64"),
                "signup_date": self.start - pd.to_timedelta(signup_days, unit="D"),
                "region": rng.choice(REGIONS, size=n),
                "age_band": rng.choice(AGE_BANDS, size=n, p=[0.15, 0.3, 0.25, 0.18, 0.12]),
                "device": rng.choice(DEVICES, size=n, p=[0.6, 0.3, 0.1]),
            }
        )
        age_idx = users["age_band"].map({a: i for i, a in enumerate(AGE_BANDS)}).to_numpy()
        # Four uplift types: sure things (high base, ~0 sensitivity), persuadables (low base,
        # high sensitivity), lost causes (low base, ~0 sensitivity), sleeping dogs (< 0).
        kind = rng.choice(4, size=n, p=[0.25, 0.35, 0.3, 0.1])
        base = np.choose(kind, [-1.2, -3.2, -4.5, -2.2]) + rng.normal(0, 0.4, n)
        sens = np.choose(kind, [0.2, 6.0, 0.3, -3.0]) * rng.lognormal(0, 0.3, n)
        basket = rng.lognormal(np.log(45) + 0.08 * age_idx, 0.4, n)
        preference = rng.dirichlet(np.full(len(CATEGORIES), 0.4), size=n)
        return Population(users, base, basket, sens, preference)

    def _make_coupons(self, n: int) -> pd.DataFrame:
        rng = np.random.default_rng([self.seed, 1])
        kinds = np.array(COUPON_KINDS)[np.arange(n) % len(COUPON_KINDS)]
        value = np.where(
            kinds == "percent_off",
            rng.choice([5, 10, 15, 20], n),
            np.where(kinds == "free_shipping", SHIPPING_COST, rng.choice([5, 10, 15], n)),
        ).astype(float)
        min_spend = np.where(kinds == "threshold_off", rng.choice([50, 75, 100], n), 0.0)
        category = np.where(rng.random(n) < 0.4, ALL_CATEGORIES, rng.choice(CATEGORIES, n))
        starts = self.start - pd.to_timedelta(rng.integers(0, 30, n), unit="D")
        lifetimes = np.where(rng.random(n) < 0.75, 3650, rng.integers(7, 30, n))
        return TABLES["coupons"].conform(
            pd.DataFrame(
                {
                    "coupon_id": [f"C{i:03d}" for i in range(n)],
                    "kind": kinds,
                    "value": value,
                    "min_spend": min_spend.astype(float),
                    "category": category,
                    "valid_from": starts,
                    "valid_to": starts + pd.to_timedelta(lifetimes, unit="D"),
                    "budget_share": np.full(n, 1.0 / n),
                }
            )
        )

    # -- the causal model ------------------------------------------------------------
    def active_coupons(self, day: pd.Timestamp) -> pd.DataFrame:
        c = self.coupons
        return c[(c["valid_from"] <= day) & (c["valid_to"] > day)].reset_index(drop=True)

    def coupon_appeal(self, users: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
        """(n_users, n_coupons) relative value of each coupon to each user, in [0, ~0.5]."""
        pop = self.population
        basket = pop.basket[users][:, None]
        kind = coupons["kind"].to_numpy()[None, :]
        value = coupons["value"].to_numpy()[None, :]
        min_spend = coupons["min_spend"].to_numpy()[None, :]
        rel = np.select(
            [kind == "percent_off", kind == "amount_off", kind == "threshold_off"],
            [value / 100.0, value / basket, value / np.maximum(basket, min_spend) * 0.8],
            default=SHIPPING_COST / basket * 0.7,
        )
        cat_idx = {c: i for i, c in enumerate(CATEGORIES)}
        match = np.ones((len(users), len(coupons)))
        for j, cat in enumerate(coupons["category"]):
            if cat != ALL_CATEGORIES:
                match[:, j] = pop.preference[users, cat_idx[cat]] * 2.5
        return np.minimum(rel, 0.6) * np.minimum(match, 1.5)

    def purchase_probability(
        self, users: np.ndarray, appeal: np.ndarray, day: pd.Timestamp
    ) -> np.ndarray:
        """P(purchase today) given the appeal of the coupon each user holds (0: none)."""
        weekly = 0.25 * np.cos(2 * np.pi * (day.dayofweek - 5) / 7)
        logit = (
            self.population.base_logit[users] + weekly + self.population.sensitivity[users] * appeal
        )
        return 1.0 / (1.0 + np.exp(-logit))

    # -- one day of events -----------------------------------------------------------
    def day_index(self, day: pd.Timestamp) -> int:
        return int((day - self.start).days)

    def simulate_day(self, day: str | pd.Timestamp) -> dict[str, pd.DataFrame]:
        """The landing-zone batch for `day`: user and coupon snapshots and the day's events."""
        day = pd.Timestamp(day).normalize()
        rng = np.random.default_rng([self.seed, 2, self.day_index(day) + 10_000])
        pop = self.population
        n = len(pop.users)
        coupons = self.active_coupons(day)
        tag = day.strftime("%Y%m%d")

        sessions = self._sessions(rng, day, tag)
        offered_user, offered_coupon, propensity = self._log_offers(rng, sessions, coupons)
        offers = pd.DataFrame(
            {
                "offer_id": [f"{tag}-o{i}" for i in range(len(offered_user))],
                "user_id": offered_user,
                "coupon_id": pd.array(
                    [coupons["coupon_id"].iloc[j] if j >= 0 else None for j in offered_coupon],
                    dtype="string",
                ),
                "ts": day + pd.to_timedelta(rng.integers(0, 6 * 3600, len(offered_user)), unit="s"),
                "policy_version": self.cfg["policy_version"],
                "propensity": propensity,
            }
        )

        # Every user's appeal today: the coupon they were offered, or none.
        appeal = np.zeros(n)
        holder = np.full(n, -1)
        if len(offered_user):
            full = self.coupon_appeal(offered_user, coupons)
            has = offered_coupon >= 0
            appeal[offered_user[has]] = full[np.flatnonzero(has), offered_coupon[has]]
            holder[offered_user[has]] = offered_coupon[has]
        buys = rng.random(n) < self.purchase_probability(np.arange(n), appeal, day)
        orders = self._orders(rng, day, tag, np.flatnonzero(buys), holder, coupons)
        return {
            "users": TABLES["users"].conform(pop.users),
            "coupons": TABLES["coupons"].conform(coupons),
            "sessions": TABLES["sessions"].conform(sessions),
            "offers": TABLES["offers"].conform(offers),
            "orders": TABLES["orders"].conform(orders),
        }

    def _sessions(self, rng: np.random.Generator, day: pd.Timestamp, tag: str) -> pd.DataFrame:
        pop = self.population
        n = len(pop.users)
        activity = 1.0 / (1.0 + np.exp(-pop.base_logit - 1.5))
        counts = rng.poisson(self.cfg["sessions_per_user"] * 2 * activity)
        user = np.repeat(np.arange(n), counts)
        cum = pop.preference[user].cumsum(axis=1)
        cat = (rng.random(len(user))[:, None] > cum).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        return pd.DataFrame(
            {
                "session_id": [f"{tag}-s{i}" for i in range(len(user))],
                "user_id": user.astype("int64"),
                "ts": day + pd.to_timedelta(rng.integers(0, 86_400, len(user)), unit="s"),
                "category": np.array(CATEGORIES)[cat],
                "page_views": 1 + rng.poisson(4, len(user)),
            }
        )

    def _log_offers(
        self, rng: np.random.Generator, sessions: pd.DataFrame, coupons: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The logging policy: a uniform slice over {coupons, none} mixed with a heuristic
        (the richest coupon in the category the user browsed most today, else site-wide;
        nothing for a user who did not browse)."""
        n = len(self.population.users)
        reached = np.flatnonzero(rng.random(n) < self.cfg["offers_per_user"])
        n_arms = len(coupons) + 1  # arm index len(coupons) is "no coupon"
        top_cat = sessions.groupby("user_id")["category"].agg(lambda s: s.value_counts().index[0])
        user_cat = pd.Series(top_cat).reindex(reached).to_numpy()
        heuristic = np.full(len(reached), len(coupons))
        order = np.argsort(-coupons["value"].to_numpy(), kind="stable")
        for j in order[::-1]:  # richest last, so it wins
            cat = coupons["category"].iloc[j]
            hit = (user_cat == cat) if cat != ALL_CATEGORIES else ~pd.isna(user_cat)
            heuristic[hit & ((heuristic == len(coupons)) | (cat != ALL_CATEGORIES))] = j
        explore = rng.random(len(reached)) < self.cfg["random_share"]
        arm = np.where(explore, rng.integers(0, n_arms, len(reached)), heuristic)
        share = self.cfg["random_share"]
        propensity = share / n_arms + (1 - share) * (arm == heuristic)
        arm_coupon = np.where(arm == len(coupons), -1, arm)
        return reached.astype("int64"), arm_coupon, propensity

    def _orders(
        self,
        rng: np.random.Generator,
        day: pd.Timestamp,
        tag: str,
        buyers: np.ndarray,
        holder: np.ndarray,
        coupons: pd.DataFrame,
    ) -> pd.DataFrame:
        pop = self.population
        cum = pop.preference[buyers].cumsum(axis=1)
        cat = (rng.random(len(buyers))[:, None] > cum).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        category = np.array(CATEGORIES)[cat]
        amount = pop.basket[buyers] * rng.lognormal(0, 0.3, len(buyers))
        held = holder[buyers]
        coupon_id = np.full(len(buyers), None, dtype=object)
        discount = np.zeros(len(buyers))
        for i in np.flatnonzero(held >= 0):
            c = coupons.iloc[held[i]]
            if c["category"] not in (ALL_CATEGORIES, category[i]):
                continue
            if c["kind"] == "threshold_off":
                if amount[i] < c["min_spend"] and rng.random() < 0.5:
                    amount[i] = c["min_spend"] + rng.random() * 5  # topped up to qualify
                if amount[i] < c["min_spend"]:
                    continue
            coupon_id[i] = c["coupon_id"]
            discount[i] = coupon_cost(c["kind"], c["value"], amount[i])
        return pd.DataFrame(
            {
                "order_id": [f"{tag}-r{i}" for i in range(len(buyers))],
                "user_id": buyers.astype("int64"),
                "ts": day + pd.to_timedelta(rng.integers(6 * 3600, 86_400, len(buyers)), unit="s"),
                "amount": np.round(amount, 2),
                "category": category,
                "coupon_id": pd.array(coupon_id, dtype="string"),
                "discount": np.round(discount, 2),
            }
        )
