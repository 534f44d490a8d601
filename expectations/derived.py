"""What a rule across rows or tables is, shared by the contract's rules (`expectations.suites`)
and the rules beyond the contract (`expectations.rules`): a `Derived` column holding the
offending value where the rule is broken, null where it holds, and the test of whether a
frame's columns are fit to compute one on. No GX here: both rule modules import it, and
suites gathers the rules of both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
