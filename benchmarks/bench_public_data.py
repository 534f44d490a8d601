"""The project's estimators and models on real public data.

    .venv/bin/python -m benchmarks.bench_public_data [--only estimators|obd|hillstrom]
        [--n-boot 1000] [--seeds 5] [--rows 100000]

Open Bandit: the Bernoulli Thompson Sampling policy's click rate, estimated off-policy from
the uniform-random policy's log (IPS, SNIPS, DR with a cross-fitted logistic click model, and
that model alone, DM, whose interval omits the model's own fitting noise), against the rate
BTS logged itself; each with a bootstrap interval, and the relative error of each point
estimate. The published relative errors (obp's examples/obd/README.md) are for the full-size
logs; these 10,000-row samples hold 46 and 69 clicks, so the intervals are what to read.

Hillstrom: our uplift-aware network (training.train.fit on the covariates as the user block,
a one-hot arm block whose column 0 is `is_control`) against a two-model gradient-boosting
learner (scikit-learn, one spend regressor per arm). Predictions are cross-fitted over four
stratified folds, so every customer is scored by learners that never saw them. Reported:
Qini coefficient, AUUC and the incremental spend per customer when the top third by
predicted uplift get their best e-mail (the issue's target), estimated with the design's 1/3
propensities, with bootstrap intervals and the paired difference of the learners; a few
fold seeds. Two references without a model: a random third get the e-mail that sold best in
training ("best_email"), and a random third get a random e-mail ("random").
The arrays come from the generic trial loader (couponflow/trials.py, public_data/hillstrom.yaml);
`couponflow trial` (training/trial.py) is the issue's comparison with costs: net value per
customer at the budget, our network as one fit per quantity, IPS with paired intervals.

Estimators: the cost of the bootstrap itself at the evaluation's scale (synthetic rows):
IPS/SNIPS/DR of several policies and the uplift metrics, seconds and peak traced memory.

Figures print; nothing is asserted (tests/test_public_data.py asserts).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any, cast

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from couponflow.config import PROJECT_ROOT, ModelParams, load_params
from couponflow.metrics import (
    Bootstrapped,
    TargetTerms,
    best_arm_view,
    off_policy_bootstrap,
    on_policy_value,
    uplift_bootstrap,
)
from couponflow.model import predict
from couponflow.public_data import (
    hillstrom_arrays,
    load_obd,
    obd_click_model,
    obd_target_terms,
)
from couponflow.trials import TrialArrays
from training.train import fit
from training.trial import per_arm_regression, training_arrays

PUBLIC = load_params(PROJECT_ROOT / "params.yaml")["public_data"]
PUBLISHED_OBD = {"dm": 0.157, "ips": 0.311, "dr": 0.292}  # full-size "men" campaign, obp
BUDGET_SHARE = 1 / 3  # customers that may be e-mailed
# The network sized for 26k customers rather than millions of offers: narrower, smaller
# batches (more steps per epoch), a gentler rate, more patience with a noisy validation loss.
LEARNERS = ("network", "network_conversion", "two_model", "best_email", "random")
HILLSTROM_NET = {"hidden": 32, "batch_size": 256, "lr": 0.001, "patience": 5, "epochs": 60}


def show(label: str, b: Bootstrapped, level: float, scale: float = 1.0) -> str:
    iv = b.interval(level)
    return f"{label:<28} {iv.value * scale:8.4f}  [{iv.low * scale:.4f}, {iv.high * scale:.4f}]"


def interval_cell(label: str, b: Bootstrapped, level: float) -> str:
    iv = b.interval(level)
    return f"{label} {iv.value:6.3f} [{iv.low:6.3f}, {iv.high:6.3f}]"


def obd(n_boot: int, level: float, seed: int) -> dict[str, Any]:
    """Thompson Sampling's click rate from the random log, against its own."""
    t0 = time.perf_counter()
    random, bts = (load_obd(PUBLIC["obd"], p) for p in ("random", "bts"))
    t1 = time.perf_counter()
    q = obd_click_model(random, seed=seed)
    t2 = time.perf_counter()
    terms = obd_target_terms(random, bts, q)
    reward = random.log["reward"].to_numpy(float)
    # The click model alone (DM) is a DR estimate that never uses the logged clicks.
    dm = TargetTerms(np.zeros(len(reward)), np.zeros(len(reward)), terms.q_expected)
    boot = off_policy_bootstrap(
        reward, random.log["propensity"].to_numpy(), {"bts": terms, "dm": dm}, n_boot, seed
    )
    t3 = time.perf_counter()
    truth = on_policy_value(bts.log["reward"].to_numpy(float), n_boot, seed + 1)
    estimates = boot["bts"] | {"dm": boot["dm"]["dr"]}

    print(f"\nOpen Bandit, campaign {PUBLIC['obd']['campaign']}: BTS click rate (%)")
    print(f"  {len(random.log):,} random rows ({int(reward.sum())} clicks), ", end="")
    print(f"{len(bts.log):,} BTS rows ({int(bts.log['reward'].sum())} clicks)")
    print(f"  {'':<28} {'value':>9}  {level:.0%} bootstrap interval")
    print("  " + show("BTS logged (truth)", truth, level, 100))
    result: dict[str, Any] = {"truth": truth.interval(level).as_dict()}
    for name in ("ips", "snips", "dr", "dm"):
        rel = abs(estimates[name].value - truth.value) / truth.value
        published = PUBLISHED_OBD.get(name)
        ref = f"  (published, full size: {published:.3f})" if published else ""
        fixed = "; the model held fixed" if name == "dm" else ""
        print("  " + show(f"{name} from random log", estimates[name], level, 100), end="")
        print(f"  rel. error {rel:.3f}{ref}{fixed}")
        result[name] = estimates[name].interval(level).as_dict() | {"relative_error": rel}
    print(
        f"  timings: load {t1 - t0:.2f}s, click model (5-fold) {t2 - t1:.2f}s, "
        f"{n_boot} bootstrap resamples {t3 - t2:.2f}s"
    )
    return result


def strata(data: TrialArrays) -> np.ndarray:
    """Arm x conversion: every split keeps the experiment's arms and its rare buyers even."""
    return data.arm * 2 + data.conversion.astype(int)


def net_spend(
    train: TrialArrays, valid: TrialArrays, test: TrialArrays, cfg: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Our network's predicted spend of each test customer under each arm, (n, arms), two
    ways: "network" as the coupon policy scores arms (P(buy | arm) x amount(arm)), and
    "network_conversion" with the e-mail's effect on conversion only (P(buy | arm) x
    amount(no e-mail)): with about a hundred buyers per arm, an e-mail's effect on the basket
    is mostly noise. Each customer's logged arm is a training row (training.trial): a
    conversion is a purchase (and a redemption of the e-mail, if one was sent) of `spend`
    dollars; the arms are equally likely, so every weight is 1."""
    net, _ = fit(
        training_arrays(train, "spend"),
        training_arrays(valid, "spend"),
        cast(ModelParams, cfg),
        n_user=train.user.shape[1],
        n_arm=test.n_arms,
    )
    out = [predict(net, test.inputs(arm)) for arm in range(test.n_arms)]
    p_buy = np.column_stack([o["p_purchase"] for o in out])
    amount = np.column_stack([o["amount"] for o in out])
    return {"network": p_buy * amount, "network_conversion": p_buy * amount[:, :1]}


def two_model_spend(train: TrialArrays, test: TrialArrays, seed: int) -> np.ndarray:
    """The two-model (one per arm) uplift baseline on spend: training.trial's per-arm
    regressor, (n, arms) predictions for the test customers."""
    return per_arm_regression(train, train.outcomes["spend"], test, seed)


def budget_metrics(
    test: TrialArrays, spend: np.ndarray, n_boot: int, seed: int
) -> dict[str, Bootstrapped]:
    """Rank customers by the predicted spend uplift of their best e-mail; Qini, AUUC and the
    incremental spend per customer when the top BUDGET_SHARE get that e-mail, estimated from
    the customers whose logged arm was that e-mail or no e-mail."""
    uplift = spend[:, 1:] - spend[:, :1]
    best = 1 + uplift.argmax(axis=1)
    treated, weight = best_arm_view(test.arm, best, test.propensity)
    boot = uplift_bootstrap(
        uplift.max(axis=1),
        treated,
        test.outcomes["spend"],
        weight,
        BUDGET_SHARE,
        n_boot=n_boot,
        seed=seed,
    )
    return {"at_budget": boot["uplift_at_budget"], "qini": boot["qini"], "auuc": boot["auuc"]}


def hillstrom_crossfit(
    data: TrialArrays, seed: int, cfg: dict[str, Any], n_boot: int, folds: int = 4
) -> tuple[dict[str, dict[str, Bootstrapped]], dict[str, float]]:
    """Cross-fitted predictions: each fold's customers are scored by learners trained on the
    other folds (the network early-stopping on a fifth of those), so every customer is a
    test customer and the metrics use them all, with the same resamples for every learner
    (differences are paired). Also returns the seconds spent training each learner."""
    spends = {name: np.zeros((len(data), data.n_arms)) for name in LEARNERS}
    rng = np.random.default_rng(seed)
    seconds = {"network_s": 0.0, "two_model_s": 0.0}
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, rows) in enumerate(split.split(data.user, strata(data))):
        train, valid = train_test_split(
            fit_rows, test_size=0.2, stratify=strata(data)[fit_rows], random_state=seed
        )
        test = data.subset(rows)
        t0 = time.perf_counter()
        net = net_spend(data.subset(train), data.subset(valid), test, cfg | {"seed": seed + fold})
        t1 = time.perf_counter()
        baseline = two_model_spend(data.subset(fit_rows), test, seed)
        seconds["network_s"] += t1 - t0
        seconds["two_model_s"] += time.perf_counter() - t1
        for name, spend in (net | {"two_model": baseline}).items():
            spends[name][rows] = spend
        # no model: a random third get the e-mail with the best mean spend in training
        fitted = data.subset(fit_rows)
        spent = fitted.outcomes["spend"]
        best = 1 + np.argmax([spent[fitted.arm == a].mean() for a in range(1, data.n_arms)])
        spends["best_email"][rows, best] = rng.random(len(rows))
    spends["random"] = rng.random((len(data), data.n_arms))  # a random e-mail each
    metrics = {name: budget_metrics(data, s, n_boot, seed) for name, s in spends.items()}
    return metrics, seconds


def hillstrom(n_boot: int, level: float, seeds: int) -> dict[str, list[float]]:
    """Our network against the two-model baseline on Hillstrom, over fold seeds."""
    data = hillstrom_arrays(PUBLIC["hillstrom"])
    cfg = load_params(PROJECT_ROOT / "params.yaml")["model"] | HILLSTROM_NET
    print(f"\nHillstrom: {len(data):,} customers, 4-fold cross-fitted; $ per customer")
    print(
        f"  at_budget: incremental spend when the top {BUDGET_SHARE:.0%} by predicted uplift "
        f"get their best e-mail; {level:.0%} bootstrap intervals"
    )
    at_budget: dict[str, list[float]] = {name: [] for name in LEARNERS}
    for seed in range(seeds):
        metrics, seconds = hillstrom_crossfit(data, seed, cfg, n_boot)
        print(
            f"  seed {seed} (training: network {seconds['network_s']:.1f}s, "
            f"two-model {seconds['two_model_s']:.1f}s)"
        )
        for name in LEARNERS:
            m = metrics[name]
            cells = "  ".join(interval_cell(k, m[k], level) for k in ("at_budget", "qini", "auuc"))
            print(f"    {name:<19} {cells}")
            at_budget[name].append(m["at_budget"].value)
        for name in ("network", "network_conversion"):
            diff = metrics[name]["at_budget"] - metrics["two_model"]["at_budget"]
            print(f"    {name + ' - two_model':<31} " + interval_cell("at_budget", diff, level))
    print(f"  over {seeds} seeds, at_budget mean (min, max):")
    baseline = np.asarray(at_budget["two_model"])
    for name in LEARNERS:
        values = np.asarray(at_budget[name])
        line = f"    {name:<19} ${values.mean():.3f} (${values.min():.3f}, ${values.max():.3f})"
        if name.startswith("network"):
            diff = values - baseline
            line += f"  minus two_model ${diff.mean():+.3f}, ahead in {(diff > 0).sum()}/{seeds}"
        print(line)
    return at_budget


def estimators(n: int, n_boot: int, policies: int = 4, arms: int = 10) -> None:
    """Seconds and peak memory of the bootstrapped estimators on `n` synthetic rows."""
    rng = np.random.default_rng(0)
    logged = rng.integers(0, arms, n)
    reward = rng.random(n) * (rng.random(n) < 0.1)
    q = rng.random((n, arms))
    targets = {
        f"policy_{i}": TargetTerms.from_actions(logged, rng.integers(0, arms, n), q)
        for i in range(policies)
    }
    print(f"\nEstimators on {n:,} synthetic rows, {n_boot} resamples (shared 2-core machine)")
    for label, run in {
        f"IPS/SNIPS/DR of {policies} policies": lambda: off_policy_bootstrap(
            reward, np.full(n, 1 / arms), targets, n_boot
        ),
        "Qini/AUUC/uplift at budget": lambda: uplift_bootstrap(
            rng.random(n), rng.random(n) < 0.5, reward, n_boot=n_boot
        ),
    }.items():
        tracemalloc.start()
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"  {label:<36} {seconds:6.2f}s, peak {peak:6.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["estimators", "obd", "hillstrom"])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows, estimators")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5, help="Hillstrom split seeds")
    args = parser.parse_args()
    if args.only in (None, "estimators"):
        estimators(args.rows, args.n_boot)
    if args.only in (None, "obd"):
        obd(args.n_boot, args.level, args.seed)
    if args.only in (None, "hillstrom"):
        hillstrom(args.n_boot, args.level, args.seeds)


if __name__ == "__main__":
    main()
