"""The feature definitions: one computation of each feature, shared by the Feast feature
views (training and serving read the same materialised values), the model and the tests.

Two row kinds, both computed from the offline store as of the end of a day D and stamped
`event_timestamp = D + 1 day`, so an offer made on D+1 sees exactly those rows and never
an event of its own day: a user's activity (`USER_FEATURES`) and a coupon's track record
(`COUPON_FEATURES`). `relative_value` is the one request-time feature: it needs the
coupon being scored, so Feast's on-demand view and the model's encoding both call it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from couponflow.config import Workspace
from couponflow.contract import AGE_BANDS, CATEGORIES, COUPON_KINDS
from couponflow.landing import read_offline

WINDOWS = (1, 7, 30)
HISTORY_DAYS = max(WINDOWS)
ACTIVITY = ("sessions", "orders", "spend", "offers", "redemptions", "redemption_rate")
RESPONSE_FEATURES: list[str] = [
    "observed_days_30d",  # days of the 30 the store holds for this user (young users: fewer)
    "coupon_days_30d",
    "order_rate_coupon_days_30d",
    "order_rate_other_days_30d",
    "days_since_last_coupon",
    "spend_redeemed_30d",
]
USER_FEATURES: list[str] = [
    *[f"{measure}_{w}d" for w in WINDOWS for measure in ACTIVITY],
    "avg_basket_30d",
    "days_since_last_order",
    "tenure_days",
    *[f"affinity_{c}" for c in CATEGORIES],
    *[f"{measure}_{k}_30d" for k in COUPON_KINDS for measure in ("offers", "redemption_rate")],
    # How this shopper responds to coupons: how often they bought on days they were sent
    # one against days they were not (a shopper who buys less when sent a coupon shows
    # it here first), how recently they got one (fatigue), what they spent redeeming.
    *RESPONSE_FEATURES,
    # Who they are: what the users table says (age and device tilt who responds).
    "age_band_index",
    "device_mobile",
    "device_tablet",
]
COUPON_FEATURES: list[str] = [
    "coupon_offers_30d",
    "coupon_redemptions_30d",
    "coupon_redemption_rate_30d",
    "coupon_spend_per_redemption_30d",
]
MAX_RECENCY_DAYS = 60.0
# Counts over a window that a young store or a new user cannot fill yet: the model reads
# them as "per full window" (couponflow.model scales by the window over the days observed),
# so a user's activity means the same on the 7th day of history as on the 70th.
WINDOWED_COUNTS: dict[str, int] = {
    **{
        f"{m}_{w}d": w
        for w in WINDOWS
        for m in ("sessions", "orders", "spend", "offers", "redemptions")
    },
    **{f"offers_{k}_30d": 30 for k in COUPON_KINDS},
    "coupon_days_30d": 30,
    "spend_redeemed_30d": 30,
}
# What an outcome reported online (`fresh_counters`) cannot update, left to the day's
# materialisation: features of calendar days (was a coupon already offered on the day the
# order fell on? how many days of the window has the store seen?), which a feature row
# does not hold, and spend on redeemed orders (an order's amount and its redemption arrive
# as two events, either first). A pushed row keeps the batch's values of these until the
# next materialisation replaces it; tests/test_feature_agreement.py holds both paths to it.
BATCH_ONLY_FEATURES: tuple[str, ...] = (
    "observed_days_30d",
    "coupon_days_30d",
    "order_rate_coupon_days_30d",
    "order_rate_other_days_30d",
    "spend_redeemed_30d",
)
MIN_BASKET = 20.0  # a basket below this would make a small coupon look like a huge one
_KINDS = frozenset(COUPON_KINDS)


def relative_value(kind: Any, value: Any, basket: Any) -> np.ndarray:
    """A coupon's discount as a share of the user's usual basket (a percent coupon's rate
    is already one), capped at 1; 0 for "no coupon" (a missing kind). Vectorised.

    Feast's on-demand view `offer_value` and the model's arm encoding both call this, so
    the value trained on is the value served.
    """
    kind, value, basket = _text(kind), _numbers(value), _numbers(basket)
    basket = np.maximum(basket, MIN_BASKET)
    rel = np.where(kind == "percent_off", value / 100.0, value / basket)
    known = np.fromiter(map(_KINDS.__contains__, kind), bool, len(kind))  # np.isin: 2x slower
    return np.where(known, np.minimum(rel, 1.0), 0.0)


def _text(values: Any) -> np.ndarray:
    """Strings as an object array, "" for missing; a numpy object array (what scoring
    passes, per request) is taken as it is: pandas would cost more than the maths."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    return pd.Series(values, copy=False).astype("string").fillna("").to_numpy(dtype=object)


def _numbers(values: Any) -> np.ndarray:
    """Floats, 0 for missing; numpy input skips pandas (see `_text`)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        numbers = values.astype("float64", copy=False)
        return np.where(np.isnan(numbers), 0.0, numbers)
    return pd.Series(values, copy=False).astype("float64").fillna(0.0).to_numpy()


def day_end(day: str) -> pd.Timestamp:
    """The moment a day's feature rows become visible: midnight after it (naive UTC)."""
    return pd.Timestamp(day) + pd.Timedelta(days=1)


def _history(day: str) -> list[str]:
    """The dates the longest window covers, ending with `day`."""
    end = day_end(day)
    return [(end - pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(1, HISTORY_DAYS + 1)]


def _coupon_kinds(ws: Workspace, days: list[str]) -> pd.Series:
    """coupon_id -> kind over the catalogue snapshots of `days` (expired coupons too)."""
    coupons = read_offline(ws, "coupons", days).drop_duplicates("coupon_id", keep="last")
    return coupons.set_index("coupon_id")["kind"]


def _count(frame: pd.DataFrame, by: str | list[str]) -> pd.Series:
    return frame.groupby(by, observed=True).size()


def compute_user_features(ws: Workspace, day: str) -> pd.DataFrame:
    """Every known user's features as of the end of `day` (from the offline store)."""
    end, days = day_end(day), _history(day)
    users = read_offline(ws, "users", [day])
    sessions = read_offline(ws, "sessions", days)
    orders = read_offline(ws, "orders", days)
    offers = read_offline(ws, "offers", days)
    kinds = _coupon_kinds(ws, days)
    offers = offers[offers["coupon_id"].notna()].assign(kind=lambda f: f["coupon_id"].map(kinds))
    redeemed = orders[orders["coupon_id"].notna()].assign(kind=lambda f: f["coupon_id"].map(kinds))

    out = pd.DataFrame(index=pd.Index(users["user_id"].to_numpy(), name="user_id"))
    for w in WINDOWS:
        since = end - pd.Timedelta(days=w)
        o = orders[orders["ts"] >= since]
        out[f"sessions_{w}d"] = _count(sessions[sessions["ts"] >= since], "user_id")
        out[f"orders_{w}d"] = _count(o, "user_id")
        out[f"spend_{w}d"] = o.groupby("user_id")["amount"].sum()
        out[f"offers_{w}d"] = _count(offers[offers["ts"] >= since], "user_id")
        out[f"redemptions_{w}d"] = _count(redeemed[redeemed["ts"] >= since], "user_id")
    out = out.fillna(0.0)
    for w in WINDOWS:
        out[f"redemption_rate_{w}d"] = out[f"redemptions_{w}d"] / out[f"offers_{w}d"].clip(lower=1)
    out["avg_basket_30d"] = out["spend_30d"] / out["orders_30d"].clip(lower=1)
    recency = (end - orders.groupby("user_id")["ts"].max()).dt.total_seconds() / 86_400
    out["days_since_last_order"] = (
        recency.reindex(out.index).fillna(MAX_RECENCY_DAYS).clip(upper=MAX_RECENCY_DAYS)
    )
    signup = users.set_index("user_id")["signup_date"]
    out["tenure_days"] = ((end - signup).dt.days.reindex(out.index)).astype(float)
    share = _per_label(_count(sessions, ["user_id", "category"]), CATEGORIES, out.index)
    for c in CATEGORIES:
        out[f"affinity_{c}"] = share[c]
    offered = _per_label(_count(offers, ["user_id", "kind"]), COUPON_KINDS, out.index, norm=False)
    used = _per_label(_count(redeemed, ["user_id", "kind"]), COUPON_KINDS, out.index, norm=False)
    for k in COUPON_KINDS:
        out[f"offers_{k}_30d"] = offered[k]
        out[f"redemption_rate_{k}_30d"] = used[k] / offered[k].clip(lower=1)
    held = sessions["ts"].dt.normalize().drop_duplicates()  # the dates the store holds
    out = out.join(_response(end, held, users, offers, orders, redeemed))
    out["age_band_index"] = users.set_index("user_id")["age_band"].map(
        {band: float(i) for i, band in enumerate(AGE_BANDS)}
    )
    device = users.set_index("user_id")["device"]
    out["device_mobile"] = (device == "mobile").astype(float)
    out["device_tablet"] = (device == "tablet").astype(float)
    out = out[USER_FEATURES].astype("float32").reset_index()
    out["event_timestamp"] = end
    return out


def _response(
    end: pd.Timestamp,
    held: pd.Series,
    users: pd.DataFrame,
    offers: pd.DataFrame,
    orders: pd.DataFrame,
    redeemed: pd.DataFrame,
) -> pd.DataFrame:
    """RESPONSE_FEATURES per user over the window: orders per day on days a coupon was
    offered and on the other days the user was signed up (of the `held` dates),
    days since the last coupon, and spend on orders that redeemed one. `offers` holds
    coupon offers only."""
    index = pd.Index(users["user_id"].to_numpy(), name="user_id")
    offer_day = offers.assign(day=offers["ts"].dt.normalize())[["user_id", "day"]]
    offer_day = offer_day.drop_duplicates()
    order_day = orders.assign(day=orders["ts"].dt.normalize())[["user_id", "day"]]
    marked = order_day.merge(offer_day.assign(coupon=1), on=["user_id", "day"], how="left")
    on_coupon_day = marked["coupon"].notna().to_numpy()
    coupon_days = _count(offer_day, "user_id").reindex(index, fill_value=0).astype(float)
    coupon_orders = _count(order_day[on_coupon_day], "user_id").reindex(index, fill_value=0)
    other_orders = _count(order_day[~on_coupon_day], "user_id").reindex(index, fill_value=0)
    first = held.min() if len(held) else end
    signup = users.set_index("user_id")["signup_date"].reindex(index).dt.normalize()
    since = np.maximum(signup.fillna(first).to_numpy("datetime64[ns]"), first.to_datetime64())
    observed = np.clip((end.to_datetime64() - since) / np.timedelta64(1, "D"), 0, len(held))
    last_coupon = (end - offers.groupby("user_id")["ts"].max()).dt.total_seconds() / 86_400
    out = pd.DataFrame(index=index)
    out["observed_days_30d"] = observed
    out["coupon_days_30d"] = coupon_days
    out["order_rate_coupon_days_30d"] = coupon_orders / coupon_days.clip(lower=1)
    out["order_rate_other_days_30d"] = other_orders / np.maximum(observed - coupon_days, 1)
    out["days_since_last_coupon"] = (
        last_coupon.reindex(index).fillna(MAX_RECENCY_DAYS).clip(upper=MAX_RECENCY_DAYS)
    )
    out["spend_redeemed_30d"] = redeemed.groupby("user_id")["amount"].sum().reindex(index)
    return out.fillna(0.0)


def _per_label(
    counts: pd.Series, columns: tuple[str, ...], index: pd.Index, norm: bool = True
) -> pd.DataFrame:
    """(user, label) counts as one column per label for every user in `index`; with
    `norm`, each row divided by its total (a user with no events gets zeros)."""
    table = counts.unstack(fill_value=0).reindex(columns=list(columns), fill_value=0)
    table = table.reindex(index, fill_value=0).astype(float)
    return table.div(table.sum(axis=1).clip(lower=1), axis=0) if norm else table


def compute_coupon_stats(ws: Workspace, day: str) -> pd.DataFrame:
    """Every coupon of `day`'s catalogue with its track record over the last 30 days as of
    the end of `day`: offers, redemptions, redemption rate, spend per redeemed order."""
    end, days = day_end(day), _history(day)
    catalogue = read_offline(ws, "coupons", [day])["coupon_id"]
    offers = read_offline(ws, "offers", days)
    orders = read_offline(ws, "orders", days)
    redeemed = orders[orders["coupon_id"].notna()]
    out = pd.DataFrame(index=pd.Index(catalogue.to_numpy(dtype=object), name="coupon_id"))
    out["coupon_offers_30d"] = _count(offers[offers["coupon_id"].notna()], "coupon_id")
    out["coupon_redemptions_30d"] = _count(redeemed, "coupon_id")
    out["spend"] = redeemed.groupby("coupon_id")["amount"].sum()
    out = out.fillna(0.0)
    redemptions = out["coupon_redemptions_30d"]
    out["coupon_redemption_rate_30d"] = redemptions / out["coupon_offers_30d"].clip(lower=1)
    out["coupon_spend_per_redemption_30d"] = out["spend"] / redemptions.clip(lower=1)
    out = out[COUPON_FEATURES].astype("float32").reset_index()
    out["event_timestamp"] = end
    return out


def default_user_features() -> np.ndarray:
    """The feature vector of a user nobody has seen: no activity, maximal recency."""
    values = dict.fromkeys(USER_FEATURES, 0.0)
    values["days_since_last_order"] = MAX_RECENCY_DAYS
    values["days_since_last_coupon"] = MAX_RECENCY_DAYS
    values["observed_days_30d"] = float(HISTORY_DAYS)  # a stranger: nothing seen in a full window
    values.update({f"affinity_{c}": 1.0 / len(CATEGORIES) for c in CATEGORIES})
    return np.array([values[f] for f in USER_FEATURES], dtype=np.float32)


def fresh_counters(
    features: np.ndarray, event: str, kinds: list[str], amount: float | None
) -> np.ndarray:
    """A user's feature row after one outcome reported online, as `compute_user_features`
    would compute it with that outcome added to every window (the serving side's push):
    `shown` is one offer per coupon of the decision (`kinds`, one per coupon), `redeemed`
    an order that redeemed one of them, `purchased` an order of `amount` (an order that
    redeemed a coupon is reported as both). Rates, the average basket and the recencies
    follow; a redemption counts for its kind only when the decision's coupons share one
    (otherwise which was redeemed is unknown, and the per-kind rate stays short of the
    batch's until the next materialisation). BATCH_ONLY_FEATURES are left as they are,
    and no event leaves a window: the next materialisation replaces the row.
    """
    out = np.asarray(features, dtype=np.float64).copy()
    at = _AT

    def add(name: str, value: float) -> None:
        out[at[name]] += value

    used = {k: out[at[f"redemption_rate_{k}_30d"]] * max(out[at[f"offers_{k}_30d"]], 1.0)
            for k in COUPON_KINDS}  # fmt: skip
    for w in WINDOWS:
        if event == "shown":
            add(f"offers_{w}d", len(kinds))
        elif event == "redeemed":
            add(f"redemptions_{w}d", 1.0)
        elif event == "purchased":
            add(f"orders_{w}d", 1.0)
            add(f"spend_{w}d", amount or 0.0)
        out[at[f"redemption_rate_{w}d"]] = out[at[f"redemptions_{w}d"]] / max(
            out[at[f"offers_{w}d"]], 1.0
        )
    if event == "shown":
        for kind in kinds:
            add(f"offers_{kind}_30d", 1.0)
        if kinds:
            out[at["days_since_last_coupon"]] = 0.0
    elif event == "redeemed" and len(set(kinds)) == 1:
        used[kinds[0]] += 1.0
    for k in COUPON_KINDS:
        out[at[f"redemption_rate_{k}_30d"]] = used[k] / max(out[at[f"offers_{k}_30d"]], 1.0)
    if event == "purchased":
        out[at["avg_basket_30d"]] = out[at["spend_30d"]] / max(out[at["orders_30d"]], 1.0)
        out[at["days_since_last_order"]] = 0.0
    return out.astype(np.float32)


_AT = {name: i for i, name in enumerate(USER_FEATURES)}
