"""Feature computations: windows, coupon response, coupon stats, the point-in-time cut,
defaults and the on-demand relative value. Computed from a real offline store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from couponflow.config import Workspace
from couponflow.contract import TABLES
from couponflow.features import (
    COUPON_FEATURES,
    MAX_RECENCY_DAYS,
    MIN_BASKET,
    USER_FEATURES,
    compute_coupon_stats,
    compute_user_features,
    relative_value,
)
from couponflow.landing import load_offline
from couponflow.model import ARM_FEATURES, encode_arms
from couponflow.policy import with_control

COUPONS = pd.DataFrame(
    {
        "coupon_id": ["P10", "A5"],
        "kind": ["percent_off", "amount_off"],
        "value": [10.0, 5.0],
        "min_spend": [0.0, 0.0],
        "category": ["all", "home"],
        "valid_from": pd.to_datetime(["2025-12-01", "2025-12-01"]),
        "valid_to": pd.to_datetime(["2026-06-01", "2026-06-01"]),
        "budget_share": [0.5, 0.5],
    }
)


def batch(
    day: str,
    orders: list[tuple[int, str, float, str | None]],
    offers: Sequence[tuple[int, str, str | None]] = (),
) -> dict[str, pd.DataFrame]:
    """A minimal batch: two users, two coupons, the given orders (user, time, amount,
    coupon redeemed) and offers (user, time, coupon)."""
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
    frames["coupons"] = TABLES["coupons"].conform(COUPONS)
    frames["orders"] = TABLES["orders"].conform(
        pd.DataFrame(
            {
                "order_id": [f"{day}-{i}" for i in range(len(orders))],
                "user_id": [o[0] for o in orders],
                "ts": pd.to_datetime([o[1] for o in orders]),
                "amount": [o[2] for o in orders],
                "category": ["home"] * len(orders),
                "coupon_id": [o[3] for o in orders],
                "discount": [0.0] * len(orders),
            }
        )
    )
    frames["offers"] = TABLES["offers"].conform(
        pd.DataFrame(
            {
                "offer_id": [f"{day}-o{i}" for i in range(len(offers))],
                "user_id": [o[0] for o in offers],
                "coupon_id": [o[2] for o in offers],
                "ts": pd.to_datetime([o[1] for o in offers]),
                "policy_version": ["test"] * len(offers),
                "propensity": [0.5] * len(offers),
                "slice": ["explore"] * len(offers),
            }
        )
    )
    return frames


@pytest.fixture
def features_workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path)
    load_offline(
        ws,
        "2026-01-01",
        batch("2026-01-01", [(1, "2026-01-01 10:00", 40.0, None)], [(1, "2026-01-01 01:00", "A5")]),
    )
    load_offline(
        ws,
        "2026-01-09",
        batch(
            "2026-01-09",
            [(1, "2026-01-09 12:00", 60.0, "P10")],
            [(1, "2026-01-09 02:00", "P10"), (2, "2026-01-09 03:00", None)],
        ),
    )
    load_offline(ws, "2026-01-10", batch("2026-01-10", [(2, "2026-01-10 23:00", 10.0, "A5")]))
    return ws


def test_windows_count_what_they_cover(features_workspace) -> None:
    f = compute_user_features(features_workspace, "2026-01-09").set_index("user_id")
    assert f.loc[1, "orders_1d"] == 1 and f.loc[1, "spend_1d"] == pytest.approx(60.0)
    assert f.loc[1, "orders_7d"] == 1  # 2026-01-01 is outside the 7-day window
    assert f.loc[1, "orders_30d"] == 2
    assert f.loc[1, "spend_30d"] == pytest.approx(100.0)
    assert f.loc[1, "avg_basket_30d"] == pytest.approx(50.0)
    assert f.loc[1, "days_since_last_order"] == pytest.approx(0.5)
    assert f.loc[1, "tenure_days"] == 40


def test_offers_and_redemptions_per_window(features_workspace) -> None:
    f = compute_user_features(features_workspace, "2026-01-09").set_index("user_id")
    assert (f.loc[1, "offers_1d"], f.loc[1, "redemptions_1d"]) == (1, 1)
    assert (f.loc[1, "offers_30d"], f.loc[1, "redemptions_30d"]) == (2, 1)
    assert f.loc[1, "redemption_rate_30d"] == pytest.approx(0.5)
    assert f.loc[2, "offers_1d"] == 0  # a "no coupon" control is not an offer received


def test_response_to_each_coupon_kind(features_workspace) -> None:
    f = compute_user_features(features_workspace, "2026-01-09").set_index("user_id")
    assert f.loc[1, "offers_percent_off_30d"] == 1
    assert f.loc[1, "redemption_rate_percent_off_30d"] == pytest.approx(1.0)
    assert f.loc[1, "offers_amount_off_30d"] == 1
    assert f.loc[1, "redemption_rate_amount_off_30d"] == 0.0
    assert f.loc[1, "offers_free_shipping_30d"] == 0


def test_coupon_stats(features_workspace) -> None:
    s = compute_coupon_stats(features_workspace, "2026-01-09").set_index("coupon_id")
    assert list(s.loc["P10", COUPON_FEATURES]) == pytest.approx([1.0, 1.0, 1.0, 60.0])
    assert list(s.loc["A5", COUPON_FEATURES]) == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert (s["event_timestamp"] == pd.Timestamp("2026-01-10")).all()


def test_features_never_see_the_future(features_workspace) -> None:
    f = compute_user_features(features_workspace, "2026-01-09").set_index("user_id")
    assert f.loc[2, "orders_30d"] == 0  # user 2's order is on 2026-01-10
    assert f.loc[2, "days_since_last_order"] == MAX_RECENCY_DAYS
    early = compute_coupon_stats(features_workspace, "2026-01-01").set_index("coupon_id")
    assert early.loc["P10", "coupon_offers_30d"] == 0  # offered on 2026-01-09
    assert (
        compute_coupon_stats(features_workspace, "2026-01-09")
        .set_index("coupon_id")
        .loc["A5", "coupon_redemptions_30d"]
        == 0
    )  # redeemed on 2026-01-10


def test_rows_are_stamped_at_the_end_of_the_day(features_workspace) -> None:
    f = compute_user_features(features_workspace, "2026-01-09")
    assert (f["event_timestamp"] == pd.Timestamp("2026-01-10")).all()
    assert list(f.columns) == ["user_id", *USER_FEATURES, "event_timestamp"]


def test_relative_value_by_kind_floor_cap_and_control() -> None:
    kind = pd.array(["percent_off", "amount_off", "amount_off", "threshold_off", None, None])
    value = [15.0, 5.0, 500.0, 10.0, np.nan, None]
    basket = [80.0, 50.0, 50.0, 5.0, 50.0, 50.0]
    np.testing.assert_allclose(
        relative_value(kind, value, basket), [0.15, 0.1, 1.0, 10.0 / MIN_BASKET, 0.0, 0.0]
    )


def test_the_model_encodes_relative_value_with_the_same_function() -> None:
    users = np.zeros((3, len(USER_FEATURES)), dtype=np.float32)
    users[:, USER_FEATURES.index("avg_basket_30d")] = [80.0, 30.0, 30.0]
    arms = with_control(COUPONS)
    encoded = encode_arms(users, arms)[:, ARM_FEATURES.index("relative_value")]
    expected = relative_value(arms["kind"], arms["value"], [80.0, 30.0, 30.0])
    np.testing.assert_array_equal(encoded, expected.astype(np.float32))
    np.testing.assert_allclose(encoded, [0.0, 0.1, 5.0 / 30.0], rtol=1e-6)
