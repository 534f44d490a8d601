"""Great Expectations suites derived from the data contract, one per landing-zone table.

Contract rules come from `couponflow.contract.TABLES`, so a contract change reaches validation
without anyone editing a suite: schema, dtypes, nulls, unique keys, ranges and sets, timestamps
inside the batch day, row counts, and the rules across tables (references, validity windows,
redemptions of offered coupons). What differs from one batch to the next (the batch day, the
trailing bands of the statistics) enters through GX suite parameters, so the stored suites stay
identical from run to run.

Rules across rows or tables are evaluated in pandas by `derive` into extra columns, each holding
the offending value where its rule is broken and null where it holds; GX expects them null. GX
used to get the referenced ids as a suite parameter, which it copies element by element on every
metric lookup (37 s for 100k orders against 100k users); a hash lookup in pandas is milliseconds,
and the failing values and rows still show in the result and the Data Docs.

Statistics (`STATISTICS`: volume of every table, redemption rate, mean basket, share of new
users) are checked against the trailing window of accepted batches (`expectations.trailing`)
and against a fixed reference period (the first `reference_days` accepted batches, skipped while
it is the trailing window itself): each has a warning band and a wider critical band. Without
enough history their bounds are None and GX lets any value pass; the outcome notes that the
checks were skipped.

Severity is declared here, on each expectation (GX's own `severity` field): every contract rule
keeps GX's default, CRITICAL (the batch is quarantined); a statistic outside its warning band is
a WARNING (the batch goes through, the warning is reported), outside its critical band CRITICAL.

Each expectation's `meta` carries what `expectations.validate` needs for a readable reason:
`violation` ("not between 0.01 and 20000"), `column` (the contract column a derived column speaks
for) and `statistic` (the statistic's id).

Dtypes are checked the way GX checks pandas types, by the scalar type of the column: a nullable
`Int64` column passes as `int64` and an object column of Python strings as `string`. Both cast
losslessly with `Table.conform`, and nulls are caught by the not-null rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.expectations.metadata_types import FailureSeverity

from couponflow.contract import DIMENSIONS, EVENTS, TABLES, Column, Table
from expectations import rules as across  # money, terms, time order, identity across days
from expectations.derived import (
    CACHE,
    Batch,
    Derived,
    among,
    cached,
    computable,
    joint_codes,
    nothing_broken,
    rows_of,
    taken,
)

DAY_START = "day_start"
DAY_END = "day_end"
CRITICAL = FailureSeverity.CRITICAL  # the batch is quarantined
WARNING = FailureSeverity.WARNING  # the batch goes through; the warning is reported
BANDS = (WARNING, CRITICAL)
TRAILING = "trailing"  # bands from the last `trailing_days` accepted batches
REFERENCE = "reference"  # bands from a fixed reference period: slow drift cannot widen them
TOLERANCE = {TRAILING: "tolerance", REFERENCE: "reference_tolerance"}  # their params keys

# How GX's pandas type check spells a contract dtype (a StringDtype column reports `str`).
GX_TYPE = {"string": "str"}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _range(lo: float | None, hi: float | None) -> str:
    """[lo, hi] in words, for failure reasons."""
    if hi is None:
        return f"at least {_num(lo)}"
    if lo is None:
        return f"at most {_num(hi)}"
    return f"between {_num(lo)} and {_num(hi)}"


# -- rules across rows and tables, as derived columns ------------------------------------------


def _unknown(table: Table, column: str) -> Callable[[pd.DataFrame, Batch], pd.Series]:
    """Values not among the referenced table's keys (a missing table offers none)."""
    target = TABLES[table.references[column]]

    def broken(frame: pd.DataFrame, batch: Batch) -> pd.Series:
        if not computable(frame, table, [column]):
            return nothing_broken(frame)
        other = batch.get(target.name)
        if other is None or target.key not in other:
            return frame[column].notna()
        return frame[column].notna() & (rows_of(batch, frame, column, target) < 0)

    return broken


def _outside(table: Table, column: str) -> Callable[[pd.DataFrame, Batch], pd.Series]:
    """Rows whose time is outside the validity window of the row `column` references (unknown
    references are the reference rule's to report)."""
    target = TABLES[table.references[column]]
    time, start, end = table.within_validity[column]

    def broken(frame: pd.DataFrame, batch: Batch) -> pd.Series:
        other = batch.get(target.name)
        if not (
            computable(frame, table, [column, time])
            and computable(other, target, [target.key, start, end])
        ):
            return nothing_broken(frame)
        rows = rows_of(batch, frame, column, target)
        never = np.datetime64("NaT", "ns")
        lo, hi = (pd.Series(taken(other[e], rows, never), index=frame.index) for e in (start, end))
        at = frame[time]
        return lo.notna() & hi.notna() & at.notna() & ~((lo <= at) & (at < hi))

    return broken


def _absent(table: Table, column: str) -> Callable[[pd.DataFrame, Batch], pd.Series]:
    """Rows whose value (with the `same` columns) has no matching row in the other table."""
    name, same = table.occurs_in[column]
    target, keys = TABLES[name], [*same, column]

    def broken(frame: pd.DataFrame, batch: Batch) -> pd.Series:
        other = batch.get(name)
        if not (computable(frame, table, keys) and computable(other, target, keys)):
            return nothing_broken(frame)
        present = frame[keys].notna().all(axis=1)
        codes = cached(
            batch, f"codes {name} {keys}", frame, lambda: joint_codes(frame, other, keys)
        )
        if codes is not None:
            return present & ~among(codes[0], codes[1])
        found = (
            frame[keys]
            .merge(other[keys].drop_duplicates(), how="left", on=keys, indicator=True)["_merge"]
            .eq("both")
            .to_numpy()
        )
        return present & ~found

    return broken


def derived_rules(table: Table) -> list[Derived]:
    """The rules across tables the contract declares for `table`."""
    rules = []
    for col, target in table.references.items():
        ref = f"{target}.{TABLES[target].key}"
        rules.append(Derived(f"{col} not in {ref}", col, f"not in {ref}", _unknown(table, col)))
    for col, (time, start, end) in table.within_validity.items():
        target = table.references[col]
        rules.append(
            Derived(
                f"{col} outside its {start}..{end}",
                col,
                f"used at {time} outside {target}.{start}..{end}",
                _outside(table, col),
            )
        )
    for col, (other, same) in table.occurs_in.items():
        where = f"{other} for the same {', '.join(same)}"
        rules.append(Derived(f"{col} not in {where}", col, f"not in {where}", _absent(table, col)))
    return rules + across.rules(table)


# -- statistics against the trailing window ----------------------------------------------------
@dataclass(frozen=True)
class Statistic:
    """A figure of one table, compared with the same figure over the trailing accepted batches."""

    name: str  # its tolerances in params.yaml (validation.tolerance)
    table: str
    column: str | None  # the contract column it summarises; None: the table's rows
    measure: str  # "rows", "non_null_share", "mean" or "share_in_batch_day"
    relative: bool  # tolerances are factors of the trailing mean (else absolute)

    @property
    def id(self) -> str:
        return f"{self.table}.{self.name}"

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    @property
    def gx_column(self) -> str | None:
        """The column GX summarises: a derived 0/1 column for shares inside the batch day."""
        if self.measure == "share_in_batch_day":
            return f"{self.column} in batch day"
        return self.column

    def parameter(self, severity: FailureSeverity, end: str, against: str = TRAILING) -> str:
        """The suite parameter holding one bound (`end`: min or max) of one band, of the
        trailing window or (`against` REFERENCE) of the fixed reference period."""
        infix = "" if against == TRAILING else f"{against}_"
        return f"{self.table}_{self.name}_{infix}{severity.value}_{end}"


STATISTICS: tuple[Statistic, ...] = (
    *(Statistic("volume", name, None, "rows", relative=True) for name in (*EVENTS, *DIMENSIONS)),
    Statistic("redemption_rate", "orders", "coupon_id", "non_null_share", relative=False),
    Statistic("mean_basket", "orders", "amount", "mean", relative=True),
    Statistic("new_user_share", "users", "signup_date", "share_in_batch_day", relative=False),
)


def _statistic_rules(stat: Statistic, cfg: dict[str, Any]) -> list[gxe.Expectation]:
    """A statistic's warning and critical bands, against the trailing window and against the
    fixed reference period, bounds from suite parameters."""
    kind = "a factor 1 + t of" if stat.relative else "t of"
    period = {
        TRAILING: f"the last {cfg['trailing_days']} accepted batches",
        REFERENCE: f"the first {cfg.get('reference_days', 'reference_days')} accepted batches "
        f"(from {cfg.get('reference_from') or 'the first'})",
    }
    rules: list[gxe.Expectation] = []
    for against in (TRAILING, REFERENCE):
        for severity in BANDS:
            # a workspace made before the reference period existed: the trailing tolerances
            tolerance = cfg.get(TOLERANCE[against], cfg["tolerance"])[stat.name][severity.value]
            bounds = {
                "min_value": {"$PARAMETER": stat.parameter(severity, "min", against)},
                "max_value": {"$PARAMETER": stat.parameter(severity, "max", against)},
                "severity": severity,
                "meta": {"statistic": stat.id, "column": stat.column, "against": against},
                "notes": (
                    f"{severity.value} band of the {stat.label} against {against}: the wider of "
                    f"mean ± {cfg['sigmas'][severity.value]} sd and within {kind} the mean "
                    f"(t = {tolerance}) over {period[against]}; no bounds before "
                    f"{cfg['min_trailing_days']} accepted batches"
                ),
            }
            if stat.measure == "rows":
                rules.append(gxe.ExpectTableRowCountToBeBetween(**bounds))
            elif stat.measure == "non_null_share":
                rules.append(
                    gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                        column=stat.column, **bounds
                    )
                )
            else:
                rules.append(gxe.ExpectColumnMeanToBeBetween(column=stat.gx_column, **bounds))
    return rules


# -- suites ------------------------------------------------------------------------------------
def derived_columns(table: Table) -> list[str]:
    """The columns `derive` adds to `table` before validation."""
    names = [rule.name for rule in derived_rules(table)]
    return names + [
        s.gx_column
        for s in STATISTICS
        if s.table == table.name and s.measure == "share_in_batch_day"
    ]


def derive(table: Table, batch: Batch, day: str, errors: list[str] | None = None) -> pd.DataFrame:
    """`table`'s frame of the batch with the derived columns added (a new frame).

    A rule that raises on data it did not foresee is a failure reason naming its table and
    column, appended to `errors` (re-raised when no list is given), never a crash; its column
    is left null."""
    frame = batch[table.name]
    start = pd.Timestamp(day).normalize()
    context = {**batch, "day": pd.DataFrame({"end": [start + pd.Timedelta(days=1)]})}
    context[CACHE] = {}  # type: ignore[assignment]  # lookups shared by the rules (`cached`)
    added: dict[str, pd.Series] = {}
    for rule in derived_rules(table):
        # all null as float NaN unless a row breaks the rule: GX tests an object column's
        # nulls value by value and copies it pointer by pointer, a float column's at once
        values = pd.Series(np.nan, index=frame.index)
        try:
            broken = pd.Series(rule.broken(frame, context), index=frame.index)
            broken = broken.fillna(False).astype(bool)
            if broken.any():
                offending = pd.Series(None, index=frame.index, dtype=object)
                offending[broken] = frame.loc[broken, rule.column].astype(object)
                values = offending
        except Exception as exc:
            if errors is None:
                raise
            errors.append(
                f"{table.name}.{rule.column}: rule '{rule.name}' could not be evaluated "
                f"({type(exc).__name__}: {exc})"
            )
        added[rule.name] = values
    for stat in STATISTICS:
        if stat.table == table.name and stat.measure == "share_in_batch_day":
            try:
                added[stat.gx_column] = _in_batch_day(frame, table, stat.column, day)
            except Exception as exc:
                if errors is None:
                    raise
                errors.append(
                    f"{table.name}.{stat.column}: {stat.label} could not be computed "
                    f"({type(exc).__name__}: {exc})"
                )
                added[stat.gx_column] = pd.Series(float("nan"), index=frame.index)
    return frame.assign(**added)


def _in_batch_day(frame: pd.DataFrame, table: Table, column: str, day: str) -> pd.Series:
    """1.0 where `column` falls inside the batch day, 0.0 elsewhere (NaN if unusable)."""
    if not computable(frame, table, [column]):
        return pd.Series(float("nan"), index=frame.index)
    start = pd.Timestamp(day).normalize()
    at = frame[column]
    return ((at >= start) & (at < start + pd.Timedelta(days=1))).astype(float)


def _column_expectations(col: Column) -> list[gxe.Expectation]:
    """The rules of one column: dtype, nulls, uniqueness, range, allowed set, batch day."""
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
    return rules


def build_suite(table: Table, cfg: dict[str, Any]) -> gx.ExpectationSuite:
    """The suite of one table; `cfg` is params.yaml's `validation` section.

    Expectations go in through the constructor: `suite.add_expectation` on a suite whose name
    is already stored writes every expectation to the store one by one, which is slow.
    """
    if table.name in DIMENSIONS:
        lo, hi = 1, None
    else:
        lo, hi = cfg["min_rows"][table.name], cfg["max_rows"][table.name]
    rules: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*table.column_names, *derived_columns(table)], exact_match=True
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=lo, max_value=hi, meta={"violation": f"expected {_range(lo, hi)}"}
        ),
    ]
    for col in table.columns:
        rules += _column_expectations(col)
    rules += [
        gxe.ExpectColumnValuesToBeNull(
            column=rule.name, meta={"violation": rule.violation, "column": rule.column}
        )
        for rule in derived_rules(table)
    ]
    for stat in STATISTICS:
        if stat.table == table.name:
            rules += _statistic_rules(stat, cfg)
    return gx.ExpectationSuite(name=table.name, expectations=rules)


def suite_parameters(
    day: str,
    bands: dict[str, dict[FailureSeverity, tuple[float, float]]],
    reference: dict[str, dict[FailureSeverity, tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    """Run-time values for the suites: the batch day and each statistic's bands, of the
    trailing window and of the reference period (None, so any value passes, for a statistic
    without enough accepted history, or a reference that is the trailing window itself)."""
    start = pd.Timestamp(day).normalize()
    params: dict[str, Any] = {
        DAY_START: start.isoformat(),
        DAY_END: (start + pd.Timedelta(days=1)).isoformat(),
    }
    for against, found in ((TRAILING, bands), (REFERENCE, reference or {})):
        for stat in STATISTICS:
            for severity in BANDS:
                lo, hi = found.get(stat.id, {}).get(severity, (None, None))
                params[stat.parameter(severity, "min", against)] = lo
                params[stat.parameter(severity, "max", against)] = hi
    return params
