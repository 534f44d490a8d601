"""The baselines a challenger must beat, each a policy judged by the same evaluation and
budgeted by the same allocation as the recommender (`couponflow.policy.allocate`):

- `no_coupon`: nobody gets one (a coupon policy that loses money loses to it);
- `random`: a random eligible coupon for whoever the budget reaches;
- `most_redeemed`: the coupon redeemed most over the last 30 days, for everyone;
- `response`: the common approach, ranking coupons by a model of P(redeem) alone;
- `two_model_uplift`: a two-model (T-learner) gradient-boosting uplift learner, one
  regressor of profit for offers with a coupon, one for "no coupon" controls.

Each gives a value matrix (users, arms) to rank arms by, arm 0 being "no coupon" at 0,
and an expected-cost matrix, so the one allocation spends every policy's budget alike.
The cost comes from one gradient-boosting model of the discount given, shared by all
of them: a baseline should lose on its ranking, not on a worse cost estimate. Every
prediction over (user, coupon) pairs goes a chunk of users at a time (`user_chunks`), so
pricing a million users stays within a few hundred MB, and skips the "no coupon" column,
which every learner's answer sets to 0 anyway.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from couponflow.cpu import load_aware_threads
from couponflow.features import USER_FEATURES
from couponflow.model import ArmTable, encode, encode_pairs, row_pieces, user_chunks

GB_PARAMS = {"max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 15, "random_state": 0}


def sample_weight(table: pd.DataFrame, max_weight: float) -> np.ndarray:
    """Clipped inverse logging propensities, the weights every learner here trains with."""
    return np.minimum(1.0 / table["propensity"].to_numpy(dtype=float), max_weight)


def in_pieces(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """`predict(x)`, a piece of rows at a time (`row_pieces`). A gradient-boosting model
    walks its trees one after another over every row it is given, so a chunk's pair inputs
    (~100 MB) came from memory once a tree; a piece stays in the caches for all of them.
    Twice as fast (240,000 rows, 200 trees: 3.7 s -> 1.6 s on one thread, 1.6 -> 0.9 s on
    two) and the same bits: a row's answer is the sum of its own trees."""
    pieces = row_pieces(len(x))
    if len(pieces) == 1:
        return predict(x)
    return np.concatenate([predict(x[rows]) for rows in pieces])


Learner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(a chunk of users, the inputs of their (user, coupon) pairs, user-major) -> (users,
coupons) answers."""


def coupon_pairs(
    users: np.ndarray, arms: pd.DataFrame, learners: dict[str, Learner]
) -> dict[str, np.ndarray]:
    """Each learner's (users, arms) matrix of answers; column 0, "no coupon" (first in
    `arms`, see `policy.with_control`), is 0 and never predicted: every baseline sets it to
    0. A chunk of users at a time (see `user_chunks`), so every pair's inputs are never
    built at once; each chunk's inputs are built once, in the float64 that sklearn predicts
    on, and given to every learner in turn."""
    out = {name: np.zeros((len(users), len(arms))) for name in learners}
    if len(arms) < 2:
        return out
    coupons = ArmTable.from_frame(arms.iloc[1:])
    for rows in user_chunks(len(users)):
        chunk = users[rows]
        if len(chunk):
            pairs = encode_pairs(chunk, coupons).astype(np.float64)
            with load_aware_threads():
                for name, learner in learners.items():
                    out[name][rows, 1:] = learner(chunk, pairs).reshape(len(chunk), -1)
    return out


class PairPredictions:
    """Every learner's answers over the (user, coupon) pairs of one set of users, from one
    pass over them (`coupon_pairs`): the cost, response and two-model learners each built
    and converted every chunk's inputs themselves. The answers for the last users are kept,
    read-only, and given again: every baseline prices the same users in turn. Rows of new
    users equal to rows of the last ones (the last judged day's users are in the
    population, with the same features) take the answers kept for those rows instead of
    being predicted again: an answer depends on its user's row and the arms alone."""

    def __init__(self) -> None:
        self.learners: dict[str, Learner] = {}
        self._last: tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]] | None = None

    def add(self, name: str, learner: Learner) -> None:
        self.learners[name] = learner
        self.forget()

    def forget(self) -> None:
        """Drop the kept answers (the next users are predicted whole)."""
        self._last = None

    def get(self, name: str, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """Learner `name`'s (users, arms) answers, 0 for "no coupon" (read-only)."""
        if len(arms) and not pd.isna(arms["coupon_id"].iloc[0]):
            raise ValueError('arms must start with "no coupon" (policy.with_control)')
        last = self._last
        if last is None or last[0] is not users or last[1] is not arms:
            self._last = last = (users, arms, self._predict(users, arms))
        return last[2][name]

    def _predict(self, users: np.ndarray, arms: pd.DataFrame) -> dict[str, np.ndarray]:
        todo = np.arange(len(users))
        known = self._known_rows(users, arms)
        if known is None:
            out = coupon_pairs(users, arms, self.learners)
        else:
            assert self._last is not None  # _known_rows found rows in it
            kept = self._last[2]
            found = known >= 0
            todo = np.flatnonzero(~found)
            new = coupon_pairs(users[todo], arms, self.learners)
            out = {}
            for name in self.learners:
                out[name] = np.zeros((len(users), len(arms)))
                out[name][found] = kept[name][known[found]]
                out[name][todo] = new[name]
        for answer in out.values():
            answer.setflags(write=False)
        return out

    def _known_rows(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray | None:
        """For each row of `users`, the row of the last users equal to it, byte for byte,
        priced against these same arms (-1: none); None when nothing can be reused."""
        if self._last is None or self._last[1] is not arms or not len(users):
            return None
        last = self._last[0]
        if last.dtype != users.dtype or last.shape[1:] != users.shape[1:]:
            return None
        index = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(last))}
        known = np.array([index.get(row.tobytes(), -1) for row in np.ascontiguousarray(users)])
        return known if (known >= 0).any() else None


def offered_rows(
    table: pd.DataFrame, max_weight: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The logged offers that carried a coupon, their model inputs and sample weights."""
    offered = table[table["coupon_id"].notna()]
    x = encode(offered[USER_FEATURES].to_numpy(np.float32), offered)
    return offered, x, sample_weight(offered, max_weight)


class Baseline(ABC):
    """A policy to compare with: fitted on the training days, then scores arms."""

    name: str

    def __init__(self, cost_model: CostModel, seed: int = 0) -> None:
        self.cost_model = cost_model
        self.seed = seed

    def fit(self, table: pd.DataFrame, max_weight: float) -> Baseline:  # noqa: B027
        """Learn from logged offers (default: nothing to learn)."""
        return self

    @abstractmethod
    def value(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """(users, arms) ranking values; column 0 ("no coupon") is 0."""

    def value_and_cost(
        self, users: np.ndarray, arms: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Its ranking values and the shared cost model's expected costs."""
        return self.value(users, arms), self.cost_model.predict(users, arms)


class CostModel:
    """Expected discount given, per (user, coupon): a gradient-boosting regressor on the
    discount of every logged coupon offer (0 when it was not redeemed). It holds the
    baselines' shared `PairPredictions`, where each learner adds itself when fitted."""

    def __init__(self) -> None:
        self.pairs = PairPredictions()

    def fit(self, table: pd.DataFrame, max_weight: float) -> CostModel:
        offered, x, weight = offered_rows(table, max_weight)
        self.model = HistGradientBoostingRegressor(**GB_PARAMS).fit(
            x, offered["discount"].to_numpy(float), sample_weight=weight
        )
        self.pairs.add(
            "cost", lambda _, pairs: np.maximum(in_pieces(self.model.predict, pairs), 0.0)
        )
        return self

    def predict(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """(users, arms) expected costs, 0 for "no coupon", read-only. Every baseline prices
        the same users with this one model in turn, so the answer for the last (users, arms)
        objects is kept and given again (`PairPredictions`): predicting it once per
        baseline was most of evaluation's time at scale."""
        return self.pairs.get("cost", users, arms)


class NoCoupon(Baseline):
    """Nobody gets a coupon: what every coupon policy must beat, since a coupon that
    brings in less than it costs loses money."""

    name = "no_coupon"

    def value(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        value = np.full((len(users), len(arms)), -1.0)
        value[:, 0] = 0.0
        return value


class RandomCoupon(Baseline):
    name = "random"

    def value(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        value = 1.0 + rng.random((len(users), len(arms)))
        value[:, 0] = 0.0
        return value


class MostRedeemed(Baseline):
    """Everyone's first choice is the coupon with the most redemptions in 30 days; a tiny
    random jitter orders users so the budget can cut anywhere."""

    name = "most_redeemed"

    def value(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        redemptions = arms["coupon_redemptions_30d"].fillna(0.0).to_numpy(dtype=float)
        jitter = np.random.default_rng(self.seed).random((len(users), len(arms)))
        value = 1.0 + redemptions[None, :] + 1e-3 * jitter
        value[:, 0] = 0.0
        return value


class ResponseModel(Baseline):
    """Ranks coupons by P(redeem): what most coupon recommenders do."""

    name = "response"

    def fit(self, table: pd.DataFrame, max_weight: float) -> ResponseModel:
        offered, x, weight = offered_rows(table, max_weight)
        self.model = HistGradientBoostingClassifier(**GB_PARAMS).fit(
            x, offered["redeemed"].astype(int), sample_weight=weight
        )
        self.cost_model.pairs.add(
            self.name, lambda _, pairs: in_pieces(self.model.predict_proba, pairs)[:, 1]
        )
        return self

    def value(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """P(redeem) of every coupon, 0 for "no coupon" (read-only)."""
        return self.cost_model.pairs.get(self.name, users, arms)


class TwoModelUplift(Baseline):
    """A T-learner: profit with a coupon (user and coupon inputs) minus profit without one
    (user inputs), each a gradient-boosting regressor; the value is the uplift in profit,
    already net of the discount."""

    name = "two_model_uplift"

    def fit(self, table: pd.DataFrame, max_weight: float) -> TwoModelUplift:
        n_user = len(USER_FEATURES)
        x = encode(table[USER_FEATURES].to_numpy(np.float32), table)
        treated = table["coupon_id"].notna().to_numpy()
        reward, weight = table["reward"].to_numpy(float), sample_weight(table, max_weight)
        self.treated = HistGradientBoostingRegressor(**GB_PARAMS).fit(
            x[treated], reward[treated], sample_weight=weight[treated]
        )
        self.control = HistGradientBoostingRegressor(**GB_PARAMS).fit(
            x[~treated, :n_user], reward[~treated], sample_weight=weight[~treated]
        )
        self.cost_model.pairs.add(self.name, self.uplift)
        return self

    def value(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """The uplift of every coupon, 0 for "no coupon" (read-only)."""
        return self.cost_model.pairs.get(self.name, users, arms)

    def uplift(self, users: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Predicted profit with each coupon less without one, (users, coupons), from the
        users' (user, coupon) pairs' inputs (user-major)."""
        n = len(users)
        with_coupon = in_pieces(self.treated.predict, pairs).reshape(n, -1)
        # every pair of a user has the same user block: the first of each user's rows
        without = in_pieces(self.control.predict, pairs[:: len(pairs) // n, : len(USER_FEATURES)])
        return with_coupon - without[:, None]


def fit_baselines(table: pd.DataFrame, max_weight: float, seed: int = 0) -> list[Baseline]:
    """Every baseline, fitted on `table` (the training days' labelled offers)."""
    kinds = (NoCoupon, RandomCoupon, MostRedeemed, ResponseModel, TwoModelUplift)
    with load_aware_threads():
        cost = CostModel().fit(table, max_weight)
        return [kind(cost, seed).fit(table, max_weight) for kind in kinds]
