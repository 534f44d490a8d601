"""The ground truth of a simulated world: for any user, coupon (or none) and date, the exact
expected purchase probability, spend, coupon cost and profit, and the value of the best
policy under a budget.

Evaluation uses it to measure a policy's true incremental profit; training never sees it.
Every expectation is taken analytically over the distribution `World.outcome` defines and
`World.draw_orders` samples, so the oracle and the simulator cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.special import ndtr

from couponflow.contract import SHIPPING_COST
from couponflow.policy import allocate
from couponflow.world import (
    AMOUNT,
    BASKET_SPREAD,
    FREE_SHIPPING,
    PERCENT,
    THRESHOLD,
    TOP_UP,
    TOP_UP_RANGE,
    TOP_UP_REACH,
    DayContext,
    Outcome,
    World,
)

CHUNK = 100_000  # users per block when scoring every arm (bounds memory at scale)


def _below(t: np.ndarray, basket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(A < t) and E[A 1{A < t}] for an order amount A = basket * exp(s Z - s^2 / 2)."""
    s = BASKET_SPREAD
    with np.errstate(divide="ignore"):
        z = (np.log(t / basket) + s**2 / 2) / s
    return ndtr(z), basket * ndtr(z - s)


def expectations(out: Outcome, margin: float) -> dict[str, np.ndarray]:
    """Exact expected outcomes of each (user, arm) pair of `out`.

    Keys: p_purchase, amount (if they buy), spend, p_redeem, cost (expected discount
    given) and profit (margin * spend - cost), all per pair and per day.
    """
    a, q, v, m = out.basket, out.p_match, out.value, out.min_spend
    amount = a.copy()
    redeem = q.copy()  # P(redeem | purchase); 0 without a coupon
    discount = np.zeros_like(a)  # E[discount | purchase]

    pct = out.kind == PERCENT
    discount[pct] = q[pct] * v[pct] / 100.0 * a[pct]
    amt = out.kind == AMOUNT  # discount min(value, A)
    below, partial = _below(v[amt], a[amt])
    discount[amt] = q[amt] * (partial + v[amt] * (1 - below))
    ship = out.kind == FREE_SHIPPING
    discount[ship] = q[ship] * SHIPPING_COST
    thr = out.kind == THRESHOLD  # baskets close to min_spend are topped up with P(TOP_UP)
    below, partial = _below(m[thr], a[thr])
    far, far_partial = _below((1 - TOP_UP_REACH) * m[thr], a[thr])
    close, close_partial = below - far, partial - far_partial
    amount[thr] = a[thr] + q[thr] * TOP_UP * (close * (m[thr] + TOP_UP_RANGE / 2) - close_partial)
    redeem[thr] = q[thr] * (1 - below + TOP_UP * close)
    discount[thr] = v[thr] * redeem[thr]  # min(value, A) = value as A >= min_spend >= value

    p = out.p_purchase
    return {
        "p_purchase": p,
        "amount": amount,
        "spend": p * amount,
        "p_redeem": p * redeem,
        "cost": p * discount,
        "profit": p * (margin * amount - discount),
    }


@dataclass
class Truth:
    """Every user's true expected outcomes under every arm of a day; column 0 is "no coupon",
    column j > 0 is `coupon_ids[j]`. Arrays are (users, arms), per day."""

    day: pd.Timestamp
    users: np.ndarray
    coupon_ids: list[str | None]
    p_purchase: np.ndarray
    spend: np.ndarray
    cost: np.ndarray
    profit: np.ndarray

    @property
    def incremental_profit(self) -> np.ndarray:
        """Profit over "no coupon", net of the coupon's cost (column 0 is 0)."""
        return self.profit - self.profit[:, :1]

    def arm_index(self, coupon_ids: Sequence[str | None]) -> np.ndarray:
        """Column of each coupon id (None or NaN: 0); raises on a coupon not offered that day."""
        column = {c: j for j, c in enumerate(self.coupon_ids) if c is not None}
        missing = {c for c in coupon_ids if c is not None and not pd.isna(c) and c not in column}
        if missing:
            raise KeyError(f"not valid on {self.day.date()}: {sorted(missing)}")
        return np.array(
            [0 if c is None or pd.isna(c) else column[c] for c in coupon_ids], dtype=np.int64
        )


@dataclass(frozen=True)
class PolicyValue:
    """A policy's true value on one day, summed over the users it decides for."""

    incremental_profit: float  # over giving nobody a coupon
    cost: float  # expected coupon cost
    spend: float
    offers: int  # users given a coupon
    multiplier: float = 0.0  # the Lagrange multiplier on cost (oracle policy only)


class Oracle:
    """The ground truth of one `World`."""

    def __init__(self, world: World) -> None:
        self.world = world

    def expected(
        self,
        day: str | pd.Timestamp,
        users: Sequence[int] | np.ndarray,
        coupon_ids: Sequence[str | None],
    ) -> pd.DataFrame:
        """True expectations for each (user, coupon or None) pair on `day`; any coupon of the
        catalogue may be asked about, valid that day or not."""
        ctx = self.world.context(day)
        catalogue = self.world.catalogue(ctx.day)
        position = {c: j for j, c in enumerate(catalogue["coupon_id"])}
        unknown = {c for c in coupon_ids if c is not None and not pd.isna(c) and c not in position}
        if unknown:
            raise KeyError(f"not in the catalogue of {ctx.day.date()}: {sorted(unknown)}")
        arm = np.array([-1 if pd.isna(c) else position[c] for c in coupon_ids], dtype=np.int64)
        users = np.asarray(users, dtype=np.int64)
        out = self.world.outcome(ctx, users, arm, catalogue)
        frame = pd.DataFrame(expectations(out, self.world.margin))
        # World.outcome broadcasts a scalar arm (-1: no coupon); its annotation says an array.
        nothing = self.world.outcome(ctx, users, -1)  # type: ignore[arg-type]
        none = expectations(nothing, self.world.margin)["profit"]
        frame["incremental_profit"] = frame["profit"] - none
        frame.insert(0, "coupon_id", pd.array(list(coupon_ids), dtype="string"))
        frame.insert(0, "user_id", users)
        return frame

    def truth(self, day: str | pd.Timestamp, users: np.ndarray | None = None) -> Truth:
        """Every arm of the day for `users` (default: everyone signed up by then)."""
        ctx: DayContext = self.world.context(day)
        users = np.arange(ctx.n_users) if users is None else np.asarray(users, dtype=np.int64)
        n_arms = len(ctx.coupons) + 1
        keys = ("p_purchase", "spend", "cost", "profit")
        table = {k: np.empty((len(users), n_arms)) for k in keys}
        for lo in range(0, len(users), CHUNK):
            chunk = users[lo : lo + CHUNK]
            arms = np.tile(np.arange(-1, n_arms - 1), len(chunk))
            exp = expectations(
                self.world.outcome(ctx, np.repeat(chunk, n_arms), arms), self.world.margin
            )
            for k in keys:
                table[k][lo : lo + len(chunk)] = exp[k].reshape(len(chunk), n_arms)
        ids = [None, *ctx.coupons["coupon_id"].tolist()]
        return Truth(ctx.day, users, ids, **table)

    def value_of(self, truth: Truth, coupon_ids: Sequence[str | None]) -> PolicyValue:
        """The true value of giving each of `truth.users` the coupon in the same row (None:
        nothing)."""
        return _value(truth, truth.arm_index(coupon_ids))

    def policy_value(self, truth: Truth, budget: float) -> tuple[PolicyValue, np.ndarray]:
        """The oracle policy: per user the arm maximising true incremental profit minus a
        multiplier times expected cost, with the smallest multiplier whose total expected
        cost fits `budget` (the same budget the policy it is compared with had), found by
        the policy's own allocation so both are budgeted alike.

        Returns its value and each user's arm (0: no coupon)."""
        choice, multiplier = allocate(truth.incremental_profit, truth.cost, float(budget))
        return replace(_value(truth, choice), multiplier=multiplier), choice


def _value(truth: Truth, arm: np.ndarray) -> PolicyValue:
    rows = np.arange(len(arm))
    return PolicyValue(
        incremental_profit=float(truth.incremental_profit[rows, arm].sum()),
        cost=float(truth.cost[rows, arm].sum()),
        spend=float(truth.spend[rows, arm].sum()),
        offers=int((arm > 0).sum()),
    )
