"""A synthetic coupon log whose causal effect is known, for the model, training and
evaluation tests: half the shoppers are price sensitive (visible as a high redemption
rate), a category coupon only moves shoppers who like that category, and the logging
policy is uniform with exact propensities."""

from __future__ import annotations

import numpy as np
import pandas as pd

from couponflow.contract import CATEGORIES, coupon_cost
from couponflow.features import COUPON_FEATURES, USER_FEATURES, default_user_features
from couponflow.policy import with_control

MARGIN = 0.3
CATALOGUE = pd.DataFrame(
    {
        "coupon_id": ["A5", "A10", "A15", "HOME10", "ELEC10"],
        "kind": ["amount_off"] * 5,
        "value": [5.0, 10.0, 15.0, 10.0, 10.0],
        "min_spend": [0.0] * 5,
        "category": ["all", "all", "all", "home", "electronics"],
        "valid_from": pd.Timestamp("2026-01-01"),
        "valid_to": pd.Timestamp("2026-03-01"),
        "budget_share": 0.2,
        **{f: np.float32(0.0) for f in COUPON_FEATURES},
    }
).astype({"coupon_id": "string", "kind": "string", "category": "string"})
ARMS = with_control(CATALOGUE)


def known_effect_log(n: int, seed: int) -> pd.DataFrame:
    """A uniformly randomised coupon log with a known effect.

    logit P(buy) = -3.5 + 0.6 min(orders, 4) + [coupon] sensitivity * value / basket *
    relevance, sensitivity 10 for the price sensitive and 0.3 otherwise, relevance 1 for a
    site-wide coupon and min(2 affinity, 1.2) for a category one (where it is redeemed only
    if the order lands in its category: with probability 0.3 + 0.7 affinity).
    """
    rng = np.random.default_rng(seed)
    users = np.tile(default_user_features(), (n, 1))  # what nobody's history sets: as `shopper`
    col = {f: i for i, f in enumerate(USER_FEATURES)}
    sensitive = rng.random(n) < 0.5
    orders = rng.poisson(np.where(sensitive, 0.3, 2.0))
    basket = rng.lognormal(np.log(60.0), 0.25, n)
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.5), n)
    users[:, col["orders_30d"]] = orders
    users[:, col["offers_30d"]] = 1 + rng.poisson(3, n)
    users[:, col["redemption_rate_30d"]] = np.where(
        sensitive, rng.uniform(0.3, 0.9, n), rng.uniform(0.0, 0.15, n)
    )
    users[:, col["avg_basket_30d"]] = basket
    users[:, col["days_since_last_order"]] = 60.0
    for j, c in enumerate(CATEGORIES):
        users[:, col[f"affinity_{c}"]] = affinity[:, j]

    arm = rng.integers(0, len(ARMS), n)
    coupons = ARMS.iloc[arm].reset_index(drop=True)
    offered = arm > 0
    value = coupons["value"].fillna(0.0).to_numpy()
    scoped = coupons["category"].isin(CATEGORIES).to_numpy()
    cat = [
        CATEGORIES.index(c) if s else 0 for c, s in zip(coupons["category"], scoped, strict=True)
    ]
    liked = affinity[np.arange(n), cat]
    relevance = np.where(scoped, np.minimum(2 * liked, 1.2), 1.0)
    effect = np.where(sensitive, 10.0, 0.3) * np.minimum(value / basket, 0.35) * relevance
    logit = -3.5 + 0.6 * np.minimum(orders, 4) + offered * effect
    purchased = rng.random(n) < 1 / (1 + np.exp(-logit))
    amount = np.where(purchased, basket * rng.lognormal(-0.045, 0.3, n), 0.0)
    applies = ~scoped | (rng.random(n) < 0.3 + 0.7 * liked)
    redeemed = purchased & offered & applies
    table = pd.DataFrame(users, columns=USER_FEATURES)
    table = pd.concat([table, coupons], axis=1)
    table["purchased"] = purchased
    table["amount"] = amount
    table["redeemed"] = redeemed
    table["discount"] = np.where(redeemed, coupon_cost("amount_off", value, amount), 0.0)
    table["propensity"] = 1.0 / len(ARMS)
    table["user_id"] = np.arange(n)
    return table
