"""Named corruptions of a valid landing-zone batch: the test corpus of the data-quality work.

`FAULTS` maps a name to a function `(batch, rng) -> corrupted copy`; the input batch is never
modified. `FAULT_TARGETS` names, for each fault, the `table.column` (or table) a validator
should blame. The rng picks which rows are hit, so one clean batch yields many variants.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from couponflow.contract import EVENTS, HOLDOUT_SUFFIX, coupon_cost

Batch = dict[str, pd.DataFrame]
Fault = Callable[[Batch, np.random.Generator], Batch]
UNKNOWN_COUPON = "C-UNKNOWN"


def _copy(batch: Batch) -> Batch:
    return {name: frame.copy(deep=True) for name, frame in batch.items()}


def _rows(frame: pd.DataFrame, rng: np.random.Generator, share: float = 0.05) -> pd.Index:
    """A few random row labels (at least one; the frame must not be empty)."""
    if frame.empty:
        raise ValueError("this fault needs a table with rows")
    k = max(1, int(share * len(frame)))
    return frame.index[np.sort(rng.choice(len(frame), size=min(k, len(frame)), replace=False))]


def _batch_day(batch: Batch) -> pd.Timestamp:
    """The batch's date, read from its events' timestamps."""
    stamps = pd.concat([batch[t]["ts"] for t in EVENTS if t in batch and len(batch[t])])
    return stamps.min().normalize()


def null_keys(batch: Batch, rng: np.random.Generator) -> Batch:
    """Orders with no order_id and no user_id."""
    out = _copy(batch)
    orders = out["orders"]
    hit = _rows(orders, rng)
    orders["user_id"] = orders["user_id"].astype("Int64")
    orders.loc[hit, ["order_id", "user_id"]] = pd.NA
    return out


def duplicate_rows(batch: Batch, rng: np.random.Generator) -> Batch:
    """Some orders delivered twice (identical rows, so order_id repeats)."""
    out = _copy(batch)
    orders = out["orders"]
    out["orders"] = pd.concat([orders, orders.loc[_rows(orders, rng)]], ignore_index=True)
    return out


def negative_amounts(batch: Batch, rng: np.random.Generator) -> Batch:
    """Refund-like negative order amounts."""
    out = _copy(batch)
    hit = _rows(out["orders"], rng)
    out["orders"].loc[hit, "amount"] = -out["orders"].loc[hit, "amount"]
    return out


def absurd_amounts(batch: Batch, rng: np.random.Generator) -> Batch:
    """Order amounts a thousand times too large (cents booked as dollars, twice over)."""
    out = _copy(batch)
    hit = _rows(out["orders"], rng)
    out["orders"].loc[hit, "amount"] = out["orders"].loc[hit, "amount"] * 1000 + 20_000
    return out


def unknown_coupon_ids(batch: Batch, rng: np.random.Generator) -> Batch:
    """Offers of a coupon the catalogue does not have."""
    out = _copy(batch)
    hit = _rows(out["offers"], rng)
    out["offers"].loc[hit, "coupon_id"] = UNKNOWN_COUPON
    return out


def renamed_column(batch: Batch, rng: np.random.Generator) -> Batch:
    """sessions.page_views arrives as `pageviews`."""
    out = _copy(batch)
    out["sessions"] = out["sessions"].rename(columns={"page_views": "pageviews"})
    return out


def missing_column(batch: Batch, rng: np.random.Generator) -> Batch:
    """orders arrive without their discount column."""
    out = _copy(batch)
    out["orders"] = out["orders"].drop(columns=["discount"])
    return out


def wrong_dtypes(batch: Batch, rng: np.random.Generator) -> Batch:
    """Amounts as text and user ids as floats, as a CSV export would give them."""
    out = _copy(batch)
    out["orders"]["amount"] = out["orders"]["amount"].map("{:.2f}".format).astype(object)
    out["sessions"]["user_id"] = out["sessions"]["user_id"].astype("float64")
    return out


def timestamps_outside_day(batch: Batch, rng: np.random.Generator) -> Batch:
    """Sessions stamped a day late and orders a day early (a time-zone or partition slip)."""
    out = _copy(batch)
    for table, shift in (("sessions", 1), ("orders", -1)):
        hit = _rows(out[table], rng)
        out[table].loc[hit, "ts"] = out[table].loc[hit, "ts"] + pd.Timedelta(days=shift)
    return out


def empty_batch(batch: Batch, rng: np.random.Generator) -> Batch:
    """The day's events all missing: every event table with its columns but no rows."""
    out = _copy(batch)
    for table in EVENTS:
        out[table] = out[table].iloc[0:0]
    return out


def redemption_spike(batch: Batch, rng: np.random.Generator) -> Batch:
    """Nine orders in ten redeem a coupon, each row valid on its own (a leaked code)."""
    out = _copy(batch)
    orders, coupons = out["orders"], out["coupons"]
    pool = coupons[coupons["min_spend"] == 0]  # no threshold to meet
    pool = pool if len(pool) else coupons
    leaked = pool.iloc[int(rng.integers(len(pool)))]
    hit = _rows(orders, rng, share=0.9)
    orders.loc[hit, "coupon_id"] = leaked["coupon_id"]
    if leaked["category"] != "all":
        orders.loc[hit, "category"] = leaked["category"]
    amount = np.maximum(orders.loc[hit, "amount"].to_numpy(), leaked["min_spend"])
    orders.loc[hit, "amount"] = amount
    orders.loc[hit, "discount"] = np.round(
        coupon_cost(np.full(len(hit), leaked["kind"]), leaked["value"], amount), 2
    )
    return out


def coupon_outside_validity(batch: Batch, rng: np.random.Generator) -> Batch:
    """A redeemed coupon that expired at the start of the day (its validity was cut short)."""
    out = _copy(batch)
    orders, coupons = out["orders"], out["coupons"]
    redeemed = orders["coupon_id"].dropna()
    if redeemed.empty:  # make one redemption, of the first coupon, so the fault has a victim
        row = _rows(orders, rng, share=0)[0]
        orders.loc[row, "coupon_id"] = coupons["coupon_id"].iloc[0]
        redeemed = orders["coupon_id"].dropna()
    victim = redeemed.iloc[int(rng.integers(len(redeemed)))]
    expired = coupons["coupon_id"] == victim
    day = _batch_day(out)
    start = coupons.loc[expired, "valid_from"]
    coupons.loc[expired, "valid_from"] = start.clip(upper=day - pd.Timedelta(days=1))
    coupons.loc[expired, "valid_to"] = day
    return out


FAULTS: dict[str, Fault] = {
    f.__name__: f
    for f in (
        null_keys,
        duplicate_rows,
        negative_amounts,
        absurd_amounts,
        unknown_coupon_ids,
        renamed_column,
        missing_column,
        wrong_dtypes,
        timestamps_outside_day,
        empty_batch,
        redemption_spike,
        coupon_outside_validity,
    )
}

FAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "null_keys": ("orders.order_id", "orders.user_id"),
    "duplicate_rows": ("orders.order_id",),
    "negative_amounts": ("orders.amount",),
    "absurd_amounts": ("orders.amount",),
    "unknown_coupon_ids": ("offers.coupon_id",),
    "renamed_column": ("sessions.page_views",),
    "missing_column": ("orders.discount",),
    "wrong_dtypes": ("orders.amount", "sessions.user_id"),
    "timestamps_outside_day": ("sessions.ts", "orders.ts"),
    "empty_batch": EVENTS,
    "redemption_spike": ("orders.coupon_id",),
    "coupon_outside_validity": ("orders.coupon_id",),
}


# -- corruptions beyond the twelve: what an adversarial data engineer tried (issue 17) --------
# Each breaks one batch on its own; those that need the offline store (a replayed day, ids
# reused across days, a users table renumbered) are built by the tests from two days.
def _redeemed(out: Batch, kinds: tuple[str, ...] | None = None) -> pd.Index:
    """Rows of orders that redeemed a coupon (of one of `kinds`), at least one: an order is
    made to redeem a matching coupon when none does."""
    orders, coupons = out["orders"], out["coupons"]
    pool = coupons if kinds is None else coupons[coupons["kind"].isin(kinds)]
    if pool.empty:
        raise ValueError(f"the catalogue has no coupon of kind {kinds}")
    used = orders["coupon_id"].isin(pool["coupon_id"])
    if not used.any():
        row, coupon = orders.index[0], pool.iloc[0]
        orders.loc[row, "coupon_id"] = coupon["coupon_id"]
        if coupon["category"] != "all":
            orders.loc[row, "category"] = coupon["category"]
        amount = max(float(orders.loc[row, "amount"]), float(coupon["min_spend"]))
        orders.loc[row, "amount"] = amount
        orders.loc[row, "discount"] = round(
            float(coupon_cost(np.array([coupon["kind"]]), coupon["value"], amount)[0]), 2
        )
        used = orders["coupon_id"].isin(pool["coupon_id"])
    return orders.index[used.to_numpy()]


def discount_above_amount(batch: Batch, rng: np.random.Generator) -> Batch:
    """A flat or percent redemption whose discount exceeds the basket."""
    out = _copy(batch)
    rows = _redeemed(out, ("percent_off", "amount_off", "threshold_off"))[:2]
    out["orders"].loc[rows, "discount"] = out["orders"].loc[rows, "amount"] + 10.0
    return out


def discount_without_coupon(batch: Batch, rng: np.random.Generator) -> Batch:
    """A discount booked on orders that redeemed no coupon."""
    out = _copy(batch)
    orders = out["orders"]
    plain = orders.index[orders["coupon_id"].isna().to_numpy()][:3]
    orders.loc[plain, "discount"] = (orders.loc[plain, "amount"] * 0.1).round(2)
    return out


def zero_discount_redemption(batch: Batch, rng: np.random.Generator) -> Batch:
    """Redemptions booked with no discount (the reward would count them as free)."""
    out = _copy(batch)
    out["orders"].loc[_redeemed(out)[:3], "discount"] = 0.0
    return out


def discount_doubled(batch: Batch, rng: np.random.Generator) -> Batch:
    """A percent-off redemption discounted twice."""
    out = _copy(batch)
    rows = _redeemed(out, ("percent_off",))[:2]
    out["orders"].loc[rows, "discount"] = (out["orders"].loc[rows, "discount"] * 2 + 1).round(2)
    return out


def percent_over_100(batch: Batch, rng: np.random.Generator) -> Batch:
    """A 400 % percent-off coupon in the catalogue."""
    out = _copy(batch)
    coupons = out["coupons"]
    row = coupons.index[(coupons["kind"] == "percent_off").to_numpy()][:1]
    if row.empty:
        row = coupons.index[:1]
        coupons.loc[row, "kind"] = "percent_off"
    coupons.loc[row, "value"] = 400.0
    return out


def threshold_without_threshold(batch: Batch, rng: np.random.Generator) -> Batch:
    """A threshold coupon with min_spend 0 (a flat discount in disguise)."""
    out = _copy(batch)
    coupons = out["coupons"]
    row = coupons.index[(coupons["kind"] == "threshold_off").to_numpy()][:1]
    if row.empty:
        row = coupons.index[:1]
        coupons.loc[row, "kind"] = "threshold_off"
    coupons.loc[row, "min_spend"] = 0.0
    return out


def flat_coupon_worth_nothing(batch: Batch, rng: np.random.Generator) -> Batch:
    """An amount-off coupon of value 0."""
    out = _copy(batch)
    coupons = out["coupons"]
    row = coupons.index[(coupons["kind"] == "amount_off").to_numpy()][:1]
    if row.empty:
        row = coupons.index[:1]
        coupons.loc[row, "kind"] = "amount_off"
    coupons.loc[row, "value"] = 0.0
    return out


def threshold_not_met(batch: Batch, rng: np.random.Generator) -> Batch:
    """A threshold coupon redeemed on a basket below its min_spend (discount as its terms)."""
    out = _copy(batch)
    row = _redeemed(out, ("threshold_off",))[:1]
    orders, coupons = out["orders"], out["coupons"].set_index("coupon_id")
    coupon = coupons.loc[orders.loc[row[0], "coupon_id"]]
    orders.loc[row, "amount"] = round(float(coupon["min_spend"]) / 2, 2)
    orders.loc[row, "discount"] = min(float(coupon["value"]), float(coupon["min_spend"]) / 2)
    return out


def redemption_outside_category(batch: Batch, rng: np.random.Generator) -> Batch:
    """A category-scoped coupon redeemed on an order of another category."""
    out = _copy(batch)
    coupons = out["coupons"]
    scoped = tuple(coupons.loc[coupons["category"] != "all", "kind"].unique())
    orders = out["orders"]
    rows = _redeemed(out, scoped)
    scope = orders.loc[rows, "coupon_id"].map(coupons.set_index("coupon_id")["category"])
    rows = rows[(scope != "all").to_numpy()][:1]
    own = scope[rows].iloc[0]
    orders.loc[rows, "category"] = next(c for c in ("fashion", "grocery") if c != own)
    return out


def validity_reversed(batch: Batch, rng: np.random.Generator) -> Batch:
    """A coupon nobody redeemed today whose validity ends before it starts."""
    out = _copy(batch)
    coupons = out["coupons"]
    idle = ~coupons["coupon_id"].isin(out["orders"]["coupon_id"].dropna())
    idle &= ~coupons["coupon_id"].isin(out["offers"]["coupon_id"].dropna())
    row = coupons.index[idle.to_numpy()][:1]
    if row.empty:
        row = coupons.index[:1]
    coupons.loc[row, "valid_to"] = coupons.loc[row, "valid_from"] - pd.Timedelta(days=3)
    return out


def redeemed_before_offer(batch: Batch, rng: np.random.Generator) -> Batch:
    """Redemptions stamped before the offer of their coupon (inside the day: a clock slip)."""
    out = _copy(batch)
    orders, offers = out["orders"], out["offers"]
    rows = orders.index[orders["coupon_id"].notna().to_numpy()][:3]
    if rows.empty:
        raise ValueError("this fault needs a redemption")
    first = offers.dropna(subset=["coupon_id"]).groupby(["user_id", "coupon_id"])["ts"].min()
    for row in rows:
        at = first.get((orders.loc[row, "user_id"], orders.loc[row, "coupon_id"]))
        if at is not None and at > _batch_day(out):
            orders.loc[row, "ts"] = at - pd.Timedelta(seconds=1)
    return out


def holdout_with_coupon(batch: Batch, rng: np.random.Generator) -> Batch:
    """Holdout ("no coupon" control) offers that carry a coupon."""
    out = _copy(batch)
    offers = out["offers"]
    held = offers.index[offers["policy_version"].str.endswith(HOLDOUT_SUFFIX).to_numpy()][:2]
    if held.empty:
        held = offers.index[:1]
        offers.loc[held, "policy_version"] = offers.loc[held, "policy_version"] + HOLDOUT_SUFFIX
    offers.loc[held, "coupon_id"] = out["coupons"]["coupon_id"].iloc[0]
    return out


def future_signup(batch: Batch, rng: np.random.Generator) -> Batch:
    """Users who sign up ten days after the batch (negative tenure)."""
    out = _copy(batch)
    hit = _rows(out["users"], rng, share=0.01)
    out["users"].loc[hit, "signup_date"] = _batch_day(out) + pd.Timedelta(days=10)
    return out


def ancient_signup(batch: Batch, rng: np.random.Generator) -> Batch:
    """Users who signed up in 1900 (a default date)."""
    out = _copy(batch)
    hit = _rows(out["users"], rng, share=0.01)
    out["users"].loc[hit, "signup_date"] = pd.Timestamp("1900-01-01")
    return out


def list_values(batch: Batch, rng: np.random.Generator) -> Batch:
    """Session categories delivered as lists of categories."""
    out = _copy(batch)
    out["sessions"]["category"] = [[c] for c in out["sessions"]["category"]]
    return out


def dict_values(batch: Batch, rng: np.random.Generator) -> Batch:
    """Offers' policy_version delivered as a JSON object."""
    out = _copy(batch)
    out["offers"]["policy_version"] = [{"name": v} for v in out["offers"]["policy_version"]]
    return out


def bytes_ids(batch: Batch, rng: np.random.Generator) -> Batch:
    """Order ids as raw bytes."""
    out = _copy(batch)
    out["orders"]["order_id"] = [v.encode() for v in out["orders"]["order_id"]]
    return out


def ids_overflow_int64(batch: Batch, rng: np.random.Generator) -> Batch:
    """User ids as uint64 beyond what int64 holds (one id wrapped around)."""
    out = _copy(batch)
    users = out["users"]
    ids = users["user_id"].astype("uint64")
    ids.iloc[-1] = np.uint64(2**63 + 7)
    users["user_id"] = ids
    return out


def timestamps_as_text(batch: Batch, rng: np.random.Generator) -> Batch:
    """Offer times as ISO text, as a CSV export gives them."""
    out = _copy(batch)
    out["offers"]["ts"] = out["offers"]["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S").astype(object)
    return out


def timestamps_as_epoch(batch: Batch, rng: np.random.Generator) -> Batch:
    """Session times as integer epoch seconds."""
    out = _copy(batch)
    out["sessions"]["ts"] = out["sessions"]["ts"].astype("int64") // 10**9
    return out


def dates_out_of_range(batch: Batch, rng: np.random.Generator) -> Batch:
    """A coupon valid until the year 2300 (beyond what a nanosecond timestamp holds)."""
    out = _copy(batch)
    coupons = out["coupons"]
    valid_to = coupons["valid_to"].astype("datetime64[us]")
    valid_to.iloc[0] = np.datetime64("2300-01-01", "us")
    coupons["valid_to"] = valid_to
    return out


def nan_amounts(batch: Batch, rng: np.random.Generator) -> Batch:
    """Order amounts lost as NaN."""
    out = _copy(batch)
    out["orders"].loc[_rows(out["orders"], rng), "amount"] = np.nan
    return out


def infinite_amounts(batch: Batch, rng: np.random.Generator) -> Batch:
    """Order amounts that overflowed to infinity."""
    out = _copy(batch)
    out["orders"].loc[_rows(out["orders"], rng, share=0.01), "amount"] = np.inf
    return out


def padded_categories(batch: Batch, rng: np.random.Generator) -> Batch:
    """Order categories with a trailing blank."""
    out = _copy(batch)
    hit = _rows(out["orders"], rng)
    out["orders"].loc[hit, "category"] = out["orders"].loc[hit, "category"] + " "
    return out


def upper_case_regions(batch: Batch, rng: np.random.Generator) -> Batch:
    """Regions shouted: NORTH."""
    out = _copy(batch)
    out["users"]["region"] = out["users"]["region"].str.upper()
    return out


def extra_column(batch: Batch, rng: np.random.Generator) -> Batch:
    """Orders with a column the contract does not know."""
    out = _copy(batch)
    out["orders"]["note"] = "n/a"
    return out


def duplicate_users(batch: Batch, rng: np.random.Generator) -> Batch:
    """Some users twice in the snapshot."""
    out = _copy(batch)
    users = out["users"]
    out["users"] = pd.concat([users, users.loc[_rows(users, rng, 0.01)]], ignore_index=True)
    return out


def duplicate_coupons(batch: Batch, rng: np.random.Generator) -> Batch:
    """A coupon twice in the catalogue, with other terms."""
    out = _copy(batch)
    coupons = out["coupons"]
    twin = coupons.iloc[:1].copy()
    twin["budget_share"] = 0.5
    out["coupons"] = pd.concat([coupons, twin], ignore_index=True)
    return out


def unknown_order_users(batch: Batch, rng: np.random.Generator) -> Batch:
    """Orders of users the snapshot does not know."""
    out = _copy(batch)
    hit = _rows(out["orders"], rng, share=0.01)
    out["orders"].loc[hit, "user_id"] = 10**9
    out["orders"].loc[hit, "coupon_id"] = pd.NA
    out["orders"].loc[hit, "discount"] = 0.0
    return out


def budget_share_above_one(batch: Batch, rng: np.random.Generator) -> Batch:
    """A coupon given 150 % of the budget."""
    out = _copy(batch)
    out["coupons"].loc[out["coupons"].index[:1], "budget_share"] = 1.5
    return out


def zero_propensity(batch: Batch, rng: np.random.Generator) -> Batch:
    """Offers logged with propensity 0 (their inverse weight is infinite)."""
    out = _copy(batch)
    out["offers"].loc[_rows(out["offers"], rng, share=0.01), "propensity"] = 0.0
    return out


def null_session_ids(batch: Batch, rng: np.random.Generator) -> Batch:
    """Sessions without ids."""
    out = _copy(batch)
    out["sessions"].loc[_rows(out["sessions"], rng, share=0.01), "session_id"] = pd.NA
    return out


def unknown_kind(batch: Batch, rng: np.random.Generator) -> Batch:
    """A coupon of a kind the contract does not know (bogo)."""
    out = _copy(batch)
    out["coupons"].loc[out["coupons"].index[:1], "kind"] = "bogo"
    return out


def users_table_empty(batch: Batch, rng: np.random.Generator) -> Batch:
    """The users snapshot delivered with its header only."""
    out = _copy(batch)
    out["users"] = out["users"].iloc[0:0]
    return out


CORRUPTIONS: dict[str, Fault] = {
    f.__name__: f
    for f in (
        discount_above_amount,
        discount_without_coupon,
        zero_discount_redemption,
        discount_doubled,
        percent_over_100,
        threshold_without_threshold,
        flat_coupon_worth_nothing,
        threshold_not_met,
        redemption_outside_category,
        validity_reversed,
        redeemed_before_offer,
        holdout_with_coupon,
        future_signup,
        ancient_signup,
        list_values,
        dict_values,
        bytes_ids,
        ids_overflow_int64,
        timestamps_as_text,
        timestamps_as_epoch,
        dates_out_of_range,
        nan_amounts,
        infinite_amounts,
        padded_categories,
        upper_case_regions,
        extra_column,
        duplicate_users,
        duplicate_coupons,
        unknown_order_users,
        budget_share_above_one,
        zero_propensity,
        null_session_ids,
        unknown_kind,
        users_table_empty,
    )
}

CORRUPTION_TARGETS: dict[str, tuple[str, ...]] = {
    "discount_above_amount": ("orders.discount",),
    "discount_without_coupon": ("orders.discount",),
    "zero_discount_redemption": ("orders.discount",),
    "discount_doubled": ("orders.discount",),
    "percent_over_100": ("coupons.value",),
    "threshold_without_threshold": ("coupons.min_spend",),
    "flat_coupon_worth_nothing": ("coupons.value",),
    "threshold_not_met": ("orders.amount",),
    "redemption_outside_category": ("orders.category",),
    "validity_reversed": ("coupons.valid_to",),
    "redeemed_before_offer": ("orders.ts",),
    "holdout_with_coupon": ("offers.coupon_id",),
    "future_signup": ("users.signup_date",),
    "ancient_signup": ("users.signup_date",),
    "list_values": ("sessions.category",),
    "dict_values": ("offers.policy_version",),
    "bytes_ids": ("orders.order_id",),
    "ids_overflow_int64": ("users.user_id",),
    "timestamps_as_text": ("offers.ts",),
    "timestamps_as_epoch": ("sessions.ts",),
    "dates_out_of_range": ("coupons.valid_to",),
    "nan_amounts": ("orders.amount",),
    "infinite_amounts": ("orders.amount",),
    "padded_categories": ("orders.category",),
    "upper_case_regions": ("users.region",),
    "extra_column": ("orders.note",),
    "duplicate_users": ("users.user_id",),
    "duplicate_coupons": ("coupons.coupon_id",),
    "unknown_order_users": ("orders.user_id",),
    "budget_share_above_one": ("coupons.budget_share",),
    "zero_propensity": ("offers.propensity",),
    "null_session_ids": ("sessions.session_id",),
    "unknown_kind": ("coupons.kind",),
    "users_table_empty": ("users",),
}


# -- lossless encodings of a valid batch: each must be accepted, as the batch itself is --------
def _recode(batch: Batch, change: Callable[[str, pd.DataFrame], pd.DataFrame]) -> Batch:
    return {name: change(name, frame.copy(deep=True)) for name, frame in batch.items()}


def narrow_ints(batch: Batch, rng: np.random.Generator) -> Batch:
    """Every integer column in the narrowest width that holds it (int32 ids, uint16 views)."""

    def change(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        for col in frame.columns:
            if str(frame[col].dtype) == "int64":
                frame[col] = pd.to_numeric(frame[col], downcast="integer")
        return frame

    return _recode(batch, change)


def categorical_strings(batch: Batch, rng: np.random.Generator) -> Batch:
    """Every low-cardinality string column as a pandas categorical (parquet dictionary)."""

    def change(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        for col in ("region", "age_band", "device", "kind", "category", "policy_version"):
            if col in frame:
                frame[col] = frame[col].astype("category")
        return frame

    return _recode(batch, change)


def date_signups(batch: Batch, rng: np.random.Generator) -> Batch:
    """users.signup_date as a parquet DATE (the simulator's signups fall on midnight)."""

    def change(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        if name == "users":
            frame["signup_date"] = frame["signup_date"].dt.date
        return frame

    return _recode(batch, change)


def zoned_timestamps(batch: Batch, rng: np.random.Generator) -> Batch:
    """Every timestamp zone-aware, in Tokyo time: the same instants as the contract's UTC."""

    def change(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        for col in frame.columns:
            if str(frame[col].dtype) == "datetime64[ns]":
                frame[col] = frame[col].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")
        return frame

    return _recode(batch, change)


def millisecond_timestamps(batch: Batch, rng: np.random.Generator) -> Batch:
    """Timestamps in milliseconds (parquet TIMESTAMP(MILLIS))."""

    def change(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        for col in frame.columns:
            if str(frame[col].dtype) == "datetime64[ns]":
                frame[col] = frame[col].astype("datetime64[ms]")
        return frame

    return _recode(batch, change)


def arrow_strings(batch: Batch, rng: np.random.Generator) -> Batch:
    """Ids as Arrow large strings."""
    import pyarrow as pa

    def change(name: str, frame: pd.DataFrame) -> pd.DataFrame:
        for col in ("session_id", "offer_id", "order_id", "coupon_id"):
            if col in frame:
                frame[col] = frame[col].astype(pd.ArrowDtype(pa.large_string()))
        return frame

    return _recode(batch, change)


ENCODINGS: dict[str, Fault] = {
    f.__name__: f
    for f in (
        narrow_ints,
        categorical_strings,
        date_signups,
        zoned_timestamps,
        millisecond_timestamps,
        arrow_strings,
    )
}
