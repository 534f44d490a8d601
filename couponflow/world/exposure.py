"""Coupon fatigue's memory: who was offered a coupon on each recent day, so a day's exposure
(what wears coupon response down) is known without simulating the days before it again."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pandas as pd


def offered_mask(reached: np.ndarray, arm: np.ndarray, n: int) -> np.ndarray:
    """Per user of `n`, whether a logged decision gave them a coupon."""
    mask = np.zeros(n, dtype=bool)
    mask[reached[arm >= 0]] = True
    return mask


class Exposure:
    """The last `window + 1` days' offer masks; a day not held is replayed by `replay`
    (the logging policy's decisions regenerate alone, from their own streams)."""

    def __init__(self, window: int, replay: Callable[[pd.Timestamp], np.ndarray]) -> None:
        self.window = window
        self._replay = replay
        self._days: OrderedDict[int, np.ndarray] = OrderedDict()

    def remember(self, day: pd.Timestamp, mask: np.ndarray) -> None:
        """Hold `day`'s mask, forgetting the least recently used beyond the window."""
        key = day.toordinal()
        self._days[key] = mask
        self._days.move_to_end(key)
        while len(self._days) > self.window + 1:
            self._days.popitem(last=False)

    def mask(self, day: pd.Timestamp) -> np.ndarray:
        """Who the logging policy offered a coupon on `day`."""
        key = day.toordinal()
        if key in self._days:
            self._days.move_to_end(key)
        else:
            self.remember(day, self._replay(day))
        return self._days[key]

    def counts(self, day: pd.Timestamp, n_users: int) -> np.ndarray:
        """Per user, on how many of the `window` days before `day` they were offered a coupon."""
        total = np.zeros(n_users)
        for k in range(self.window, 0, -1):
            mask = self.mask(day - pd.Timedelta(days=k))
            total[: len(mask)] += mask
        return total
