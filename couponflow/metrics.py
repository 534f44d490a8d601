"""Offline metrics: prediction quality, off-policy estimates of a policy's value with bootstrap
confidence intervals, uplift metrics of a ranking by predicted effect, and the A/B readout of
a served policy against its random holdout.

Every bootstrap here resamples rows through `bootstrap_indices`, so two statistics computed on
the same rows with the same seed share their resamples and their difference is a paired
bootstrap (`Bootstrapped.__sub__`): that is how a challenger is compared with a champion on one
log without the noise common to both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import log_loss, roc_auc_score

from couponflow.contract import HOLDOUT_SUFFIX
from couponflow.records import ABReadout, LiftInterval

# Resampled row indices held at once (16 MiB of int64): 100k rows x 500 resamples runs in
# blocks of 20 resamples instead of one 400 MB matrix.
BOOTSTRAP_BLOCK = 1 << 21


class CalibrationCurve(NamedTuple):
    """Per equal-count bin of predicted probability, ordered by prediction."""

    mean_predicted: np.ndarray
    observed: np.ndarray
    # Shadows tuple.count; renaming the field would rename a public result.
    count: np.ndarray  # type: ignore[assignment]


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> CalibrationCurve:
    """Mean predicted probability, observed rate and row count per equal-count bin: the points
    of a reliability plot (a calibrated model's points lie on the diagonal)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    chunks = [c for c in np.array_split(np.argsort(p, kind="stable"), bins) if len(c)]
    return CalibrationCurve(
        np.array([p[c].mean() for c in chunks]),
        np.array([y[c].mean() for c in chunks]),
        np.array([len(c) for c in chunks]),
    )


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the mean |observed - predicted| rate over equal-count bins."""
    curve = calibration_curve(y, p, bins)
    gap = np.abs(curve.observed - curve.mean_predicted)
    return float((curve.count * gap).sum() / curve.count.sum())


def prediction_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log loss and calibration error of probabilities `p` for binary outcomes `y`."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "auc": auc,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": calibration_error(y, p),
    }


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of `n_boot` resamples of `n` rows with replacement, as (block, n) arrays of
    at most BOOTSTRAP_BLOCK entries: the one source of resamples, so memory stays bounded and a
    seed means the same resampled rows for every statistic."""
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_BLOCK // max(n, 1))
    for start in range(0, n_boot, block):
        yield rng.integers(0, n, size=(min(block, n_boot - start), n))


def bootstrap_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """How often each row appears in each resample of `bootstrap_indices`, as (block, n)
    float arrays: a sum over a resample is then one matrix product."""
    for idx in bootstrap_indices(n, n_boot, seed):
        b = len(idx)
        flat = (idx + n * np.arange(b)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> LiftInterval:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Bootstrapped:
    """A statistic on the rows and its values on bootstrap resamples of them; the difference
    of two computed with the same seed on the same rows is a paired bootstrap."""

    value: float
    replicates: np.ndarray  # (n_boot,)

    def interval(self, level: float = 0.95) -> Interval:
        """The percentile interval: the central `level` share of the replicates."""
        if not len(self.replicates):
            return Interval(self.value, float("nan"), float("nan"))
        low, high = np.nanquantile(self.replicates, [(1 - level) / 2, (1 + level) / 2])
        return Interval(self.value, float(low), float(high))

    def __sub__(self, other: Bootstrapped) -> Bootstrapped:
        if self.replicates.shape != other.replicates.shape:
            raise ValueError("a paired difference needs the same resamples on both sides")
        return Bootstrapped(self.value - other.value, self.replicates - other.replicates)


# ------------------------------------------------------------------------ off-policy value


@dataclass(frozen=True)
class TargetTerms:
    """A target policy seen through a log, per logged row: its probability of the logged
    action and, for the doubly robust estimate, a reward model's prediction for the logged
    action (`q_logged`) and its expectation over the target's actions (`q_expected`)."""

    prob: np.ndarray
    q_logged: np.ndarray | None = None
    q_expected: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.q_logged is None) != (self.q_expected is None):
            raise ValueError("q_logged and q_expected come together")

    @classmethod
    def from_probabilities(
        cls, logged: np.ndarray, pi: np.ndarray, q: np.ndarray | None = None
    ) -> TargetTerms:
        """From the target's (n, arms) action probabilities and optionally a reward model's
        (n, arms) predictions; a negative logged action is one the target can never take."""
        logged = np.asarray(logged)
        rows, col = np.arange(len(logged)), np.maximum(logged, 0)
        possible = logged >= 0
        prob = np.where(possible, pi[rows, col], 0.0)
        if q is None:
            return cls(prob)
        q_logged = np.where(possible, q[rows, col], 0.0)
        return cls(prob, q_logged, (pi * q).sum(axis=1))

    @classmethod
    def from_actions(
        cls, logged: np.ndarray, action: np.ndarray, q: np.ndarray | None = None
    ) -> TargetTerms:
        """From a deterministic target's chosen action per row (e.g. a greedy policy)."""
        logged, action = np.asarray(logged), np.asarray(action)
        prob = (action == logged).astype(float)
        if q is None:
            return cls(prob)
        rows = np.arange(len(logged))
        q_logged = np.where(logged >= 0, q[rows, np.maximum(logged, 0)], 0.0)
        return cls(prob, q_logged, q[rows, action])


def off_policy_bootstrap(
    reward: np.ndarray,
    propensity: np.ndarray,
    targets: Mapping[str, TargetTerms],
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, Bootstrapped]]:
    """Each target policy's mean reward per decision, estimated from another policy's log by
    IPS (unbiased), SNIPS (self-normalised: less variance, slightly biased) and, for targets
    with reward-model terms, doubly robust (unbiased if either the propensities or the model
    are right; low variance when the model is good), with replicates on shared resamples.

    Returns {target: {"ips" | "snips" | "dr": Bootstrapped}}.
    """
    reward = np.asarray(reward, dtype=float)
    propensity = np.asarray(propensity, dtype=float)
    n = len(reward)
    columns: list[np.ndarray] = []
    layout: dict[str, int] = {}
    for name, t in targets.items():
        w = np.asarray(t.prob, dtype=float) / propensity
        layout[name] = len(columns)
        columns += [w * reward, w]
        if t.q_logged is not None:
            columns.append(t.q_expected + w * (reward - t.q_logged))
    stats = np.column_stack(columns)  # sums of these over a resample give every estimate
    sums = stats.sum(axis=0)[None, :]
    reps = np.empty((n_boot, stats.shape[1]))
    start = 0
    for counts in bootstrap_counts(n, n_boot, seed):
        reps[start : start + len(counts)] = counts @ stats
        start += len(counts)

    out: dict[str, dict[str, Bootstrapped]] = {}
    for name, t in targets.items():
        j = layout[name]

        def estimate(s: np.ndarray, j: int = j, has_dr: bool = t.q_logged is not None):
            with np.errstate(invalid="ignore", divide="ignore"):
                est = {"ips": s[:, j] / n, "snips": s[:, j] / s[:, j + 1]}
            return est | ({"dr": s[:, j + 2] / n} if has_dr else {})

        point, boot = estimate(sums), estimate(reps)
        out[name] = {k: Bootstrapped(float(point[k][0]), boot[k]) for k in point}
    return out


def on_policy_value(reward: np.ndarray, n_boot: int = 500, seed: int = 0) -> Bootstrapped:
    """The logging policy's own mean reward per decision with its bootstrap replicates: on the
    same log and seed, the other side of a paired comparison with `off_policy_bootstrap`."""
    ones = np.ones(len(reward))
    boot = off_policy_bootstrap(reward, ones, {"logged": TargetTerms(ones)}, n_boot, seed)
    return boot["logged"]["ips"]


def off_policy_values(
    reward: np.ndarray,
    propensity: np.ndarray,
    targets: Mapping[str, TargetTerms],
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, LiftInterval]]:
    """`off_policy_bootstrap` as JSON-ready intervals: {target: {estimator: {value, low,
    high}}}."""
    boot = off_policy_bootstrap(reward, propensity, targets, n_boot, seed)
    return {
        name: {est: b.interval(level).as_dict() for est, b in by_est.items()}
        for name, by_est in boot.items()
    }


def paired_difference(
    reward: np.ndarray,
    propensity: np.ndarray,
    a: TargetTerms,
    b: TargetTerms,
    estimator: str = "dr",
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Value of policy `a` minus policy `b` on the same log, with a paired bootstrap interval:
    a gate can require its lower bound to clear a threshold."""
    boot = off_policy_bootstrap(reward, propensity, {"a": a, "b": b}, n_boot, seed)
    return (boot["a"][estimator] - boot["b"][estimator]).interval(level)


def effective_sample_size(weight: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of importance weights: how many
    equally weighted rows the estimate is really worth. Five rows at weight 60 are worth
    five, not three hundred, and a bootstrap over them is overconfident."""
    weight = np.asarray(weight, dtype=float)
    total = float((weight**2).sum())
    return float(weight.sum() ** 2 / total) if total > 0 else 0.0


# ---------------------------------------------------------------------------------- uplift


class UpliftCurve(NamedTuple):
    """Incremental outcome per customer (`gain`) when the top `share` by score are treated."""

    share: np.ndarray
    gain: np.ndarray


def best_arm_view(
    logged: np.ndarray, best: np.ndarray, propensity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-arm log (arm 0 = control) seen as the binary experiment of a policy that gives
    each customer their `best` arm: treated where that arm was logged, control where arm 0
    was, inverse-propensity weights, and weight 0 for rows that got another arm."""
    logged, best = np.asarray(logged), np.asarray(best)
    treated = logged == best
    used = treated | (logged == 0)
    return treated, np.where(used, 1.0 / np.asarray(propensity, dtype=float), 0.0)


def _uplift_gains(
    score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray | None,
    shares: np.ndarray,
    n_boot: int | None,
    seed: int,
) -> np.ndarray:
    """Gain at each share, (1, len(shares)) on the rows or (n_boot, len(shares)) on resamples.

    The rows are ranked once by score (ties by position); a resample's sorted row indices are
    then that resample in rank order, so one cumulative sum per resample serves every share.
    Treated and control means of the top k are weighted (Hajek) means.
    """
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    t = np.asarray(treated, dtype=bool)[order]
    y = np.asarray(outcome, dtype=float)[order]
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)[order]
    n = len(y)
    k = np.round(np.asarray(shares) * n).astype(int)
    cols = np.column_stack([w * t * y, w * t, w * ~t * y, w * ~t])
    blocks = (
        [np.arange(n)[None, :]]
        if n_boot is None
        else (np.sort(idx, axis=1) for idx in bootstrap_indices(n, n_boot, seed))
    )
    at_k = np.maximum(k - 1, 0)
    out = []
    for idx in blocks:
        # each column's cumulative sum at each k, 0 for the empty top (k = 0): (block, len(k))
        yt, nt, yc, nc = (
            np.where(k > 0, np.cumsum(cols[idx, j], axis=1)[:, at_k], 0.0) for j in range(4)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = yt / nt - yc / nc
        out.append(np.where(np.isfinite(diff), diff, 0.0) * k / n)
    return np.concatenate(out) if out else np.empty((0, len(k)))


def _grid(points: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, points + 1)


def qini_curve(
    score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray | None = None,
    points: int = 100,
) -> UpliftCurve:
    """The Qini (uplift) curve: incremental outcome per customer of the whole population when
    the top share by `score` are treated and the rest are not, at `points` + 1 shares.

    `weight` (e.g. inverse propensities) lets logged data with known propensities stand in
    for a randomised experiment; a row with weight 0 is a customer whose outcome is unused.
    """
    shares = _grid(points)
    return UpliftCurve(shares, _uplift_gains(score, treated, outcome, weight, shares, None, 0)[0])


def _areas(gains: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """AUUC and Qini coefficient of gains on the share grid: the area under the curve, and the
    area between it and random targeting (the straight line to the gain of treating all)."""
    area = ((gains[:, 1:] + gains[:, :-1]) / 2).sum(axis=1) / points
    return area, area - gains[:, -1] / 2


def auuc(
    score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray | None = None,
    points: int = 100,
) -> float:
    """Area under the Qini curve over shares 0..1: the incremental outcome per customer
    averaged over every contact budget."""
    gains = _uplift_gains(score, treated, outcome, weight, _grid(points), None, 0)
    return float(_areas(gains, points)[0][0])


def qini_coefficient(
    score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray | None = None,
    points: int = 100,
) -> float:
    """Area between the Qini curve and random targeting: what ranking by `score` adds over
    choosing whom to treat at random (0 for a random ranking, larger is better)."""
    gains = _uplift_gains(score, treated, outcome, weight, _grid(points), None, 0)
    return float(_areas(gains, points)[1][0])


def uplift_at_budget(
    score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray | None = None,
    share: float = 1 / 3,
) -> float:
    """Incremental outcome per customer when only the top `share` by score can be treated: the
    figure a contact budget buys."""
    shares = np.array([share])
    return float(_uplift_gains(score, treated, outcome, weight, shares, None, 0)[0, 0])


def uplift_bootstrap(
    score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray | None = None,
    share: float = 1 / 3,
    points: int = 100,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Bootstrapped]:
    """Qini coefficient, AUUC and uplift at the budget `share` with bootstrap replicates on
    resampled customers: {"qini" | "auuc" | "uplift_at_budget": Bootstrapped}. Rankings of
    the same rows bootstrapped with the same seed can be compared pairwise."""
    shares = np.append(_grid(points), share)
    args = (score, treated, outcome, weight, shares)
    point = _uplift_gains(*args, None, seed)
    boot = _uplift_gains(*args, n_boot, seed)
    (auuc_p, qini_p), (auuc_b, qini_b) = _areas(point[:, :-1], points), _areas(boot[:, :-1], points)
    return {
        "qini": Bootstrapped(float(qini_p[0]), qini_b),
        "auuc": Bootstrapped(float(auuc_p[0]), auuc_b),
        "uplift_at_budget": Bootstrapped(float(point[0, -1]), boot[:, -1]),
    }


# -- the A/B readout -----------------------------------------------------------------------
def mean_difference(a: np.ndarray, b: np.ndarray, level: float) -> LiftInterval:
    """Mean of `a` minus mean of `b`, two independent samples, with a normal interval."""
    diff = float(a.mean() - b.mean())
    half = norm.ppf((1 + level) / 2) * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {"value": diff, "low": diff - half, "high": diff + half}


def ab_readout(table: pd.DataFrame, level: float) -> ABReadout:
    """The served policy's realised profit per decision (`reward`) over its random holdout
    slice (`policy_version` ending in HOLDOUT_SUFFIX), with a `level` interval, pooled over
    every day in `table` (a `day` column names them): one day's holdout is small, so the
    lift is read on the days pooled and `significant` says whether its interval excludes 0."""
    holdout = table["policy_version"].astype(str).str.endswith(HOLDOUT_SUFFIX).to_numpy()
    reward = table["reward"].to_numpy(float)
    versions = sorted(set(table["policy_version"].astype(str).str.removesuffix(HOLDOUT_SUFFIX)))
    days = (
        sorted(str(pd.Timestamp(d).date()) for d in table["day"].dropna().unique())
        if "day" in table
        else []
    )
    version, decisions, held = ", ".join(versions), int((~holdout).sum()), int(holdout.sum())
    if holdout.sum() < 2 or (~holdout).sum() < 2:
        return {"policy_version": version, "days": days, "decisions": decisions,
                "holdout": held, "lift": None, "significant": False,
                "note": "no holdout slice in the log"}  # fmt: skip
    lift = mean_difference(reward[~holdout], reward[holdout], level)
    return {
        "policy_version": version,
        "days": days,
        "decisions": decisions,
        "holdout": held,
        "policy_mean": float(reward[~holdout].mean()),
        "holdout_mean": float(reward[holdout].mean()),
        "lift": lift,
        "significant": bool(lift["low"] > 0 or lift["high"] < 0),
    }


# -- the gate's power and the calibration of an estimated gain ----------------------------
def minimum_detectable_effect(se: float, level: float, power: float = 0.8) -> float:
    """The smallest true lead a check "lower bound of the `level` two-sided interval above 0"
    detects with probability `power`, for an estimate with standard error `se`:
    (z_{(1+level)/2} + z_power) * se, 2.49 se at level 0.9."""
    return float((norm.ppf((1 + level) / 2) + norm.ppf(power)) * se)


@dataclass(frozen=True)
class GainCalibrationCurve:
    """Predicted gain against the realised contrast by quantile bin, and the slope."""

    predicted: np.ndarray
    realised: np.ndarray
    count: np.ndarray
    slope: Interval


def gain_pseudo_outcomes(
    logged: np.ndarray, reward: np.ndarray, arm_prob: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """Doubly robust pseudo-outcomes of each coupon's incremental reward over "no coupon"
    for randomised rows, (n, arms - 1): (q_c - q_0) + 1[a = c] (r - q_c) / p_c
    - 1[a = 0] (r - q_0) / p_0, whose mean over rows is unbiased for the true mean gain
    whatever the reward model `q` (n, arms) when `arm_prob` (n, arms) is the randomisation.
    A logged arm of -1 (not open) contributes only the model's terms."""
    n, m = q.shape
    rows = np.arange(n)
    hit = np.zeros((n, m))
    ok = logged >= 0
    hit[rows[ok], logged[ok]] = 1.0
    resid = (np.asarray(reward, float)[:, None] - q) * hit / arm_prob
    return (q[:, 1:] - q[:, :1]) + resid[:, 1:] - resid[:, :1]


def gain_calibration(
    predicted: np.ndarray,
    pseudo: np.ndarray,
    level: float,
    bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
) -> GainCalibrationCurve:
    """Calibration of an estimated gain `predicted` (n, k) against DR pseudo-outcomes
    `pseudo` (n, k) of the same (row, coupon) pairs (non-finite predictions are left out):
    the mean of each by quantile bin of the prediction, and the least-squares slope of
    pseudo-outcome on prediction with a bootstrap interval over rows (pairs of one row
    move together). A slope below 0 is a ranking that points the wrong way."""
    predicted = np.asarray(predicted, float)
    ok = np.isfinite(predicted) & np.isfinite(pseudo)
    g, y = np.where(ok, predicted, 0.0), np.where(ok, pseudo, 0.0)
    flat_g, flat_y = predicted[ok], pseudo[ok]
    if flat_g.size < bins:
        nan = Interval(float("nan"), float("nan"), float("nan"))
        return GainCalibrationCurve(np.array([]), np.array([]), np.array([], int), nan)
    edges = np.unique(np.quantile(flat_g, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, flat_g, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(which, minlength=len(edges) - 1)
    keep = count > 0
    mean_g = np.bincount(which, flat_g, len(edges) - 1)[keep] / count[keep]
    mean_y = np.bincount(which, flat_y, len(edges) - 1)[keep] / count[keep]
    # per-row sums make the slope of any resample of rows one matrix product
    stats = np.column_stack([ok.sum(1), g.sum(1), (g * g).sum(1), y.sum(1), (g * y).sum(1)])

    def slope(s: np.ndarray) -> np.ndarray:
        n, sg, sgg, sy, sgy = (s[:, j] for j in range(5))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (sgy - sg * sy / n) / (sgg - sg * sg / n)

    point = float(slope(stats.sum(0)[None, :])[0])
    reps = np.concatenate([slope(c @ stats) for c in bootstrap_counts(len(g), n_boot, seed)])
    interval = Bootstrapped(point, reps).interval(level)
    return GainCalibrationCurve(mean_g, mean_y, count[keep], interval)
