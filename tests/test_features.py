"""User features: windows, point-in-time cut, defaults. Computed from a real offline store."""

from __future__ import annotations

import pandas as pd
import pytest

from couponflow.config import Workspace
from couponflow.contract import TABLES
from couponflow.features import MAX_RECENCY_DAYS, USER_FEATURES, compute_user_features
from couponflow.landing import load_offline


def batch(day: str, orders: list[tuple[int, str, float]]) -> dict[str, pd.DataFrame]:
    """A minimal batch: two users, no coupons, the given orders (user, time, amount)."""
    frames = {name: table.empty() for name, table in TABLES.items()}
    frames["users"] = TABLES["users"].conform(
        pd.DataFrame(
            {
                "user_id": [1, 2],
                "signup_date": pd.to_datetime(["2025-12-01", "2025-12-20"]),
                "region": ["north", "south"],
                "age_band": ["25-34", "55+"],
                "device": ["mobile", "desktop"],
            }
        )
    )
    frames["orders"] = TABLES["orders"].conform(
        pd.DataFrame(
            {
                "order_id": [f"{day}-{i}" for i in range(len(orders))],
                "user_id": [o[0] for o in orders],
                "ts": pd.to_datetime([o[1] for o in orders]),
                "amount": [o[2] for o in orders],
                "category": ["home"] * len(orders),
                "coupon_id": [None] * len(orders),
                "discount": [0.0] * len(orders),
            }
        )
    )
    return frames


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path)
    load_offline(ws, "2026-01-01", batch("2026-01-01", [(1, "2026-01-01 10:00", 40.0)]))
    load_offline(ws, "2026-01-09", batch("2026-01-09", [(1, "2026-01-09 12:00", 60.0)]))
    load_offline(ws, "2026-01-10", batch("2026-01-10", [(2, "2026-01-10 23:00", 10.0)]))
    return ws


def test_windows_count_what_they_cover(workspace) -> None:
    f = compute_user_features(workspace, "2026-01-09").set_index("user_id")
    assert f.loc[1, "orders_7d"] == 1  # 2026-01-01 is outside the 7-day window
    assert f.loc[1, "orders_30d"] == 2
    assert f.loc[1, "spend_30d"] == pytest.approx(100.0)
    assert f.loc[1, "avg_basket_30d"] == pytest.approx(50.0)
    assert f.loc[1, "days_since_last_order"] == pytest.approx(0.5)


def test_features_never_see_the_future(workspace) -> None:
    f = compute_user_features(workspace, "2026-01-09").set_index("user_id")
    assert f.loc[2, "orders_30d"] == 0  # user 2's order is on 2026-01-10
    assert f.loc[2, "days_since_last_order"] == MAX_RECENCY_DAYS


def test_rows_are_stamped_at_the_end_of_the_day(workspace) -> None:
    f = compute_user_features(workspace, "2026-01-09")
    assert (f["event_timestamp"] == pd.Timestamp("2026-01-10")).all()
    assert list(f.columns) == ["user_id", *USER_FEATURES, "event_timestamp"]
