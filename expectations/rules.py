"""Rules across columns, tables and days, beyond what `couponflow.contract` declares column by
column: the money of a redemption, a coupon's terms, the order of events in time, dates in
range, and the identity of rows across accepted days.

Each is a `derived.Derived` rule (a derived column holding the offending value where the rule
is broken), so GX reports it like any contract rule, names `table.column` and shows the
failing rows in the Data Docs. They are written against contract column names only: a table
that gains a column (e.g. an offers `slice`) keeps its rules. A rule whose columns are
missing or mistyped stays silent (the schema and dtype rules name the cause).

Rules across days read what earlier dates left, through entries `validate` adds to the batch
under CONTEXT names (never tables of the contract): `accepted <table>` holds a `KeyIndex` of the
keys of `<table>` accepted on other dates, `previous users` the users snapshot of the last
accepted date before the batch in the offline store, and `key hashes` an empty dict where the rule
across days leaves the row hashes of each table's keys it made, so that an accepted batch's keys
are hashed once (`batch_key_hashes`). `missing_users` is the one rule that has no
row to hold it (a user who vanished has no row in the batch); it returns reasons directly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from couponflow.contract import EVENTS, HOLDOUT_SUFFIX, TABLES, Table, coupon_cost
from expectations.derived import (
    Batch,
    Derived,
    cached,
    computable,
    joint_codes,
    nothing_broken,
    rows_of,
    taken,
)

ACCEPTED = "accepted {}"  # keys of an event table accepted on other dates
HASHES = "key hashes"  # {table: (frame, its keys' row hashes)}, filled by the rule across days
PREVIOUS_USERS = "previous users"  # the users snapshot of the last accepted date
EARLIEST_SIGNUP = pd.Timestamp("1990-01-01")  # a signup before this is a broken date
CENT = 0.011  # discounts are rounded to cents: a larger gap is not rounding
Broken = Callable[[pd.DataFrame, Batch], pd.Series]


TERMS = ["kind", "value", "min_spend", "category"]


def _coupon_terms(frame: pd.DataFrame, batch: Batch, terms: list[str]) -> pd.DataFrame | None:
    """The redeemed coupon's `terms` on each row of `frame` (NaN where the coupon is unknown or
    none), or None when the coupons table cannot be used."""
    coupons = batch.get("coupons")
    table = TABLES["coupons"]
    if not computable(coupons, table, ["coupon_id", *terms]):
        return None
    usable = [t for t in TERMS if computable(coupons, table, [t])]

    def lookup() -> pd.DataFrame:
        rows = rows_of(batch, frame, "coupon_id", table)  # -1: no or unknown coupon
        found = pd.DataFrame(index=frame.index)
        for t in usable:
            if table.dtypes[t] == "float64":  # usable: a float column
                found[t] = taken(coupons[t], rows, np.nan)
            else:
                found[t] = taken(coupons[t].astype(object), rows, None)
        return found

    return cached(batch, "coupon terms", frame, lookup)


def _in_range(frame: pd.DataFrame, table: Table, columns: list[str]) -> pd.Series:
    """Rows whose `columns` hold values inside their contract ranges: a rule across columns
    stays silent on a value the column's own range rule already names."""
    ok = pd.Series(True, index=frame.index)
    for col in table.columns:
        if col.name in columns and (col.min_value is not None or col.max_value is not None):
            values = frame[col.name]
            if col.min_value is not None:
                ok &= ~(values < col.min_value).fillna(False).astype(bool)
            if col.max_value is not None:
                ok &= ~(values > col.max_value).fillna(False).astype(bool)
    return ok


def _orders(columns: list[str], rule: Callable[[pd.DataFrame, Batch], pd.Series]) -> Broken:
    """A rule on orders that needs `columns` usable (else it stays silent), judged on rows
    whose values are inside their own ranges."""

    def broken(frame: pd.DataFrame, batch: Batch) -> pd.Series:
        table = TABLES["orders"]
        if not computable(frame, table, columns):
            return nothing_broken(frame)
        found = rule(frame, batch).fillna(False).astype(bool)
        return found & _in_range(frame, table, columns)

    return broken


def _discount_above_amount(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    terms = _coupon_terms(frame, batch, ["kind"])
    shipping = terms["kind"].eq("free_shipping") if terms is not None else nothing_broken(frame)
    return (frame["discount"] > frame["amount"] + 1e-9) & ~shipping.fillna(False).astype(bool)


def _discount_without_coupon(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    return frame["coupon_id"].isna() & (frame["discount"] > 0)


def _expected_discount(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    """What each redemption's coupon gives on the order's amount (NaN: no or unknown coupon)."""
    terms = _coupon_terms(frame, batch, ["kind", "value"])
    if terms is None:
        return pd.Series(np.nan, index=frame.index)

    def compute() -> pd.Series:
        kind = terms["kind"].to_numpy()
        known = pd.notna(kind) & terms["value"].notna().to_numpy()
        cost = coupon_cost(
            np.where(known, kind, "").astype(str),
            terms["value"].fillna(0).to_numpy(float),
            frame["amount"].to_numpy(float),
        )
        return pd.Series(np.where(known, np.round(cost, 2), np.nan), index=frame.index)

    return cached(batch, "expected discount", frame, compute)  # type: ignore[return-value]


def _discount_above_the_terms(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    """A redemption's discount above what its coupon's kind and value give on the amount (a
    percent taken twice, a flat discount above the coupon's value). A smaller one is left
    alone: prices that moved after the discount was fixed are a drift, not a loss."""
    expected = _expected_discount(frame, batch)
    return expected.notna() & (frame["discount"] > expected + CENT)


def _zero_discount_on_redemption(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    expected = _expected_discount(frame, batch)
    return (expected >= 0.01) & (frame["discount"] <= 0)


def _threshold_not_met(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    terms = _coupon_terms(frame, batch, ["kind", "min_spend"])
    if terms is None:
        return nothing_broken(frame)
    return terms["kind"].eq("threshold_off") & (frame["amount"] < terms["min_spend"] - 1e-9)


def _wrong_category(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    terms = _coupon_terms(frame, batch, ["category"])
    if terms is None:
        return nothing_broken(frame)
    scoped = terms["category"].notna() & terms["category"].ne("all")
    return scoped & terms["category"].ne(frame["category"])


def _before_offer(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    """A redemption stamped before the first offer of that coupon to that user (the training
    labels join each redemption to an earlier offer). Redemptions without an offer are the
    `occurs_in` rule's."""
    offers = batch.get("offers")
    keys = ["user_id", "coupon_id"]
    if not computable(offers, TABLES["offers"], [*keys, "ts"]):
        return nothing_broken(frame)
    codes = cached(batch, f"codes offers {keys}", frame, lambda: joint_codes(frame, offers, keys))
    if codes is None:
        first = offers.dropna(subset=["coupon_id"]).groupby(keys)["ts"].min()
        at = frame[keys].merge(first.rename("offered_at").reset_index(), how="left", on=keys)
        offered = pd.Series(at["offered_at"].to_numpy(), index=frame.index)
    else:  # the same, on integer codes of (user_id, coupon_id)
        ours, theirs = codes
        keep = offers[keys].notna().all(axis=1).to_numpy()
        first = pd.Series(offers["ts"].to_numpy()[keep]).groupby(theirs[keep]).min()
        offered = pd.Series(first.reindex(ours).to_numpy(), index=frame.index)
    return frame["coupon_id"].notna() & offered.notna() & (frame["ts"] < offered)


def _holdout_with_coupon(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    if not computable(frame, TABLES["offers"], ["policy_version", "coupon_id"]):
        return nothing_broken(frame)
    # a day has a handful of policy versions: test each once, not once a row
    codes, versions = pd.factorize(frame["policy_version"].astype("string"))
    suffixed = np.array([str(v).endswith(HOLDOUT_SUFFIX) for v in versions] + [False])
    held = pd.Series(suffixed[codes], index=frame.index)  # code -1 (null): the last, False
    if "slice" in frame.columns:  # offers that say which logging slice made them
        held |= frame["slice"].astype("string").eq("holdout").fillna(False).astype(bool)
    return (held & frame["coupon_id"].notna()).astype(bool)


def _coupons(columns: list[str], rule: Callable[[pd.DataFrame], pd.Series]) -> Broken:
    def broken(frame: pd.DataFrame, batch: Batch) -> pd.Series:
        table = TABLES["coupons"]
        if not computable(frame, table, columns):
            return nothing_broken(frame)
        return rule(frame).fillna(False).astype(bool) & _in_range(frame, table, columns)

    return broken


def _value_out_of_kind(frame: pd.DataFrame) -> pd.Series:
    """percent_off in (0, 100]; amount_off and threshold_off above 0."""
    kind, value = frame["kind"], frame["value"]
    percent = kind.eq("percent_off") & ((value <= 0) | (value > 100))
    flat = kind.isin(["amount_off", "threshold_off"]) & (value <= 0)
    return percent | flat


def _threshold_below_value(frame: pd.DataFrame) -> pd.Series:
    """A threshold coupon's min_spend is above 0 and at least its value (else it is a flat
    discount in disguise, and the discount could exceed the basket)."""
    threshold = frame["kind"].eq("threshold_off")
    return threshold & ((frame["min_spend"] <= 0) | (frame["min_spend"] < frame["value"]))


def _validity_reversed(frame: pd.DataFrame) -> pd.Series:
    return frame["valid_to"] <= frame["valid_from"]


def _signup_out_of_range(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    """A signup after the batch day (negative tenure) or before EARLIEST_SIGNUP."""
    if not computable(frame, TABLES["users"], ["signup_date"]):
        return nothing_broken(frame)
    end = batch_end(batch)
    at = frame["signup_date"]
    late = (at >= end) if end is not None else nothing_broken(frame)
    return (at.notna() & (late | (at < EARLIEST_SIGNUP))).astype(bool)


def batch_end(batch: Batch) -> pd.Timestamp | None:
    """The end of the batch day, as `validate` passes it (a one-row frame under `day`)."""
    day = batch.get("day")
    return None if day is None else pd.Timestamp(day["end"].iloc[0])


def _signup_changed(frame: pd.DataFrame, batch: Batch) -> pd.Series:
    """A user whose signup date differs from the last accepted snapshot (ids reassigned)."""
    previous = batch.get(PREVIOUS_USERS)
    users = TABLES["users"]
    if not (computable(frame, users, ["user_id", "signup_date"]) and previous is not None):
        return nothing_broken(frame)
    before = previous.drop_duplicates("user_id").set_index("user_id")["signup_date"]
    then = frame["user_id"].map(before)
    return (then.notna() & frame["signup_date"].notna() & (then != frame["signup_date"])).astype(
        bool
    )


def _keys_as_text(values: pd.Series) -> np.ndarray:
    """The non-null keys as Python strings (what the hashes are of)."""
    present = values.dropna()
    if isinstance(present.dtype, pd.StringDtype):  # already str: astype(str) would copy them
        return present.to_numpy(dtype=object)
    return present.astype(str).to_numpy(dtype=object)


def row_hashes(values: pd.Series) -> np.ndarray:
    """The 64-bit hash of each non-null key, in the rows' order (nulls left out). Without
    `categorize` (the same hashes): keys are unique, so factorising them first only costs."""
    return pd.util.hash_array(_keys_as_text(values), categorize=False)


def sorted_unique(hashes: np.ndarray) -> np.ndarray:
    """`np.unique(hashes)`, by a sort and a comparison of neighbours: numpy 2.3's `np.unique`
    goes through a hash table first, ~0.3 s for half a million hashes against ~5 ms."""
    found = np.sort(hashes)
    if len(found) > 1:
        found = found[np.concatenate(([True], found[1:] != found[:-1]))]
    return found


def key_hashes(values: pd.Series) -> np.ndarray:
    """64-bit hashes of keys (non-null), sorted and unique: what an accepted date leaves."""
    return sorted_unique(row_hashes(values))


def batch_key_hashes(batch: Batch, table: Table) -> np.ndarray:
    """`key_hashes` of the batch's `table`, reusing the row hashes the rule across days
    computed in this run (under HASHES), so an accepted batch's keys are hashed once."""
    frame = batch[table.name]
    made = batch.get(HASHES, {}).get(table.name)
    if made is not None and made[0] is frame:
        return sorted_unique(made[1])
    return key_hashes(frame[table.key])


class KeyIndex:
    """The key hashes of each accepted date: which of a batch's keys were accepted before.
    Hashing keeps a month of a million-row table at 8 bytes a key and a lookup at a binary
    search per date (or in their union); two distinct 64-bit hashes collide about once in 10^19
    pairs, so a false "already accepted" is practically impossible (and would name the key, for
    a human to see)."""

    def __init__(self, dates: dict[str, np.ndarray]) -> None:
        self.dates = {d: h for d, h in dates.items() if len(h)}
        self._union: np.ndarray | None = None  # every date's hashes, sorted (`_searched`)

    def _searched(self, queries: int) -> list[np.ndarray]:
        """The sorted arrays to search `queries` keys in: each date's, or all dates' hashes in
        one, sorted once, when the batch is large enough that one search in the union beats a
        search per date (~30 ns a key a date, against ~15 ns a hash to sort the union: at a
        month of 555k offers a day, 0.2 s instead of 0.45 s)."""
        arrays = list(self.dates.values())
        if len(arrays) < 2 or 2 * queries * len(arrays) < sum(map(len, arrays)):
            return arrays
        if self._union is None:
            self._union = np.concatenate(arrays)
            self._union.sort()
        return [self._union]

    def accepted(self, values: pd.Series, hashes: np.ndarray | None = None) -> np.ndarray:
        """Per value: whether an accepted date had it. `hashes`: `row_hashes(values)`, when
        already made."""
        present = values.notna().to_numpy()
        found = np.zeros(len(values), dtype=bool)
        if not self.dates or not present.any():
            return found
        if hashes is None:
            hashes = row_hashes(values)
        order = np.argsort(hashes)  # sorted queries keep each date's search cache-friendly:
        queries = hashes[order]  # ~10x faster than searching in the rows' order
        hit = np.zeros(len(queries), dtype=bool)
        for known in self._searched(len(queries)):
            at = np.minimum(np.searchsorted(known, queries), len(known) - 1)
            hit |= known[at] == queries
        unsorted = np.empty(len(hit), dtype=bool)
        unsorted[order] = hit
        found[present] = unsorted
        return found


def _accepted_before(table: Table) -> Broken:
    """Keys already accepted on another date (a replayed day, ids reused across days)."""

    def broken(frame: pd.DataFrame, batch: Batch) -> pd.Series:
        index = batch.get(ACCEPTED.format(table.name))
        if not isinstance(index, KeyIndex) or not computable(frame, table, [table.key]):
            return nothing_broken(frame)
        hashes = row_hashes(frame[table.key])
        made = batch.get(HASHES)
        if isinstance(made, dict) and batch.get(table.name) is frame:
            made[table.name] = (frame, hashes)  # kept by `batch_key_hashes` if accepted
        return pd.Series(index.accepted(frame[table.key], hashes), index=frame.index)

    return broken


def rules(table: Table) -> list[Derived]:
    """The rules of this module for `table`: its own table's, then the rule across days that
    every event table has."""
    own = _TABLE_RULES.get(table.name)
    found = own() if own else []
    if table.name in EVENTS:
        found.append(_accepted_on_another_day(table))
    return found


def _order_rules() -> list[Derived]:
    """The money, coupon terms and time order of each order: what a redemption may cost."""
    money = ["amount", "discount", "coupon_id"]
    return [
        Derived(
            "discount above amount",
            "discount",
            "greater than the order's amount",
            _orders(money, _discount_above_amount),
        ),
        Derived(
            "discount without coupon",
            "discount",
            "above 0 on an order that redeemed no coupon",
            _orders(money, _discount_without_coupon),
        ),
        Derived(
            "discount above the coupon's terms",
            "discount",
            "above what the redeemed coupon's kind and value give on the amount",
            _orders(money, _discount_above_the_terms),
        ),
        Derived(
            "zero discount on a redemption",
            "discount",
            "zero on an order that redeemed a coupon",
            _orders(money, _zero_discount_on_redemption),
        ),
        Derived(
            "amount below min_spend",
            "amount",
            "below the redeemed threshold coupon's min_spend",
            _orders(["amount", "coupon_id"], _threshold_not_met),
        ),
        Derived(
            "category outside the coupon's",
            "category",
            "not the category the redeemed coupon is for",
            _orders(["category", "coupon_id"], _wrong_category),
        ),
        Derived(
            "ts before the offer",
            "ts",
            "before the offer of the coupon it redeems",
            _orders(["user_id", "coupon_id", "ts"], _before_offer),
        ),
    ]


def _offer_rules() -> list[Derived]:
    """A holdout offer carries no coupon: the A/B readout compares against it."""
    return [
        Derived(
            "coupon on a holdout offer",
            "coupon_id",
            f"a coupon on a holdout offer (policy_version *{HOLDOUT_SUFFIX})",
            _holdout_with_coupon,
        )
    ]


def _coupon_rules() -> list[Derived]:
    """A coupon's terms that make sense together: its value, threshold and validity."""
    return [
        Derived(
            "value outside its kind's range",
            "value",
            "outside the kind's range (percent_off 0..100, flat discounts above 0)",
            _coupons(["kind", "value"], _value_out_of_kind),
        ),
        Derived(
            "threshold min_spend below value",
            "min_spend",
            "of a threshold_off coupon not above 0 and its value",
            _coupons(["kind", "value", "min_spend"], _threshold_below_value),
        ),
        Derived(
            "valid_to not after valid_from",
            "valid_to",
            "not after valid_from",
            _coupons(["valid_from", "valid_to"], _validity_reversed),
        ),
    ]


def _user_rules() -> list[Derived]:
    """A signup date in range and unchanged since the last snapshot (ids kept, not reused)."""
    return [
        Derived(
            "signup_date out of range",
            "signup_date",
            f"after the batch day or before {EARLIEST_SIGNUP.date()}",
            _signup_out_of_range,
        ),
        Derived(
            "signup_date changed",
            "signup_date",
            "changed since the last accepted users snapshot (ids reassigned?)",
            _signup_changed,
        ),
    ]


def _accepted_on_another_day(table: Table) -> Derived:
    """An event table's keys are new: a replayed or re-used batch would count twice."""
    return Derived(
        f"{table.key} accepted on another day",
        table.key,
        "already accepted on another date (a replayed or re-used batch)",
        _accepted_before(table),
    )


_TABLE_RULES: dict[str, Callable[[], list[Derived]]] = {
    "orders": _order_rules,
    "offers": _offer_rules,
    "coupons": _coupon_rules,
    "users": _user_rules,
}


def missing_users(batch: Batch, examples: int = 3) -> list[str]:
    """Users of the last accepted snapshot absent from this one (users are never deleted; a
    snapshot that lost them is truncated or renumbered)."""
    previous, users = batch.get(PREVIOUS_USERS), batch.get("users")
    if previous is None or not computable(users, TABLES["users"], ["user_id"]):
        return []
    gone = previous.loc[~previous["user_id"].isin(users["user_id"]), "user_id"]
    if gone.empty:
        return []
    shown = ", ".join(str(v) for v in gone.head(examples))
    return [
        f"users.user_id: {len(gone)} users of the last accepted snapshot missing (e.g. {shown})"
    ]
