"""DVC stage `evaluate`: the challenger, the champion and every baseline judged alike on the
held-out day, each policy budgeted by the same allocation.

- Prediction: AUC, log loss and calibration of P(purchase) and P(redeem) on the logged arms.
- Uplift: Qini curve, Qini coefficient and AUUC of each policy's best coupon over "no
  coupon", from the log reweighted by its propensities (a randomised comparison).
- Policy value: IPS, SNIPS and doubly robust estimates with bootstrap intervals, and
  paired intervals of the challenger's lead over the champion and each baseline.
- Simulated data only: every policy's true incremental profit on the whole population
  from the world's oracle, the oracle policy's at the same budget, profit against budget.
- Segments: offer rate, planned spend and uplift by region, age band and new vs returning.
  These population figures take a fixed-seed sample of `evaluation.population_sample`
  users when more are known.
- At scale the off-policy figures judge the decisions of a fixed share of users
  (`evaluation.decision_sample`, `judged_sample`): the same estimates, wider intervals.
- The A/B readout: the served policy's realised lift over its random holdout slice.

Writes metrics/evaluation.json (a DVC metric) and the curves under metrics/plots/ (DVC
plots); training/report.py turns them into the run report. Run from the workspace root:
`python -m training.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from tqdm import tqdm

from couponflow.artefacts import MODEL_WEIGHTS
from couponflow.config import EvaluationParams, Workspace
from couponflow.contract import ALL_CATEGORIES, COUPON_KINDS, RANDOMISED_SLICES
from couponflow.cpu import load_aware_threads
from couponflow.evaluation import (
    LOGGING,
    NO_COUPON,
    Estimate,
    EvaluationReport,
    GainCalibration,
    Lead,
    OracleTruth,
    PolicyResult,
)
from couponflow.features import USER_FEATURES, default_user_features
from couponflow.landing import read_offline
from couponflow.logs import quiet_libraries
from couponflow.metrics import (
    Bootstrapped,
    TargetTerms,
    ab_readout,
    auuc,
    best_arm_view,
    bootstrap_indices,
    calibration_curve,
    effective_sample_size,
    gain_calibration,
    gain_pseudo_outcomes,
    minimum_detectable_effect,
    off_policy_bootstrap,
    prediction_metrics,
    qini_coefficient,
    qini_curve,
)
from couponflow.model import Recommender, encode, load_model, predict, user_chunks
from couponflow.policy import Scores, allocate, eligible, user_cap_mask, with_control
from couponflow.records import SegmentRow
from training.baselines import GB_PARAMS, fit_baselines, in_pieces
from training.scoring import score_users
from training.train import split_days

SEGMENTS = ("region", "age_band", "new")
ORACLE_BOOTSTRAP = 400  # resamples of users behind the true leads' intervals
POPULATION_SEED = 0  # which users `evaluation.population_sample` draws, the same every run


class Steps:
    """The stage's long steps on one progress line (tqdm on stderr, cleared when done, as
    the train and budget stages' bars are): fitting the baselines, pricing each judged day,
    the DR reward model's folds, the population. `show` off (the default) is silent."""

    def __init__(self, total: int = 0, show: bool = False) -> None:
        self.bar = tqdm(total=total, desc="evaluate", unit="step", leave=False, disable=not show)

    @classmethod
    def for_stage(cls, days: list[EvalDay], folds: int) -> Steps:
        """The stage's steps, shown only when the judged log is more than one chunk of
        users (`user_chunks`): at the scale of the tests and tiny worlds the stage takes
        seconds and stays quiet."""
        decisions = sum(len(d.rows) for d in days)
        return cls(1 + len(days) + folds + 1, show=len(user_chunks(decisions)) > 1)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """One step: named on the line while it runs, counted when it ends."""
        self.bar.set_postfix_str(what)
        yield
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


class Policy(Protocol):
    """What evaluation needs of a policy: arm values to rank by and their expected cost."""

    name: str

    def value_and_cost(
        self, users: np.ndarray, arms: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ModelPolicy:
    """A trained network behind the shared policy maths: an arm's value is its expected
    incremental profit, its cost the expected discount (what the service does)."""

    def __init__(self, name: str, net: Recommender, version: str, margin: float) -> None:
        self.name, self.net, self.version, self.margin = name, net, version, margin
        self._last: tuple[np.ndarray, pd.DataFrame, Scores] | None = None

    def scores(self, users: np.ndarray, arms: pd.DataFrame) -> Scores:
        """The shared `score` of every user and arm, a chunk of users at a time, on every
        core (`training.scoring`). The population is priced and then asked its expected
        reward: the scores of the last (users, arms) objects are kept and given again
        (read-only) instead of running the network twice."""
        if self._last is not None and self._last[0] is users and self._last[1] is arms:
            return self._last[2]
        scores = score_users(self.net, users, arms, self.margin)
        self._last = (users, arms, scores)
        return scores

    def value_and_cost(
        self, users: np.ndarray, arms: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both from one scoring of the network."""
        s = self.scores(users, arms)
        return s.incremental_profit, s.expected_cost

    def expected_reward(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """Expected profit of every arm, margin on spend less the discount: the reward
        model of the doubly robust estimator."""
        s = self.scores(users, arms)
        return s.p_purchase * self.margin * s.amount - s.expected_cost


@dataclass
class Decisions:
    """Which arm each user gets from one policy under a budget."""

    arms: np.ndarray  # (n,) arm index, 0 = no coupon
    multiplier: float
    value: np.ndarray  # (n, m) the policy's own values (capped users' coupons at -inf)
    cost: np.ndarray  # (n, m) its expected costs

    def chosen(self, matrix: np.ndarray) -> np.ndarray:
        """Each user's entry of a (n, m) matrix at the chosen arm."""
        return matrix[np.arange(len(self.arms)), self.arms]

    def summary(self) -> dict[str, float]:
        return {
            "offer_rate": float((self.arms > 0).mean()),
            "multiplier": self.multiplier,
            "planned_cost": float(self.chosen(self.cost).sum()),
        }


@dataclass
class Priced:
    """One policy's values and expected costs of every arm for a set of users, priced
    once and then decided at any budget."""

    value: np.ndarray  # (n, m), users at their offer cap with coupons at -inf
    cost: np.ndarray

    def decide(self, budget: float) -> Decisions:
        """The policy's greedy choices within `budget`."""
        chosen, multiplier = allocate(self.value, self.cost, budget)
        return Decisions(chosen, multiplier, self.value, self.cost)


def price(policy: Policy, users: np.ndarray, arms: pd.DataFrame, cap: int) -> Priced:
    """Value and cost every arm for every user; users at their offer cap get no coupon."""
    value, cost = policy.value_and_cost(users, arms)
    value = np.array(value, dtype=float)
    value[user_cap_mask(users, cap), 1:] = -np.inf
    return Priced(value, cost)


@dataclass
class Decided:
    """One policy's decisions on a judged day and what the report reads of its values,
    without the (decisions, arms) value and cost matrices: at a million users those are
    ~80 MB each per policy and day, some 3 GB for eight policies over four days."""

    arms: np.ndarray  # (n,) arm index, 0 = no coupon
    chosen_cost: np.ndarray  # (n,) expected cost of the chosen arm
    ranks: bool  # whether the policy ranks coupons at all (`ranks`)
    best_coupon: np.ndarray  # (n,) each user's best coupon by its values (Qini)
    best_value: np.ndarray  # (n,) and that value
    randomised_value: np.ndarray  # (randomised rows, coupons) values (gain calibration)

    @classmethod
    def of(cls, d: Decisions, randomised: np.ndarray) -> Decided:
        coupons = d.value[:, 1:]
        best = 1 + coupons.argmax(axis=1) if coupons.shape[1] else np.zeros(len(d.arms), int)
        return cls(
            arms=d.arms,
            chosen_cost=d.chosen(d.cost),
            ranks=ranks(d),
            best_coupon=best,
            best_value=d.value[np.arange(len(best)), best],
            randomised_value=coupons[randomised],
        )


@dataclass
class Day:
    """Who is decided for on the evaluation day, the arms open, and their budget."""

    users: np.ndarray  # (n, len(USER_FEATURES))
    arms: pd.DataFrame  # with_control(...) with coupon stats as the day began
    budget: float


def logged_arm_index(coupon_ids: pd.Series, arms: pd.DataFrame) -> np.ndarray:
    """Each logged coupon's position in `arms` (0 for "no coupon"; -1 if not open)."""
    position = {cid: i for i, cid in enumerate(arms["coupon_id"]) if isinstance(cid, str)}
    return np.array([0 if pd.isna(c) else position.get(c, -1) for c in coupon_ids])


# -- on the logged decisions of the held-out day -------------------------------------------
class CalibrationPoints(TypedDict):
    """A calibration curve as a plot table's columns (metrics/plots/calibration.csv)."""

    predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray


def prediction_report(
    net: Recommender, users: np.ndarray, table: pd.DataFrame
) -> tuple[dict[str, float], CalibrationPoints]:
    """Prediction quality on the arms actually logged: P(purchase) on every decision,
    P(redeem) where a coupon was offered (`redeem_*`, PolicyResult.prediction), and the
    calibration curve of P(purchase)."""
    pred = predict(net, encode(users, table))
    purchased = table["purchased"].to_numpy()
    out = prediction_metrics(purchased, pred["p_purchase"])
    offered = table["coupon_id"].notna().to_numpy()
    redeemed = table["redeemed"].to_numpy()[offered]
    out.update(
        {
            f"redeem_{k}": v
            for k, v in prediction_metrics(redeemed, pred["p_redeem"][offered]).items()
        }
    )
    c = calibration_curve(purchased, pred["p_purchase"])
    return out, {"predicted": c.mean_predicted, "observed": c.observed, "count": c.count}


def ranks(d: Decisions) -> bool:
    """Whether the policy ranks coupons at all (offering nothing does not): only then has
    it a Qini curve."""
    coupons = d.value[:, 1:]
    finite = coupons[np.isfinite(coupons)]  # users at their cap have none
    return finite.size > 0 and np.ptp(finite) > 0


class QiniPoints(TypedDict):
    """A Qini curve as a plot table's columns (metrics/plots/qini.csv)."""

    fraction: np.ndarray
    incremental: np.ndarray


class UpliftReport(TypedDict):
    """A ranking policy's uplift on the pooled days (into PolicyResult's qini and auuc)."""

    qini: float
    auuc: float
    curve: QiniPoints


def uplift_report(days: list[EvalDay], decided: list[Decided]) -> UpliftReport:
    """Qini and AUUC of each user's best coupon by the policy's own values, against "no
    coupon", on the pooled days: rows the log gave that coupon are treated, rows logged
    without one are the controls, each weighted by its inverse propensity so the
    comparison is randomised."""
    parts = []
    for day, d in zip(days, decided, strict=True):
        propensity = day.rows["propensity"].to_numpy(float)
        treated, weight = best_arm_view(day.logged, d.best_coupon, propensity)
        parts.append((d.best_value, treated, day.rows["reward"].to_numpy(float), weight))
    score, treated, reward, weight = (np.concatenate(x) for x in zip(*parts, strict=True))
    args = (np.where(np.isfinite(score), score, -1e12), treated, reward, weight)
    curve = qini_curve(*args)
    return {
        "qini": float(qini_coefficient(*args)),
        "auuc": float(auuc(*args)),
        "curve": {"fraction": curve.share, "incremental": curve.gain},
    }


# -- the judged days: pooled logged decisions ------------------------------------------------
@dataclass
class EvalDay:
    """One evaluation day's logged decisions, the arms open, the budget prorated to them,
    the randomisation of its randomised rows and (simulated data) the truth."""

    day: str
    rows: pd.DataFrame  # logged decisions whose arm was open: reward, propensity, slice, ...
    users: np.ndarray  # (n, len(USER_FEATURES))
    arms: pd.DataFrame  # with_control(...), "no coupon" first
    logged: np.ndarray  # (n,) arm index of the logged decision
    budget: float
    true_gain: np.ndarray | None = None  # (n, m) true incremental profit of every arm

    @property
    def randomised(self) -> np.ndarray:
        """Rows decided at random: uniform exploration and the holdout (contract)."""
        return self.rows["slice"].astype(str).isin(RANDOMISED_SLICES).to_numpy()

    def arm_prob(self) -> np.ndarray:
        """(n, m) probability of each arm for a randomised row given it was randomised:
        explore is uniform over the open arms, the holdout is "no coupon", mixed by their
        shares of the day's randomised rows (slices are drawn independently of the user)."""
        n, m = len(self.rows), len(self.arms)
        randomised = self.randomised
        explore = self.rows["slice"].astype(str).to_numpy() == "explore"
        share = explore.sum() / max(randomised.sum(), 1)
        prob = np.full((n, m), share / m)
        prob[:, 0] += 1 - share
        return prob


def arm_features(frame: pd.DataFrame) -> np.ndarray:
    """The reward model's arm block: coupon or not, its kind, value, threshold and scope."""
    kind = frame["kind"].astype(object).where(frame["kind"].notna(), "").to_numpy()
    coupon = kind != ""
    return np.column_stack(
        [
            coupon,
            *[kind == k for k in COUPON_KINDS],
            np.nan_to_num(frame["value"].astype(float).to_numpy()),
            np.nan_to_num(frame["min_spend"].astype(float).to_numpy()),
            frame["category"].astype(object).where(frame["category"].notna(), "").to_numpy()
            == ALL_CATEGORIES,
        ]
    ).astype(np.float32)


# the reward model's boosting: shallow and regularised, profit is mostly noise
REWARD_GB = {**GB_PARAMS, "max_iter": 100, "min_samples_leaf": 50}


def user_hash(user_ids: pd.Series, salt: str = "") -> np.ndarray:
    """A fixed 64-bit hash of each user id (uint64): the same user, the same value on every
    day and run. A `salt` gives another draw, independent of the unsalted one."""
    return pd.util.hash_pandas_object(salt + user_ids.astype(str), index=False).to_numpy()


class RewardModel:
    """The doubly robust estimate's reward model, fitted apart from the challenger:
    gradient boosting of the logged profit on the user's features and the arm, cross-fitted
    over users (each fold of the evaluation days is predicted by a model that never saw its
    outcomes, trained on the training days and the other folds), so its errors are not the
    challenger's and the estimate is not flattered by rows it fitted."""

    def __init__(self, folds: int = 2, seed: int = 0) -> None:
        self.folds, self.seed = folds, seed

    def fold_of(self, user_ids: pd.Series) -> np.ndarray:
        """A user's fold, fixed by their id (a user is in one fold on every day)."""
        return (user_hash(user_ids) % np.uint64(self.folds)).astype(int)

    def predict(
        self, train: pd.DataFrame, days: list[EvalDay], steps: Steps | None = None
    ) -> list[np.ndarray]:
        """(n, m) expected reward of every arm for every evaluation row of each day."""
        steps = steps or Steps()

        def inputs(users: np.ndarray, arm_block: np.ndarray) -> np.ndarray:
            return np.column_stack([users, arm_block])

        train_x = inputs(train[USER_FEATURES].to_numpy(np.float32), arm_features(train))
        train_y = train["reward"].to_numpy(float)
        rows_x = [inputs(d.users, arm_features(d.rows)) for d in days]
        rows_y = [d.rows["reward"].to_numpy(float) for d in days]
        folds = [self.fold_of(d.rows["user_id"]) for d in days]
        out = [np.zeros((len(d.rows), len(d.arms))) for d in days]
        for k in range(self.folds):
            with steps.step(f"DR reward model, fold {k + 1} of {self.folds}"):
                x = np.concatenate(
                    [train_x, *[r[f != k] for r, f in zip(rows_x, folds, strict=True)]]
                )
                y = np.concatenate(
                    [train_y, *[r[f != k] for r, f in zip(rows_y, folds, strict=True)]]
                )
                model = HistGradientBoostingRegressor(**{**REWARD_GB, "random_state": self.seed})
                with load_aware_threads():  # one thread on a busy machine (couponflow.cpu)
                    model.fit(x, y)
                for d, f, o in zip(days, folds, out, strict=True):
                    o[f == k] = self._every_arm(model, d.users[f == k], arm_features(d.arms))
        return out

    @staticmethod
    def _every_arm(
        model: HistGradientBoostingRegressor, users: np.ndarray, block: np.ndarray
    ) -> np.ndarray:
        """(users, arms) predictions, a chunk of users at a time (`user_chunks`), each
        chunk's pairs built once in the float64 sklearn predicts on: a day's fold at a
        million users pairs ~280,000 users with every arm, ~1.5 GB of inputs as float32
        and twice that in sklearn's float64 copy, all to be thrown away."""
        m = len(block)
        out = np.zeros((len(users), m))
        for rows in user_chunks(len(users)):
            chunk = users[rows]
            if not len(chunk):
                continue
            pairs = np.empty((len(chunk) * m, chunk.shape[1] + block.shape[1]))
            pairs[:, : chunk.shape[1]] = np.repeat(chunk, m, axis=0)
            pairs[:, chunk.shape[1] :] = np.tile(block, (len(chunk), 1))
            with load_aware_threads():
                out[rows] = in_pieces(model.predict, pairs).reshape(len(chunk), m)
        return out


@dataclass
class Judged:
    """Every policy's off-policy values on the pooled days on shared resamples, from which
    any of them can be read as the challenger against the others."""

    days: list[EvalDay]
    decided: dict[str, list[Decided]]
    boot: dict[str, dict[str, Bootstrapped]]
    q: list[np.ndarray]
    rows: np.ndarray  # which pooled rows the estimates use
    level: float
    n_boot: int
    estimator: str

    @property
    def decisions(self) -> int:
        return int(sum(len(d.rows) for d in self.days))

    def true_value(self, name: str) -> float | None:
        """True incremental profit per decision of a policy's choices on the judged rows
        (the logging policy: of its logged arms)."""
        if any(d.true_gain is None for d in self.days):
            return None
        parts = []
        for k, d in enumerate(self.days):
            arm = d.logged if name == LOGGING else self.decided[name][k].arms
            assert d.true_gain is not None  # every day's checked above
            parts.append(d.true_gain[np.arange(len(arm)), arm])
        return float(np.concatenate(parts).mean())

    def policy(self, name: str, kind: str, version: str | None = None) -> PolicyResult:
        result = self._policy(name, kind, version)
        if NO_COUPON in self.boot:
            diff = self.boot[name]["dr"] - self.boot[NO_COUPON]["dr"]
            result.gain = Estimate(**diff.interval(self.level).as_dict())
        return result

    def _policy(self, name: str, kind: str, version: str | None) -> PolicyResult:
        est = {k: Estimate(**b.interval(self.level).as_dict()) for k, b in self.boot[name].items()}
        if name == LOGGING:
            offered = np.concatenate([d.logged > 0 for d in self.days])
            return PolicyResult(
                name, kind, version, est["dr"], est["ips"], est["snips"],
                offer_rate=float(offered.mean()), planned_cost=None,
                coupon_evidence=float(offered.sum()), true_value=self.true_value(name),
            )  # fmt: skip
        ds = self.decided[name]
        arms = np.concatenate([d.arms for d in ds])
        logged = np.concatenate([d.logged for d in self.days])
        propensity = np.concatenate([d.rows["propensity"].to_numpy(float) for d in self.days])
        backed = (arms == logged) & (arms > 0)
        return PolicyResult(
            name, kind, version, est["dr"], est["ips"], est["snips"],
            offer_rate=float((arms > 0).mean()),
            planned_cost=float(np.concatenate([d.chosen_cost for d in ds]).mean()),
            coupon_evidence=effective_sample_size(backed / propensity),
            true_value=self.true_value(name),
        )  # fmt: skip

    def lead(self, challenger: str, over: str) -> Lead:
        """The challenger's paired DR lead over another policy, its standard error and the
        smallest lead the gate's lower-bound check detects with 80 % power."""
        diff = self.boot[challenger]["dr"] - self.boot[over]["dr"]
        se = float(np.nanstd(diff.replicates, ddof=1))
        t_c, t_o = self.true_value(challenger), self.true_value(over)
        return Lead(
            over,
            Estimate(**diff.interval(self.level).as_dict()),
            se,
            minimum_detectable_effect(se, self.level),
            None if t_c is None or t_o is None else t_c - t_o,
        )

    def gain_calibration(self, name: str) -> GainCalibration | None:
        """The policy's own values of each coupon against DR pseudo-outcomes of that
        coupon's gain on the randomised rows (see `metrics.gain_calibration`)."""
        predicted, pseudo = [], []
        width = max(len(d.arms) for d in self.days) - 1
        for k, d in enumerate(self.days):
            r = d.randomised
            if not r.any():
                continue
            value = self.decided[name][k].randomised_value
            y = gain_pseudo_outcomes(
                d.logged[r], d.rows["reward"].to_numpy(float)[r], d.arm_prob()[r], self.q[k][r]
            )
            pad = ((0, 0), (0, width - value.shape[1]))
            predicted.append(np.pad(value, pad, constant_values=np.nan))
            pseudo.append(np.pad(y, pad, constant_values=np.nan))
        if not predicted:
            return None
        curve = gain_calibration(np.concatenate(predicted), np.concatenate(pseudo), self.level)
        return GainCalibration(
            [float(x) for x in curve.predicted],
            [float(x) for x in curve.realised],
            [int(x) for x in curve.count],
            Estimate(**curve.slope.as_dict()),
            int(sum(d.randomised.sum() for d in self.days)),
        )


ESTIMATORS = {
    "all": "DR on each judged decision with its exact logging propensity",
    "randomised": "DR on the randomised slices (explore + holdout) with their in-slice "
    "propensities",
}


def decide_day(day: EvalDay, priced: Mapping[str, Priced]) -> dict[str, Decided]:
    """Every priced policy decided on `day` at the day's budget."""
    randomised = day.randomised
    return {name: Decided.of(p.decide(day.budget), randomised) for name, p in priced.items()}


def decide_days(
    days: list[EvalDay], priced: Mapping[str, Sequence[Priced]]
) -> dict[str, list[Decided]]:
    """`decide_day` on each day, as each policy's list of days."""
    if any(len(ps) != len(days) for ps in priced.values()):
        raise ValueError(f"every policy needs its prices on each of the {len(days)} days")
    by_day = [
        decide_day(d, {name: ps[k] for name, ps in priced.items()}) for k, d in enumerate(days)
    ]
    return {name: [day[name] for day in by_day] for name in priced}


def judge(
    days: list[EvalDay],
    decided: Mapping[str, list[Decided]],
    q: list[np.ndarray],
    level: float,
    n_boot: int,
    rows: str = "all",
) -> Judged:
    """Every policy's decisions on each day (`decide_days`) valued off-policy on the
    pooled logged decisions (IPS, SNIPS, DR with the reward model `q`), with the logging
    policy's own realised value, all on the same bootstrap resamples so leads are paired.
    `rows`: "all" uses every logged decision with its logged propensity; "randomised"
    only the randomised slices with their in-slice propensities."""
    use = np.concatenate(
        [d.randomised if rows == "randomised" else np.ones(len(d.rows), bool) for d in days]
    )
    if rows == "randomised":
        propensity = np.concatenate([d.arm_prob()[np.arange(len(d.rows)), d.logged] for d in days])
    else:
        propensity = np.concatenate([d.rows["propensity"].to_numpy(float) for d in days])
    logged_propensity = np.concatenate([d.rows["propensity"].to_numpy(float) for d in days])
    reward = np.concatenate([d.rows["reward"].to_numpy(float) for d in days])
    targets = {}
    for name, ds in decided.items():
        terms = [
            TargetTerms.from_actions(d.logged, x.arms, qk)
            for d, x, qk in zip(days, ds, q, strict=True)
        ]
        targets[name] = TargetTerms(
            *(np.concatenate([getattr(t, f) for t in terms])[use] for f in TERM_FIELDS)
        )
    zeros = np.zeros(int(use.sum()))
    # the logging policy as a target: its own reward on every row (weight 1), or on the
    # randomised rows reweighted from their randomisation to its propensities
    targets[LOGGING] = TargetTerms(logged_propensity[use], zeros, zeros)
    boot = off_policy_bootstrap(reward[use], propensity[use], targets, n_boot, seed=0)
    return Judged(days, dict(decided), boot, q, use, level, n_boot, ESTIMATORS[rows])


TERM_FIELDS = ("prob", "q_logged", "q_expected")


# -- on everyone known that day ------------------------------------------------------------
def population(
    ws: Workspace,
    day: pd.Timestamp,
    arms: pd.DataFrame,
    budget_per_user: float,
    new_days: int,
    sample: int | None,
) -> tuple[pd.DataFrame, Day]:
    """Every user known on `day`, or a fixed-seed sample of `sample` of them when there are
    more (pricing every policy, the truth and the budget curve on a million users took most
    of the stage), with features as the day began (a user without a feature row gets the
    cold-start vector) and the segments they fall in. The budget is per user, so a sample
    gets its share of the day's."""
    users = read_offline(ws, "users", [str(day.date())])
    if sample is not None and len(users) > sample:
        rows = np.random.default_rng(POPULATION_SEED).choice(len(users), sample, replace=False)
        users = users.iloc[np.sort(rows)]
    before = str((day - pd.Timedelta(days=1)).date())
    path = ws.features / "user_activity" / f"date={before}" / "part.parquet"
    known = pd.read_parquet(path).set_index("user_id")[USER_FEATURES]
    features = known.reindex(users["user_id"]).to_numpy(np.float32)
    features[np.isnan(features).any(axis=1)] = default_user_features()
    new = (day - users["signup_date"]).dt.days.to_numpy() < new_days
    frame = users[["user_id", "region", "age_band"]].assign(new=np.where(new, "new", "returning"))
    return frame.reset_index(drop=True), Day(features, arms, budget_per_user * len(users))


def segment_report(
    segments: pd.DataFrame, d: Decisions, true_gain: np.ndarray | None
) -> list[SegmentRow]:
    """Offer rate, planned spend and estimated (and true) uplift per user by segment, so a
    skewed allocation is visible before it ships."""
    frame = segments.assign(
        offered=d.arms > 0,
        planned_cost=d.chosen(d.cost),
        estimated_uplift=np.where(d.arms > 0, d.chosen(d.value), 0.0),
    )
    if true_gain is not None:
        frame["true_uplift"] = d.chosen(true_gain)
    rows = []
    for column in SEGMENTS:
        grouped = frame.groupby(column, observed=True)
        stats = grouped.agg(
            users=("offered", "size"),
            offer_rate=("offered", "mean"),
            planned_cost=("planned_cost", "mean"),
            estimated_uplift=("estimated_uplift", "mean"),
            **({"true_uplift": ("true_uplift", "mean")} if true_gain is not None else {}),
        )
        for level, values in stats.iterrows():
            row: SegmentRow = {
                "segment": column,
                "level": str(level),
                "users": int(values["users"]),
                "offer_rate": float(values["offer_rate"]),
                "planned_cost": float(values["planned_cost"]),
                "estimated_uplift": float(values["estimated_uplift"]),
            }
            if true_gain is not None:
                row["true_uplift"] = float(values["true_uplift"])
            rows.append(row)
    return rows


@dataclass
class GroundTruth:
    """The oracle's view of the population: true incremental profit and cost per arm."""

    gain: np.ndarray
    cost: np.ndarray
    oracle: Any  # couponflow.oracle.Oracle
    truth: Any  # couponflow.oracle.Truth


def simulated_truth(
    ws: Workspace, day: pd.Timestamp, users: pd.DataFrame, arms: pd.DataFrame
) -> GroundTruth:
    """The world's ground truth for these users and arms (simulated data only)."""
    from couponflow.oracle import Oracle
    from couponflow.world import World

    oracle = Oracle(World(ws.params["world"]))
    truth = oracle.truth(day, users["user_id"].to_numpy())
    column = truth.arm_index(list(arms["coupon_id"]))
    return GroundTruth(truth.incremental_profit[:, column], truth.cost[:, column], oracle, truth)


def true_leads(per_user: dict[str, np.ndarray], level: float) -> dict[str, dict[str, float]]:
    """The challenger's true lead over every other policy, summed over users, with a
    bootstrap interval over users; the resamples come in blocks (`bootstrap_indices`):
    drawn at once they were ~7 GB at a million users."""
    diffs = {
        name: per_user["challenger"] - gain
        for name, gain in per_user.items()
        if name != "challenger"
    }
    totals: dict[str, list[np.ndarray]] = {name: [] for name in diffs}
    n = len(per_user["challenger"])
    for resample in bootstrap_indices(n, ORACLE_BOOTSTRAP, seed=0):
        for name, diff in diffs.items():
            totals[name].append(diff[resample].sum(axis=1))
    tails = [(1 - level) / 2, (1 + level) / 2]
    leads = {}
    for name, diff in diffs.items():
        low, high = np.quantile(np.concatenate(totals[name]), tails)
        leads[name] = {"value": float(diff.sum()), "low": float(low), "high": float(high)}
    return leads


def oracle_report(
    truth: GroundTruth, decided: dict[str, Decisions], budget: float, level: float
) -> OracleTruth:
    """True incremental profit and cost of each policy's choices, the oracle policy's at
    the same budget and each policy's share of it, and the challenger's lead over every
    other policy with a bootstrap interval over users."""
    best, _ = truth.oracle.policy_value(truth.truth, budget)
    per_user = {name: d.chosen(truth.gain) for name, d in decided.items()}
    policies = {}
    for name, d in decided.items():
        gain = float(per_user[name].sum())
        policies[name] = {
            "incremental_profit": gain,
            "true_cost": float(d.chosen(truth.cost).sum()),
            "offers": float((d.arms > 0).sum()),
            "share_of_oracle": (
                gain / best.incremental_profit if best.incremental_profit else float("nan")
            ),
            **d.summary(),
        }
    leads = {name: Estimate(**lead) for name, lead in true_leads(per_user, level).items()}
    return OracleTruth(len(truth.gain), budget, best.incremental_profit, best.cost, policies, leads)


def budget_curve(
    priced: dict[str, Priced],
    budget: float,
    multiples: list[float],
    truth: GroundTruth | None,
    reward_model: np.ndarray,
) -> pd.DataFrame:
    """Incremental profit against the budget for every policy: true (and the oracle's)
    on simulated data, else as the challenger's model expects it."""
    gain = truth.gain if truth else reward_model - reward_model[:, :1]
    rows = []
    for k in multiples:
        for name, p in priced.items():
            total = p.decide(budget * k).chosen(gain).sum()
            rows.append({"policy": name, "budget": budget * k, "incremental_profit": total})
        if truth is not None:
            best, _ = truth.oracle.policy_value(truth.truth, budget * k)
            rows.append(
                {
                    "policy": "oracle",
                    "budget": budget * k,
                    "incremental_profit": best.incremental_profit,
                }
            )
    frame = pd.DataFrame(rows)
    frame["measure"] = "true" if truth else "estimated by the challenger"
    return frame


# -- the stage ------------------------------------------------------------------------------
def load_policies(ws: Workspace, margin: float) -> dict[str, ModelPolicy]:
    """The challenger (models/) and, when there is one, the champion (releases/champion),
    each named by the version that ships and judged by its held-out twin (model.refit): the
    refit has seen the judged days, its twin none of them, as the champion's twin has not."""
    policies = {}
    for name, path in (("challenger", ws.models), ("champion", ws.champion)):
        if (path / MODEL_WEIGHTS).exists():
            net, meta = load_model(path / MODEL_WEIGHTS, judged=True)
            policies[name] = ModelPolicy(name, net, meta["version"], margin)
    return policies


def read_judged_and_fitted(
    path: Path, day: pd.Series, first: pd.Timestamp, baseline_rows: int | None
) -> pd.DataFrame:
    """The training table's judged days and the days before them the baselines are fitted
    on: every one, or the newest whole days holding `evaluation.baseline_rows` rows (at
    least one day) when there are more. The table holds the whole training window (at 1M
    users ~18M rows, ~20 GB read at once), which the baselines do not need."""
    sizes = day[day < first].value_counts().sort_index(ascending=False)
    if baseline_rows is None or sizes.sum() <= baseline_rows:
        return pd.read_parquet(path)
    fitted = sizes.index[: max(1, int((sizes.cumsum() <= baseline_rows).sum()))]
    keep = [*fitted, *sorted(day[day >= first].unique())]
    return pd.read_parquet(path, filters=[("day", "in", keep)])


def judged_sample(
    table: pd.DataFrame, first: pd.Timestamp, sample: int | None
) -> tuple[pd.DataFrame, int]:
    """The table with the judged days' rows (from `first`) cut to about `sample`, and how
    many they were. A fixed share of users keeps every decision on every judged day (by a
    hash of the id, apart from the reward model's folds), the same users every run: an
    off-policy estimate on a random sample of users means what it means on all of them,
    with an interval wider by about sqrt(logged / judged). Each day's budget is prorated
    to its decisions (`evaluation_days`), so the sample gets its share."""
    judged = (table["day"] >= first).to_numpy()
    logged = int(judged.sum())
    if sample is None or logged <= sample:
        return table, logged
    hashed = user_hash(table.loc[judged, "user_id"], salt="decision-sample:")
    keep = ~judged
    keep[judged] = (hashed >> np.uint64(11)).astype(np.float64) / 2.0**53 < sample / logged
    return table[keep], logged


def evaluation_days(ws: Workspace, table: pd.DataFrame, days: list) -> list[EvalDay]:
    """The logged decisions of each evaluation day with its open arms (coupon stats as the
    day began, from Feast), users' features, and its budget prorated to them."""
    from feature_repo.store import coupon_stats_at, open_store

    store = open_store(ws)
    per_user = float(ws.params["policy"]["budget_per_user"])
    out = []
    for day in days:
        day = pd.Timestamp(day)
        date = str(day.date())
        coupons = coupon_stats_at(store, read_offline(ws, "coupons", [date]), day)
        arms = with_control(eligible(coupons, day))
        held = table[table["day"] == day].reset_index(drop=True)
        logged = logged_arm_index(held["coupon_id"], arms)
        held, logged = held[logged >= 0].reset_index(drop=True), logged[logged >= 0]
        n_users = len(read_offline(ws, "users", [date]))
        n_offers = len(read_offline(ws, "offers", [date]))
        # The day's budget prorated to the decisions logged, as the service would pace it.
        budget = per_user * n_users * len(held) / max(n_offers, 1)
        out.append(
            EvalDay(date, held, held[USER_FEATURES].to_numpy(np.float32), arms, logged, budget)
        )
    return out


def with_truth(ws: Workspace, days: list[EvalDay]) -> None:
    """Each day's true incremental profit of every arm for its logged users (oracle)."""
    from couponflow.oracle import Oracle
    from couponflow.world import World

    oracle = Oracle(World(ws.params["world"]))
    for d in days:
        truth = oracle.truth(pd.Timestamp(d.day), d.rows["user_id"].to_numpy())
        d.true_gain = truth.incremental_profit[:, truth.arm_index(list(d.arms["coupon_id"]))]


def build_report(
    judged: Judged,
    challenger: str,
    versions: dict[str, str],
    kinds: dict[str, str],
    champion: str | None,
    predictions: dict[str, dict[str, float]] | None = None,
    uplift: dict[str, UpliftReport] | None = None,
) -> EvaluationReport:
    """The typed report with `challenger` as the challenger: every policy's values, the
    challenger's leads over every other, and the calibration of its estimated gain.
    `champion` is the released policy's name among the judged ones (None: no release yet,
    the champion is no coupon)."""
    predictions, uplift = predictions or {}, uplift or {}
    policies = {}
    for name in [*judged.decided, LOGGING]:
        p = judged.policy(name, kinds.get(name, "logging"), versions.get(name))
        p.prediction = predictions.get(name)
        if name in uplift:
            p.qini, p.auuc = uplift[name]["qini"], uplift[name]["auuc"]
        policies[name] = p
    leads = {over: judged.lead(challenger, over) for over in policies if over != challenger}
    if champion is not None and champion != "champion":
        leads["champion"] = leads[champion]
    budget = sum(d.budget for d in judged.days) / max(judged.decisions, 1)
    return EvaluationReport(
        days=[d.day for d in judged.days],
        decisions=judged.decisions,
        randomised_decisions=int(sum(d.randomised.sum() for d in judged.days)),
        confidence=judged.level,
        estimator=judged.estimator,
        challenger=versions.get(challenger, challenger),
        champion=NO_COUPON if champion is None else versions.get(champion, champion),
        budget_per_decision=budget,
        policies={("challenger" if n == challenger else n): p for n, p in policies.items()},
        leads=leads,
        gain_calibration=judged.gain_calibration(challenger),
    )


def evaluate(ws: Workspace) -> tuple[EvaluationReport, dict[str, pd.DataFrame]]:
    """Everything the gate and the report need; returns the report and the plot tables.
    Every policy is judged alike on the held-out log, then priced on the whole population."""
    params = ws.params
    cfg, policy_cfg = params["evaluation"], params["policy"]
    margin, cap = float(params["world"]["margin"]), int(policy_cfg["max_offers_7d"])
    budget_per_user = float(policy_cfg["budget_per_user"])
    level = float(cfg["confidence"])
    path = ws.training_set / "offers.parquet"
    logged_days = pd.read_parquet(path, columns=["day"])
    train_days, stop_day, eval_days = split_days(logged_days, int(cfg["days"]))
    first = pd.Timestamp(eval_days[0])
    table = read_judged_and_fitted(path, logged_days["day"], first, cfg.get("baseline_rows"))
    table, logged = judged_sample(table, first, cfg.get("decision_sample"))
    days = evaluation_days(ws, table, eval_days)
    if cfg["oracle"]:
        with_truth(ws, days)

    models = load_policies(ws, margin)
    challenger = models["challenger"]
    max_weight = float(params["model"]["max_inverse_propensity"])
    before = table[table["day"] < first]
    steps = Steps.for_stage(days, int(cfg["reward_model_folds"]))
    with steps.step(f"fitting the baselines on {len(before):,} rows"):
        baselines = fit_baselines(before, max_weight)
    policies: dict[str, Policy] = {**models, **{b.name: b for b in baselines}}
    report, plots = judged_on_the_log(days, before, models, policies, cfg, cap, level, steps)
    report.logged_decisions = logged
    plots["budget"] = on_the_population(
        ws, report, days[-1], policies, challenger, cfg, cap, budget_per_user, level, steps
    )
    steps.close()
    return report, plots


def judged_on_the_log(
    days: list[EvalDay],
    before: pd.DataFrame,
    models: dict[str, ModelPolicy],
    policies: dict[str, Policy],
    cfg: EvaluationParams,
    cap: int,
    level: float,
    steps: Steps | None = None,
) -> tuple[EvaluationReport, dict[str, pd.DataFrame]]:
    """The report of every policy valued off-policy on the held-out days' log, with the
    models' prediction quality, the uplift of those that rank, and the A/B readout; and the
    Qini and calibration curves. What the log can tell without the world's truth."""
    steps = steps or Steps()
    # a day at a time, every policy in turn: the baselines' shared cost model keeps its last
    # prediction, so each day's costs are predicted once (policy by policy, once per baseline)
    # and decided there, so only the decisions are kept, not every day's value matrices
    by_day = []
    for d in days:
        with steps.step(f"pricing {d.day}'s {len(d.rows):,} decisions"):
            by_day.append(
                decide_day(
                    d, {name: price(p, d.users, d.arms, cap) for name, p in policies.items()}
                )
            )
    decided = {name: [day[name] for day in by_day] for name in policies}
    q = RewardModel(int(cfg["reward_model_folds"])).predict(before, days, steps)
    judged = judge(days, decided, q, level, int(cfg["bootstrap"]), str(cfg["rows"]))

    pooled = pd.concat([d.rows for d in days], ignore_index=True)
    predictions, calibration = model_predictions(models, days, pooled)
    uplift = {
        name: uplift_report(days, ds)
        for name, ds in judged.decided.items()
        if all(x.ranks for x in ds)
    }
    report = build_report(
        judged,
        "challenger",
        {name: m.version for name, m in models.items()},
        {name: ("model" if name in models else "baseline") for name in policies},
        "champion" if "champion" in models else None,
        predictions,
        uplift,
    )
    report.ab_readout = ab_readout(pooled, level)
    curves = {
        "qini": pd.concat(
            [pd.DataFrame(u["curve"]).assign(policy=name) for name, u in uplift.items()]
        ),
        "calibration": pd.concat(calibration),
    }
    return report, curves


def model_predictions(
    models: dict[str, ModelPolicy], days: list[EvalDay], pooled: pd.DataFrame
) -> tuple[dict[str, dict[str, float]], list[pd.DataFrame]]:
    """Each model's prediction metrics on the pooled logged arms, and its calibration curve
    as a plot table: a model can rank well and still be over-confident."""
    pooled_users = np.concatenate([d.users for d in days])
    predictions, calibration = {}, []
    for name, policy in models.items():
        prediction, curve = prediction_report(policy.net, pooled_users, pooled)
        calibration.append(pd.DataFrame(curve).assign(model=name))
        predictions[name] = prediction
    return predictions, calibration


def on_the_population(
    ws: Workspace,
    report: EvaluationReport,
    last: EvalDay,
    policies: dict[str, Policy],
    challenger: ModelPolicy,
    cfg: EvaluationParams,
    cap: int,
    budget_per_user: float,
    level: float,
    steps: Steps | None = None,
) -> pd.DataFrame:
    """Whole-population figures on the last evaluation day, into `report`: its users, the
    challenger's segments and, on simulated data, every policy's true value against the
    oracle's. Returns the budget curve. The log only shows the users a policy was logged
    on; a skewed allocation shows on everyone."""
    sample = cfg.get("population_sample")
    steps = steps or Steps()
    with steps.step("the population"):
        segments, everyone = population(
            ws,
            pd.Timestamp(last.day),
            last.arms,
            budget_per_user,
            int(cfg["new_user_days"]),
            None if sample is None else int(sample),
        )
        on_pop = {name: price(p, everyone.users, last.arms, cap) for name, p in policies.items()}
        on_everyone = {name: p.decide(everyone.budget) for name, p in on_pop.items()}
        truth = (
            simulated_truth(ws, pd.Timestamp(last.day), segments, last.arms)
            if cfg["oracle"]
            else None
        )
        report.population = {"users": len(segments), "known_users": len(everyone.users)}
        report.segments = segment_report(
            segments, on_everyone["challenger"], truth.gain if truth else None
        )
        if truth is not None:
            report.oracle = oracle_report(truth, on_everyone, everyone.budget, level)
        return budget_curve(
            on_pop,
            everyone.budget,
            list(cfg["budget_multiples"]),
            truth,
            challenger.expected_reward(everyone.users, last.arms),
        )


def main() -> None:
    quiet_libraries()
    ws = Workspace(Path.cwd())
    report, plots = evaluate(ws)
    report.write(ws.metrics / "evaluation.json")
    (ws.metrics / "plots").mkdir(exist_ok=True)
    for name, frame in plots.items():
        frame.to_csv(ws.metrics / "plots" / f"{name}.csv", index=False)
    ch = report.policies["challenger"]
    print(f"challenger {ch.version}: DR {ch.dr.text()}/decision on {report.decisions} decisions")


if __name__ == "__main__":
    main()
