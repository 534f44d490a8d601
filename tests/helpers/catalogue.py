"""A three-coupon catalogue with known validity windows, for the policy and budget tests."""

from __future__ import annotations

import pandas as pd

from couponflow.features import COUPON_FEATURES


def catalogue() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "coupon_id": ["A", "B", "C"],
            "kind": ["percent_off", "amount_off", "free_shipping"],
            "value": [10.0, 5.0, 6.0],
            "min_spend": [0.0, 0.0, 0.0],
            "category": ["all", "fashion", "all"],
            "valid_from": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-02-01"]),
            "valid_to": pd.to_datetime(["2026-03-01", "2026-01-03", "2026-03-01"]),
            "budget_share": [0.3, 0.3, 0.4],
            **dict.fromkeys(COUPON_FEATURES, [0.0, 0.0, 0.0]),
        }
    ).astype({"coupon_id": "string", "kind": "string", "category": "string"})
