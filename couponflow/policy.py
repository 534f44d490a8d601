"""The coupon policy: eligibility, expected incremental profit, and an exploring choice.

The same functions run in offline evaluation and in the live service, so what the gate
measured is what shoppers get.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from couponflow.contract import coupon_cost
from couponflow.model import CouponNet, encode, predict


def eligible(coupons: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """Coupons valid at `now`."""
    ok = (coupons["valid_from"] <= now) & (coupons["valid_to"] > now)
    return coupons[ok].reset_index(drop=True)


def with_control(coupons: pd.DataFrame) -> pd.DataFrame:
    """The arms for scoring: a "no coupon" row (all null) first, then the coupons."""
    control = pd.DataFrame({c: [None] for c in coupons.columns}).astype(coupons.dtypes)
    return pd.concat([control, coupons], ignore_index=True)


@dataclass
class Scores:
    """Per-user, per-arm estimates, shaped (users, arms); arm 0 is "no coupon"."""

    p_purchase: np.ndarray
    amount: np.ndarray
    p_redeem: np.ndarray
    expected_cost: np.ndarray
    incremental_profit: np.ndarray


def score(net: CouponNet, user_features: np.ndarray, arms: pd.DataFrame, margin: float) -> Scores:
    """Expected incremental profit of every arm over "no coupon", net of the coupon's cost.

    `user_features` is (n_users, n_features); `arms` comes from `with_control`.
    """
    n, m = len(user_features), len(arms)
    users = np.repeat(user_features, m, axis=0)
    tiled = arms.iloc[np.tile(np.arange(m), n)].reset_index(drop=True)
    pred = {k: v.reshape(n, m) for k, v in predict(net, encode(users, tiled)).items()}
    kind = arms["kind"].to_numpy()[None, 1:]
    value = arms["value"].to_numpy(dtype=float)[None, 1:]
    cost = np.zeros((n, m))
    cost[:, 1:] = pred["p_redeem"][:, 1:] * coupon_cost(
        np.broadcast_to(kind, (n, m - 1)), np.broadcast_to(value, (n, m - 1)), pred["amount"][:, 1:]
    )
    gross = pred["p_purchase"] * margin * pred["amount"] - cost
    return Scores(pred["p_purchase"], pred["amount"], pred["p_redeem"], cost, gross - gross[:, :1])


def lagrangian(scores: Scores, cost_multiplier: float) -> np.ndarray:
    """The value the policy maximises: incremental profit less the multiplier times cost;
    "no coupon" is worth exactly 0."""
    value = scores.incremental_profit - cost_multiplier * scores.expected_cost
    value[:, 0] = 0.0
    return value


def greedy_arms(scores: Scores, cost_multiplier: float) -> np.ndarray:
    """Each user's best arm without exploration (0 when no coupon adds profit)."""
    return lagrangian(scores, cost_multiplier).argmax(axis=1)


def choose(
    value: np.ndarray, k: int, epsilon: float, rng: np.random.Generator
) -> list[tuple[int, float]]:
    """Up to k coupon arms (indices > 0) for one user, with the propensity of each choice.

    `value` is the user's row of `lagrangian`. Each slot is epsilon-greedy over the arms
    left (including "no coupon", which ends the slate). The propensity is the exact
    probability of that slot's choice given the earlier slots.
    """
    left = list(range(len(value)))
    picks: list[tuple[int, float]] = []
    for _ in range(k):
        greedy = max(left, key=lambda a: (value[a], -a))  # ties go to the lower arm (control)
        arm = int(rng.choice(left)) if rng.random() < epsilon else greedy
        propensity = epsilon / len(left) + (1 - epsilon) * (arm == greedy)
        if arm == 0:
            break
        picks.append((arm, float(propensity)))
        left.remove(arm)
    return picks
