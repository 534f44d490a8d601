"""A simulated log for the benchmarks that judge learners and the gate over many seeds:
the world's days in a workspace's offline layout and the training table built from them
with the project's own feature code, without Airflow, GX or Feast.

The features are `couponflow.features`' computations as of the end of each day, joined to
the next day's offers exactly as Feast's point-in-time join does (rows stamped at the end
of day D serve the offers of D + 1), so a table from here has the columns and values of
`training.dataset.build` (tests/test_feature_store.py checks that against the real stage).
The real pipeline stays the judge in `bench_policy.py`; this is how a benchmark affords
forty seeded worlds on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from couponflow.config import PROJECT_ROOT, Workspace, load_params
from couponflow.features import compute_coupon_stats, compute_user_features, relative_value
from couponflow.landing import load_offline, read_offline
from couponflow.world import World
from training.dataset import label_offers


@dataclass(frozen=True)
class SimulatedLog:
    """A workspace whose offline store holds the simulated `days`, and its world."""

    ws: Workspace
    world: World
    days: list[str]


def simulate(root: Path, overrides: dict[str, object], n_days: int) -> SimulatedLog:
    """The first `n_days` days of the default world with `overrides` (dotted keys, e.g.
    "world.seed") written to `root`'s offline store."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = params
        for key in path:
            node = node[key]
        node[last] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ws = Workspace(root)
    world = World(params["world"])
    start = pd.Timestamp(params["world"]["start_date"])
    days = [str((start + pd.Timedelta(days=i)).date()) for i in range(n_days)]
    for day in days:
        load_offline(ws, day, world.simulate_day(day))
    return SimulatedLog(ws, world, days)


def features_before(log: SimulatedLog, day: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """User features and coupon stats as `day` begins (computed at the end of the day
    before), indexed by user_id and coupon_id."""
    before = str((pd.Timestamp(day) - pd.Timedelta(days=1)).date())
    users = compute_user_features(log.ws, before).drop(columns="event_timestamp")
    coupons = compute_coupon_stats(log.ws, before).drop(columns="event_timestamp")
    return users.set_index("user_id"), coupons.set_index("coupon_id")


def training_table(log: SimulatedLog, days: list[str] | None = None) -> pd.DataFrame:
    """Labelled offers of `days` (default: every day but the first) with the offered
    coupon's columns, the user's features and the coupon's stats as the day began, and
    `relative_value`: the columns `training.dataset.build` writes."""
    margin = float(log.ws.params["world"]["margin"])
    parts = []
    for day in days or log.days[1:]:
        offers = read_offline(log.ws, "offers", [day])
        orders = read_offline(log.ws, "orders", [day])
        labelled = label_offers(offers, orders, margin)
        coupons = read_offline(log.ws, "coupons", [day])
        labelled = labelled.merge(coupons, on="coupon_id", how="left")
        users, stats = features_before(log, day)
        user_rows = users.reindex(labelled["user_id"].to_numpy()).reset_index(drop=True)
        stat_rows = stats.reindex(labelled["coupon_id"].astype(object).to_numpy())
        part = pd.concat(
            [labelled.reset_index(drop=True), user_rows, stat_rows.reset_index(drop=True)],
            axis=1,
        )
        part["relative_value"] = relative_value(part["kind"], part["value"], part["avg_basket_30d"])
        parts.append(part.dropna(subset=["sessions_7d"]))
    return pd.concat(parts, ignore_index=True)


def population(log: SimulatedLog, day: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Everyone known on `day`: their ids, features as the day began (cold-start vector for
    a user without a row) and the day's open coupons with their stats (the evaluation's
    `arms` frame, "no coupon" first)."""
    from couponflow.features import USER_FEATURES, default_user_features
    from couponflow.policy import eligible, with_control

    users, stats = features_before(log, day)
    ids = read_offline(log.ws, "users", [day])["user_id"].to_numpy()
    x = users.reindex(ids)[USER_FEATURES].to_numpy(np.float32)
    x[np.isnan(x).any(axis=1)] = default_user_features()
    coupons = read_offline(log.ws, "coupons", [day])
    coupons = coupons.merge(stats, left_on="coupon_id", right_index=True, how="left")
    arms = with_control(eligible(coupons, pd.Timestamp(day)))
    return ids, x, arms
