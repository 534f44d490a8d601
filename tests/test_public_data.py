"""Real public data in the project's shapes: Hillstrom as a contract batch whose arms measure
what the published experiment measured, and the Open Bandit logs on which an off-policy
estimate from the random policy's log meets Thompson Sampling's own click rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from couponflow.config import PROJECT_ROOT, load_params
from couponflow.contract import TABLES
from couponflow.metrics import TargetTerms, off_policy_bootstrap, on_policy_value
from couponflow.public_data import (
    action_distribution,
    hillstrom_arrays,
    load_hillstrom,
    load_obd,
    obd_click_model,
    obd_target_terms,
    resolve,
)

PUBLIC = load_params(PROJECT_ROOT / "params.yaml")["public_data"]
HILLSTROM = resolve(PUBLIC["hillstrom"]["path"])
OBD = resolve(PUBLIC["obd"]["path"])


def require(path) -> None:
    if not path.exists():
        pytest.skip(f"public data set absent: {path}")


@pytest.fixture(scope="module")
def hillstrom():
    require(HILLSTROM)
    return load_hillstrom(PUBLIC["hillstrom"])


def test_hillstrom_fits_the_contract(hillstrom) -> None:
    day = hillstrom.day
    for name, table in TABLES.items():
        frame = hillstrom.batch[name]
        assert list(frame.columns) == table.column_names
        assert frame.dtypes.astype(str).to_dict() == table.dtypes
        assert frame[table.key].is_unique
        for col in table.columns:
            values = frame[col.name].dropna()
            if not col.nullable:
                assert len(values) == len(frame), f"{name}.{col.name}"
            if col.allowed is not None:
                assert set(values) <= set(col.allowed), f"{name}.{col.name}"
            if col.min_value is not None:
                assert (values >= col.min_value).all(), f"{name}.{col.name}"
            if col.in_batch_day:
                assert values.between(day, day + pd.Timedelta(days=1), "left").all()
    offers, orders = hillstrom.batch["offers"], hillstrom.batch["orders"]
    assert len(offers) == len(hillstrom.batch["users"]) == 64_000
    assert (offers["propensity"] == 1 / 3).all()
    assert (orders["ts"] > offers["ts"].max()).all(), "every order follows its offer"
    assert list(hillstrom.covariates["user_id"]) == list(range(64_000))


def test_hillstrom_arms_measure_the_published_experiment(hillstrom) -> None:
    """Per arm, conversion and spend per customer as published with the data set."""
    from training.dataset import label_offers

    margin = 0.3
    labelled = label_offers(hillstrom.batch["offers"], hillstrom.batch["orders"], margin)
    arm = labelled["coupon_id"].fillna("none")
    by_arm = labelled.groupby(arm).agg(
        n=("offer_id", "size"), conversion=("purchased", "mean"), spend=("amount", "mean")
    )
    published = {
        "none": (0.00573, 0.653),
        "HM-MENS": (0.01253, 1.423),
        "HM-WOMENS": (0.00884, 1.077),
    }
    for name, (conversion, spend) in published.items():
        assert by_arm.loc[name, "conversion"] == pytest.approx(conversion, abs=5e-6)
        assert by_arm.loc[name, "spend"] == pytest.approx(spend, abs=5e-4)
    assert by_arm["n"].between(21_000, 21_500).all()

    # Only converters in an e-mail arm redeem, and the e-mail's configured cost is the discount.
    value = float(PUBLIC["hillstrom"]["email_value"])
    redeemed = labelled[labelled["redeemed"]]
    assert len(redeemed) == int(
        labelled["purchased"].sum() - (labelled["purchased"] & (arm == "none")).sum()
    )
    assert (redeemed["discount"] == np.minimum(value, redeemed["amount"])).all()

    # The pipeline's estimator, arm against arm on the same customers: the men's e-mail lifts
    # conversion by the published difference, far beyond the paired bootstrap's noise.
    y = labelled["purchased"].to_numpy(float)
    prop = labelled["propensity"].to_numpy()
    arms = {name: TargetTerms((arm == name).to_numpy(float)) for name in ("HM-MENS", "none")}
    boot = off_policy_bootstrap(y, prop, arms, n_boot=300)
    lift = (boot["HM-MENS"]["ips"] - boot["none"]["ips"]).interval(0.999)
    assert lift.value == pytest.approx(0.01253 - 0.00573, abs=1e-4)
    assert lift.low > 0.003


@pytest.fixture(scope="module")
def hillstrom_encoded():
    require(HILLSTROM)
    return hillstrom_arrays(PUBLIC["hillstrom"])


def test_hillstrom_arrays_encode_the_experiment(hillstrom_encoded) -> None:
    """Through the generic trial loader (public_data/hillstrom.yaml): covariates as a user
    block in 0..1, arm 0 the control, outcomes as published."""
    data = hillstrom_encoded
    assert data.arms == ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
    assert data.user_inputs[:6] == (
        "recency", "mens", "womens", "newbie", "log_history", "history_segment"
    )  # fmt: skip
    assert data.user.shape == (64_000, 12)
    assert data.user.dtype == np.float32
    assert data.user.min() == 0 and data.user.max() == 1
    zips, channels = data.user[:, 6:9], data.user[:, 9:12]
    assert np.all(zips.sum(axis=1) == 1) and np.all(channels.sum(axis=1) == 1)
    assert data.user_inputs[6] == "zip_code=Urban" and data.user_inputs[9] == "channel=Phone"
    # the empirical arm shares: the design's 1/3 each, as drawn
    assert data.propensity == pytest.approx(np.full(64_000, 1 / 3), abs=1e-3)
    spend = {arm: data.outcomes["spend"][data.arm == i].mean() for i, arm in enumerate(data.arms)}
    assert spend == pytest.approx(
        {"No E-Mail": 0.653, "Mens E-Mail": 1.423, "Womens E-Mail": 1.077}, abs=5e-4
    )
    assert set(data.outcomes) == {"spend", "visit"} and data.conversion.sum() == 578
    x = data.inputs(data.arm)
    assert x.shape == (64_000, 12 + 3)
    arm_block = x[:, 12:]
    assert np.array_equal(arm_block[:, 0] == 1, data.arm == 0), "column 0 is is_control"
    assert np.array_equal(arm_block.argmax(axis=1), data.arm)
    assert np.array_equal(data.inputs(2)[:, -1], np.ones(64_000, dtype=np.float32))
    small = data.subset(np.arange(10))
    assert len(small) == 10 and np.array_equal(small.outcomes["spend"], data.outcomes["spend"][:10])


def test_hillstrom_uplift_pipeline_runs_on_a_subsample(hillstrom_encoded) -> None:
    """The benchmark's pipeline end to end on 9,000 customers, two folds and two epochs:
    every learner gets finite metrics inside their intervals, within what e-mailing a third
    can buy."""
    from benchmarks.bench_public_data import HILLSTROM_NET, LEARNERS, hillstrom_crossfit

    rows = np.random.default_rng(0).choice(len(hillstrom_encoded), 9_000, replace=False)
    cfg = load_params(PROJECT_ROOT / "params.yaml")["model"] | HILLSTROM_NET | {"epochs": 2}
    metrics, seconds = hillstrom_crossfit(hillstrom_encoded.subset(rows), 0, cfg, 50, folds=2)
    assert set(metrics) == set(LEARNERS)
    for name, m in metrics.items():
        for key, b in m.items():
            iv = b.interval(0.95)
            assert np.isfinite([iv.value, iv.low, iv.high]).all(), (name, key)
            assert iv.low <= iv.value <= iv.high, (name, key)
            assert len(b.replicates) == 50
        # the most a third of customers can add is a third of the treated arms' mean spend
        assert abs(m["at_budget"].value) < 1.5, name
    # a random third e-mailed the men's e-mail: a third of its published uplift per customer
    mens = metrics["best_email"]["at_budget"].interval(0.95)
    assert mens.low < (1.423 - 0.653) / 3 < mens.high
    assert seconds["network_s"] > 0 and seconds["two_model_s"] > 0


@pytest.fixture(scope="module")
def obd():
    require(OBD)
    return {policy: load_obd(PUBLIC["obd"], policy) for policy in ("random", "bts")}


def test_obd_logs_are_tidy(obd) -> None:
    for policy, bandit in obd.items():
        log = bandit.log
        assert len(log) == 10_000
        assert list(log.columns[:5]) == ["timestamp", "action", "position", "reward", "propensity"]
        assert log["action"].between(0, bandit.n_actions - 1).all()
        assert set(log["position"]) == {1, 2, 3}
        assert set(log["reward"]) == {0, 1}
        assert log["propensity"].between(0, 1, "right").all()
        assert len(bandit.context_columns) == 4 + bandit.n_actions
        assert bandit.n_actions == 34 and list(bandit.items["item_id"]) == list(range(34))
        assert (
            log["timestamp"]
            .dt.date.between(pd.Timestamp("2019-11-24").date(), pd.Timestamp("2019-11-30").date())
            .all()
        ), policy
    assert np.allclose(obd["random"].log["propensity"], 1 / 34)
    dist = action_distribution(obd["bts"])
    assert np.allclose(dist.sum(axis=1), 1.0) and dist.shape == (3, 34)


def test_off_policy_estimates_meet_the_logged_truth(obd) -> None:
    """The click rate of Thompson Sampling, estimated by IPS, SNIPS and DR (with a cross-fitted
    click model) from the random policy's log, agrees with the rate it logged itself: each
    95% interval holds the other's point estimate. With 46 and 69 clicks the intervals are
    wide, so the point estimates are also held to within half the truth."""
    random, bts = obd["random"], obd["bts"]
    q = obd_click_model(random)
    assert q.shape == (len(random.log), random.n_actions)
    assert q.min() > 0 and q.max() < 0.1  # clicks are rare: no row is predicted to click
    assert q.mean() == pytest.approx(random.log["reward"].mean(), rel=0.2)

    terms = obd_target_terms(random, bts, q)
    assert np.all(terms.prob > 0), "BTS showed every item the random policy did"
    reward = random.log["reward"].to_numpy(float)
    boot = off_policy_bootstrap(reward, random.log["propensity"].to_numpy(), {"bts": terms})
    truth = on_policy_value(bts.log["reward"].to_numpy(float), seed=1)
    assert truth.value == pytest.approx(69 / 10_000)
    true_iv = truth.interval(0.95)
    for name in ("ips", "snips", "dr"):
        iv = boot["bts"][name].interval(0.95)
        assert iv.low < truth.value < iv.high, (name, iv)
        assert true_iv.low < iv.value < true_iv.high, (name, iv)
        assert abs(iv.value - truth.value) < 0.5 * truth.value, (name, iv)
    # DR is no noisier than IPS, and exactly IPS when the click model predicts nothing.
    spread = {k: boot["bts"][k].replicates.std() for k in ("ips", "dr")}
    assert spread["dr"] <= 1.05 * spread["ips"]
    blank = obd_target_terms(random, bts, np.zeros_like(q))
    assert np.array_equal(blank.prob, terms.prob)
    none = off_policy_bootstrap(reward, random.log["propensity"].to_numpy(), {"b": blank}, 0)
    assert none["b"]["dr"].value == pytest.approx(boot["bts"]["ips"].value)
