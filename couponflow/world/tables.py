"""A day's events as the landing zone's tables: ids, timestamps and the details no causal
formula needs (page views), drawn from the day's detail stream, conformed to the contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from couponflow.contract import CATEGORIES, HOLDOUT_SUFFIX, TABLES
from couponflow.world.logging_policy import Decisions
from couponflow.world.streams import labels

OFFER_SECONDS = 6 * 3600  # offers land in [0h, 6h), orders in [6h, 24h)


def _ids(prefix: str, n: int) -> pd.arrays.StringArray:
    """`prefix0, prefix1, ...` built in Arrow (a Python loop costs ~0.4 s per million)."""
    numbers = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    joined = pc.binary_join_element_wise(pa.scalar(prefix), numbers, "")
    return pd.array(joined.to_numpy(zero_copy_only=False), dtype="string")


def _times(rng: np.random.Generator, day: pd.Timestamp, lo: int, hi: int, n: int) -> pd.Series:
    return day + pd.to_timedelta(rng.integers(lo, hi, n), unit="s")


def sessions_table(
    rng: np.random.Generator, day: pd.Timestamp, user: np.ndarray, category: np.ndarray
) -> pd.DataFrame:
    """The browsing sessions, at any time of the day."""
    return TABLES["sessions"].conform(
        pd.DataFrame(
            {
                "session_id": _ids(f"{day:%Y%m%d}-s", len(user)),
                "user_id": user.astype("int64"),
                "ts": _times(rng, day, 0, 86_400, len(user)),
                "category": labels(CATEGORIES, category),
                "page_views": 1 + rng.poisson(4, len(user)),
            }
        )
    )


def offers_table(
    rng: np.random.Generator,
    day: pd.Timestamp,
    decisions: Decisions,
    coupon_ids: np.ndarray,
    policy_version: str,
) -> pd.DataFrame:
    """The logged decisions, in the first hours of the day; holdout ones tagged as such."""
    n = len(decisions.reached)
    version = np.where(
        decisions.slice == "holdout", policy_version + HOLDOUT_SUFFIX, policy_version
    )
    return TABLES["offers"].conform(
        pd.DataFrame(
            {
                "offer_id": _ids(f"{day:%Y%m%d}-o", n),
                "user_id": decisions.reached.astype("int64"),
                "coupon_id": pd.array(coupon_ids[decisions.arm], dtype="string"),
                "ts": _times(rng, day, 0, OFFER_SECONDS, n),
                "policy_version": version,
                "propensity": decisions.propensity,
                "slice": decisions.slice,
            }
        )
    )


def orders_table(
    rng: np.random.Generator,
    day: pd.Timestamp,
    orders: dict[str, np.ndarray],
    coupon_ids: np.ndarray,
) -> pd.DataFrame:
    """The orders (`outcomes.draw_orders`), after the offers of the day."""
    n = len(orders["user"])
    return TABLES["orders"].conform(
        pd.DataFrame(
            {
                "order_id": _ids(f"{day:%Y%m%d}-r", n),
                "user_id": orders["user"].astype("int64"),
                "ts": _times(rng, day, OFFER_SECONDS, 86_400, n),
                "amount": orders["amount"],
                "category": labels(CATEGORIES, orders["category"]),
                "coupon_id": pd.array(coupon_ids[orders["arm"]], dtype="string"),
                "discount": orders["discount"],
            }
        )
    )
