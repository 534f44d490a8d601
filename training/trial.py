"""`couponflow trial`: the project's learner on any randomised trial, against the two-model
baseline, at a contact budget, with paired intervals.

    couponflow trial --spec public_data/hillstrom.yaml [--outcome spend|visits]
        [--budget-share 0.333] [--folds 4] [--seeds 1] [--n-boot 1000] [--rows N]

For each outcome variant of the spec (couponflow.trials), over `seeds` fold seeds: every
customer's net value under each arm (the outcome's value less the arm's cost) is predicted
by learners that never saw them (K-fold cross-fitting), by

- "ours": CouponNet trained by `training.train.fit` unchanged, on the trial's [user block |
  one-hot arm block] rows, as a hurdle model of one fit per quantity: P(outcome > 0 | arm),
  P(conversion | arm) when per-conversion costs count another event, and the amount of a
  positive outcome (its log; corrected for the retransformation bias by the training
  residuals' smearing factor; exactly the one value of a 0/1 outcome). Its prediction of
  arm a is value x P(outcome > 0 | a) x amount - cost per customer - cost per conversion x
  P(conversion | a);
- "two_model": one gradient-boosting regressor of the net value per arm (scikit-learn).

The policy: each customer's arm of largest predicted gain over the control, given only when
that gain is positive and the customer is in the top `budget_share` of all customers by it;
everyone else gets the control. Its value per customer is estimated by IPS on the logged
arms, which is unbiased in a randomised trial, beside two references without a model: treat
nobody, and treat a random `budget_share` with a random treated arm. Every policy is
bootstrapped on the same resamples of customers, so their differences are paired: ours
minus two_model, and each learner minus random and nobody. With several seeds: the policies
of each learner's predictions averaged over the seeds (each still cross-fitted: no customer
is scored by a model that saw them), then the mean over seeds of each seed's own policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NotRequired, TypedDict, cast

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import StratifiedKFold, train_test_split

from couponflow.config import PROJECT_ROOT, ModelParams, load_params
from couponflow.cpu import load_aware_threads
from couponflow.metrics import Bootstrapped, TargetTerms, off_policy_bootstrap
from couponflow.model import Recommender, predict
from couponflow.records import LiftInterval
from couponflow.trials import TrialArrays, TrialSpec, TrialSpecError, net_value, trial_arrays
from training.train import TrainingArrays, fit, inverse_propensity_weights

LEARNERS = ("ours", "two_model")
POLICIES = (*LEARNERS, "random", "nobody")
DIFFERENCES = (  # the paired differences reported, a - b
    ("ours", "two_model"),
    ("ours", "random"),
    ("ours", "nobody"),
    ("two_model", "random"),
    ("two_model", "nobody"),
)


@dataclass(frozen=True)
class PolicyValues:
    """Every policy's IPS value per customer, on shared resamples (paired): the net value
    (the objective) and the raw outcome."""

    net: dict[str, Bootstrapped]
    outcome: dict[str, Bootstrapped]


@dataclass(frozen=True)
class TrialResult:
    """run_trial's estimates of one outcome, for `report` (not stored)."""

    values: PolicyValues  # the policies of each learner's predictions averaged over seeds
    seed_mean: PolicyValues  # the mean over seeds of each seed's own policy's value
    actions: dict[str, np.ndarray]  # learner -> (n,) arms of the averaged predictions
    per_seed: list[dict[str, float]]  # learner -> IPS net value, per fold seed
    seconds: dict[str, float]  # learner -> seconds training
    share: float  # the budget share


# -- the --json figures (`couponflow trial --json`), keys in the file's order -----------------
class Cell(TypedDict):
    net: LiftInterval
    outcome: LiftInterval


class PolicyCell(TypedDict):
    treated: float  # share of customers given a treated arm
    net: LiftInterval
    outcome: LiftInterval


class OutcomeFigures(TypedDict):
    policies: dict[str, PolicyCell]
    differences: dict[str, Cell]  # "a - b"
    seed_mean: NotRequired[dict[str, Cell]]  # with several seeds
    per_seed: list[dict[str, float]]
    seconds: dict[str, float]


class NetworkFigures(TypedDict):
    hidden: int
    batch_size: int
    lr: float
    patience: int
    epochs: int


class TrialFigures(TypedDict):
    spec: str
    customers: int
    budget_share: float
    folds: int
    seeds: int
    n_boot: int
    level: float
    network: NetworkFigures
    outcomes: dict[str, OutcomeFigures]
    wall_seconds: float


def training_arrays(data: TrialArrays, column: str) -> TrainingArrays:
    """The trainer's rows for outcome `column` in one fit, as the coupon tables train: a
    positive outcome is a purchase of that amount, a conversion under a treated arm a
    redemption, each row weighted by its inverse propensity scaled to mean 1 (all 1 for
    equal arms). What benchmarks/bench_public_data.py trains; `network_values` fits each
    quantity on its own instead."""
    y = data.outcomes[column]
    offered = (data.arm > 0).astype(np.float32)
    return TrainingArrays(
        x=data.inputs(data.arm),
        purchased=(y > 0).astype(np.float32),
        log_amount=np.log(np.where(y > 0, y, 1.0)),
        redeemed=data.conversion * offered,
        offered=offered,
        weight=inverse_propensity_weights(data.propensity, np.inf),
    )


def amount_arrays(data: TrialArrays, column: str) -> TrainingArrays:
    """The trainer's rows for the amount of a positive outcome: only the customers whose
    outcome was positive, each a purchase of that amount, nothing offered to redeem, so the
    loss (and early stopping) reads the amount alone."""
    buyers = data.subset(np.flatnonzero(data.outcomes[column] > 0))
    n = len(buyers)
    return TrainingArrays(
        x=buyers.inputs(buyers.arm),
        purchased=np.ones(n),
        log_amount=np.log(buyers.outcomes[column]),
        redeemed=np.zeros(n),
        offered=np.zeros(n),
        weight=inverse_propensity_weights(buyers.propensity, np.inf),
    )


def strata(data: TrialArrays, column: str) -> np.ndarray:
    """Arm x (outcome > 0): every split keeps the arms and the rare positive outcomes even."""
    return data.arm * 2 + (data.outcomes[column] > 0).astype(int)


def occurrence_arrays(data: TrialArrays, occurred: np.ndarray) -> TrainingArrays:
    """The trainer's rows for one 0/1 event (`occurred`) under the logged arm: a purchase,
    with amounts and redemptions masked, so the loss (and early stopping) reads that event
    alone."""
    n = len(data)
    return TrainingArrays(
        x=data.inputs(data.arm),
        purchased=occurred,
        log_amount=np.zeros(n),
        redeemed=np.zeros(n),
        offered=np.zeros(n),
        weight=inverse_propensity_weights(data.propensity, np.inf),
    )


def network_values(
    spec: TrialSpec,
    outcome: str,
    train: TrialArrays,
    valid: TrialArrays,
    test: TrialArrays,
    cfg: ModelParams,
) -> np.ndarray:
    """Our network's predicted net value of each test customer under each arm, (n, arms):
    value x P(outcome > 0 | arm) x amount - cost per customer - cost per conversion x
    P(conversion | arm).

    A hurdle model of separate fits of the same network, one per quantity, so no fit's
    early stopping is decided by another quantity's noise: the outcome's occurrence; the
    conversion when per-conversion costs count it and it is another event (a visit is not
    a purchase); and the amount of a positive outcome, fitted on the customers who had one
    and read under the arm itself with cfg `amount_by_arm`, else under the control (the arm
    moves who buys, not how much). A 0/1 (or 0/c) outcome has a known amount.
    """
    o = spec.outcome(outcome)
    n_user, n_arm = train.user.shape[1], test.n_arms

    def occurrence(event: str | None) -> Recommender:
        """A fitted network of the outcome's occurrence (None) or of conversion."""
        arrays = [
            occurrence_arrays(d, d.outcomes[o.column] > 0 if event is None else d.conversion)
            for d in (train, valid)
        ]
        return fit(arrays[0], arrays[1], cfg, n_user, n_arm)[0]

    occurs = occurrence(None)
    converts = occurs
    if spec.cost_per_conversion.any() and not np.array_equal(
        train.conversion > 0, train.outcomes[o.column] > 0
    ):
        converts = occurrence("conversion")
    unit = np.unique(train.outcomes[o.column][train.outcomes[o.column] > 0])
    amounts = np.full((len(test), n_arm), float(unit[0]) if len(unit) else 0.0)
    if len(unit) > 1:
        bought = amount_arrays(train, o.column)
        amount_net, _ = fit(bought, amount_arrays(valid, o.column), cfg, n_user, n_arm)
        # smearing: E[y | y > 0] = exp(E[log y]) x the mean exp(residual) in training
        mu = np.log(predict(amount_net, bought.x)["amount"])
        scale = float(np.mean(np.exp(bought.log_amount - mu)))
        for arm in range(n_arm):
            rows = test.inputs(arm if cfg.get("amount_by_arm") else 0)
            amounts[:, arm] = scale * predict(amount_net, rows)["amount"]
    values = np.empty((len(test), n_arm))
    for arm in range(n_arm):
        rows = test.inputs(arm)
        p_occur = predict(occurs, rows)["p_purchase"]
        p_convert = predict(converts, rows)["p_purchase"]
        cost = spec.cost_per_customer[arm] + spec.cost_per_conversion[arm] * p_convert
        values[:, arm] = o.value * p_occur * amounts[:, arm] - cost
    return values


def per_arm_regression(
    train: TrialArrays, target: np.ndarray, test: TrialArrays, seed: int
) -> np.ndarray:
    """A gradient-boosting regressor of `target` fitted on each arm's training customers:
    (n, arms) predictions for the test customers (the two-model learner's core)."""
    values = np.empty((len(test), test.n_arms))
    for arm in range(test.n_arms):
        rows = train.arm == arm
        model = HistGradientBoostingRegressor(  # early-stops on 10% of the arm's customers
            learning_rate=0.05,
            max_iter=300,
            min_samples_leaf=100,
            early_stopping=True,
            random_state=seed,
        )
        with load_aware_threads():  # one OpenMP thread on a busy machine (couponflow.cpu)
            values[:, arm] = model.fit(train.user[rows], target[rows]).predict(test.user)
    return values


def two_model_values(
    spec: TrialSpec, outcome: str, train: TrialArrays, test: TrialArrays, seed: int
) -> np.ndarray:
    """The two-model baseline: the net value regressed on each arm's customers."""
    return per_arm_regression(train, net_value(spec, train, outcome), test, seed)


def crossfit(
    spec: TrialSpec, data: TrialArrays, outcome: str, folds: int, seed: int, cfg: ModelParams
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each learner's (n, arms) predicted net values, every fold's customers scored by models
    trained on the other folds (the network early-stopping on a fifth of those), and the
    seconds each learner took."""
    column = spec.outcome(outcome).column
    values = {name: np.zeros((len(data), data.n_arms)) for name in LEARNERS}
    seconds = dict.fromkeys(LEARNERS, 0.0)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, rows) in enumerate(split.split(data.user, strata(data, column))):
        train, valid = train_test_split(
            fit_rows, test_size=0.2, stratify=strata(data, column)[fit_rows], random_state=seed
        )
        test = data.subset(rows)
        t0 = time.perf_counter()
        values["ours"][rows] = network_values(
            spec, outcome, data.subset(train), data.subset(valid), test, cfg | {"seed": seed + fold}
        )
        t1 = time.perf_counter()
        values["two_model"][rows] = two_model_values(
            spec, outcome, data.subset(fit_rows), test, seed
        )
        seconds["ours"] += t1 - t0
        seconds["two_model"] += time.perf_counter() - t1
    return values, seconds


def budget_policy(values: np.ndarray, share: float) -> np.ndarray:
    """Each customer's arm: the one of largest predicted gain over the control (column 0),
    for at most the top `share` of customers by that gain and only where it is positive;
    the control (0) for everyone else."""
    gain = values[:, 1:] - values[:, :1]
    best, top = 1 + gain.argmax(axis=1), gain.max(axis=1)
    k = int(round(share * len(values)))
    chosen = np.argsort(-top, kind="stable")[:k]
    action = np.zeros(len(values), dtype=np.int64)
    chosen = chosen[top[chosen] > 0]
    action[chosen] = best[chosen]
    return action


def policy_targets(
    data: TrialArrays, actions: dict[str, np.ndarray], share: float
) -> dict[str, TargetTerms]:
    """The learners' policies and the two references as target policies of the trial's log."""
    random = np.full((len(data), data.n_arms), share / (data.n_arms - 1))
    random[:, 0] = 1 - share
    return {
        **{name: TargetTerms.from_actions(data.arm, a) for name, a in actions.items()},
        "random": TargetTerms.from_probabilities(data.arm, random),
        "nobody": TargetTerms.from_actions(data.arm, np.zeros(len(data), dtype=np.int64)),
    }


def evaluate(
    spec: TrialSpec,
    data: TrialArrays,
    outcome: str,
    actions: dict[str, np.ndarray],
    share: float,
    n_boot: int,
    seed: int,
) -> PolicyValues:
    """IPS value per customer of every policy: the net value (the objective) and the raw
    outcome, on shared resamples (paired)."""
    targets = policy_targets(data, actions, share)
    column = spec.outcome(outcome).column

    def ips(reward: np.ndarray) -> dict[str, Bootstrapped]:
        boot = off_policy_bootstrap(reward, data.propensity, targets, n_boot, seed)
        return {name: b["ips"] for name, b in boot.items()}

    return PolicyValues(ips(net_value(spec, data, outcome)), ips(data.outcomes[column]))


def network_config(spec: TrialSpec, overrides: Mapping[str, object] | None = None) -> ModelParams:
    """params.yaml `model`, then the spec's `network`, then `overrides` (model keys)."""
    base = load_params(PROJECT_ROOT / "params.yaml")["model"]
    # the spec's `network` is the spec file's YAML as written (couponflow.trials), unchecked
    return cast(ModelParams, base | spec.network | dict(overrides or {}))


def run_trial(
    spec: TrialSpec,
    data: TrialArrays,
    outcome: str,
    share: float = 1 / 3,
    folds: int = 4,
    seeds: int = 1,
    n_boot: int = 1000,
    cfg: ModelParams | None = None,
) -> TrialResult:
    """Cross-fit both learners over `seeds` fold seeds and estimate every policy's value
    two ways, each on the same resamples (paired): `values`, the policies of each learner's
    predictions averaged over the seeds (an ensemble, still cross-fitted), and `seed_mean`,
    the mean over seeds of each seed's own policy's value."""
    cfg = cfg or network_config(spec)
    sums = {name: np.zeros((len(data), data.n_arms)) for name in LEARNERS}
    seconds = dict.fromkeys(LEARNERS, 0.0)
    per_seed: list[dict[str, float]] = []
    total: PolicyValues | None = None
    for seed in range(seeds):
        values, spent = crossfit(spec, data, outcome, folds, seed, cfg)
        for name in LEARNERS:
            sums[name] += values[name]
            seconds[name] += spent[name]
        actions = {name: budget_policy(v, share) for name, v in values.items()}
        est = evaluate(spec, data, outcome, actions, share, n_boot, 0)
        per_seed.append({name: est.net[name].value for name in LEARNERS})
        total = est if total is None else _combined(total, est, _plus)
    assert total is not None  # seeds >= 1
    seed_mean = _combined(total, total, lambda b, _: _scaled(b, 1 / seeds))
    actions = {name: budget_policy(s / seeds, share) for name, s in sums.items()}
    return TrialResult(
        values=evaluate(spec, data, outcome, actions, share, n_boot, 0),
        seed_mean=seed_mean,
        actions=actions,
        per_seed=per_seed,
        seconds=seconds,
        share=share,
    )


def _combined(
    a: PolicyValues, b: PolicyValues, how: Callable[[Bootstrapped, Bootstrapped], Bootstrapped]
) -> PolicyValues:
    """`how` of each policy's estimates in `a` and `b`."""
    return PolicyValues(
        net={name: how(v, b.net[name]) for name, v in a.net.items()},
        outcome={name: how(v, b.outcome[name]) for name, v in a.outcome.items()},
    )


def _plus(a: Bootstrapped, b: Bootstrapped) -> Bootstrapped:
    return Bootstrapped(a.value + b.value, a.replicates + b.replicates)


def _scaled(a: Bootstrapped, factor: float) -> Bootstrapped:
    return Bootstrapped(a.value * factor, a.replicates * factor)


def _cell(b: Bootstrapped, level: float) -> str:
    iv = b.interval(level)
    return f"{iv.value:+8.4f} [{iv.low:+8.4f}, {iv.high:+8.4f}]"


def report(
    spec: TrialSpec, outcome: str, result: TrialResult, level: float, n: int
) -> tuple[list[str], OutcomeFigures]:
    """The printed table and its JSON-ready figures."""
    o = spec.outcome(outcome)
    net, raw = result.values.net, result.values.outcome
    treated = {name: float((a > 0).mean()) for name, a in result.actions.items()}
    treated |= {"random": result.share, "nobody": 0.0}  # random: in expectation
    lines = [
        f"{spec.name} / {outcome}: net value = {o.value:g} x {o.column} - cost, per customer "
        f"({n:,} customers, IPS on held-out folds, {level:.0%} paired bootstrap intervals)",
        f"  {'policy':<20} {'treated':>7}  {'net value per customer':<30} {o.column} per customer",
    ]
    policies: dict[str, PolicyCell] = {}
    for name in POLICIES:
        share = treated[name]
        lines.append(
            f"  {name:<20} {share:7.1%}  {_cell(net[name], level):<30} {_cell(raw[name], level)}"
        )
        policies[name] = {
            "treated": share,
            "net": net[name].interval(level).as_dict(),
            "outcome": raw[name].interval(level).as_dict(),
        }
    lines.append("  paired differences")
    differences: dict[str, Cell] = {}
    for a, b in DIFFERENCES:
        diff, diff_raw = net[a] - net[b], raw[a] - raw[b]
        lines.append(
            f"  {a + ' - ' + b:<20} {'':>7}  {_cell(diff, level):<30} {_cell(diff_raw, level)}"
        )
        differences[f"{a} - {b}"] = {
            "net": diff.interval(level).as_dict(),
            "outcome": diff_raw.interval(level).as_dict(),
        }
    seconds = {k: round(v, 1) for k, v in result.seconds.items()}
    figures: OutcomeFigures
    if len(result.per_seed) > 1:
        seed_lines, seed_mean = _seed_mean(result, level)
        lines += seed_lines
        figures = {"policies": policies, "differences": differences, "seed_mean": seed_mean,
                   "per_seed": result.per_seed, "seconds": seconds}  # fmt: skip
    else:
        figures = {"policies": policies, "differences": differences,
                   "per_seed": result.per_seed, "seconds": seconds}  # fmt: skip
    lines.append("  training: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return lines, figures


def _seed_mean(result: TrialResult, level: float) -> tuple[list[str], dict[str, Cell]]:
    """The report's rows of the mean over fold seeds of each seed's policy, and their figures."""
    seeds = len(result.per_seed)
    lines = [f"  the mean over {seeds} fold seeds of each seed's policy (paired)"]
    mean_net, mean_raw = result.seed_mean.net, result.seed_mean.outcome
    seed_mean: dict[str, Cell] = {}
    rows: tuple[tuple[str, str | None], ...] = (
        ("ours", None), ("two_model", None), ("ours", "two_model"),
    )  # fmt: skip
    for first, second in rows:
        name = first if second is None else f"{first} - {second}"
        net_b = mean_net[first] if second is None else mean_net[first] - mean_net[second]
        raw_b = mean_raw[first] if second is None else mean_raw[first] - mean_raw[second]
        lines.append(f"  {name:<20} {'':>7}  {_cell(net_b, level):<30} {_cell(raw_b, level)}")
        seed_mean[name] = {
            "net": net_b.interval(level).as_dict(),
            "outcome": raw_b.interval(level).as_dict(),
        }
    for name in LEARNERS:
        by_seed = ", ".join(f"{s[name]:+.4f}" for s in result.per_seed)
        lines.append(f"  {name} net value by fold seed: {by_seed}")
    return lines, seed_mean


def main(args: argparse.Namespace) -> None:
    """Run the trial command; bad input exits non-zero with one line."""
    started = time.perf_counter()
    try:
        if not 0 < args.budget_share <= 1:
            raise TrialSpecError(f"--budget-share must be in (0, 1], got {args.budget_share}")
        if args.folds < 2 or args.seeds < 1:
            raise TrialSpecError("--folds must be at least 2 and --seeds at least 1")
        spec = TrialSpec.load(args.spec)
        outcomes = args.outcome or list(spec.outcomes)
        for name in outcomes:
            spec.outcome(name)
        data = trial_arrays(spec)
    except TrialSpecError as err:
        sys.exit(f"couponflow trial: {err}")
    if args.rows and args.rows < len(data):
        data = data.subset(
            np.sort(np.random.default_rng(0).choice(len(data), args.rows, replace=False))
        )
    cfg = network_config(spec, {"epochs": args.epochs} if args.epochs else None)
    by_outcome: dict[str, OutcomeFigures] = {}
    for name in outcomes:
        result = run_trial(
            spec, data, name, args.budget_share, args.folds, args.seeds, args.n_boot, cfg
        )
        lines, by_outcome[name] = report(spec, name, result, args.level, len(data))
        print("\n".join(lines), flush=True)
    figures: TrialFigures = {
        "spec": str(args.spec),
        "customers": len(data),
        "budget_share": args.budget_share,
        "folds": args.folds,
        "seeds": args.seeds,
        "n_boot": args.n_boot,
        "level": args.level,
        "network": {
            "hidden": cfg["hidden"],
            "batch_size": cfg["batch_size"],
            "lr": cfg["lr"],
            "patience": cfg["patience"],
            "epochs": cfg["epochs"],
        },
        "outcomes": by_outcome,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"wall time {figures['wall_seconds']} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
