"""What a rule across rows or tables is, shared by the contract's rules (`expectations.suites`)
and the rules beyond the contract (`expectations.rules`): a `Derived` column holding the
offending value where the rule is broken, null where it holds, and the test of whether a
frame's columns are fit to compute one on, and the lookups several rules share within one
`suites.derive` run (`cached`: the rows a reference points at, integer codes of key columns).
No GX here: both rule modules import it, and suites gathers the rules of both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from couponflow.contract import TS, Table

Batch = dict[str, pd.DataFrame]
# Which pandas dtypes a rule across tables can compute on, per contract dtype.
COMPUTABLE: dict[str, Callable[[Any], bool]] = {
    "int64": pd.api.types.is_integer_dtype,
    "float64": pd.api.types.is_float_dtype,
    "string": pd.api.types.is_string_dtype,
    TS: pd.api.types.is_datetime64_any_dtype,
}


@dataclass(frozen=True)
class Derived:
    """A rule across rows or tables: a column computed before validation that holds the
    offending value where the rule is broken, null where it holds."""

    name: str  # the column GX sees
    column: str  # the contract column a broken rule is reported on
    violation: str  # what the offending values did, for the reason
    broken: Callable[[pd.DataFrame, Batch], pd.Series]  # rows breaking the rule


def computable(frame: pd.DataFrame | None, table: Table, columns: list[str]) -> bool:
    """Whether `frame` has `columns` in dtypes the rule can compute on. When not, the rule stays
    silent: the schema and dtype rules already name the cause."""
    if frame is None:
        return False
    for c in columns:
        if c not in frame.columns or not COMPUTABLE[table.dtypes[c]](frame[c].dtype):
            return False
        if table.dtypes[c] == TS and isinstance(frame[c].dtype, pd.DatetimeTZDtype):
            return False  # normalised at reading; zone-aware here cannot meet naive bounds
    return True


def nothing_broken(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(False, index=frame.index)


# -- lookups the rules share: each costs ~0.1-0.5 s at 1M rows, so it is made once a run ---
CACHE = "cache"  # lookups shared by the rules of one derive run (see `cached`)


def cached(batch: Batch, key: str, frame: pd.DataFrame, make: Callable[[], Any]) -> Any:
    """`make()` once per frame and derive run: `derive` hands each table's rules a fresh
    context dict with an empty CACHE, so several rules share a lookup (at 1M rows each costs
    ~0.1-0.5 s); called elsewhere, it just makes it."""
    cache = batch.get(CACHE)
    if not isinstance(cache, dict):
        return make()
    slot = (key, id(frame))
    if slot not in cache:
        cache[slot] = make()
    return cache[slot]


def rows_of(batch: Batch, frame: pd.DataFrame, column: str, target: Table) -> np.ndarray:
    """For each row of `frame`, the row of the batch's `target` table whose key is the row's
    `column` (the first such row), -1 where there is none: one hash lookup shared by every rule
    that follows that reference (the reference, the validity window, the coupon's terms)."""

    def find() -> np.ndarray:
        keys = batch[target.name][target.key]
        first = np.flatnonzero(~keys.duplicated().to_numpy())
        at = pd.Index(keys.iloc[first]).get_indexer(frame[column])
        return np.where(at >= 0, first[np.maximum(at, 0)] if len(first) else -1, -1)

    return cached(batch, f"rows of {target.name} by {column}", frame, find)


def taken(values: pd.Series, rows: np.ndarray, missing: Any) -> np.ndarray:
    """`values` at `rows` (row positions), `missing` where a row is -1."""
    array = values.to_numpy()
    if not len(array):
        return np.full(len(rows), missing, dtype=array.dtype)
    return np.where(rows >= 0, array[np.maximum(rows, 0)], missing)


def joint_codes(
    frame: pd.DataFrame, other: pd.DataFrame, keys: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """One int64 per row of `frame` and of `other` for their values of `keys` together: rows
    with equal values get equal codes (a null is a value of its own), so matching rows across
    the two tables is a lookup of integers instead of a merge of strings. None when the codes
    would not fit an int64."""
    ours, theirs, size = np.zeros(len(frame), np.int64), np.zeros(len(other), np.int64), 1
    for key in keys:
        codes, uniques = pd.factorize(pd.concat([frame[key], other[key]], ignore_index=True))
        n = len(uniques) + 1  # code 0: null
        size *= n
        if size >= 2**62:
            return None
        ours = ours * n + codes[: len(frame)] + 1
        theirs = theirs * n + codes[len(frame) :] + 1
    return ours, theirs


def among(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`np.isin(values, known)` for int64 codes, by a binary search in the sorted `known`
    (np.isin would first pass both through numpy 2.3's hash-table np.unique, ~0.3 s a
    half-million codes)."""
    known = np.sort(known)
    if not len(known):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(known, values), len(known) - 1)
    return known[at] == values
