"""The observable ceiling: what a learner given the *true* incremental profit and cost of
every (user, coupon) earns from the observable inputs alone, fitted on half of the users
and budgeted on the other half. What the oracle earns beyond it comes from traits no data
in the log reveals; a learner from logged outcomes also pays for their noise."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from couponflow.policy import allocate

CEILING_SEED = 0


def _learning_half(n: int) -> np.ndarray:
    """The fixed half of the users a ceiling learns from; the other half judges it."""
    return np.random.default_rng(CEILING_SEED).random(n) < 0.5


def _regressor() -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(max_iter=300, max_leaf_nodes=31, random_state=0)


def observable_ceiling(gain: np.ndarray, cost: np.ndarray, x: np.ndarray, budget: float) -> float:
    """The ceiling's share of the oracle's true profit on the half of the users it never
    saw (see the module's docstring): `gain` and `cost` are the true (users, arms)
    matrices, `x` the pairs' model inputs (users, arms, inputs), `budget` per user."""
    n, m = gain.shape
    learn = _learning_half(n)
    judge = ~learn

    def fitted(target: np.ndarray) -> np.ndarray:
        model = _regressor()
        model.fit(x[learn, 1:].reshape(-1, x.shape[2]), target[learn, 1:].ravel())
        out = np.zeros((judge.sum(), m))
        out[:, 1:] = model.predict(x[judge, 1:].reshape(-1, x.shape[2])).reshape(-1, m - 1)
        return out

    value, estimated_cost = fitted(gain), np.maximum(fitted(cost), 1e-9)
    estimated_cost[:, 0] = 0.0
    rows = np.arange(judge.sum())
    chosen, _ = allocate(value, estimated_cost, budget * judge.sum())
    best, _ = allocate(gain[judge], cost[judge], budget * judge.sum())
    return float(gain[judge][rows, chosen].sum() / gain[judge][rows, best].sum())


def observable_lift_by_segment(
    lift: np.ndarray, x: np.ndarray, segment: np.ndarray, names: tuple[str, ...]
) -> dict[str, float]:
    """The purchase lift the observable inputs allow any learner to see, per hidden segment,
    in points: a regressor fitted on the *true* lift of every (user, coupon) (`lift`, users x
    coupons, "no coupon" excluded) from the pairs' inputs `x` (users, coupons, inputs) on half
    of the users, its predictions averaged per segment on the other half. It estimates
    E[lift | inputs], the best a calibrated learner can predict; where a segment shares every
    input cell with others, its mean is pulled to theirs, and no learner from these inputs
    gets its sign right however much data it sees."""
    n, m = lift.shape
    learn = _learning_half(n)
    model = _regressor()
    model.fit(x[learn].reshape(-1, x.shape[2]), lift[learn].ravel())
    seen = model.predict(x[~learn].reshape(-1, x.shape[2])).reshape(-1, m)
    held = segment[~learn]
    return {name: round(float(100 * seen[held == k].mean()), 2) for k, name in enumerate(names)}
