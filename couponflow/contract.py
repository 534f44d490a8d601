"""The data contract: every table of the landing zone, its columns, dtypes and rules.

Great Expectations suites, the simulator, the offline store and the tests all derive
from these definitions, so a column is named and typed in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd

if TYPE_CHECKING:
    from couponflow.records import RequestContext

COUPON_KINDS = ("percent_off", "amount_off", "threshold_off", "free_shipping")
CATEGORIES = ("fashion", "electronics", "home", "beauty", "grocery", "sports")
ALL_CATEGORIES = "all"
REGIONS = ("north", "south", "east", "west")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
DEVICES = ("mobile", "desktop", "tablet")
SHIPPING_COST = 6.0  # what a free-shipping coupon costs the platform per redeemed order
# A served policy keeps a small random slice of its decisions as "no coupon" controls and
# logs them with `<policy_version><HOLDOUT_SUFFIX>`: the A/B readout compares the two slices.
HOLDOUT_SUFFIX = ":holdout"
# The context the candidate checks' golden requests carry (serving.deploy.smoke), so readers
# of the decision log (training/served.py) can tell them from shoppers'.
GOLDEN: RequestContext = {"channel": "golden"}
# Which slice of the logging policy made an offer: its own rule, uniform exploration over
# {coupons, none}, or the random holdout. Exploration and holdout are randomised: learners
# and estimators that need an unconfounded comparison read those rows.
SLICES = ("heuristic", "explore", "holdout")
RANDOMISED_SLICES = ("explore", "holdout")


def coupon_cost(kind: npt.ArrayLike, value: npt.ArrayLike, amount: npt.ArrayLike) -> np.ndarray:
    """What a redeemed coupon costs the platform on an order of `amount` (vectorised)."""
    kind = np.asarray(kind)
    value = np.asarray(value, dtype=float)
    amount = np.asarray(amount, dtype=float)
    flat = np.where(kind == "free_shipping", SHIPPING_COST, np.minimum(value, amount))
    return np.where(kind == "percent_off", amount * value / 100.0, flat)


@dataclass(frozen=True)
class Column:
    """One column: its pandas dtype and the rules a valid batch obeys."""

    name: str
    dtype: str
    nullable: bool = False
    unique: bool = False
    min_value: float | None = None
    max_value: float | None = None
    allowed: tuple[str, ...] | None = None
    in_batch_day: bool = False  # timestamps must fall inside the batch's date


@dataclass(frozen=True)
class Table:
    """A landing-zone table: its key and columns."""

    name: str
    key: str
    columns: tuple[Column, ...]
    references: dict[str, str] = field(default_factory=dict)  # column -> table it points at
    # column -> (time, start, end): the row's `time` lies in [start, end) of the row the column
    # references (a coupon is offered and redeemed only while it is valid)
    within_validity: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # column -> (table, same): a non-null value occurs in `table` on a row that matches this one
    # on the `same` columns (a redeemed coupon was offered to that user in the same batch: the
    # training labels join each redemption to its same-day offer)
    occurs_in: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def dtypes(self) -> dict[str, str]:
        return {c.name: c.dtype for c in self.columns}

    def empty(self) -> pd.DataFrame:
        """An empty frame with the contract's columns and dtypes."""
        return pd.DataFrame({c.name: pd.Series(dtype=c.dtype) for c in self.columns})

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Order and cast a frame's columns to the contract (raises if a column is missing)."""
        return frame[self.column_names].astype(self.dtypes)


TS = "datetime64[ns]"

USERS = Table(
    name="users",
    key="user_id",
    columns=(
        Column("user_id", "int64", unique=True, min_value=0),
        Column("signup_date", TS),
        Column("region", "string", allowed=REGIONS),
        Column("age_band", "string", allowed=AGE_BANDS),
        Column("device", "string", allowed=DEVICES),
    ),
)

COUPONS = Table(
    name="coupons",
    key="coupon_id",
    columns=(
        Column("coupon_id", "string", unique=True),
        Column("kind", "string", allowed=COUPON_KINDS),
        Column("value", "float64", min_value=0, max_value=500),
        Column("min_spend", "float64", min_value=0, max_value=5000),
        Column("category", "string", allowed=(*CATEGORIES, ALL_CATEGORIES)),
        Column("valid_from", TS),
        Column("valid_to", TS),
        Column("budget_share", "float64", min_value=0, max_value=1),
    ),
)

SESSIONS = Table(
    name="sessions",
    key="session_id",
    columns=(
        Column("session_id", "string", unique=True),
        Column("user_id", "int64", min_value=0),
        Column("ts", TS, in_batch_day=True),
        Column("category", "string", allowed=CATEGORIES),
        Column("page_views", "int64", min_value=1, max_value=500),
    ),
    references={"user_id": "users"},
)

OFFERS = Table(
    name="offers",
    key="offer_id",
    columns=(
        Column("offer_id", "string", unique=True),
        Column("user_id", "int64", min_value=0),
        Column("coupon_id", "string", nullable=True),  # null: a "no coupon" control
        Column("ts", TS, in_batch_day=True),
        Column("policy_version", "string"),
        Column("propensity", "float64", min_value=1e-6, max_value=1.0),
        Column("slice", "string", allowed=SLICES),
    ),
    references={"user_id": "users", "coupon_id": "coupons"},
    within_validity={"coupon_id": ("ts", "valid_from", "valid_to")},
)

ORDERS = Table(
    name="orders",
    key="order_id",
    columns=(
        Column("order_id", "string", unique=True),
        Column("user_id", "int64", min_value=0),
        Column("ts", TS, in_batch_day=True),
        Column("amount", "float64", min_value=0.01, max_value=20_000),
        Column("category", "string", allowed=CATEGORIES),
        Column("coupon_id", "string", nullable=True),  # null: no coupon redeemed
        Column("discount", "float64", min_value=0, max_value=5_000),
    ),
    references={"user_id": "users", "coupon_id": "coupons"},
    within_validity={"coupon_id": ("ts", "valid_from", "valid_to")},
    occurs_in={"coupon_id": ("offers", ("user_id",))},
)

TABLES: dict[str, Table] = {t.name: t for t in (USERS, COUPONS, SESSIONS, OFFERS, ORDERS)}
DIMENSIONS = ("users", "coupons")  # full snapshots in every batch
EVENTS = ("sessions", "offers", "orders")  # the day's facts


# -- normalisation: lossless encodings of valid data, converted to the contract's types ---------
CLOCK = "UTC"  # naive contract timestamps are UTC; a zone-aware column is converted to it


def _scalar(value: object) -> bool:
    return (
        value is None
        or isinstance(value, str | bytes | int | float | bool | np.generic)
        or (not hasattr(value, "__len__") and not isinstance(value, dict | set))
    )


def _to_timestamps(values: pd.Series, where: str) -> tuple[pd.Series, str | None]:
    """A column meant to hold timestamps, as naive `datetime64[ns]` on the contract's clock."""
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert(CLOCK).dt.tz_localize(None).astype(TS), None
    if pd.api.types.is_datetime64_dtype(dtype):  # other units: s, ms, us
        try:
            return values.astype(TS), None
        except (ValueError, OverflowError) as exc:
            return values, f"{where}: timestamps outside the representable range ({exc})"
    if isinstance(dtype, pd.ArrowDtype) or pd.api.types.is_object_dtype(dtype):
        present = values.dropna()
        if present.empty:
            return values, None
        kinds = {type(v) for v in present}
        import datetime as dt

        if not all(issubclass(k, dt.date) for k in kinds):
            return values, None  # not a timestamp encoding: the dtype rule names it
        aware = {getattr(v, "tzinfo", None) is not None for v in present}
        if aware == {True, False}:
            return values, f"{where}: mixes time-zone-aware and naive timestamps"
        try:
            if aware == {True}:
                out = pd.to_datetime(values, utc=True).dt.tz_localize(None)
            else:
                out = pd.to_datetime(values)
            return out.astype(TS), None
        except (ValueError, OverflowError, TypeError) as exc:
            return values, f"{where}: dates not convertible to timestamps ({exc})"
    return values, None


def _to_int(values: pd.Series) -> pd.Series:
    """Integers of any width (nullable or not) as int64 when every value fits."""
    dtype = values.dtype
    if not pd.api.types.is_integer_dtype(dtype) or str(dtype) in ("int64", "Int64"):
        return values
    present = values.dropna()
    info = np.iinfo(np.int64)
    if len(present) and (int(present.max()) > info.max or int(present.min()) < info.min):
        return values  # lossy: the dtype rule names it
    if values.isna().any():
        return values.astype("Int64")
    return values.astype("int64")


def _to_float(values: pd.Series) -> pd.Series:
    """Narrower floats and integers that a float64 holds exactly, as float64."""
    dtype = values.dtype
    if str(dtype) == "float64" or isinstance(dtype, pd.CategoricalDtype):
        return values
    if pd.api.types.is_float_dtype(dtype):
        return values.astype("float64")
    if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        present = values.dropna()
        if len(present) and present.abs().max() > 2**53:
            return values
        return values.astype("float64")
    return values


def _to_string(values: pd.Series) -> pd.Series:
    """Categoricals of strings and Arrow strings as the contract's `string`."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        if (
            len(categories) == 0
            or pd.api.types.is_string_dtype(categories.dtype)
            and all(isinstance(c, str) for c in categories)
        ):
            return values.astype(object).astype("string")
        return values
    arrow = isinstance(dtype, pd.ArrowDtype) or (
        isinstance(dtype, pd.StringDtype) and dtype.storage != "python"
    )
    if arrow and pd.api.types.is_string_dtype(dtype):
        return values.astype("string")
    return values


def normalise(table: Table, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`frame` with lossless encodings converted to the contract's types, and a reason for each
    column that cannot be judged as it is (values that are not scalars, mixed time zones,
    timestamps out of range). Converted: integers of any width that fit into int64 (ids,
    counts), integers and narrower floats into float64, categoricals and Arrow strings into
    `string`, DATE columns, timestamps of other units and zone-aware timestamps (converted to
    the contract's clock, CLOCK) into naive `datetime64[ns]`. Anything else is left as it is
    for the dtype rules to name. Never raises."""
    out = frame.copy()
    problems: list[str] = []
    for col in table.columns:
        if col.name not in out:
            continue
        where = f"{table.name}.{col.name}"
        values = out[col.name]
        try:
            if pd.api.types.is_object_dtype(values.dtype):
                odd = values.map(lambda v: not _scalar(v))
                if odd.any():
                    kind = type(values[odd].iloc[0]).__name__
                    problems.append(
                        f"{where}: {int(odd.sum())} values of type {kind}, not scalars "
                        f"(the contract says {col.dtype})"
                    )
                    out[col.name] = values.map(repr).astype(object)
                    continue
            if col.dtype == TS:
                values, problem = _to_timestamps(values, where)
                if problem:
                    problems.append(problem)
            elif col.dtype == "int64":
                values = _to_int(values)
            elif col.dtype == "float64":
                values = _to_float(values)
            elif col.dtype == "string":
                values = _to_string(values)
            out[col.name] = values
        except Exception as exc:  # a verdict, never a crash: the dtype rules judge the rest
            problems.append(f"{where}: could not be read as {col.dtype} ({type(exc).__name__})")
    return out, problems
