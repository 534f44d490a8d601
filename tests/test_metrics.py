"""The estimators on synthetic data whose truth is known: off-policy values are unbiased, the
doubly robust one is the most precise with a good reward model, the bootstrap intervals cover
the truth at about their level, paired differences cancel the common noise, and uplift metrics
recover a known effect and rank a perfect ranking above a random one."""

from __future__ import annotations

import numpy as np
import pytest

from couponflow.metrics import (
    BOOTSTRAP_BLOCK,
    TargetTerms,
    auuc,
    best_arm_view,
    bootstrap_counts,
    bootstrap_indices,
    calibration_curve,
    calibration_error,
    off_policy_bootstrap,
    off_policy_values,
    on_policy_value,
    paired_difference,
    qini_coefficient,
    qini_curve,
    uplift_at_budget,
    uplift_bootstrap,
)

ARMS = 4


def bandit(rng: np.random.Generator, n: int) -> dict:
    """A contextual bandit logged by a context-dependent (non-uniform) policy, the true
    expected rewards, and a target policy that mostly takes the best arm."""
    x = rng.normal(size=n)
    mu = 1 / (1 + np.exp(-(np.outer(x, np.linspace(-3, 3, ARMS)) - 0.5)))
    logits = np.outer(x, [0.5, 0.0, -0.5, 0.2])
    log_pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    logged = (rng.random(n)[:, None] > np.cumsum(log_pi, axis=1)).sum(axis=1)
    reward = rng.binomial(1, mu[np.arange(n), logged]).astype(float)
    target = np.full((n, ARMS), 0.1 / (ARMS - 1))
    target[np.arange(n), mu.argmax(axis=1)] = 0.9
    return {
        "logged": logged,
        "reward": reward,
        "propensity": log_pi[np.arange(n), logged],
        "mu": mu,
        "target": target,
        "truth": float((target * mu).sum(axis=1).mean()),
    }


def estimates(b: dict, q: np.ndarray | None, n_boot: int = 0, seed: int = 0) -> dict:
    terms = TargetTerms.from_probabilities(b["logged"], b["target"], q)
    return off_policy_bootstrap(b["reward"], b["propensity"], {"t": terms}, n_boot, seed)["t"]


def test_calibration_curve_follows_the_diagonal_only_when_calibrated() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 50_000)
    y = rng.random(len(p)) < p
    curve = calibration_curve(y, p, bins=10)
    assert curve.count.sum() == len(p) and len(curve.count) == 10
    assert np.all(np.diff(curve.mean_predicted) > 0)
    assert np.abs(curve.observed - curve.mean_predicted).max() < 0.03
    assert calibration_error(y, p) < 0.01
    over = calibration_curve(y, np.minimum(1.5 * p, 1.0), bins=10)
    assert np.all(over.mean_predicted[3:] > over.observed[3:] + 0.05)
    assert calibration_error(y, np.minimum(1.5 * p, 1.0)) > 0.1


def test_bootstrap_resamples_are_bounded_blocks_of_the_same_rows_for_a_seed() -> None:
    n = BOOTSTRAP_BLOCK // 3 + 1  # two resamples per block
    blocks = list(bootstrap_indices(n, 5, seed=3))
    assert [len(b) for b in blocks] == [2, 2, 1]
    assert all(b.size <= BOOTSTRAP_BLOCK and b.min() >= 0 and b.max() < n for b in blocks)
    again = np.concatenate(list(bootstrap_indices(n, 5, seed=3)))
    assert np.array_equal(np.concatenate(blocks), again)
    counts = np.concatenate(list(bootstrap_counts(n, 5, seed=3)))
    assert np.array_equal(counts.sum(axis=1), np.full(5, n))
    assert np.array_equal(counts[0], np.bincount(blocks[0][0], minlength=n))


def test_target_terms_from_actions_match_one_hot_probabilities() -> None:
    rng = np.random.default_rng(2)
    logged = rng.integers(-1, ARMS, 200)  # -1: an action the targets cannot take
    action = rng.integers(0, ARMS, 200)
    q = rng.random((200, ARMS))
    direct = TargetTerms.from_actions(logged, action, q)
    via_pi = TargetTerms.from_probabilities(logged, np.eye(ARMS)[action], q)
    for field in ("prob", "q_logged", "q_expected"):
        assert np.allclose(getattr(direct, field), getattr(via_pi, field))
    assert np.all(direct.prob[logged < 0] == 0)
    assert np.array_equal(direct.prob, (logged == action).astype(float))
    with pytest.raises(ValueError):
        TargetTerms(direct.prob, q_logged=direct.q_logged)


def test_estimators_are_unbiased_and_dr_beats_ips_with_a_good_model() -> None:
    """Over repeated logs: IPS, SNIPS and DR centre on the true value; DR with the true reward
    model has a fraction of IPS's spread, and with a wrong model it is still unbiased."""
    rng = np.random.default_rng(3)
    draws = {"ips": [], "snips": [], "dr": [], "dr_wrong": []}
    truths = []
    for _ in range(300):
        b = bandit(rng, 2_000)
        good = estimates(b, b["mu"])
        wrong = estimates(b, np.full_like(b["mu"], 0.8))
        for k in ("ips", "snips", "dr"):
            draws[k].append(good[k].value)
        draws["dr_wrong"].append(wrong["dr"].value)
        truths.append(b["truth"])
    truth = np.mean(truths)
    for k, values in draws.items():
        values = np.asarray(values)
        se = values.std() / np.sqrt(len(values))
        assert abs(values.mean() - truth) < 4 * se + 1e-3, k
    assert np.std(draws["dr"]) < 0.6 * np.std(draws["ips"])


def test_bootstrap_intervals_cover_the_truth_at_about_their_level() -> None:
    rng = np.random.default_rng(4)
    covered = {"ips": 0, "dr": 0}
    trials = 200
    for i in range(trials):
        b = bandit(rng, 1_000)
        q = np.clip(b["mu"] + rng.normal(0, 0.05, b["mu"].shape), 0, 1)  # a good, imperfect model
        est = estimates(b, q, n_boot=200, seed=i)
        for k in covered:
            iv = est[k].interval(0.9)
            covered[k] += iv.low <= b["truth"] <= iv.high
    for k, hits in covered.items():
        assert 0.82 <= hits / trials <= 0.97, (k, hits)


def test_paired_difference_cancels_the_common_noise() -> None:
    rng = np.random.default_rng(5)
    b = bandit(rng, 5_000)
    good = TargetTerms.from_probabilities(b["logged"], b["target"], b["mu"])
    uniform = TargetTerms.from_probabilities(b["logged"], np.full_like(b["mu"], 1 / ARMS), b["mu"])
    args = (b["reward"], b["propensity"])

    itself = paired_difference(*args, good, good, "dr", n_boot=200)
    assert (itself.value, itself.low, itself.high) == (0.0, 0.0, 0.0)

    diff = paired_difference(*args, good, uniform, "dr", n_boot=400, level=0.95, seed=7)
    truth = b["truth"] - float(b["mu"].mean())
    assert diff.low > 0 and diff.low <= truth + 0.01 and diff.high >= truth - 0.01
    boot = off_policy_bootstrap(*args, {"good": good, "uniform": uniform}, n_boot=400, seed=7)
    assert (boot["good"]["dr"] - boot["uniform"]["dr"]).interval(0.95) == diff
    # independent resamples of the two would give a wider interval
    unpaired = off_policy_bootstrap(*args, {"u": uniform}, n_boot=400, seed=8)["u"]["dr"]
    width = np.std(boot["good"]["dr"].replicates - unpaired.replicates)
    assert np.std((boot["good"]["dr"] - boot["uniform"]["dr"]).replicates) < 0.8 * width

    values = off_policy_values(*args, {"good": good, "uniform": uniform}, n_boot=100)
    assert set(values["good"]) == {"ips", "snips", "dr"}
    assert (
        values["good"]["dr"]["low"] < values["good"]["dr"]["value"] < values["good"]["dr"]["high"]
    )
    no_model = off_policy_values(*args, {"t": TargetTerms(good.prob)}, n_boot=10)
    assert set(no_model["t"]) == {"ips", "snips"}


def test_the_logging_policy_evaluated_off_policy_is_its_on_policy_value() -> None:
    b = bandit(np.random.default_rng(11), 3_000)
    logged = on_policy_value(b["reward"], n_boot=200, seed=2)
    assert logged.value == pytest.approx(b["reward"].mean())
    itself = TargetTerms(b["propensity"])
    off = off_policy_bootstrap(b["reward"], b["propensity"], {"t": itself}, 200, seed=2)["t"]
    same = (off["ips"] - logged).interval()
    assert same.value == pytest.approx(0) and abs(same.low) < 1e-12 and abs(same.high) < 1e-12
    iv = logged.interval(0.95)
    se = b["reward"].std() / np.sqrt(len(b["reward"]))
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * se, rel=0.2)


def experiment(rng: np.random.Generator, n: int) -> dict:
    """A randomised two-arm experiment: uplift 0.2 for the 30% of customers with x > 0.7
    (noise around a base that also rises with x), nothing for the rest."""
    x = rng.random(n)
    treated = rng.random(n) < 0.5
    outcome = x + np.where(x > 0.7, 0.2, 0.0) * treated + rng.normal(0, 0.3, n)
    return {"x": x, "treated": treated, "outcome": outcome}


def test_qini_recovers_a_known_uplift_and_ranks_perfect_above_random() -> None:
    rng = np.random.default_rng(7)
    e = experiment(rng, 200_000)
    args = (e["treated"], e["outcome"])
    # Treating the top 30% (every responder) gains 0.3 * 0.2 = 0.06 per customer.
    assert uplift_at_budget(e["x"], *args, share=0.3) == pytest.approx(0.06, abs=0.01)
    assert uplift_at_budget(e["x"], *args, share=1.0) == pytest.approx(0.06, abs=0.01)
    curve = qini_curve(e["x"], *args, points=10)
    assert curve.share[0] == 0 and curve.gain[0] == 0 and curve.share[-1] == 1
    assert curve.gain[3] == pytest.approx(0.06, abs=0.01)
    # AUUC of the perfect ranking: 0.06 * 0.15 (the ramp) + 0.06 * 0.7 (the plateau).
    assert auuc(e["x"], *args) == pytest.approx(0.051, abs=0.008)
    assert qini_coefficient(e["x"], *args) == pytest.approx(0.021, abs=0.008)
    random_score = rng.random(len(e["x"]))
    assert abs(qini_coefficient(random_score, *args)) < 0.008
    assert qini_coefficient(-e["x"], *args) < -0.01  # the worst ranking is below random


def test_inverse_propensity_weights_undo_a_confounded_assignment() -> None:
    """Customers with a high base outcome were treated more often; unweighted, the top 30%
    looks better than it is, weighted by inverse propensities it measures the true uplift."""
    rng = np.random.default_rng(8)
    n = 200_000
    x = rng.random(n)
    p = 0.2 + 0.6 * x  # the assignment depends on the base outcome's driver x
    treated = rng.random(n) < p
    outcome = 10 * x + np.where(x > 0.7, 0.2, 0.0) * treated + rng.normal(0, 0.3, n)
    weight = np.where(treated, 1 / p, 1 / (1 - p))
    truth = 0.3 * 0.2  # the top 30% by x are exactly the responders
    assert uplift_at_budget(x, treated, outcome, weight, 0.3) == pytest.approx(truth, abs=0.012)
    assert uplift_at_budget(x, treated, outcome, None, 0.3) > truth + 0.02


def test_uplift_bootstrap_intervals_cover_and_pair() -> None:
    rng = np.random.default_rng(9)
    e = experiment(rng, 20_000)
    args = (e["treated"], e["outcome"])
    boot = uplift_bootstrap(e["x"], *args, share=0.3, n_boot=300, seed=1)
    assert boot["uplift_at_budget"].value == uplift_at_budget(e["x"], *args, share=0.3)
    assert boot["qini"].value == pytest.approx(qini_coefficient(e["x"], *args))
    assert boot["auuc"].value == pytest.approx(auuc(e["x"], *args))
    budget = boot["uplift_at_budget"].interval(0.99)
    assert budget.low < 0.06 < budget.high
    assert budget.high - budget.low < 0.1
    random_boot = uplift_bootstrap(rng.random(len(e["x"])), *args, share=0.3, n_boot=300, seed=1)
    better = (boot["qini"] - random_boot["qini"]).interval(0.95)
    assert better.low > 0
    same = (boot["qini"] - boot["qini"]).interval()
    assert (same.low, same.high) == (0.0, 0.0)
    point_only = uplift_bootstrap(e["x"], *args, share=0.3, n_boot=0)
    assert point_only["qini"].value == boot["qini"].value
    assert np.isnan(point_only["qini"].interval().low)


def test_best_arm_view_measures_a_multi_arm_policy() -> None:
    """Three arms at 1/3 each; arm 1 lifts the outcome by 1 where x < 0.5, arm 2 by 1 where
    x >= 0.5. Giving everyone their best arm gains 1 per customer."""
    rng = np.random.default_rng(10)
    n = 90_000
    x = rng.random(n)
    logged = rng.integers(0, 3, n)
    best = np.where(x < 0.5, 1, 2)
    outcome = (logged == best).astype(float) + rng.normal(0, 1, n)
    treated, weight = best_arm_view(logged, best, np.full(n, 1 / 3))
    assert np.all(weight[(logged != 0) & (logged != best)] == 0)
    assert np.all(weight[treated] == 3) and not np.any(treated[logged == 0])
    assert uplift_at_budget(x, treated, outcome, weight, share=1.0) == pytest.approx(1, abs=0.05)
    wrong_treated, wrong_weight = best_arm_view(logged, 3 - best, np.full(n, 1 / 3))
    assert uplift_at_budget(x, wrong_treated, outcome, wrong_weight, share=1.0) == pytest.approx(
        0, abs=0.05
    )


# -- the gate's power, the estimated gain's calibration, the pooled A/B readout ------------
def test_minimum_detectable_effect_is_about_two_and_a_half_standard_errors() -> None:
    from couponflow.metrics import minimum_detectable_effect

    assert minimum_detectable_effect(0.1, 0.9) == pytest.approx(0.249, abs=1e-3)
    assert minimum_detectable_effect(0.1, 0.95) > minimum_detectable_effect(0.1, 0.9)


def randomised_gain_log(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniformly randomised log over "no coupon" and two coupons whose true gain per
    user is known: (true gain (n, 2), logged arm, reward)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    gain = np.column_stack([x, -0.5 * np.ones(n)])
    logged = rng.integers(0, 3, n)
    mean = 1.0 + np.column_stack([np.zeros(n), gain])[np.arange(n), logged]
    return gain, logged, mean + rng.normal(scale=2.0, size=n)


def test_gain_calibration_finds_the_slope_and_an_anti_calibrated_ranking() -> None:
    from couponflow.metrics import gain_calibration, gain_pseudo_outcomes

    gain, logged, reward = randomised_gain_log(6_000, seed=1)
    prob = np.full((len(logged), 3), 1 / 3)
    pseudo = gain_pseudo_outcomes(logged, reward, prob, np.zeros((len(logged), 3)))
    # the pseudo-outcomes are unbiased for the true gain whatever the reward model
    assert pseudo.mean(axis=0) == pytest.approx(gain.mean(axis=0), abs=0.15)
    right = gain_calibration(gain, pseudo, 0.9)
    assert right.slope.low < 1.0 < right.slope.high and right.slope.low > 0.5
    assert np.all(np.diff(right.predicted) > 0) and right.count.sum() == gain.size
    wrong = gain_calibration(-gain, pseudo, 0.9)  # a ranking that points the wrong way
    assert wrong.slope.high < 0
    # unusable predictions (users at their offer cap) are left out
    capped = gain.copy()
    capped[:100] = -np.inf
    assert gain_calibration(capped, pseudo, 0.9).count.sum() == gain.size - 200


def test_the_ab_readout_pools_days_and_says_when_the_lift_is_significant() -> None:
    import pandas as pd

    from couponflow.metrics import ab_readout

    rng = np.random.default_rng(0)

    def day(d: str, n: int, lift: float) -> pd.DataFrame:
        held = rng.random(n) < 0.1
        return pd.DataFrame(
            {
                "day": pd.Timestamp(d),
                "policy_version": np.where(held, "v1:holdout", "v1"),
                "reward": rng.normal(1.0, 2.0, n) + np.where(held, 0.0, lift),
            }
        )

    one = ab_readout(day("2026-01-05", 400, 0.5), 0.9)
    assert one["days"] == ["2026-01-05"] and one["lift"] is not None
    pooled = ab_readout(pd.concat([day(f"2026-01-0{i}", 4_000, 0.5) for i in (5, 6, 7)]), 0.9)
    assert pooled["days"] == ["2026-01-05", "2026-01-06", "2026-01-07"]
    assert pooled["significant"] and pooled["lift"]["low"] > 0
    null = ab_readout(pd.concat([day(f"2026-01-0{i}", 300, 0.0) for i in (5, 6)]), 0.9)
    assert null["significant"] == (null["lift"]["low"] > 0 or null["lift"]["high"] < 0)
