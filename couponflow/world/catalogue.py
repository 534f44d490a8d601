"""What can be offered: the standing coupons at the start, the short promotions launched each
week, and the coupons valid on a day with their share of the day's budget."""

from __future__ import annotations

import numpy as np
import pandas as pd

from couponflow.contract import ALL_CATEGORIES, CATEGORIES, COUPON_KINDS, SHIPPING_COST, TABLES
from couponflow.world.streams import CATALOGUE

KIND_CODE = {k: i for i, k in enumerate(COUPON_KINDS)}
PERCENT, AMOUNT, THRESHOLD, FREE_SHIPPING = (KIND_CODE[k] for k in COUPON_KINDS)
KIND_NAMES = np.array([*COUPON_KINDS, ""], dtype=object)  # code -1 (no coupon) -> ""
CATEGORY_CODE = {c: i for i, c in enumerate(CATEGORIES)}


def draw_coupons(
    rng: np.random.Generator,
    ids: list[str],
    valid_from: pd.DatetimeIndex,
    days: np.ndarray,
) -> pd.DataFrame:
    """Coupons of random kind, value and scope, valid for `days` from `valid_from`."""
    n = len(ids)
    kind = rng.integers(0, len(COUPON_KINDS), n)
    value = np.select(
        [kind == PERCENT, kind == AMOUNT, kind == THRESHOLD],
        [
            rng.choice([5, 10, 15, 20], n),
            rng.choice([5, 10, 15], n),
            rng.choice([10, 15, 20], n),
        ],
        default=SHIPPING_COST,
    ).astype(float)
    # min_spend >= value for thresholds: the oracle relies on the discount being `value`.
    min_spend = np.where(kind == THRESHOLD, rng.choice([50.0, 75.0, 100.0], n), 0.0)
    scoped = rng.random(n) >= 0.4
    category = np.where(scoped, rng.integers(0, len(CATEGORIES), n), -1)
    return pd.DataFrame(
        {
            "coupon_id": pd.array(ids, dtype="string"),
            "kind": np.array(COUPON_KINDS)[kind],
            "value": value,
            "min_spend": min_spend,
            "category": np.array([*CATEGORIES, ALL_CATEGORIES])[category],
            "valid_from": valid_from,
            "valid_to": valid_from + pd.to_timedelta(days, unit="D"),
            "budget_share": 0.0,
        }
    )


class Catalogue:
    """The coupons over time; each week's promotions come from their own stream, drawn on
    first need and kept."""

    def __init__(
        self, seed: int, start: pd.Timestamp, n_standing: int, new_per_week: int = 0
    ) -> None:
        self.seed, self.new_per_week = seed, new_per_week
        self.standing = self._standing(start, n_standing)
        self._launches: dict[int, pd.DataFrame] = {}

    def _standing(self, start: pd.Timestamp, n: int) -> pd.DataFrame:
        """The catalogue at the start: mostly long-lived coupons, a quarter expiring soon."""
        rng = np.random.default_rng([self.seed, CATALOGUE])
        starts = start - pd.to_timedelta(rng.integers(0, 30, n), unit="D")
        lifetimes = np.where(rng.random(n) < 0.75, 3650, rng.integers(7, 30, n))
        ids = [f"C{i:03d}" for i in range(n)]
        return draw_coupons(rng, ids, starts, lifetimes)

    def promotions(self, week: int) -> pd.DataFrame:
        """The short promotions launched in `week` (weeks counted from 0001-01-01, a Monday)."""
        if week not in self._launches:
            self._launches[week] = self._launch(week)
        return self._launches[week]

    def _launch(self, week: int) -> pd.DataFrame:
        rng = np.random.default_rng([self.seed, CATALOGUE, week])
        n = self.new_per_week
        launch = pd.Timestamp.fromordinal(7 * week + 1) + pd.to_timedelta(
            np.sort(rng.integers(0, 7, n)), unit="D"
        )
        ids = [f"C{d:%Y%m%d}-{i}" for i, d in enumerate(launch)]  # C<launch date>-<i>
        return draw_coupons(rng, ids, launch, rng.integers(7, 29, n))

    def on(self, day: str | pd.Timestamp) -> pd.DataFrame:
        """Every coupon launched by `day` that may still be valid on it (and the standing ones)."""
        day = pd.Timestamp(day).normalize()
        frames = [self.standing]
        if self.new_per_week:
            week = (day.toordinal() - 1) // 7
            frames += [self.promotions(w) for w in range(week - 5, week + 1)]
        return pd.concat(frames, ignore_index=True)

    def active(self, day: str | pd.Timestamp) -> pd.DataFrame:
        """The coupons valid on `day`, each with an equal share of the day's budget."""
        day = pd.Timestamp(day).normalize()
        c = self.on(day)
        active = c[(c["valid_from"] <= day) & (c["valid_to"] > day)].reset_index(drop=True)
        active["budget_share"] = 1.0 / max(len(active), 1)
        return TABLES["coupons"].conform(active)
