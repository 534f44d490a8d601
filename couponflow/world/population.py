"""Who shops: the four uplift segments, each user's observable attributes and hidden causal
traits, and the cohorts that sign up day by day when the world drifts."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from couponflow.contract import AGE_BANDS, CATEGORIES, DEVICES, REGIONS
from couponflow.world.streams import POPULATION, draw_categories, labels

SEGMENTS = ("sure_thing", "persuadable", "lost_cause", "sleeping_dog")
DEFAULT_MIX = {"sure_thing": 0.25, "persuadable": 0.35, "lost_cause": 0.3, "sleeping_dog": 0.1}
# Per segment: baseline purchase logit, price sensitivity, annoyance at being sent a coupon.
SEGMENT_BASE = np.array([-1.6, -3.6, -5.0, -2.2])
SEGMENT_SENSITIVITY = np.array([0.5, 7.0, 0.3, 0.5])
SEGMENT_ANNOYANCE = np.array([0.0, 0.0, 0.0, 1.2])


def segment_mix(cfg: dict[str, float] | None) -> np.ndarray:
    """Segment shares from a {segment: share} mapping, normalised."""
    shares = np.array([float((cfg or DEFAULT_MIX).get(s, 0.0)) for s in SEGMENTS])
    if shares.sum() <= 0:
        raise ValueError(f"segment mix needs a positive share for one of {SEGMENTS}")
    return shares / shares.sum()


@dataclass
class Population:
    """Observable user attributes plus the hidden traits only the simulator and oracle see."""

    users: pd.DataFrame
    segment: np.ndarray  # index into SEGMENTS
    base_logit: np.ndarray  # daily purchase logit without a coupon
    basket: np.ndarray  # mean order amount at today's prices
    sensitivity: np.ndarray  # logit gained per unit of relative price cut
    annoyance: np.ndarray  # logit lost for being sent any coupon ("sleeping dogs")
    fatigue: np.ndarray  # decay of coupon response per coupon received in the window
    preference: np.ndarray  # (n, n_categories) category preference, rows sum to 1
    preference_cdf: np.ndarray  # its row-wise cumulative sum, for categorical draws

    def __len__(self) -> int:
        return len(self.segment)

    def head(self, n: int) -> Population:
        """The first `n` users (those signed up by some day: ids grow with signup)."""
        if n == len(self):
            return self
        parts = {f.name: getattr(self, f.name)[:n] for f in fields(self) if f.name != "users"}
        return Population(users=self.users.iloc[:n], **parts)

    @staticmethod
    def concat(parts: list[Population]) -> Population:
        arrays = {
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(Population)
            if f.name != "users"
        }
        users = pd.concat([p.users for p in parts], ignore_index=True)
        return Population(users=users, **arrays)


def draw_population(
    rng: np.random.Generator,
    n: int,
    first_id: int,
    signup: pd.DatetimeIndex,
    mix: np.ndarray,
    start: pd.Timestamp,
) -> Population:
    """`n` users with ids from `first_id`; tenure is counted at `start`."""
    region = rng.integers(0, len(REGIONS), n)
    age = rng.choice(len(AGE_BANDS), size=n, p=[0.15, 0.3, 0.25, 0.18, 0.12])
    device = rng.choice(len(DEVICES), size=n, p=[0.6, 0.3, 0.1])
    # Segments lean on what can be seen: the young and mobile are more often persuadable,
    # older shoppers more often sure things, so observable data carries uplift signal.
    weights = np.tile(mix, (n, 1))
    weights[:, 1] *= np.where(age <= 1, 1.5, 1.0) * np.where(device == 0, 1.3, 1.0)
    weights[:, 0] *= np.where(age >= 3, 1.4, 1.0)
    weights /= weights.sum(axis=1, keepdims=True)
    segment = draw_categories(rng, weights.cumsum(axis=1))
    established = (start - signup).days.to_numpy() > 365
    base = SEGMENT_BASE[segment] + 0.25 * established + rng.normal(0, 0.4, n)
    sensitivity = SEGMENT_SENSITIVITY[segment] * rng.lognormal(0, 0.3, n)
    annoyance = SEGMENT_ANNOYANCE[segment] * rng.lognormal(0, 0.3, n)
    fatigue = rng.lognormal(np.log(0.1), 0.5, n)
    basket = rng.lognormal(np.log(45) + 0.08 * age, 0.4, n)
    gamma = rng.standard_gamma(0.4, (n, len(CATEGORIES))) + 1e-12
    preference = gamma / gamma.sum(axis=1, keepdims=True)
    users = pd.DataFrame(
        {
            "user_id": np.arange(first_id, first_id + n, dtype="int64"),
            "signup_date": signup,
            "region": labels(REGIONS, region),
            "age_band": labels(AGE_BANDS, age),
            "device": labels(DEVICES, device),
        }
    )
    return Population(
        users, segment, base, basket, sensitivity, annoyance, fatigue, preference,
        preference.cumsum(axis=1),
    )  # fmt: skip


class Shoppers:
    """The population over time: the founding users, drawn at once, and a cohort of signups
    per day drawn on first need from its own stream (so growing it lazily shifts nothing)."""

    def __init__(
        self,
        seed: int,
        start: pd.Timestamp,
        n_users: int,
        mix: np.ndarray,
        new_per_day: int = 0,
        new_mix: np.ndarray | None = None,
    ) -> None:
        self.seed, self.start, self.n_users = seed, start, n_users
        self.new_per_day = new_per_day
        self.new_mix = mix if new_mix is None else new_mix
        rng = np.random.default_rng([seed, POPULATION])
        signup = start - pd.to_timedelta(rng.integers(1, 720, n_users), unit="D")
        self.drawn = draw_population(rng, n_users, 0, signup, mix, start)

    def users_on(self, day: pd.Timestamp) -> int:
        """How many users have signed up by the end of `day`."""
        days = (pd.Timestamp(day).normalize() - self.start).days + 1
        return self.n_users + self.new_per_day * max(days, 0)

    def on(self, day: pd.Timestamp) -> Population:
        """The users signed up by the end of `day`, drawing the cohorts not drawn yet."""
        day = pd.Timestamp(day).normalize()
        n = self.users_on(day)
        if n > len(self.drawn):
            have = (len(self.drawn) - self.n_users) // max(self.new_per_day, 1)
            cohorts = [self._cohort(k) for k in range(have, (day - self.start).days + 1)]
            self.drawn = Population.concat([self.drawn, *cohorts])
        return self.drawn.head(n)

    def _cohort(self, k: int) -> Population:
        date = self.start + pd.Timedelta(days=k)
        return draw_population(
            np.random.default_rng([self.seed, POPULATION, 2, date.toordinal()]),
            self.new_per_day,
            first_id=self.n_users + k * self.new_per_day,
            signup=pd.DatetimeIndex([date] * self.new_per_day),
            mix=self.new_mix,
            start=self.start,
        )
