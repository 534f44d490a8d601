"""Validate a landed batch against the data contract with Great Expectations, quarantine failures.

`validate_batch(ws, day)` reads every parquet file of `ws.landing_partition(day)`, stores one GX
suite per contract table (see `expectations.suites`; rewritten whenever the contract or the
row-count params changed) in a file data context at `ws.root / "gx"`, validates each table
present, renders the run into the Data Docs and writes a JSON summary to
`ws.validation_reports / f"{day}.json"`. A missing table, a missing or renamed column or a wrong
dtype is a failure reason like any other, never an exception.

A failed batch is taken out of the landing zone whole: its partition moves to
`ws.quarantine_partition(day)` (replacing an older quarantine of that date) with the JSON result
(`validation.json`) and a short `REASONS.md` beside the parquet files, so nothing downstream can
pick it up. Fixing a batch means landing it again; the re-landed partition is validated afresh.
When it passes, the old quarantine folder is kept as evidence but gets a `SUPERSEDED.md` pointing
at the passing report, so nobody replays it by mistake.

`require_valid` is the Airflow entry point: it raises `QuarantinedBatch` so the run shows red.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import great_expectations as gx
import pandas as pd
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.exceptions import DataContextError

from couponflow.config import Workspace
from couponflow.contract import TABLES, Table
from expectations.suites import build_suite, suite_parameters

SOURCE = "landing"  # the GX pandas data source; one dataframe asset per table
BATCH = "whole_batch"
SITE = "local_site"  # the Data Docs site GX creates with a file context
INDEX_LIMIT = 5 * 30  # the Data Docs index links the latest 30 days of table validations
EXAMPLES = 3  # offending values quoted per reason


@dataclass
class ValidationOutcome:
    """What one validation of a landed batch found, and where the evidence is."""

    day: str
    passed: bool
    rows: dict[str, int]
    failures: list[str]
    report_path: Path
    data_docs: Path
    quarantine_path: Path | None = None


class QuarantinedBatch(Exception):
    """A landed batch broke the data contract and was moved to quarantine."""

    def __init__(self, outcome: ValidationOutcome) -> None:
        self.outcome = outcome
        listed = "\n".join(f"- {reason}" for reason in outcome.failures)
        super().__init__(
            f"batch {outcome.day} failed validation and was quarantined at "
            f"{outcome.quarantine_path}:\n{listed}"
        )


def validate_batch(ws: Workspace, day: str) -> ValidationOutcome:
    """Validate the landing partition of `day`; on failure, move it to quarantine."""
    partition = ws.landing_partition(day)
    if not partition.is_dir():
        raise FileNotFoundError(f"no landing partition for {day} at {partition}")
    batch, failures = _read(partition)
    context = _context(ws)
    params = suite_parameters(day, batch)
    run_id = RunIdentifier(run_name=f"landing-{day}", run_time=datetime.now(UTC))
    results: dict[str, ExpectationSuiteValidationResult] = {}
    for name, table in TABLES.items():
        suite = _sync_suite(context, build_suite(table, ws.params["validation"]))
        if name not in batch:
            continue
        results[name] = _validation_definition(context, suite).run(
            batch_parameters={"dataframe": batch[name]},
            expectation_parameters=params,
            result_format="SUMMARY",
            run_id=run_id,
        )
        failures += _reasons(table, batch[name], results[name])
    docs = _data_docs(context, results)

    outcome = ValidationOutcome(
        day=day,
        passed=not failures,
        rows={name: len(frame) for name, frame in batch.items()},
        failures=failures,
        report_path=ws.validation_reports / f"{day}.json",
        data_docs=docs,
    )
    if not outcome.passed:
        outcome.quarantine_path = _quarantine(ws, outcome)
    _write_report(outcome, results)
    if outcome.passed and ws.quarantine_partition(day).is_dir():
        _mark_superseded(ws.quarantine_partition(day), outcome)
    return outcome


def require_valid(ws: Workspace, day: str) -> ValidationOutcome:
    """Validate `day` and raise `QuarantinedBatch` (with the reasons) if it failed."""
    outcome = validate_batch(ws, day)
    if not outcome.passed:
        raise QuarantinedBatch(outcome)
    return outcome


# -- reading ---------------------------------------------------------------------------------
def _read(partition: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The partition's tables, plus reasons for tables that are missing, unknown or unreadable."""
    batch: dict[str, pd.DataFrame] = {}
    failures: list[str] = []
    for path in sorted(partition.glob("*.parquet")):
        if path.stem not in TABLES:
            failures.append(f"{path.stem}: table not in the contract")
            continue
        try:
            batch[path.stem] = pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            failures.append(f"{path.stem}: unreadable parquet ({exc})")
    failures += [
        f"{name}: table missing from the landing partition"
        for name in TABLES
        if name not in batch and not (partition / f"{name}.parquet").exists()
    ]
    return batch, failures


# -- Great Expectations ----------------------------------------------------------------------
def _context(ws: Workspace) -> FileDataContext:
    """The workspace's GX file context, quiet (no progress bars, GX logging at WARNING) and
    with a bounded Data Docs index (building it reads every result it links)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="file", project_root_dir=ws.root)
    bars = context.variables.progress_bars
    if bars is None or bars.get("globally") is not False:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.save()
    site = context.variables.data_docs_sites[SITE]
    if site["site_index_builder"].get("validation_results_limit") != INDEX_LIMIT:
        site["site_index_builder"]["validation_results_limit"] = INDEX_LIMIT
        context.update_data_docs_site(SITE, site)
    return context


def _sync_suite(context: FileDataContext, suite: gx.ExpectationSuite) -> gx.ExpectationSuite:
    """Store `suite` unless the stored one already holds the same rules.

    Comparing is ~20x cheaper than `suites.add_or_update`, which rewrites the file every run.
    """
    try:
        stored = context.suites.get(suite.name)
    except DataContextError:
        return context.suites.add(suite)
    if _rules(stored) == _rules(suite):
        return stored
    return context.suites.add_or_update(suite)


def _rules(suite: gx.ExpectationSuite) -> list[dict[str, Any]]:
    """A suite's expectations as JSON, without the ids the store assigns."""
    rules = [e.configuration.to_json_dict() for e in suite.expectations]
    return [{k: v for k, v in rule.items() if k != "id"} for rule in rules]


def _validation_definition(
    context: FileDataContext, suite: gx.ExpectationSuite
) -> gx.ValidationDefinition:
    """The stored validation of `suite` against its table's asset, created on first use.

    Suites keep their id when updated, so a stored validation definition never goes stale.
    """
    try:
        return context.validation_definitions.get(suite.name)
    except DataContextError:
        return context.validation_definitions.add(
            gx.ValidationDefinition(
                name=suite.name, data=_batch_definition(context, suite.name), suite=suite
            )
        )


def _batch_definition(context: FileDataContext, table: str) -> BatchDefinition:
    """The whole-dataframe batch definition of `table`, created on first use."""
    sources = context.data_sources.all()
    source = sources[SOURCE] if SOURCE in sources else context.data_sources.add_pandas(SOURCE)
    if table not in source.get_asset_names():
        source.add_dataframe_asset(table)
    asset = source.get_asset(table)
    if BATCH in {b.name for b in asset.batch_definitions}:
        return asset.get_batch_definition(BATCH)
    return asset.add_batch_definition_whole_dataframe(BATCH)


def _data_docs(
    context: FileDataContext, results: dict[str, ExpectationSuiteValidationResult]
) -> Path:
    """Render this run's suites and results into the local Data Docs site; return index.html.

    Only this run's pages are rendered, and the index links the last INDEX_LIMIT results: a
    full rebuild re-renders, and the index reads, every stored result, slower each day.
    """
    suites = [ExpectationSuiteIdentifier(name=name) for name in TABLES]
    runs = [
        ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
            run_id=result.meta["run_id"],
            batch_identifier=result.batch_id,
        )
        for result in results.values()
    ]
    url = context.build_data_docs(resource_identifiers=[*suites, *runs])[SITE]
    return Path(url2pathname(urlparse(url).path))


# -- readable reasons ------------------------------------------------------------------------
def _reasons(
    table: Table, frame: pd.DataFrame, result: ExpectationSuiteValidationResult
) -> list[str]:
    """One line per broken rule, naming table and column, quoting a few offending values.

    Rules that could not even be evaluated on a missing or mistyped column are left out: the
    schema or dtype reason already names the cause.
    """
    failed = [r for r in result.results if not r.success]
    mistyped = {
        r.expectation_config.kwargs["column"]
        for r in failed
        if r.expectation_config.type == "expect_column_values_to_be_of_type"
    }
    reasons: list[str] = []
    for r in failed:
        config = r.expectation_config
        column = config.kwargs.get("column")
        where = f"{table.name}.{column}" if column else table.name
        violation = (config.meta or {}).get("violation", config.type)
        error = _error(r)
        if config.type == "expect_table_columns_to_match_set":
            mismatched = r.result["details"]["mismatched"]
            reasons += [f"{table.name}.{c}: column missing" for c in mismatched.get("missing", [])]
            reasons += [
                f"{table.name}.{c}: column not in the contract"
                for c in mismatched.get("unexpected", [])
            ]
        elif column is not None and (column not in frame or (error and column in mistyped)):
            continue
        elif error:
            reasons.append(f"{where}: {config.type} could not be evaluated ({error})")
        elif config.type == "expect_column_values_to_be_of_type":
            reasons.append(
                f"{where}: dtype {frame[column].dtype}, the contract says {table.dtypes[column]}"
            )
        elif config.type == "expect_table_row_count_to_be_between":
            reasons.append(f"{where}: {_count(r.result['observed_value'], 'row')}, {violation}")
        else:
            count = _count(r.result["unexpected_count"], "value")
            reasons.append(f"{where}: {count} {violation}{_examples(r)}")
    return reasons


def _error(result: ExpectationValidationResult) -> str | None:
    """The message of an exception GX caught while evaluating one expectation, if any."""
    info = result.exception_info or {}
    found = [info] if "raised_exception" in info else list(info.values())
    messages = [i["exception_message"] for i in found if i.get("raised_exception")]
    return messages[0] if messages else None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _examples(result: ExpectationValidationResult) -> str:
    values = [v for v in result.result.get("partial_unexpected_list", []) if not pd.isna(v)]
    shown = list(dict.fromkeys(repr(v) if isinstance(v, str) else str(v) for v in values))
    return f" (e.g. {', '.join(shown[:EXAMPLES])})" if shown else ""


# -- evidence --------------------------------------------------------------------------------
def _write_report(
    outcome: ValidationOutcome, results: dict[str, ExpectationSuiteValidationResult]
) -> None:
    """The JSON summary in the reports folder (and beside a quarantined batch)."""
    report = {
        "day": outcome.day,
        "passed": outcome.passed,
        "validated_at": datetime.now(UTC).isoformat(),
        "rows": outcome.rows,
        "failures": outcome.failures,
        "data_docs": str(outcome.data_docs),
        "quarantine": str(outcome.quarantine_path) if outcome.quarantine_path else None,
        "results": {name: result.to_json_dict() for name, result in results.items()},
    }
    text = json.dumps(report, indent=2, default=str)
    outcome.report_path.parent.mkdir(parents=True, exist_ok=True)
    outcome.report_path.write_text(text)
    if outcome.quarantine_path:
        (outcome.quarantine_path / "validation.json").write_text(text)


def _quarantine(ws: Workspace, outcome: ValidationOutcome) -> Path:
    """Move the whole landing partition out of reach, with the reasons beside it."""
    target = ws.quarantine_partition(outcome.day)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(ws.landing_partition(outcome.day), target)
    listed = "\n".join(f"- {reason}" for reason in outcome.failures)
    (target / "REASONS.md").write_text(
        f"# Batch {outcome.day} quarantined\n\n"
        f"It broke the data contract ({_count(len(outcome.failures), 'reason')}):\n\n"
        f"{listed}\n\n"
        f"Full result: `validation.json` here; Data Docs: {outcome.data_docs}\n"
        f"To fix: land a corrected batch at {ws.landing_partition(outcome.day)} and re-run.\n"
    )
    return target


def _mark_superseded(quarantined: Path, outcome: ValidationOutcome) -> None:
    (quarantined / "SUPERSEDED.md").write_text(
        f"# Superseded\n\nA re-landed batch for {outcome.day} passed validation; "
        f"see {outcome.report_path}. This folder is kept as evidence only.\n"
    )
