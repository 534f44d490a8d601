"""The oracle tells the truth about the world: its expectations match what the sampler draws,
randomised logs measure the uplift it predicts, and its budgeted policy is the best one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from couponflow.contract import COUPON_KINDS, coupon_cost
from couponflow.oracle import Oracle, expectations
from couponflow.world import SEGMENTS, World

DAY = "2026-01-05"
Z_MAX = 4.0  # |z| beyond this fails: about 1 in 15,000 per check when the oracle is right


def outcomes_per_offer(batch: dict[str, pd.DataFrame], margin: float) -> pd.DataFrame:
    """Each offer with its user's same-day purchase, spend and profit (one order at most)."""
    orders = batch["orders"].set_index("user_id")
    offers = batch["offers"].copy()
    offers["bought"] = offers["user_id"].isin(orders.index).astype(float)
    offers["spend"] = orders["amount"].reindex(offers["user_id"]).fillna(0.0).to_numpy()
    discount = orders["discount"].reindex(offers["user_id"]).fillna(0.0).to_numpy()
    offers["profit"] = margin * offers["spend"] - discount
    return offers


def z_score(observed: np.ndarray, expected: np.ndarray, variance: float) -> float:
    return float((observed.sum() - expected.sum()) / np.sqrt(variance))


def test_expectations_match_the_sampler(tiny_params) -> None:
    """Draw every (user, arm) pair of a day 200 times through the sampler's own code and
    compare, kind by kind, with the oracle's analytic expectations."""
    world = World(tiny_params["world"])
    ctx = world.context(DAY)
    n, m, reps = 400, len(ctx.coupons), 200
    users, arms = np.repeat(np.arange(n), m + 1), np.tile(np.arange(-1, m), n)
    pairs = len(users)
    exp = expectations(world.outcome(ctx, users, arms), world.margin)
    drawn = world.draw_orders(
        np.random.default_rng(0), world.outcome(ctx, np.tile(users, reps), np.tile(arms, reps))
    )
    pair = drawn["row"] % pairs
    per_order = {
        "p_purchase": np.ones(len(pair)),
        "spend": drawn["amount"],
        "cost": drawn["discount"],
        "p_redeem": (drawn["arm"] >= 0).astype(float),
        "profit": world.margin * drawn["amount"] - drawn["discount"],
    }
    kind = np.append(ctx.coupons["kind"].to_numpy(object), "none")[arms]
    for key, value in per_order.items():
        mean = np.bincount(pair, value, minlength=pairs) / reps
        var = np.bincount(pair, value**2, minlength=pairs) / reps - mean**2
        for k in ("none", *COUPON_KINDS):
            sel = kind == k
            if exp[key][sel].sum() == 0:
                assert mean[sel].sum() == 0, (k, key)
                continue
            z = z_score(mean[sel], exp[key][sel], var[sel].sum() / reps)
            assert abs(z) < Z_MAX, f"{k} {key}: z = {z:.2f}"


@pytest.fixture(scope="module")
def randomised() -> tuple[World, pd.DataFrame]:
    """A world whose logging policy picks every arm uniformly for half the users each day:
    four days of offers, their outcomes and the oracle's expectations for the arm each got."""
    from couponflow.config import PROJECT_ROOT, load_params

    cfg = load_params(PROJECT_ROOT / "params.yaml")["world"]
    cfg.update(n_users=60_000, random_share=1.0)
    world = World(cfg)
    oracle = Oracle(world)
    frames = []
    for day in pd.date_range(DAY, periods=4):
        offers = outcomes_per_offer(world.simulate_day(day), world.margin)
        truth = oracle.truth(day, offers["user_id"].to_numpy())
        arm = truth.arm_index(offers["coupon_id"].tolist())
        rows = np.arange(len(arm))
        offers["p_true"] = truth.p_purchase[rows, arm]
        offers["spend_true"] = truth.spend[rows, arm]
        offers["profit_true"] = truth.profit[rows, arm]
        offers["segment"] = world.population_on(day).segment[offers["user_id"].to_numpy()]
        frames.append(offers)
    return world, pd.concat(frames, ignore_index=True)


def test_randomised_outcomes_are_what_the_oracle_expects(randomised) -> None:
    _, log = randomised
    p = log["p_true"].to_numpy()
    z = z_score(log["bought"].to_numpy(), p, float((p * (1 - p)).sum()))
    assert abs(z) < Z_MAX, f"purchases: z = {z:.2f}"
    for observed, expected in (("spend", "spend_true"), ("profit", "profit_true")):
        resid = log[observed] - log[expected]
        z = float(resid.sum() / np.sqrt((resid**2).sum()))
        assert abs(z) < Z_MAX, f"{observed}: z = {z:.2f}"


def uplift(log: pd.DataFrame) -> tuple[float, float, float]:
    """Measured uplift in purchase rate (coupon arms minus the control arm, as an experimenter
    computes it), the oracle's expected value of that difference, and its standard error."""
    treated, control = log[log["coupon_id"].notna()], log[log["coupon_id"].isna()]
    measured = treated["bought"].mean() - control["bought"].mean()
    expected = treated["p_true"].mean() - control["p_true"].mean()
    se = np.sqrt(treated["bought"].var() / len(treated) + control["bought"].var() / len(control))
    return measured, expected, se


def test_randomised_uplift_matches_the_oracle(randomised) -> None:
    """Measured uplift equals the oracle's expected uplift over the same users within sampling
    error, overall and within the hidden segments."""
    _, log = randomised
    for segment in (None, *SEGMENTS):
        sub = log if segment is None else log[log["segment"] == SEGMENTS.index(segment)]
        measured, expected, se = uplift(sub)
        assert abs(measured - expected) < Z_MAX * se, (segment, measured, expected, se)


def test_randomised_slice_shows_persuadables_gain_and_sleeping_dogs_lose(randomised) -> None:
    world, log = randomised
    coupons = world.catalogue(DAY).set_index("coupon_id")
    worth = pd.Series(coupon_cost(coupons["kind"], coupons["value"], 50.0), coupons.index)
    generous = worth.index[worth >= worth.quantile(0.75)]
    persuadable = log[log["segment"] == SEGMENTS.index("persuadable")]
    persuadable = persuadable[
        persuadable["coupon_id"].isna() | persuadable["coupon_id"].isin(generous)
    ]
    measured, _, se = uplift(persuadable)
    assert measured > 2 * se, (measured, se)
    measured, _, se = uplift(log[log["segment"] == SEGMENTS.index("sleeping_dog")])
    assert measured < -2 * se, (measured, se)


def test_logging_policy_ips_recovers_the_oracle_uplift(tiny_params) -> None:
    """Under the default logging policy (heuristic plus a randomised slice), the logged
    propensities turn the log into an unbiased estimate of the uplift of "a uniformly random
    coupon" over "none", which the oracle knows exactly."""
    tiny_params["world"]["n_users"] = 30_000
    world = World(tiny_params["world"])
    oracle = Oracle(world)
    estimates, truths = [], []
    for day in pd.date_range(DAY, periods=4):
        offers = outcomes_per_offer(world.simulate_day(day), world.margin)
        truth = oracle.truth(day, offers["user_id"].to_numpy())
        m = len(truth.coupon_ids) - 1
        control = offers["coupon_id"].isna().to_numpy()
        w = np.where(control, -1.0, 1.0 / m) / offers["propensity"].to_numpy()
        estimates.append(w * offers["profit"].to_numpy())
        truths.append(truth.profit[:, 1:].mean(axis=1) - truth.profit[:, 0])
    per_offer, true_uplift = np.concatenate(estimates), np.concatenate(truths)
    se = per_offer.std() / np.sqrt(len(per_offer))
    assert abs(per_offer.mean() - true_uplift.mean()) < 3 * se, (
        per_offer.mean(),
        true_uplift.mean(),
        se,
    )


def test_segments_respond_as_named(tiny_params) -> None:
    tiny_params["world"]["n_users"] = 4000
    world = World(tiny_params["world"])
    truth = Oracle(world).truth(DAY)
    seg = world.population_on(DAY).segment
    p = truth.p_purchase
    lift = p[:, 1:] - p[:, :1]
    is_ = {name: seg == i for i, name in enumerate(SEGMENTS)}
    assert (lift[is_["persuadable"]].max(axis=1) > 0).all()  # gain from the right coupon
    assert lift[is_["persuadable"]].max(axis=1).mean() > 0.05
    assert (lift[is_["sleeping_dog"]] < 0).all()  # lose from any coupon
    assert p[is_["sure_thing"], 0].mean() > 4 * p[is_["persuadable"], 0].mean()  # buy anyway
    assert p[is_["lost_cause"]].max() < 0.05  # never buy, coupon or not
    inc = truth.incremental_profit[:, 1:]
    assert inc[is_["sure_thing"]].mean() < 0 < inc[is_["persuadable"]].max(axis=1).mean()


def test_expected_answers_any_user_coupon_and_date(tiny_params) -> None:
    world = World(tiny_params["world"])
    oracle = Oracle(world)
    truth = oracle.truth(DAY, np.array([3, 5]))
    ids = [None, truth.coupon_ids[2]]
    frame = oracle.expected(DAY, [3, 5], ids)
    assert frame["p_purchase"].tolist() == pytest.approx(
        [truth.p_purchase[0, 0], truth.p_purchase[1, 2]]
    )
    assert frame["incremental_profit"].tolist() == pytest.approx(
        [0.0, truth.incremental_profit[1, 2]]
    )
    expired = world.catalogue("2026-03-01")
    gone = expired[expired["valid_to"] <= pd.Timestamp("2026-03-01")]["coupon_id"].iloc[0]
    assert oracle.expected("2026-03-01", [0], [gone])["p_purchase"].between(0, 1).all()


def test_oracle_policy_is_the_best_under_its_budget(tiny_params) -> None:
    tiny_params["world"]["n_users"] = 4000
    world = World(tiny_params["world"])
    oracle = Oracle(world)
    truth = oracle.truth(DAY)
    budgets = [0.0, 20.0, 50.0, 100.0, 200.0, 1e9]
    values = [oracle.policy_value(truth, b)[0] for b in budgets]
    assert values[0].incremental_profit == 0 and values[0].offers == 0
    for budget, value in zip(budgets, values, strict=True):
        assert value.cost <= budget + 1e-9
    gains = [v.incremental_profit for v in values]
    assert gains == sorted(gains) and gains[1] > 0
    unconstrained = np.maximum(truth.incremental_profit.max(axis=1), 0).sum()
    assert values[-1].incremental_profit == pytest.approx(unconstrained)
    assert values[-1].multiplier == 0.0

    # The logging heuristic and a random policy, spending as much, earn less.
    batch = world.simulate_day(DAY)
    offers = batch["offers"]
    logged = dict(zip(offers["user_id"], offers["coupon_id"], strict=True))
    chosen = [logged.get(u) for u in truth.users]
    chosen = [None if pd.isna(c) else c for c in chosen]
    logging = oracle.value_of(truth, chosen)
    rng = np.random.default_rng(0)
    random_ids = rng.choice(np.array(truth.coupon_ids, dtype=object), len(truth.users))
    random = oracle.value_of(truth, list(random_ids))
    for policy in (logging, random):
        best, _ = oracle.policy_value(truth, policy.cost)
        assert best.incremental_profit > policy.incremental_profit
    budget = 0.05 * len(truth.users)
    assert oracle.policy_value(truth, budget)[0].cost <= budget + 1e-9
