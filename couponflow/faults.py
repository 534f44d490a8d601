"""Named corruptions of a valid landing-zone batch: the test corpus of the data-quality work.

`FAULTS` maps a name to a function `(batch, rng) -> corrupted copy`; the input batch is never
modified. `FAULT_TARGETS` names, for each fault, the `table.column` (or table) a validator
should blame. The rng picks which rows are hit, so one clean batch yields many variants.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from couponflow.contract import EVENTS, coupon_cost

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
