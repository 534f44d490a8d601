"""What the engine tests share (tests/test_ray_engine.py, tests/test_spark_engine.py): a
workspace set to an engine, its days materialised, the entity rows a join is asked for, and
what the online store then reads back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from couponflow.config import HOME_ENV, Workspace, load_params, set_param
from couponflow.features import day_end
from couponflow.landing import read_offline
from feature_repo.store import (
    COUPON_REFS,
    USER_REFS,
    apply_definitions,
    materialise_day,
    open_store,
)
from tests.helpers.workspaces import N_USERS

DAYS = 3


def with_engine(root: Path, engine: str) -> Workspace:
    params = load_params(root / "params.yaml")
    set_param(params, "features.engine", engine)
    set_param(params, "features.ray_cpus", 2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Workspace(root)


def materialised(ws: Workspace, days: list[str]) -> None:
    os.environ[HOME_ENV] = str(ws.root)
    store = open_store(ws)
    apply_definitions(store)
    for day in days:
        assert materialise_day(store, day) == ["user_activity", "coupon_stats"]


def entity_rows(ws: Workspace, days: list[str]) -> pd.DataFrame:
    """Rows as the dataset stage builds them (each day's logged offers at their times, a
    null coupon for "no coupon"), and rows at the edges of the views' ttl (7 days): at the
    moment the last day's rows are exactly 7 days old (still seen) and half an hour later
    (gone: no row), where a join that ignored the ttl would find the last day's values."""
    offers = read_offline(ws, "offers", days).rename(columns={"ts": "event_timestamp"})
    coupons = read_offline(ws, "coupons", [days[-1]])
    offers = offers.merge(coupons[["coupon_id", "kind", "value"]], on="coupon_id", how="left")
    edge = day_end(days[-1]) + pd.Timedelta(days=7)
    late = pd.DataFrame({"user_id": np.arange(0, N_USERS, 11)})
    late = late.assign(coupon_id=coupons["coupon_id"].iloc[0], kind="percent", value=10.0)
    rows = [offers, late.assign(event_timestamp=edge)]
    rows.append(late.assign(event_timestamp=edge + pd.Timedelta(minutes=30)))
    rows.append(late.assign(event_timestamp=day_end(days[1])))  # a midnight: a new day's rows
    frame = pd.concat(rows, ignore_index=True)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"]).dt.tz_localize("UTC")
    return frame[["user_id", "coupon_id", "event_timestamp", "kind", "value"]]


def online_values(ws: Workspace, days: list[str]) -> dict[str, list]:
    os.environ[HOME_ENV] = str(ws.root)
    store = open_store(ws)
    users = [{"user_id": u} for u in range(N_USERS + 5)]  # and a few nobody has seen
    coupons = read_offline(ws, "coupons", days)["coupon_id"].drop_duplicates()
    values = store.get_online_features(features=USER_REFS, entity_rows=users).to_dict()
    rows = [{"coupon_id": str(c)} for c in coupons]
    return values | store.get_online_features(features=COUPON_REFS, entity_rows=rows).to_dict()
