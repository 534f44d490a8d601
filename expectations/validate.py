"""Validate a landed batch against the data contract with Great Expectations, quarantine failures.

`validate_batch(ws, day)` reads every parquet file of `ws.landing_partition(day)`, stores one GX
suite per contract table (see `expectations.suites`; rewritten whenever the contract or the
validation params changed) in a file data context at `ws.root / "gx"`, adds the derived columns
of the rules across tables, validates each table present against the contract and against the
trailing window of accepted batches (`expectations.trailing`), renders the run into the Data
Docs and writes a JSON summary to `ws.validation_reports / f"{day}.json"`. A missing table, a
missing or renamed column or a wrong dtype is a failure reason like any other, never an
exception.

A broken CRITICAL rule is a failure: the batch is rejected. A broken WARNING rule (a statistic
drifting out of its warning band) is a warning: the batch is accepted and the warning travels
in the outcome, the JSON report, the validate task's XCom and the run summary. Results keep up
to PARTIAL sample values with the table's key, so the Data Docs page of each table names the
failing rows.

A failed batch is taken out of the landing zone whole: its partition moves to
`ws.quarantine_partition(day)` (replacing an older quarantine of that date) with the JSON result
(`validation.json`) and a short `REASONS.md` beside the parquet files, so nothing downstream can
pick it up. Fixing a batch means landing it again; the re-landed partition is validated afresh.
When it passes, the old quarantine folder is kept as evidence but gets a `SUPERSEDED.md` pointing
at the passing report, so nobody replays it by mistake.

Every batch gets a verdict. Tables are normalised as they are read (`contract.normalise`:
lossless encodings such as int32 ids, categoricals, DATE columns and zone-aware timestamps are
converted to the contract's types; values that are not scalars or mix time zones are reasons).
An exception inside a rule, a table's validation or the run is a failure reason naming where it
was raised, and the batch is quarantined. The rules across days (`expectations.rules`) see the
key hashes each accepted date left (`reports/validation/keys/<table>/<day>.npy`, forgotten when
the date is rejected, like its statistics) and the last accepted users snapshot of the offline
store. Statistics are judged against the trailing window and a fixed reference period
(`trailing.reference`), so a slow drift cannot widen its own band.

`require_valid` is the Airflow entry point: it raises `QuarantinedBatch` so the run shows red,
and logs the warnings of a batch it lets through.
"""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import great_expectations as gx
import great_expectations.execution_engine.pandas_execution_engine as gx_pandas_engine
import numpy as np
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
from great_expectations.expectations.metadata_types import FailureSeverity

from couponflow.config import Workspace
from couponflow.contract import EVENTS, TABLES, Table, normalise
from couponflow.landing import offline_days
from expectations import rules, trailing
from expectations.offline_docs import make_offline
from expectations.suites import (
    CRITICAL,
    REFERENCE,
    STATISTICS,
    TOLERANCE,
    TRAILING,
    WARNING,
    Statistic,
    build_suite,
    derive,
    suite_parameters,
)

SOURCE = "landing"  # the GX pandas data source; one dataframe asset per table
BATCH = "whole_batch"
SITE = "local_site"  # the Data Docs site GX creates with a file context
INDEX_LIMIT = 5 * 7  # the index links a week of table validations (it reads each one)
EXAMPLES = 3  # offending values quoted per reason
PARTIAL = 20  # offending values, with their rows' keys, kept per expectation in the result
STATISTIC_IDS = {s.id: s for s in STATISTICS}
log = logging.getLogger(__name__)


@dataclass
class ValidationOutcome:
    """What one validation of a landed batch found, and where the evidence is."""

    day: str
    passed: bool
    rows: dict[str, int]
    failures: list[str]  # broken critical rules: any one rejects the batch
    report_path: Path
    data_docs: Path  # the Data Docs index
    warnings: list[str] = field(default_factory=list)  # broken warning rules, batch accepted
    notes: list[str] = field(default_factory=list)  # e.g. statistics skipped for lack of history
    pages: dict[str, Path] = field(default_factory=dict)  # this run's Data Docs page per table
    statistics: dict[str, float] = field(default_factory=dict)  # observed, by statistic id
    quarantine_path: Path | None = None

    def brief(self) -> dict[str, Any]:
        """What the validate task returns (its XCom) and the run summary shows."""
        return {
            "rows": self.rows,
            "warnings": self.warnings,
            "notes": self.notes,
            "report": str(self.report_path),
            "data_docs": {name: str(page) for name, page in self.pages.items()},
        }


class QuarantinedBatch(Exception):
    """A landed batch broke the data contract and was moved to quarantine."""

    def __init__(self, outcome: ValidationOutcome) -> None:
        self.outcome = outcome
        pages = [f"{name}: {page}" for name, page in outcome.pages.items()]
        super().__init__(
            f"batch {outcome.day} failed validation and was quarantined at "
            f"{outcome.quarantine_path}:\n{_bullets(outcome.failures)}\n"
            f"Data Docs of this run:\n{_bullets(pages)}"
        )


def validate_batch(ws: Workspace, day: str) -> ValidationOutcome:
    """Validate the landing partition of `day`; on failure, move it to quarantine.

    Every landed batch gets a verdict: an exception raised while judging it (data nobody
    foresaw) is a failure reason naming where it was raised, and the batch is quarantined
    like any other failure, never left in landing without a report."""
    partition = ws.landing_partition(day)
    if not partition.is_dir():
        raise FileNotFoundError(f"no landing partition for {day} at {partition}")
    ws.params  # noqa: B018 - broken params (config.ParamsError) are not the batch's fault: raise
    try:
        return _validate(ws, day)
    except Exception as exc:
        log.exception("validation of %s raised; the batch is quarantined", day)
        return _crashed(ws, day, exc)


def _validate(ws: Workspace, day: str) -> ValidationOutcome:
    """The verdict on `day`'s landed batch, its evidence written and a failed batch moved to
    quarantine (`validate_batch` turns what this raises into a verdict too)."""
    batch, failures = _read(ws.landing_partition(day))
    cfg = ws.params["validation"]
    past = trailing.history(ws, day, int(cfg["trailing_days"]))
    windows = _windows(ws, day, cfg, past)
    context = open_context(ws)
    suites = {name: store_suite(context, table, cfg) for name, table in TABLES.items()}
    params = suite_parameters(
        day,
        {sid: w.bands for sid, w in windows[TRAILING].items()},
        {sid: w.bands for sid, w in windows.get(REFERENCE, {}).items()},
    )
    run_id = RunIdentifier(run_name=f"landing-{day}", run_time=datetime.now(UTC))
    judged = {**batch, **_across_days(ws, day), rules.HASHES: {}}
    failures += rules.missing_users(judged)
    results, warnings = _validate_tables(
        context, suites, batch, judged, day, params, run_id, windows, failures
    )
    index, pages = _rendered(ws, context, results, day, warnings)
    outcome = ValidationOutcome(
        day=day,
        passed=not failures,
        rows={name: len(frame) for name, frame in batch.items()},
        failures=failures,
        report_path=ws.validation_reports / f"{day}.json",
        data_docs=index,
        warnings=warnings,
        notes=_skipped(windows[TRAILING], past, day, cfg),
        pages=pages,
        statistics=_observed(results),
    )
    _keep(ws, outcome, judged, results)
    return outcome


def _windows(
    ws: Workspace, day: str, cfg: dict, past: list[dict[str, float]]
) -> dict[str, dict[str, trailing.Window]]:
    """The bands each statistic is judged by: the trailing window of accepted days (`past`)
    and, when it is not those same days, the fixed reference period, so a slow drift cannot
    widen its own band."""
    windows = {TRAILING: trailing.windows(past, cfg)}
    reference_days, reference = trailing.reference(ws, day, cfg)
    if "reference_days" in cfg and reference_days != trailing.trailing_days(
        ws, day, int(cfg["trailing_days"])
    ):
        windows[REFERENCE] = trailing.windows(reference, cfg, TOLERANCE[REFERENCE])
    return windows


def _validate_tables(
    context: FileDataContext,
    suites: dict[str, gx.ExpectationSuite],
    batch: dict[str, pd.DataFrame],
    judged: dict[str, Any],
    day: str,
    params: dict[str, Any],
    run_id: RunIdentifier,
    windows: dict[str, dict[str, trailing.Window]],
    failures: list[str],
) -> tuple[dict[str, ExpectationSuiteValidationResult], list[str]]:
    """Each table of the batch against its suite: the results, and the warnings; the reasons
    of broken critical rules go to `failures`. A table whose validation raises is a reason
    naming where, never a crash: the other tables are still judged."""
    results: dict[str, ExpectationSuiteValidationResult] = {}
    warnings: list[str] = []
    for name, table in TABLES.items():
        if name not in batch:
            continue
        try:
            results[name] = validate_table(
                context, suites[name], judged, day, params, run_id, failures
            )
            critical, warned = _reasons(table, batch[name], results[name], windows)
        except Exception as exc:  # a verdict, never a crash
            log.exception("validating %s of %s raised", name, day)
            results.pop(name, None)
            critical, warned = [f"{name}: validation could not run ({_where(exc)})"], []
        failures += critical
        warnings += warned
    return results, warnings


def _rendered(
    ws: Workspace,
    context: FileDataContext,
    results: dict[str, ExpectationSuiteValidationResult],
    day: str,
    warnings: list[str],
) -> tuple[Path, dict[str, Path]]:
    """`_data_docs` of this run; Data Docs that fail to render are a warning (the verdict
    stands without them), with the index where it would have been."""
    try:
        return _data_docs(context, results)
    except Exception as exc:
        log.exception("rendering the Data Docs of %s raised", day)
        warnings.append(f"Data Docs not rendered ({_where(exc)})")
        return ws.root / "gx" / "uncommitted" / "data_docs" / SITE / "index.html", {}


def _keep(
    ws: Workspace,
    outcome: ValidationOutcome,
    judged: dict[str, Any],
    results: dict[str, ExpectationSuiteValidationResult],
) -> None:
    """Leave the verdict's traces: the statistics and key hashes of an accepted batch (a
    rejected one forgets its date's), a failed batch moved to quarantine, the JSON report,
    and an older quarantine of the date marked superseded when the batch passed."""
    day = outcome.day
    trailing.record(ws, day, outcome.statistics if outcome.passed else None)
    _record_keys(ws, day, judged if outcome.passed else None)
    if not outcome.passed:
        outcome.quarantine_path = _quarantine(ws, outcome)
    _write_report(ws, outcome, results)
    if outcome.passed and ws.quarantine_partition(day).is_dir():
        _mark_superseded(ws, ws.quarantine_partition(day), outcome)


def _where(exc: BaseException) -> str:
    """An exception in one line: its type, message and the innermost frame of our code."""
    frames = list(traceback.extract_tb(exc.__traceback__))
    ours = [f for f in frames if "site-packages" not in f.filename] or frames
    at = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}" if ours else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{at}"


def _crashed(ws: Workspace, day: str, exc: BaseException) -> ValidationOutcome:
    """The verdict on a batch whose validation raised outside any one table: quarantined,
    with the exception as its reason."""
    outcome = ValidationOutcome(
        day=day,
        passed=False,
        rows={},
        failures=[f"validation could not finish ({_where(exc)})"],
        report_path=ws.validation_reports / f"{day}.json",
        data_docs=ws.root / "gx" / "uncommitted" / "data_docs" / SITE / "index.html",
    )
    trailing.record(ws, day, None)
    _record_keys(ws, day, None)
    if ws.landing_partition(day).is_dir():
        outcome.quarantine_path = _quarantine(ws, outcome)
    _write_report(ws, outcome, {})
    return outcome


def _keys_folder(ws: Workspace, table: str) -> Path:
    return ws.validation_reports / "keys" / table


def _record_keys(ws: Workspace, day: str, batch: dict[str, Any] | None) -> None:
    """Keep the key hashes of an accepted batch's event tables (`rules.KeyIndex`; those the
    rule across days made are not made again); `None` (a rejected batch) forgets the date's,
    like its statistics."""
    for name in EVENTS:
        path = _keys_folder(ws, name) / f"{day}.npy"
        frame = (batch or {}).get(name)
        key = TABLES[name].key
        if frame is None or key not in frame:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rules.batch_key_hashes(batch, TABLES[name]))


def _across_days(ws: Workspace, day: str) -> dict[str, Any]:
    """What the rules across days compare with (see `expectations.rules`): the keys of each
    event table accepted on other dates (hashes kept at acceptance; an offline date without
    them, from an older workspace, is hashed once from the store) and the last accepted users
    snapshot before `day`."""
    offline = [d for d in offline_days(ws) if d != day]
    found: dict[str, Any] = {}
    for name in EVENTS:
        folder = _keys_folder(ws, name)
        for d in offline:
            part = ws.offline / name / f"date={d}" / "part.parquet"
            if not (folder / f"{d}.npy").exists() and part.exists():
                key = TABLES[name].key
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{d}.npy", rules.key_hashes(pd.read_parquet(part)[key]))
        dates = {p.stem: p for p in folder.glob("*.npy") if p.stem != day}
        found[rules.ACCEPTED.format(name)] = rules.KeyIndex(
            {d: np.load(p) for d, p in sorted(dates.items())}
        )
    before = [d for d in offline if d < day]
    if before:
        path = ws.offline / "users" / f"date={before[-1]}" / "part.parquet"
        if path.exists():
            found[rules.PREVIOUS_USERS] = pd.read_parquet(path, columns=["user_id", "signup_date"])
    return found


def require_valid(ws: Workspace, day: str) -> ValidationOutcome:
    """Validate `day` and raise `QuarantinedBatch` (with the reasons) if it failed."""
    outcome = validate_batch(ws, day)
    if not outcome.passed:
        raise QuarantinedBatch(outcome)
    for warning in outcome.warnings:
        log.warning("batch %s accepted with a warning: %s", day, warning)
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
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow's ArrowInvalid is a ValueError; any is a verdict
            failures.append(f"{path.stem}: unreadable parquet ({_where(exc)})")
            continue
        batch[path.stem], problems = normalise(TABLES[path.stem], frame)
        failures += problems
    failures += [
        f"{name}: table missing from the landing partition"
        for name in TABLES
        if name not in batch and not (partition / f"{name}.parquet").exists()
    ]
    return batch, failures


# -- Great Expectations ----------------------------------------------------------------------
def open_context(ws: Workspace) -> FileDataContext:
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


def store_suite(context: FileDataContext, table: Table, cfg: dict[str, Any]) -> gx.ExpectationSuite:
    """The suite of `table` (`cfg`: params' `validation`), stored unless the stored one already
    holds the same rules.

    Comparing is ~20x cheaper than `suites.add_or_update`, which rewrites the file every run.
    """
    suite = build_suite(table, cfg)
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


def validate_table(
    context: FileDataContext,
    suite: gx.ExpectationSuite,
    batch: dict[str, pd.DataFrame],
    day: str,
    params: dict[str, Any],
    run_id: RunIdentifier | None = None,
    errors: list[str] | None = None,
) -> ExpectationSuiteValidationResult:
    """Validate one table of `batch` (the suite's name) against its stored suite, its derived
    columns added, keeping PARTIAL offending values with their rows' keys. A derived rule that
    raises is a reason in `errors` (see `suites.derive`)."""
    table = TABLES[suite.name]
    frame = _for_gx(derive(table, batch, day, errors))
    with _no_fingerprint():
        return _validation_definition(context, suite).run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=params,
            result_format=_result_format(table, frame),
            run_id=run_id,
        )


@contextmanager
def _no_fingerprint() -> Iterator[None]:
    """GX without its batch fingerprint: for a dataframe under HASH_THRESHOLD (1 GB) it hashes
    every row (`pd.util.hash_pandas_object`, then md5) into the result's `batch_markers`, ~0.3 s
    a million rows, and nothing here reads it (GX itself leaves it out above the threshold).
    Set for the run only; GX is not run from several threads in one process."""
    module = gx_pandas_engine
    saved = getattr(module, "HASH_THRESHOLD", None)
    module.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        if saved is None:
            del module.HASH_THRESHOLD
        else:
            module.HASH_THRESHOLD = saved


def _for_gx(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GX validates: the same values, its strings Arrow-backed (`string[pyarrow]`)
    instead of one Python object a value. GX's pandas metrics copy the whole frame for every
    column rule (to drop the column's nulls first) and test nulls value by value in an object
    column: at 1M events a day that was most of the users, sessions and offers suites' time. The
    results are the same (the values GX quotes are the same Python strings); the rules across
    tables ran on the frame as read."""
    arrow = pd.StringDtype("pyarrow")
    out = frame.copy(deep=False)
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.StringDtype) and dtype.storage == "python":
            out[name] = frame[name].astype(arrow)
    # one copy consolidates the columns into a block per dtype: GX's copies would otherwise
    # each merge the blocks of the columns `derive` added, ~0.1 s a copy at 1M rows
    return out.copy()


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


def _result_format(table: Table, frame: pd.DataFrame) -> dict[str, Any]:
    """SUMMARY with PARTIAL offending values, each with its row's key when the key is there."""
    spec: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL}
    if table.key in frame:
        spec["unexpected_index_column_names"] = [table.key]
    return spec


def _data_docs(
    context: FileDataContext, results: dict[str, ExpectationSuiteValidationResult]
) -> tuple[Path, dict[str, Path]]:
    """Render this run's suites and results into the local Data Docs site; return index.html and
    this run's page per table.

    Only this run's pages are rendered, and the index links the last INDEX_LIMIT results: a
    full rebuild re-renders, and the index reads, every stored result, slower each day.
    GX draws the table of failing rows (value, count, key) only from a COMPLETE result's full
    index list, which for a broken million-row batch would be huge; each result's sample of
    PARTIAL rows is stored as that list instead, and the page heads it "Sampled" when rows
    were left out.
    """
    suites = [ExpectationSuiteIdentifier(name=name) for name in TABLES]
    runs: dict[str, ValidationResultIdentifier] = {}
    for name, result in results.items():
        runs[name] = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
            run_id=result.meta["run_id"],
            batch_identifier=result.batch_id,
        )
        if _show_sampled_rows(result, TABLES[name].key):
            context.validation_results_store.set(runs[name], result)
    url = context.build_data_docs(resource_identifiers=[*suites, *runs.values()])[SITE]
    make_offline(_path(url).parent)  # GX's pages load their styles and scripts from CDNs
    pages = {
        name: _path(context.get_docs_sites_urls(key, site_name=SITE)[0]["site_url"])
        for name, key in runs.items()
    }
    return _path(url), pages


def _show_sampled_rows(result: ExpectationSuiteValidationResult, key: str) -> bool:
    """Hand each failed expectation's sample of rows, identified by `key`, to the Data Docs
    renderer (see `_data_docs`); whether any expectation had one."""
    changed = False
    for r in result.results:
        sample = (r.result or {}).get("partial_unexpected_index_list")
        if sample and isinstance(sample[0], dict) and "unexpected_index_list" not in r.result:
            r.result["unexpected_index_list"] = sample
            r.result.setdefault("unexpected_index_column_names", [key])
            changed = True
    return changed


def _path(url: str | None) -> Path:
    return Path(url2pathname(urlparse(url).path))


# -- readable reasons ------------------------------------------------------------------------
def _reasons(
    table: Table,
    frame: pd.DataFrame,
    result: ExpectationSuiteValidationResult,
    windows: dict[str, dict[str, trailing.Window]],
) -> tuple[list[str], list[str]]:
    """Failures and warnings: one line per broken rule, naming table and column, quoting a few
    offending values (or, for a statistic, the band and the window it came from).

    Rules that could not even be evaluated on a missing or mistyped column, statistics of an
    empty table, and a warning band broken together with its critical band are left out: a
    reason already names the cause.
    """
    failed = [r for r in result.results if not r.success]
    mistyped = {
        r.expectation_config.kwargs["column"]
        for r in failed
        if r.expectation_config.type == "expect_column_values_to_be_of_type"
    }
    critical_statistics = {
        (
            (r.expectation_config.meta or {}).get("statistic"),
            (r.expectation_config.meta or {}).get("against", TRAILING),
        )
        for r in failed
        if r.expectation_config.severity == CRITICAL
    }
    reasons: dict[FailureSeverity, list[str]] = {CRITICAL: [], WARNING: []}
    for r in failed:
        out = reasons[r.expectation_config.severity]
        out += _reason(table, frame, r, windows, mistyped, critical_statistics)
    return reasons[CRITICAL], reasons[WARNING]


def _reason(
    table: Table,
    frame: pd.DataFrame,
    r: ExpectationValidationResult,
    windows: dict[str, dict[str, trailing.Window]],
    mistyped: set[str],
    critical_statistics: set[tuple[str | None, str]],
) -> list[str]:
    """The lines of one failed expectation (see `_reasons`): none when another reason
    already names the cause."""
    config = r.expectation_config
    meta = config.meta or {}
    column = meta.get("column") or config.kwargs.get("column")
    where = f"{table.name}.{column}" if column else table.name
    statistic = STATISTIC_IDS.get(meta.get("statistic"))
    error = _error(r)
    if config.type == "expect_table_columns_to_match_set":
        mismatched = r.result["details"]["mismatched"]
        return [f"{table.name}.{c}: column missing" for c in mismatched.get("missing", [])] + [
            f"{table.name}.{c}: column not in the contract"
            for c in mismatched.get("unexpected", [])
        ]
    if column is not None and (
        column not in frame or (column in mistyped and (error or statistic))
    ):
        return []
    if statistic is not None:
        return _statistic_reason(where, frame, r, statistic, windows, critical_statistics)
    if error:
        return [f"{where}: {config.type} could not be evaluated ({error})"]
    if config.type == "expect_column_values_to_be_of_type":
        return [f"{where}: dtype {frame[column].dtype}, the contract says {table.dtypes[column]}"]
    violation = meta.get("violation", config.type)
    if config.type == "expect_table_row_count_to_be_between":
        return [f"{where}: {_count(r.result['observed_value'], 'row')}, {violation}"]
    count = _count(r.result["unexpected_count"], "value")
    return [f"{where}: {count} {violation}{_examples(r)}"]


def _statistic_reason(
    where: str,
    frame: pd.DataFrame,
    r: ExpectationValidationResult,
    statistic: Statistic,
    windows: dict[str, dict[str, trailing.Window]],
    critical_statistics: set[tuple[str | None, str]],
) -> list[str]:
    """A statistic outside its band, with the band and the window it came from; none for an
    empty table (nothing to measure) or a warning band its critical band already names."""
    config = r.expectation_config
    against = (config.meta or {}).get("against", TRAILING)
    if frame.empty or (
        config.severity == WARNING and (statistic.id, against) in critical_statistics
    ):
        return []
    observed = r.result.get("observed_value")
    if observed is None:
        return [f"{where}: {statistic.label} could not be computed"]
    lo, hi = config.kwargs["min_value"], config.kwargs["max_value"]
    window = windows[against][statistic.id]
    period = "" if against == TRAILING else " of the reference period"
    return [
        f"{where}: {statistic.label} {observed:.4g} outside the {config.severity.value} "
        f"band{period} {lo:.4g}..{hi:.4g} ({window.describe()})"
    ]


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


# -- statistics ------------------------------------------------------------------------------
def _observed(results: dict[str, ExpectationSuiteValidationResult]) -> dict[str, float]:
    """Each statistic's value in this batch, as GX observed it (tables present only)."""
    observed: dict[str, float] = {}
    for result in results.values():
        for r in result.results:
            statistic = (r.expectation_config.meta or {}).get("statistic")
            value = (r.result or {}).get("observed_value")
            if statistic and value is not None and not pd.isna(value):
                observed[statistic] = float(value)
    return observed


def _skipped(
    windows: dict[str, trailing.Window], past: list[dict[str, float]], day: str, cfg: dict
) -> list[str]:
    """A note when statistics were left unchecked for lack of accepted history."""
    missing = [s.id for s in STATISTICS if s.id not in windows]
    if not missing:
        return []
    which = "" if len(missing) == len(STATISTICS) else f" ({', '.join(missing)})"
    return [
        f"statistical checks skipped{which}: {cfg['min_trailing_days']} accepted batches needed "
        f"before {day}, {len(past)} found"
    ]


# -- evidence --------------------------------------------------------------------------------
def _write_report(
    ws: Workspace, outcome: ValidationOutcome, results: dict[str, ExpectationSuiteValidationResult]
) -> None:
    """The JSON summary in the reports folder (and beside a quarantined batch), its paths
    relative to the workspace (`Workspace.relative`)."""
    report = {
        "day": outcome.day,
        "passed": outcome.passed,
        "validated_at": datetime.now(UTC).isoformat(),
        "rows": outcome.rows,
        "failures": outcome.failures,
        "warnings": outcome.warnings,
        "notes": outcome.notes,
        "statistics": outcome.statistics,
        "data_docs": str(outcome.data_docs),
        "data_docs_pages": {name: str(page) for name, page in outcome.pages.items()},
        "quarantine": str(outcome.quarantine_path) if outcome.quarantine_path else None,
        "results": {name: result.to_json_dict() for name, result in results.items()},
    }
    text = json.dumps(ws.relative(report), indent=2, default=str)
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
    warnings = f"Warnings besides:\n\n{_bullets(outcome.warnings)}\n\n" if outcome.warnings else ""
    pages = _bullets([f"{name}: {page}" for name, page in outcome.pages.items()])
    reasons = (
        f"# Batch {outcome.day} quarantined\n\n"
        f"It broke the data contract ({_count(len(outcome.failures), 'reason')}):\n\n"
        f"{_bullets(outcome.failures)}\n\n{warnings}"
        f"Full result: `validation.json` here. Data Docs of this run, one page per table, "
        f"failing rows sampled by key:\n\n{pages}\n\n"
        f"To fix: land a corrected batch at {ws.landing_partition(outcome.day)} and re-run "
        "(paths relative to the workspace).\n"
    )
    (target / "REASONS.md").write_text(ws.relative(reasons))
    return target


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _mark_superseded(ws: Workspace, quarantined: Path, outcome: ValidationOutcome) -> None:
    (quarantined / "SUPERSEDED.md").write_text(
        f"# Superseded\n\nA re-landed batch for {outcome.day} passed validation; "
        f"see {ws.relative(outcome.report_path)} in the workspace. This folder is kept as "
        "evidence only.\n"
    )
