"""The causal model, stated once: the outcome distribution of a (user, arm) pair on a day,
and the sampler of orders from it. `couponflow.oracle` takes its exact expectations, so the
ground truth is the truth of the very process that produced the data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from couponflow.contract import SHIPPING_COST, coupon_cost
from couponflow.world.catalogue import (
    AMOUNT,
    CATEGORY_CODE,
    FREE_SHIPPING,
    KIND_CODE,
    KIND_NAMES,
    PERCENT,
    THRESHOLD,
)
from couponflow.world.population import Population
from couponflow.world.streams import draw_categories, sigmoid

BASKET_SPREAD = 0.35  # sd of the log order amount around the shopper's mean basket
TOP_UP = 0.5  # P(a shopper close to a threshold coupon's min_spend tops the basket up)
TOP_UP_REACH = 0.3  # "close": the basket is short of min_spend by at most this share of it
TOP_UP_RANGE = 5.0  # a topped-up basket lands uniformly in [min_spend, min_spend + this]
CATEGORY_PULL = 0.3  # P(a category coupon steers the order into its category)
MAX_APPEAL = 0.35  # cap on a coupon's relative value
MAX_RELEVANCE = 1.2  # cap on how much a category coupon in a liked category counts extra


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

    `draw_orders` samples from it and `couponflow.oracle` takes its expectations.
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


def _arm_terms(coupons: pd.DataFrame, arm: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kind code, value, min_spend and category code per arm; a sentinel "no coupon" row at
    the end, so arm -1 indexes it."""
    kind = np.append(coupons["kind"].map(KIND_CODE).to_numpy(np.int64), -1)[arm]
    value = np.append(coupons["value"].to_numpy(float), 0.0)[arm]
    min_spend = np.append(coupons["min_spend"].to_numpy(float), 0.0)[arm]
    category = np.append(coupons["category"].map(CATEGORY_CODE).fillna(-1), -1)
    return kind, value, min_spend, category.astype(np.int64)[arm]


def _relative_value(
    kind: np.ndarray, value: np.ndarray, min_spend: np.ndarray, basket: np.ndarray
) -> np.ndarray:
    """What a coupon is worth as a share of the shopper's basket (what they respond to)."""
    return np.select(
        [kind == PERCENT, kind == AMOUNT, kind == THRESHOLD, kind == FREE_SHIPPING],
        [
            value / 100.0,
            value / basket,
            0.8 * value / np.maximum(basket, min_spend),
            0.7 * SHIPPING_COST / basket,
        ],
        default=0.0,
    )


def outcome(
    pop: Population,
    ctx: DayContext,
    users: np.ndarray,
    arm: np.ndarray,
    coupons: pd.DataFrame | None = None,
) -> Outcome:
    """The outcome distribution for each (user, arm) pair on the context's day; `arm`
    indexes `coupons` (default: the day's catalogue), -1 meaning "no coupon"."""
    coupons = ctx.coupons if coupons is None else coupons
    users = np.asarray(users, dtype=np.int64)
    arm = np.broadcast_to(np.asarray(arm, dtype=np.int64), users.shape)
    kind, value, min_spend, category = _arm_terms(coupons, arm)
    has = arm >= 0
    scoped = category >= 0

    basket = pop.basket[users] * ctx.price
    relative = _relative_value(kind, value, min_spend, basket)
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
        users, arm, sigmoid(logit), basket, kind, value, min_spend, category, pull, p_match
    )


def draw_orders(
    rng: np.random.Generator, out: Outcome, preference_cdf: np.ndarray
) -> dict[str, np.ndarray]:
    """Sample who buys and what: category, amount, coupon redeemed and discount (one order at
    most per pair of `out`; `preference_cdf` is the population's, indexed by user id)."""
    buy = np.flatnonzero(rng.random(len(out.users)) < out.p_purchase)
    users, kind, category = out.users[buy], out.kind[buy], out.category[buy]
    min_spend = out.min_spend[buy]
    n = len(buy)
    pulled = rng.random(n) < out.pull[buy]
    bought = np.where(pulled, category, draw_categories(rng, preference_cdf[users]))
    amount = out.basket[buy] * np.exp(BASKET_SPREAD * rng.standard_normal(n) - BASKET_SPREAD**2 / 2)
    matched = (kind >= 0) & ((category < 0) | (bought == category))
    short = matched & (kind == THRESHOLD) & (amount < min_spend)
    close = short & (amount >= (1 - TOP_UP_REACH) * min_spend)
    topped = close & (rng.random(n) < TOP_UP)
    amount = np.where(topped, min_spend + TOP_UP_RANGE * rng.random(n), amount)
    amount = np.maximum(np.round(amount, 2), 0.01)
    redeemed = matched & ~(short & ~topped)
    discount = np.where(redeemed, coupon_cost(KIND_NAMES[kind], out.value[buy], amount), 0.0)
    return {
        "row": buy,  # which pair of `out` bought
        "user": users,
        "arm": np.where(redeemed, out.arm[buy], -1),  # the coupon redeemed, -1: none
        "category": bought,
        "amount": amount,
        "discount": np.round(discount, 2),
    }
