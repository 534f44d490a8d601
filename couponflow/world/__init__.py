"""The simulated marketplace: shoppers with hidden causal traits, a coupon catalogue that
changes over time, and daily events logged by a known logging policy with exact propensities.

Every causal formula lives here once (`World.outcome` and `World.draw_orders`); the sampler
draws from it and `couponflow.oracle` takes its exact expectations, so the ground truth is
the truth of the very process that produced the data. docs/world.md states the model.

Deterministic for a seed: the population, the catalogue and each day's events come from
their own random streams keyed by `(seed, stream, date)`, so any day can be regenerated alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from couponflow.contract import CATEGORIES, HOLDOUT_SUFFIX, SHIPPING_COST, TABLES, coupon_cost
from couponflow.world.activity import SEASON_AMPLITUDE, browse, season
from couponflow.world.catalogue import (
    AMOUNT,
    FREE_SHIPPING,
    KIND_CODE,
    PERCENT,
    THRESHOLD,
    Catalogue,
)
from couponflow.world.catalogue import CATEGORY_CODE as _CATEGORY_CODE
from couponflow.world.catalogue import KIND_NAMES as _KIND_NAMES
from couponflow.world.exposure import Exposure, offered_mask
from couponflow.world.logging_policy import REFERENCE_BASKET, Decisions, LoggingPolicy
from couponflow.world.population import (
    DEFAULT_MIX,
    SEGMENT_ANNOYANCE,
    SEGMENT_BASE,
    SEGMENT_SENSITIVITY,
    SEGMENTS,
    Population,
    Shoppers,
)
from couponflow.world.population import segment_mix as _mix
from couponflow.world.streams import DETAIL as _DETAIL
from couponflow.world.streams import OUTCOME as _OUTCOME
from couponflow.world.streams import day_rng
from couponflow.world.streams import draw_categories as _draw_categories
from couponflow.world.streams import labels as _labels

BASKET_SPREAD = 0.35  # sd of the log order amount around the shopper's mean basket
TOP_UP = 0.5  # P(a shopper close to a threshold coupon's min_spend tops the basket up)
TOP_UP_REACH = 0.3  # "close": the basket is short of min_spend by at most this share of it
TOP_UP_RANGE = 5.0  # a topped-up basket lands uniformly in [min_spend, min_spend + this]
CATEGORY_PULL = 0.3  # P(a category coupon steers the order into its category)
MAX_APPEAL = 0.35  # cap on a coupon's relative value
MAX_RELEVANCE = 1.2  # cap on how much a category coupon in a liked category counts extra
OFFER_SECONDS = 6 * 3600  # offers land in [0h, 6h), orders in [6h, 24h)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, n: int) -> pd.arrays.StringArray:
    """`prefix0, prefix1, ...` built in Arrow (a Python loop costs ~0.4 s per million)."""
    numbers = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    joined = pc.binary_join_element_wise(pa.scalar(prefix), numbers, "")
    return pd.array(joined.to_numpy(zero_copy_only=False), dtype="string")


@dataclass(frozen=True)
class DayContext:
    """What the causal model needs to know about a date besides the user and the coupon."""

    day: pd.Timestamp
    n_users: int  # users signed up by the end of the day
    coupons: pd.DataFrame  # the catalogue valid on the day
    exposure: np.ndarray  # (n_users,) coupons each user was offered in the fatigue window
    season: float  # weekly purchase-logit shift
    price: float  # price level (1 before a price shock)


@dataclass
class Outcome:
    """The outcome distribution of (user, arm) pairs; arm -1 is "no coupon".

    `World.draw_orders` samples from it and `couponflow.oracle` takes its expectations.
    """

    users: np.ndarray
    arm: np.ndarray
    p_purchase: np.ndarray
    basket: np.ndarray  # mean order amount before any threshold top-up
    kind: np.ndarray  # KIND_CODE, -1 without a coupon
    value: np.ndarray
    min_spend: np.ndarray
    category: np.ndarray  # category code of a scoped coupon, -1 site-wide or none
    pull: np.ndarray  # P(the order is steered into the coupon's category)
    p_match: np.ndarray  # P(the order falls where the coupon applies)


class World:
    """A marketplace defined by the `world` section of params.yaml."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.start = pd.Timestamp(cfg["start_date"]).normalize()
        self.n_users = int(cfg["n_users"])
        self.margin = float(cfg["margin"])
        self.mix = _mix(cfg.get("segment_mix"))
        self.fatigue_window = int(cfg.get("fatigue_window_days", 7))
        drift = cfg.get("drift") or {}
        self.new_coupons_per_week = int(drift.get("new_coupons_per_week", 0))
        self.new_users_per_day = round(float(drift.get("new_users_per_day", 0.0)) * self.n_users)
        self.new_user_mix = _mix(drift.get("new_user_mix") or cfg.get("segment_mix"))
        shock_date = drift.get("price_shock_date")
        self.shock_date = pd.Timestamp(shock_date) if shock_date else None
        self.price_shock = float(drift.get("price_shock", 0.0))
        self.shoppers = Shoppers(
            self.seed, self.start, self.n_users, self.mix, self.new_users_per_day, self.new_user_mix
        )
        self.coupon_catalogue = Catalogue(
            self.seed, self.start, int(cfg["n_coupons"]), self.new_coupons_per_week
        )
        self.logging_policy = LoggingPolicy(
            self.seed,
            offers_per_user=float(cfg["offers_per_user"]),
            random_share=float(cfg["random_share"]),
            holdout_share=float(cfg.get("holdout_share", 0.0)),
        )
        self.offers_seen = Exposure(self.fatigue_window, self._replay_offers)
        self._context: DayContext | None = None

    # -- who shops, what can be offered ---------------------------------------------------
    def users_on(self, day: str | pd.Timestamp) -> int:
        """How many users have signed up by the end of `day` (new ones arrive with drift)."""
        return self.shoppers.users_on(pd.Timestamp(day).normalize())

    def population_on(self, day: str | pd.Timestamp) -> Population:
        """The users signed up by the end of `day`, with their hidden traits."""
        return self.shoppers.on(pd.Timestamp(day).normalize())

    def catalogue(self, day: str | pd.Timestamp) -> pd.DataFrame:
        """Every coupon launched by `day` that may still be valid on it (and the standing ones)."""
        return self.coupon_catalogue.on(day)

    def active_coupons(self, day: str | pd.Timestamp) -> pd.DataFrame:
        """The coupons valid on `day`, each with an equal share of the day's budget."""
        return self.coupon_catalogue.active(day)

    def exposure(self, day: str | pd.Timestamp) -> np.ndarray:
        """Per user, on how many of the `fatigue_window_days` before `day` the logging policy
        offered them a coupon (what wears their response down)."""
        day = pd.Timestamp(day).normalize()
        return self.offers_seen.counts(day, self.users_on(day))

    def _decide(
        self, day: pd.Timestamp, coupons: pd.DataFrame
    ) -> tuple[Decisions, tuple[np.ndarray, np.ndarray]]:
        """The day's browsing and the logging policy's decisions on it."""
        pop = self.population_on(day)
        sessions = browse(self.seed, day, pop, float(self.cfg["sessions_per_user"]))
        n = self.users_on(day)
        return self.logging_policy.decide(day, n, coupons, *sessions), sessions

    def _replay_offers(self, day: pd.Timestamp) -> np.ndarray:
        """Who was offered a coupon on a past day, regenerated from that day's streams."""
        decisions, _ = self._decide(day, self.active_coupons(day))
        return offered_mask(decisions.reached, decisions.arm, self.users_on(day))

    # -- the causal model -----------------------------------------------------------------
    def context(self, day: str | pd.Timestamp) -> DayContext:
        """The day's season, prices, catalogue and every user's recent coupon exposure."""
        day = pd.Timestamp(day).normalize()
        if self._context is None or self._context.day != day:
            self.population_on(day)  # draw the cohorts who joined by then
            shocked = self.shock_date is not None and day >= self.shock_date
            self._context = DayContext(
                day=day,
                n_users=self.users_on(day),
                coupons=self.active_coupons(day),
                exposure=self.exposure(day),
                season=season(day),
                price=1.0 + (self.price_shock if shocked else 0.0),
            )
        return self._context

    def outcome(
        self,
        ctx: DayContext,
        users: np.ndarray,
        arm: np.ndarray,
        coupons: pd.DataFrame | None = None,
    ) -> Outcome:
        """The outcome distribution for each (user, arm) pair on the context's day; `arm`
        indexes `coupons` (default: the day's catalogue), -1 meaning "no coupon"."""
        coupons = ctx.coupons if coupons is None else coupons
        pop = self.shoppers.drawn
        users = np.asarray(users, dtype=np.int64)
        arm = np.broadcast_to(np.asarray(arm, dtype=np.int64), users.shape)
        # A sentinel "no coupon" row at the end, so arm -1 indexes it.
        kind = np.append(coupons["kind"].map(KIND_CODE).to_numpy(np.int64), -1)[arm]
        value = np.append(coupons["value"].to_numpy(float), 0.0)[arm]
        min_spend = np.append(coupons["min_spend"].to_numpy(float), 0.0)[arm]
        category = np.append(coupons["category"].map(_CATEGORY_CODE).fillna(-1), -1)
        category = category.astype(np.int64)[arm]
        has = arm >= 0
        scoped = category >= 0

        basket = pop.basket[users] * ctx.price
        relative = np.select(
            [kind == PERCENT, kind == AMOUNT, kind == THRESHOLD, kind == FREE_SHIPPING],
            [
                value / 100.0,
                value / basket,
                0.8 * value / np.maximum(basket, min_spend),
                0.7 * SHIPPING_COST / basket,
            ],
            default=0.0,
        )
        preferred = np.where(scoped, pop.preference[users, np.maximum(category, 0)], 1.0)
        relevance = np.where(scoped, np.minimum(2.0 * preferred, MAX_RELEVANCE), 1.0)
        appeal = np.minimum(relative, MAX_APPEAL) * relevance
        response = np.exp(-pop.fatigue[users] * ctx.exposure[users])
        sens = pop.sensitivity[users]
        coupon_effect = sens * appeal * response - pop.annoyance[users]
        logit = (
            pop.base_logit[users]
            + ctx.season
            - sens * (ctx.price - 1.0)
            + np.where(has, coupon_effect, 0.0)
        )
        pull = np.where(has & scoped, CATEGORY_PULL, 0.0)
        p_match = np.where(has, np.where(scoped, pull + (1 - pull) * preferred, 1.0), 0.0)
        return Outcome(
            users, arm, _sigmoid(logit), basket, kind, value, min_spend, category, pull, p_match
        )

    def purchase_probability(
        self, day: str | pd.Timestamp, users: np.ndarray, arm: np.ndarray
    ) -> np.ndarray:
        """P(purchase on `day`) for users holding arm `arm` of the day's catalogue (-1: none)."""
        return self.outcome(self.context(day), users, arm).p_purchase

    def draw_orders(self, rng: np.random.Generator, out: Outcome) -> dict[str, np.ndarray]:
        """Sample who buys and what: category, amount, coupon redeemed and discount (one
        order at most per pair of `out`)."""
        buy = np.flatnonzero(rng.random(len(out.users)) < out.p_purchase)
        users, kind, category = out.users[buy], out.kind[buy], out.category[buy]
        min_spend = out.min_spend[buy]
        n = len(buy)
        pulled = rng.random(n) < out.pull[buy]
        bought = np.where(
            pulled, category, _draw_categories(rng, self.shoppers.drawn.preference_cdf[users])
        )
        amount = out.basket[buy] * np.exp(
            BASKET_SPREAD * rng.standard_normal(n) - BASKET_SPREAD**2 / 2
        )
        matched = (kind >= 0) & ((category < 0) | (bought == category))
        short = matched & (kind == THRESHOLD) & (amount < min_spend)
        close = short & (amount >= (1 - TOP_UP_REACH) * min_spend)
        topped = close & (rng.random(n) < TOP_UP)
        amount = np.where(topped, min_spend + TOP_UP_RANGE * rng.random(n), amount)
        amount = np.maximum(np.round(amount, 2), 0.01)
        redeemed = matched & ~(short & ~topped)
        discount = np.where(redeemed, coupon_cost(_KIND_NAMES[kind], out.value[buy], amount), 0.0)
        return {
            "row": buy,  # which pair of `out` bought
            "user": users,
            "arm": np.where(redeemed, out.arm[buy], -1),  # the coupon redeemed, -1: none
            "category": bought,
            "amount": amount,
            "discount": np.round(discount, 2),
        }

    # -- one day of events ----------------------------------------------------------------
    def simulate_day(self, day: str | pd.Timestamp) -> dict[str, pd.DataFrame]:
        """The landing-zone batch for `day`: user and coupon snapshots and the day's events."""
        ctx = self.context(day)
        day, n, coupons = ctx.day, ctx.n_users, ctx.coupons
        tag = day.strftime("%Y%m%d")
        pop = self.population_on(day)

        decisions, (session_user, session_category) = self._decide(day, coupons)
        reached, arm = decisions.reached, decisions.arm
        propensity, slice_ = decisions.propensity, decisions.slice
        self.offers_seen.remember(day, offered_mask(reached, arm, n))
        held = np.full(n, -1)
        held[reached] = arm
        orders = self.draw_orders(
            day_rng(self.seed, _OUTCOME, day), self.outcome(ctx, np.arange(n), held)
        )

        rng = day_rng(self.seed, _DETAIL, day)
        coupon_ids = np.append(coupons["coupon_id"].to_numpy(object), None)
        sessions = pd.DataFrame(
            {
                "session_id": _ids(f"{tag}-s", len(session_user)),
                "user_id": session_user.astype("int64"),
                "ts": day + pd.to_timedelta(rng.integers(0, 86_400, len(session_user)), unit="s"),
                "category": _labels(CATEGORIES, session_category),
                "page_views": 1 + rng.poisson(4, len(session_user)),
            }
        )
        offers = pd.DataFrame(
            {
                "offer_id": _ids(f"{tag}-o", len(reached)),
                "user_id": reached.astype("int64"),
                "coupon_id": pd.array(coupon_ids[arm], dtype="string"),
                "ts": day + pd.to_timedelta(rng.integers(0, OFFER_SECONDS, len(reached)), unit="s"),
                "policy_version": np.where(
                    slice_ == "holdout",
                    self.cfg["policy_version"] + HOLDOUT_SUFFIX,
                    self.cfg["policy_version"],
                ),
                "propensity": propensity,
                "slice": slice_,
            }
        )
        n_orders = len(orders["user"])
        order_table = pd.DataFrame(
            {
                "order_id": _ids(f"{tag}-r", n_orders),
                "user_id": orders["user"].astype("int64"),
                "ts": day
                + pd.to_timedelta(rng.integers(OFFER_SECONDS, 86_400, n_orders), unit="s"),
                "amount": orders["amount"],
                "category": _labels(CATEGORIES, orders["category"]),
                "coupon_id": pd.array(coupon_ids[orders["arm"]], dtype="string"),
                "discount": orders["discount"],
            }
        )
        return {
            "users": TABLES["users"].conform(pop.users),
            "coupons": coupons.copy(),
            "sessions": TABLES["sessions"].conform(sessions),
            "offers": TABLES["offers"].conform(offers),
            "orders": TABLES["orders"].conform(order_table),
        }


__all__ = [  # re-exported for the modules that import them from here
    "DEFAULT_MIX",
    "SEGMENTS",
    "SEGMENT_ANNOYANCE",
    "SEGMENT_BASE",
    "SEGMENT_SENSITIVITY",
    "REFERENCE_BASKET",
    "SEASON_AMPLITUDE",
    "DayContext",
    "Decisions",
    "LoggingPolicy",
    "Outcome",
    "Population",
    "World",
]
