"""Evaluation at scale: the bounds that let the evaluate stage run on a million users must
not change what it measures. Pricing a population a chunk of users at a time gives the
one-pass prices, the true leads' resamples drawn in blocks give the one-draw intervals,
and the population sample is the same users every run with its share of the budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import couponflow.metrics
import couponflow.model
from couponflow.config import PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.features import USER_FEATURES
from couponflow.model import CouponNet
from couponflow.policy import eligible, with_control
from tests.test_model import ARMS, MARGIN, known_effect_log
from training.baselines import GB_PARAMS, fit_baselines
from training.evaluate import ModelPolicy, Policy, population, price, true_leads

MAX_WEIGHT = 20.0


@pytest.fixture(scope="module")
def policies() -> dict[str, Policy]:
    """A network whose coupon term is not zero (an untrained one prices every coupon
    alike) and every baseline, fitted on a known-effect log (with few boosting rounds:
    these tests are about the chunks, not the fit)."""
    log = known_effect_log(1_000, seed=3)
    log["reward"] = MARGIN * log["amount"] - log["discount"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(GB_PARAMS, "max_iter", 20)
        baselines = fit_baselines(log, MAX_WEIGHT)
    torch.manual_seed(0)
    net = CouponNet(hidden=16)
    torch.nn.init.normal_(net.delta[-1].weight, std=0.1)
    net.eval()
    model = ModelPolicy("challenger", net, "test", MARGIN)
    return {"challenger": model, **{b.name: b for b in baselines}}


def test_pricing_in_user_chunks_gives_the_one_pass_prices(
    policies: dict[str, Policy], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = known_effect_log(200, seed=4)[USER_FEATURES].to_numpy(np.float32)
    whole = {name: price(p, users, ARMS, cap=5) for name, p in policies.items()}
    monkeypatch.setattr(couponflow.model, "USERS_PER_CHUNK", 7)  # 29 chunks, the last of 4
    assert len(couponflow.model.user_chunks(len(users))) == 29
    # a copy, so the shared cost model prices these users again instead of answering from
    # what it kept for the one-pass call
    chunked = {name: price(p, users.copy(), ARMS, cap=5) for name, p in policies.items()}
    for name, p in whole.items():
        if name == "challenger":  # torch may sum a smaller batch in another order
            np.testing.assert_allclose(chunked[name].value, p.value, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(chunked[name].cost, p.cost, rtol=1e-5, atol=1e-9)
        else:
            np.testing.assert_array_equal(chunked[name].value, p.value, err_msg=name)
            np.testing.assert_array_equal(chunked[name].cost, p.cost, err_msg=name)


def test_the_baselines_share_one_cost_prediction(policies: dict[str, Policy]) -> None:
    """Every baseline prices the same users with one cost model: it predicts them once,
    and hands out a read-only array, so no policy can change another's costs."""
    users = known_effect_log(50, seed=5)[USER_FEATURES].to_numpy(np.float32)
    costs = [
        p.value_and_cost(users, ARMS)[1] for name, p in policies.items() if name != "challenger"
    ]
    assert all(cost is costs[0] for cost in costs)
    assert not costs[0].flags.writeable
    again = policies["response"].value_and_cost(users.copy(), ARMS)[1]
    assert again is not costs[0]
    np.testing.assert_array_equal(again, costs[0])


def test_true_lead_intervals_do_not_depend_on_the_resampling_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    per_user = {
        name: rng.normal(0.1 * i, 1.0, 301) for i, name in enumerate(("challenger", "a", "b"))
    }
    level = 0.9
    monkeypatch.setattr(couponflow.metrics, "BOOTSTRAP_BLOCK", 1_000)  # 3 resamples a block
    leads = true_leads(per_user, level)
    resample = np.random.default_rng(0).integers(0, 301, (400, 301))  # all at once
    for name in ("a", "b"):
        diff = per_user["challenger"] - per_user[name]
        low, high = np.quantile(diff[resample].sum(axis=1), [0.05, 0.95])
        assert leads[name] == {"value": float(diff.sum()), "low": low, "high": high}


def test_the_population_sample_is_fixed_and_gets_its_share_of_the_budget(tmp_path: Path) -> None:
    from couponflow.landing import load_offline
    from couponflow.world import World
    from feature_repo.store import publish_features

    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", 300)
    ws = Workspace(tmp_path)
    world = World(params["world"])
    days = ["2026-01-01", "2026-01-02"]
    for day in days:
        load_offline(ws, day, world.simulate_day(day))
    publish_features(ws, days[0])
    day = pd.Timestamp(days[1])
    arms = with_control(eligible(world.catalogue(day), day))

    everyone, whole = population(ws, day, arms, 0.05, 30, sample=None)
    assert len(everyone) == 300 and whole.budget == pytest.approx(0.05 * 300)
    same, _ = population(ws, day, arms, 0.05, 30, sample=300)
    pd.testing.assert_frame_equal(same, everyone)

    sampled, part = population(ws, day, arms, 0.05, 30, sample=120)
    again, _ = population(ws, day, arms, 0.05, 30, sample=120)
    pd.testing.assert_frame_equal(sampled, again)
    assert len(sampled) == 120 and part.budget == pytest.approx(0.05 * 120)
    assert sampled["user_id"].is_monotonic_increasing
    rows = everyone.reset_index().merge(sampled, on=list(sampled.columns))["index"]
    np.testing.assert_array_equal(part.users, whole.users[rows.to_numpy()])
