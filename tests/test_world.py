"""The simulated marketplace: deterministic, inside the contract, honest propensities, the
four uplift segments, a catalogue that changes, and the drifts it can be asked for."""

from __future__ import annotations

import ast
import copy
import hashlib
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import couponflow.world
from couponflow.config import PROJECT_ROOT
from couponflow.contract import CATEGORIES, HOLDOUT_SUFFIX, TABLES, coupon_cost
from couponflow.world import SEGMENTS, World

DAY = "2026-01-05"


def test_same_seed_same_day_same_batch(tiny_params) -> None:
    a = World(tiny_params["world"]).simulate_day(DAY)
    b = World(tiny_params["world"]).simulate_day(DAY)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_a_day_regenerates_alone(tiny_params) -> None:
    """Coupon fatigue reads the days before, yet a day simulated after its predecessors equals
    the same day simulated by a fresh world."""
    world = World(tiny_params["world"])
    for day in pd.date_range("2026-01-02", DAY):
        after_history = world.simulate_day(day)
    alone = World(tiny_params["world"]).simulate_day(DAY)
    for name in TABLES:
        pd.testing.assert_frame_equal(after_history[name], alone[name])


def test_other_seed_other_events(tiny_params) -> None:
    a = World(tiny_params["world"]).simulate_day(DAY)
    tiny_params["world"]["seed"] += 1
    b = World(tiny_params["world"]).simulate_day(DAY)
    assert not a["offers"]["coupon_id"].equals(b["offers"]["coupon_id"])


def test_batch_follows_the_contract(tiny_params) -> None:
    day = pd.Timestamp(DAY)
    batch = World(tiny_params["world"]).simulate_day(day)
    for name, table in TABLES.items():
        frame = batch[name]
        assert list(frame.columns) == table.column_names
        assert frame.dtypes.astype(str).to_dict() == table.dtypes
        assert frame[table.key].is_unique
        for col in table.columns:
            values = frame[col.name].dropna()
            if col.in_batch_day:
                assert values.between(day, day + pd.Timedelta(days=1), "left").all()
            if not col.nullable:
                assert len(values) == len(frame), f"{name}.{col.name}"
            if col.min_value is not None:
                assert (values >= col.min_value).all(), f"{name}.{col.name}"
            if col.max_value is not None:
                assert (values <= col.max_value).all(), f"{name}.{col.name}"
            if col.allowed is not None:
                assert set(values) <= set(col.allowed), f"{name}.{col.name}"
    coupons = batch["coupons"]
    assert ((coupons["valid_from"] <= day) & (coupons["valid_to"] > day)).all()
    assert coupons["budget_share"].sum() == pytest.approx(1.0)
    known = set(coupons["coupon_id"])
    assert set(batch["offers"]["coupon_id"].dropna()) <= known
    assert set(batch["orders"]["coupon_id"].dropna()) <= known


def test_logged_propensities_match_the_logging_policy(tiny_params) -> None:
    """Over the randomised slice alone every arm has probability share/n_arms; the heuristic
    adds (1 - share) to one arm; the holdout slice adds its share to "no coupon". Logged
    values must be exactly one of those, and holdout decisions are tagged as such."""
    batch = World(tiny_params["world"]).simulate_day(DAY)
    share = tiny_params["world"]["random_share"]
    h = tiny_params["world"]["holdout_share"]
    n_arms = len(batch["coupons"]) + 1
    coupon = {(1 - h) * share / n_arms, (1 - h) * (share / n_arms + 1 - share)}
    offers = batch["offers"]
    control = offers["coupon_id"].isna()
    logged = np.round(offers["propensity"], 12)
    assert set(logged[~control]) <= set(np.round(list(coupon), 12))
    assert set(logged[control]) <= set(np.round([p + h for p in coupon], 12))
    holdout = offers["policy_version"].str.endswith(HOLDOUT_SUFFIX)
    assert holdout.any() and control[holdout].all()
    assert holdout.mean() == pytest.approx(h, abs=0.03)


def test_the_log_holds_enough_controls(tiny_params) -> None:
    """Controls come from the heuristic (users who did not browse) and from the randomised
    slice (then with the small propensity, even where the heuristic had a coupon)."""
    tiny_params["world"]["n_users"] = 3000
    batch = World(tiny_params["world"]).simulate_day(DAY)
    offers = batch["offers"]
    controls = offers["coupon_id"].isna()
    assert controls.mean() > 0.2
    h = tiny_params["world"]["holdout_share"]
    share = tiny_params["world"]["random_share"] * (1 - h)
    explored = np.isclose(offers["propensity"], share / (len(batch["coupons"]) + 1) + h)
    assert (controls & explored).any()
    assert (controls & ~explored).any()


def test_orders_redeem_the_coupon_offered_where_it_applies(tiny_params) -> None:
    world = World(tiny_params["world"])
    batch = world.simulate_day(DAY)
    coupons = batch["coupons"].set_index("coupon_id")
    redeemed = batch["orders"].dropna(subset=["coupon_id"])
    assert len(redeemed) > 0
    offered = batch["offers"].dropna(subset=["coupon_id"]).set_index("user_id")["coupon_id"]
    assert (redeemed["coupon_id"].to_numpy() == offered[redeemed["user_id"]].to_numpy()).all()
    c = coupons.loc[redeemed["coupon_id"]]
    scope = c["category"].to_numpy()
    assert ((scope == "all") | (scope == redeemed["category"].to_numpy())).all()
    assert (redeemed["amount"].to_numpy() >= c["min_spend"].to_numpy()).all()
    cost = coupon_cost(c["kind"].to_numpy(), c["value"].to_numpy(), redeemed["amount"].to_numpy())
    np.testing.assert_allclose(redeemed["discount"], cost, atol=0.006)
    unredeemed = batch["orders"]["coupon_id"].isna()
    assert (batch["orders"].loc[unredeemed, "discount"] == 0).all()


def test_all_four_uplift_segments_are_present(tiny_params) -> None:
    pop = World(tiny_params["world"]).population_on(DAY)
    shares = np.bincount(pop.segment, minlength=len(SEGMENTS)) / len(pop)
    assert (shares > 0.05).all(), dict(zip(SEGMENTS, shares, strict=True))


def test_coupons_come_and_go(tiny_params) -> None:
    world = World(tiny_params["world"])
    early = set(world.active_coupons("2026-01-02")["coupon_id"])
    late = set(world.active_coupons("2026-02-15")["coupon_id"])
    assert early - late, "some coupons expire"
    assert late - early, "new coupons launch"
    catalogue = world.catalogue("2026-02-15")
    assert set(catalogue["kind"]) == {
        "percent_off",
        "amount_off",
        "threshold_off",
        "free_shipping",
    }
    assert {"all"} < set(catalogue["category"])
    thresholds = catalogue[catalogue["kind"] == "threshold_off"]
    assert (thresholds["min_spend"] >= thresholds["value"]).all()


def test_weekends_sell_more(tiny_params) -> None:
    world = World(tiny_params["world"])
    users = np.arange(50)
    saturday = world.purchase_probability("2026-01-10", users, -1)
    tuesday = world.purchase_probability("2026-01-06", users, -1)
    assert (saturday > tuesday).all()


def test_fatigue_wears_coupon_response_down(tiny_params) -> None:
    world = World(tiny_params["world"])
    ctx = world.context(DAY)
    assert ctx.exposure.max() >= 2 and ctx.exposure.min() == 0
    pop = world.population_on(DAY)
    persuadable = np.flatnonzero(pop.segment == SEGMENTS.index("persuadable"))
    fresh = replace(ctx, exposure=np.zeros_like(ctx.exposure))
    tired = replace(ctx, exposure=np.full_like(ctx.exposure, 7.0))
    best = int(np.argmax(ctx.coupons["value"].where(ctx.coupons["kind"] == "percent_off", 0)))
    base = world.outcome(fresh, persuadable, -1).p_purchase
    gain_fresh = world.outcome(fresh, persuadable, best).p_purchase - base
    gain_tired = world.outcome(tired, persuadable, best).p_purchase - base
    assert (gain_fresh > gain_tired).all() and (gain_tired > 0).all()


def test_new_users_join_with_their_own_mix(tiny_params) -> None:
    cfg = tiny_params["world"]
    cfg["drift"] = {**cfg["drift"], "new_users_per_day": 0.05}
    cfg["drift"]["new_user_mix"] = {"persuadable": 1.0}
    world = World(cfg)
    batch = world.simulate_day("2026-01-03")
    n = cfg["n_users"]
    assert len(batch["users"]) == n + 3 * 20
    joined = batch["users"].iloc[n:]
    assert set(joined["signup_date"]) == set(pd.date_range("2026-01-01", "2026-01-03"))
    assert joined["user_id"].tolist() == list(range(n, n + 60))
    pop = world.population_on("2026-01-03")
    assert (pop.segment[n:] == SEGMENTS.index("persuadable")).all()
    assert batch["sessions"]["user_id"].max() < len(batch["users"])
    # the same users, the same traits, however the population was grown
    again = World(cfg).population_on("2026-01-02")
    np.testing.assert_array_equal(again.base_logit, pop.base_logit[: n + 40])


def test_a_price_shock_hits_the_price_sensitive(tiny_params) -> None:
    cfg = tiny_params["world"]
    cfg["drift"] = {**cfg["drift"], "price_shock_date": "2026-01-12", "price_shock": 0.2}
    world = World(cfg)
    pop = world.population_on("2026-01-12")
    users = np.arange(len(pop))
    before = world.outcome(world.context("2026-01-05"), users, -1)
    after = world.outcome(world.context("2026-01-12"), users, -1)  # the same weekday
    np.testing.assert_allclose(after.basket, 1.2 * before.basket)
    persuadable = pop.segment == SEGMENTS.index("persuadable")
    assert (after.p_purchase < before.p_purchase).all()
    odds_drop = np.log(before.p_purchase / (1 - before.p_purchase)) - np.log(
        after.p_purchase / (1 - after.p_purchase)
    )
    np.testing.assert_allclose(odds_drop, 0.2 * pop.sensitivity)
    assert odds_drop[persuadable].mean() > 5 * odds_drop[~persuadable].mean()


def test_sessions_follow_category_preference(tiny_params) -> None:
    world = World(tiny_params["world"])
    pop = world.population_on(DAY)
    sessions = pd.concat(
        world.simulate_day(d)["sessions"] for d in pd.date_range("2026-01-01", periods=5)
    )
    top = pop.preference.argmax(axis=1)[sessions["user_id"].to_numpy()]
    seen = sessions["category"].map({c: i for i, c in enumerate(CATEGORIES)}).to_numpy()
    assert (seen == top).mean() > 0.4  # 1/6 if sessions ignored preferences


# -- bit-for-bit determinism -----------------------------------------------------------------
# A frozen copy of params.yaml's `world:` section (so a tuning of the defaults does not move
# the golden hashes), with a small population; DRIFTED also grows the population, moves
# prices and launches more promotions, so every stream and cache of the world is exercised.
GOLDEN_WORLD = {
    "seed": 3,
    "start_date": "2026-01-01",
    "history_days": 21,
    "n_users": 2000,
    "n_coupons": 12,
    "sessions_per_user": 0.8,
    "offers_per_user": 0.5,
    "random_share": 0.3,
    "holdout_share": 0.05,
    "margin": 0.3,
    "fatigue_window_days": 7,
    "segment_mix": {
        "sure_thing": 0.25,
        "persuadable": 0.35,
        "lost_cause": 0.3,
        "sleeping_dog": 0.1,
    },
    "drift": {
        "new_coupons_per_week": 2,
        "new_users_per_day": 0.0,
        "new_user_mix": {
            "sure_thing": 0.15,
            "persuadable": 0.5,
            "lost_cause": 0.25,
            "sleeping_dog": 0.1,
        },
        "price_shock_date": None,
        "price_shock": 0.15,
    },
    "policy_version": "logging-v1",
}
DRIFTED = {
    "new_coupons_per_week": 5,
    "new_users_per_day": 0.01,
    "price_shock_date": "2026-01-04",
    "price_shock": 0.15,
}
# By variant and by whether NumPy runs its AVX-512 kernels (`_numpy_avx512`): the same
# code and seed hash differently on the Intel Xeon with AVX-512 where the first pair was
# recorded and on an AMD EPYC without it (2026-12-06), where the second was.
GOLDEN = {
    ("default", True): "9d84ca4260c3281dd517cd6b2730d408c483026ba05c8d5bc95bc7881a621208",
    ("drifted", True): "6cbff86bb36d509a4ebd4e7392363df41afbf9fdbaf2e942bafd9379cf9b7c71",
    ("default", False): "3e7ae7ba7d3022eb895fe1b9624978319fe4edd55e8b3244f12532c7d4d2f0f8",
    ("drifted", False): "aa6720c9ceee27a097860c6fc148cbdf01000a6fea16baa9e95ce74f57142520",
}


def _numpy_avx512() -> bool:
    """Whether NumPy dispatches its AVX-512 (x86-64-v4) loops on this CPU: those compute
    some float results with other last bits than the loops it runs elsewhere."""
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("X86_V4"))


def _digest(world: World, days: pd.DatetimeIndex, truth_day: str) -> str:
    """One hash over every table of every day (values, column names, dtypes), the hidden
    traits, and the oracle's truth for one day: any change of a single bit changes it."""
    from couponflow.oracle import Oracle

    h = hashlib.sha256()
    for day in days:
        for name, frame in world.simulate_day(day).items():
            h.update(f"{day.date()}/{name}/{list(frame.columns)}/{list(frame.dtypes)}".encode())
            h.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    pop = world.population_on(days[-1])
    for f in fields(pop):
        if f.name != "users":
            h.update(np.ascontiguousarray(getattr(pop, f.name)).tobytes())
    truth = Oracle(world).truth(truth_day)
    h.update(repr(truth.coupon_ids).encode())
    for a in (truth.users, truth.p_purchase, truth.spend, truth.cost, truth.profit):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("variant", ["default", "drifted"])
def test_the_world_is_bit_for_bit_what_it_was(variant: str) -> None:
    """Five days and a day's truth hash to the values recorded before the world was split
    into parts: a refactor may move code, never a draw. (A numpy/pandas upgrade may change
    float bits or hashing; then re-record GOLDEN on the old code first, on both kinds of
    CPU.)"""
    cfg = copy.deepcopy(GOLDEN_WORLD)
    if variant == "drifted":
        cfg["drift"].update(DRIFTED)
    days = pd.date_range("2026-01-01", periods=5)
    assert _digest(World(cfg), days, "2026-01-04") == GOLDEN[variant, _numpy_avx512()]


# -- the package's shape ----------------------------------------------------------------------
WORLD_DIR = Path(couponflow.world.__file__).parent


def test_the_world_imports_only_the_core() -> None:
    """The parts may import each other and couponflow.contract, never a tool room (training,
    serving, expectations, dags) nor the rest of the core: the oracle and the pipeline build on
    the world, not the other way round."""
    allowed = {"couponflow.contract", "numpy", "pandas", "pyarrow", "pyarrow.compute"}
    for path in WORLD_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                ok = (
                    name in allowed
                    or name.startswith("couponflow.world")
                    or name.split(".")[0] in sys.stdlib_module_names
                )
                assert ok, f"{path.name} imports {name}"


def test_evaluation_depends_on_every_part_of_the_world() -> None:
    """dvc.yaml lists the world's files one by one, so a new part must be listed too, or
    `dvc repro` would not re-run evaluation when it changes."""
    deps = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]["deps"]
    listed = {d.removeprefix("${code_dir}/") for d in deps}
    parts = {f"couponflow/world/{p.name}" for p in WORLD_DIR.glob("*.py")}
    assert parts <= listed, sorted(parts - listed)
