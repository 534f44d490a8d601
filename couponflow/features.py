"""The feature definitions: one computation of each user feature, shared by the Feast
feature views (training and serving read the same materialised values) and the tests.

A user's row for day D summarises events up to the end of D and carries
`event_timestamp = D + 1 day`, so an offer made on D+1 sees exactly that row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from couponflow.config import Workspace
from couponflow.contract import CATEGORIES
from couponflow.landing import read_offline

WINDOWS = (7, 30)
USER_FEATURES: list[str] = [
    *[f"sessions_{w}d" for w in WINDOWS],
    *[f"orders_{w}d" for w in WINDOWS],
    *[f"spend_{w}d" for w in WINDOWS],
    "offers_30d",
    "redemptions_30d",
    "redemption_rate_30d",
    "avg_basket_30d",
    "days_since_last_order",
    "tenure_days",
    *[f"affinity_{c}" for c in CATEGORIES],
]
MAX_RECENCY_DAYS = 60.0


def compute_user_features(ws: Workspace, day: str) -> pd.DataFrame:
    """Every known user's features as of the end of `day` (from the offline store)."""
    end = pd.Timestamp(day) + pd.Timedelta(days=1)
    days = [(end - pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(1, max(WINDOWS) + 1)]
    users = read_offline(ws, "users", [day])
    sessions = read_offline(ws, "sessions", days)
    orders = read_offline(ws, "orders", days)
    offers = read_offline(ws, "offers", days)

    out = pd.DataFrame({"user_id": users["user_id"].to_numpy()}).set_index("user_id")
    for w in WINDOWS:
        since = end - pd.Timedelta(days=w)
        s = sessions[sessions["ts"] >= since]
        o = orders[orders["ts"] >= since]
        out[f"sessions_{w}d"] = s.groupby("user_id").size()
        out[f"orders_{w}d"] = o.groupby("user_id").size()
        out[f"spend_{w}d"] = o.groupby("user_id")["amount"].sum()
    out["offers_30d"] = offers[offers["coupon_id"].notna()].groupby("user_id").size()
    out["redemptions_30d"] = orders[orders["coupon_id"].notna()].groupby("user_id").size()
    out = out.fillna(0.0)
    out["redemption_rate_30d"] = out["redemptions_30d"] / out["offers_30d"].clip(lower=1)
    out["avg_basket_30d"] = out["spend_30d"] / out["orders_30d"].clip(lower=1)
    last = orders.groupby("user_id")["ts"].max()
    recency = (end - last).dt.total_seconds() / 86_400
    out["days_since_last_order"] = (
        recency.reindex(out.index).fillna(MAX_RECENCY_DAYS).clip(upper=MAX_RECENCY_DAYS)
    )
    signup = users.set_index("user_id")["signup_date"]
    out["tenure_days"] = ((end - signup).dt.days.reindex(out.index)).astype(float)
    by_cat = sessions.groupby(["user_id", "category"]).size().unstack(fill_value=0)
    by_cat = by_cat.reindex(columns=list(CATEGORIES), fill_value=0).reindex(out.index, fill_value=0)
    share = by_cat.div(by_cat.sum(axis=1).clip(lower=1), axis=0)
    for c in CATEGORIES:
        out[f"affinity_{c}"] = share[c]
    out = out[USER_FEATURES].astype("float32").reset_index()
    out["event_timestamp"] = end
    return out


def default_user_features() -> np.ndarray:
    """The feature vector of a user nobody has seen: no activity, maximal recency."""
    values = dict.fromkeys(USER_FEATURES, 0.0)
    values["days_since_last_order"] = MAX_RECENCY_DAYS
    values.update({f"affinity_{c}": 1.0 / len(CATEGORIES) for c in CATEGORIES})
    return np.array([values[f] for f in USER_FEATURES], dtype=np.float32)
