"""The simulated marketplace: deterministic, inside the contract, honest propensities."""

from __future__ import annotations

import numpy as np
import pandas as pd

from couponflow.contract import TABLES
from couponflow.world import World


def test_same_seed_same_day_same_batch(tiny_params) -> None:
    a = World(tiny_params["world"]).simulate_day("2026-01-05")
    b = World(tiny_params["world"]).simulate_day("2026-01-05")
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_other_seed_other_events(tiny_params) -> None:
    a = World(tiny_params["world"]).simulate_day("2026-01-05")
    tiny_params["world"]["seed"] += 1
    b = World(tiny_params["world"]).simulate_day("2026-01-05")
    assert not a["offers"]["coupon_id"].equals(b["offers"]["coupon_id"])


def test_batch_follows_the_contract(tiny_params) -> None:
    day = pd.Timestamp("2026-01-05")
    batch = World(tiny_params["world"]).simulate_day(day)
    for name, table in TABLES.items():
        frame = batch[name]
        assert list(frame.columns) == table.column_names
        assert frame[table.key].is_unique
        for col in table.columns:
            if col.in_batch_day:
                assert frame[col.name].between(day, day + pd.Timedelta(days=1), "left").all()
            if not col.nullable:
                assert frame[col.name].notna().all(), f"{name}.{col.name}"
    known = set(batch["coupons"]["coupon_id"])
    assert set(batch["offers"]["coupon_id"].dropna()) <= known
    assert set(batch["orders"]["coupon_id"].dropna()) <= known


def test_logged_propensities_match_the_logging_policy(tiny_params) -> None:
    """Over the randomised slice alone every arm has probability share/n_arms; the heuristic
    adds (1 - share) to one arm. Logged values must be exactly one of those two."""
    world = World(tiny_params["world"])
    batch = world.simulate_day("2026-01-05")
    share = tiny_params["world"]["random_share"]
    n_arms = len(batch["coupons"]) + 1
    allowed = {share / n_arms, share / n_arms + 1 - share}
    assert set(np.round(batch["offers"]["propensity"], 12)) <= set(np.round(list(allowed), 12))
    assert (batch["offers"]["coupon_id"].isna()).any(), "controls must be logged"


def test_coupons_raise_purchase_for_persuadables_and_lower_it_for_sleeping_dogs(
    tiny_params,
) -> None:
    world = World(tiny_params["world"])
    pop = world.population
    users = np.arange(len(pop.users))
    day = pd.Timestamp("2026-01-05")
    appeal = world.coupon_appeal(users, world.active_coupons(day)).max(axis=1)
    with_coupon = world.purchase_probability(users, appeal, day)
    without = world.purchase_probability(users, np.zeros(len(users)), day)
    assert (with_coupon[pop.sensitivity > 1] > without[pop.sensitivity > 1]).all()
    assert (with_coupon[pop.sensitivity < 0] <= without[pop.sensitivity < 0]).all()
