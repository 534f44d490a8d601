"""The world's random streams and the drawing helpers its parts share.

Each stream draws for one purpose only and is keyed by `(seed, stream, ...)`, so
regenerating one part (a day, a cohort, a week's promotions) never shifts another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POPULATION, CATALOGUE, ACTIVITY, LOGGING, OUTCOME, DETAIL = range(6)


def day_rng(seed: int, stream: int, day: pd.Timestamp) -> np.random.Generator:
    """The stream's generator for one day, so any day can be regenerated alone."""
    return np.random.default_rng([seed, stream, day.toordinal()])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def draw_categories(rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `cdf` (cumulative probabilities, last column 1)."""
    u = rng.random(len(cdf))
    return (u[:, None] > cdf).sum(axis=1).clip(0, cdf.shape[1] - 1)


def labels(names: tuple[str, ...], codes: np.ndarray) -> pd.Series:
    """String column from integer codes, without building one Python string per row."""
    return pd.Series(pd.Categorical.from_codes(codes, names)).astype("string")
