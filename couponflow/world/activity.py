"""When shoppers come by: the weekly season and each day's browsing sessions, which the
logging policy reads to pick a coupon and the sessions table records."""

from __future__ import annotations

import numpy as np
import pandas as pd

from couponflow.world.population import Population
from couponflow.world.streams import ACTIVITY, day_rng, draw_categories, sigmoid

SEASON_AMPLITUDE = 0.25  # weekly purchase-logit swing, peaking on Saturdays


def season(day: pd.Timestamp) -> float:
    """The weekly swing in the purchase logit (and in browsing), highest on Saturdays."""
    return SEASON_AMPLITUDE * float(np.cos(2 * np.pi * (day.dayofweek - 5) / 7))


def browse(
    seed: int, day: pd.Timestamp, pop: Population, sessions_per_user: float
) -> tuple[np.ndarray, np.ndarray]:
    """The day's browsing sessions, (user, category code) per session: keen buyers browse
    more, and in the categories they prefer."""
    rng = day_rng(seed, ACTIVITY, day)
    rate = 2 * sessions_per_user * sigmoid(pop.base_logit + 1.5)
    user = np.repeat(np.arange(len(pop)), rng.poisson(rate * np.exp(season(day))))
    return user, draw_categories(rng, pop.preference_cdf[user])
