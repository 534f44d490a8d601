"""Great Expectations suites derived from the data contract, one per landing-zone table.

Nothing here names a column: every expectation comes from `couponflow.contract.TABLES`, so a
contract change reaches validation without anyone editing a suite. What differs from one batch
to the next (the batch day, the ids of the batch's own users and coupons) enters through GX
suite parameters, so the stored suites stay identical from run to run.

Each expectation carries a `meta["violation"]` phrase ("not between 0.01 and 20000", "not in
users.user_id") that `expectations.validate` turns into a readable failure reason.

Dtypes are checked the way GX checks pandas types, by the scalar type of the column: a nullable
`Int64` column passes as `int64` and an object column of Python strings as `string`. Both cast
losslessly with `Table.conform`, and nulls are caught by the not-null rules.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from couponflow.contract import DIMENSIONS, TABLES, Column, Table

DAY_START = "day_start"
DAY_END = "day_end"

# How GX's pandas type check spells a contract dtype (a StringDtype column reports `str`).
GX_TYPE = {"string": "str"}


def _keys_parameter(table: str) -> str:
    """The suite parameter holding the key values of `table` in the batch being validated."""
    return f"{table}_keys"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _range(lo: float | None, hi: float | None) -> str:
    """[lo, hi] in words, for failure reasons."""
    if hi is None:
        return f"at least {_num(lo)}"
    if lo is None:
        return f"at most {_num(hi)}"
    return f"between {_num(lo)} and {_num(hi)}"


def _column_expectations(table: Table, col: Column) -> list[gxe.Expectation]:
    """The rules of one column: dtype, nulls, uniqueness, range, allowed set, day, reference."""
    name = col.name
    rules: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeOfType(column=name, type_=GX_TYPE.get(col.dtype, col.dtype))
    ]
    if not col.nullable:
        rules.append(gxe.ExpectColumnValuesToNotBeNull(column=name, meta={"violation": "null"}))
    if col.unique:
        rules.append(
            gxe.ExpectColumnValuesToBeUnique(column=name, meta={"violation": "duplicated"})
        )
    if col.min_value is not None or col.max_value is not None:
        rules.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=name,
                min_value=col.min_value,
                max_value=col.max_value,
                meta={"violation": f"not {_range(col.min_value, col.max_value)}"},
            )
        )
    if col.allowed is not None:
        rules.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=name,
                value_set=list(col.allowed),
                meta={"violation": f"not one of {', '.join(col.allowed)}"},
            )
        )
    if col.in_batch_day:
        rules.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=name,
                min_value={"$PARAMETER": DAY_START},
                max_value={"$PARAMETER": DAY_END},
                strict_max=True,
                meta={"violation": "outside the batch day"},
            )
        )
    if name in table.references:
        target = TABLES[table.references[name]]
        rules.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=name,
                value_set={"$PARAMETER": _keys_parameter(target.name)},
                meta={"violation": f"not in {target.name}.{target.key}"},
            )
        )
    return rules


def build_suite(table: Table, bounds: dict[str, Any]) -> gx.ExpectationSuite:
    """The suite of one table; `bounds` is params.yaml's `validation` section (row counts).

    Expectations go in through the constructor: `suite.add_expectation` on a suite whose name
    is already stored writes every expectation to the store one by one, which is slow.
    """
    if table.name in DIMENSIONS:
        lo, hi = 1, None
    else:
        lo, hi = bounds["min_rows"][table.name], bounds["max_rows"][table.name]
    rules: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=table.column_names, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=lo, max_value=hi, meta={"violation": f"expected {_range(lo, hi)}"}
        ),
    ]
    for col in table.columns:
        rules += _column_expectations(table, col)
    return gx.ExpectationSuite(name=table.name, expectations=rules)


def suite_parameters(day: str, batch: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Run-time values for the suites: the batch day and the ids every reference may point at.

    A referenced table that is missing (or lacks its key) offers no ids, so every reference to
    it fails, next to the reason saying the table or column is missing.
    """
    start = pd.Timestamp(day).normalize()
    params: dict[str, Any] = {
        DAY_START: start.isoformat(),
        DAY_END: (start + pd.Timedelta(days=1)).isoformat(),
    }
    for name in {ref for t in TABLES.values() for ref in t.references.values()}:
        key = TABLES[name].key
        frame = batch.get(name)
        ids = frame[key].dropna().unique().tolist() if frame is not None and key in frame else []
        params[_keys_parameter(name)] = ids
    return params
