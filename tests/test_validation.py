"""Landing-zone validation with real Great Expectations: a clean simulated day passes, each kind
of corruption (hand-made and every fault of `couponflow.faults`) fails with a critical reason
naming table and column and is quarantined whole, a fixed re-landed batch passes, statistics
are held to the trailing window of accepted batches (drift warns, a spike quarantines), and a
month of clean days is neither rejected nor warned about."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html import unescape

import numpy as np
import pandas as pd
import pytest

from couponflow.config import PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.contract import TABLES
from couponflow.faults import FAULT_TARGETS, FAULTS
from couponflow.world import World
from expectations import trailing
from expectations.suites import (
    CRITICAL,
    STATISTICS,
    WARNING,
    build_suite,
    derive,
    derived_columns,
)
from expectations.validate import QuarantinedBatch, require_valid, validate_batch
from tests.helpers.batches import (
    DAY,
    Batch,
    copy,
    days_from,
    land,
    make_workspace,
    negative_amounts,
)

pytestmark = pytest.mark.integration  # Great Expectations validates real batches


@pytest.fixture(scope="module")
def clean_batch() -> Batch:
    """One simulated day of a 300-user world (simulated once, copied per test)."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", 300)
    return World(params["world"]).simulate_day(DAY)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return make_workspace(tmp_path, 300)


# -- corruptions: each returns the `table.column` its reason must name -------------------------
def null_order_users(b: Batch) -> str:
    b["orders"]["user_id"] = b["orders"]["user_id"].astype("Int64")
    b["orders"].loc[:1, "user_id"] = pd.NA
    return "orders.user_id"


def unknown_offer_coupon(b: Batch) -> str:
    b["offers"].loc[0, "coupon_id"] = "C999"
    return "offers.coupon_id"


def unknown_session_user(b: Batch) -> str:
    b["sessions"].loc[0, "user_id"] = 10**9
    return "sessions.user_id"


def missing_column(b: Batch) -> str:
    b["orders"] = b["orders"].drop(columns=["discount"])
    return "orders.discount"


def renamed_column(b: Batch) -> str:
    b["sessions"] = b["sessions"].rename(columns={"page_views": "pageviews"})
    return "sessions.page_views"


def timestamps_outside_day(b: Batch) -> str:
    b["sessions"].loc[:1, "ts"] = pd.Timestamp(DAY) + pd.Timedelta(days=1)
    return "sessions.ts"


def duplicate_order_ids(b: Batch) -> str:
    b["orders"].loc[1, "order_id"] = b["orders"].loc[0, "order_id"]
    return "orders.order_id"


def wrong_dtype(b: Batch) -> str:
    b["orders"]["amount"] = b["orders"]["amount"].astype(str)
    return "orders.amount"


def missing_table(b: Batch) -> str:
    del b["coupons"]
    return "coupons"


def redeemed_before_valid(b: Batch) -> str:
    redeemed = b["orders"]["coupon_id"].dropna().iloc[0]
    coupons = b["coupons"]
    coupons.loc[coupons["coupon_id"] == redeemed, "valid_from"] = pd.Timestamp(DAY) + pd.Timedelta(
        days=1
    )
    return "orders.coupon_id"


def redeemed_without_offer(b: Batch) -> str:
    never_offered = min(set(b["users"]["user_id"]) - set(b["offers"]["user_id"]))
    b["orders"].loc[0, "user_id"] = never_offered
    b["orders"].loc[0, "coupon_id"] = b["coupons"]["coupon_id"].iloc[0]
    return "orders.coupon_id"


CORRUPTIONS: list[Callable[[Batch], str]] = [
    null_order_users,
    negative_amounts,
    unknown_offer_coupon,
    unknown_session_user,
    missing_column,
    renamed_column,
    timestamps_outside_day,
    duplicate_order_ids,
    wrong_dtype,
    missing_table,
    redeemed_before_valid,
    redeemed_without_offer,
]


def test_clean_batch_passes(ws: Workspace, clean_batch: Batch) -> None:
    land(ws, clean_batch)
    outcome = validate_batch(ws, DAY)

    assert outcome.passed, outcome.failures
    assert outcome.failures == [] and outcome.warnings == []
    assert outcome.rows == {name: len(frame) for name, frame in clean_batch.items()}
    assert ws.landing_partition(DAY).is_dir()
    assert not ws.quarantine_partition(DAY).exists()
    assert outcome.data_docs.is_file() and outcome.data_docs.name == "index.html"
    assert set(outcome.pages) == set(TABLES) and all(p.is_file() for p in outcome.pages.values())
    assert all(DAY in str(page) for page in outcome.pages.values())  # this run's pages
    report = json.loads(outcome.report_path.read_text())
    assert outcome.report_path == ws.validation_reports / f"{DAY}.json"
    assert report["passed"] is True
    assert set(report["results"]) == set(TABLES)
    assert all(result["success"] for result in report["results"].values())
    # paths relative to the workspace, so the report stays true when it moves
    pages = {name: str(p.relative_to(ws.root)) for name, p in outcome.pages.items()}
    assert report["data_docs_pages"] == pages
    assert str(ws.root) not in outcome.report_path.read_text()
    stored_suites = {p.stem for p in (ws.root / "gx" / "expectations").glob("*.json")}
    assert stored_suites == set(TABLES)
    # No history yet: the statistics are measured and kept, not judged, and the report says so.
    assert set(outcome.statistics) == {s.id for s in STATISTICS}
    assert outcome.notes and "statistical checks skipped" in outcome.notes[0]
    assert trailing.history(ws, "2026-12-31", 14) == [outcome.statistics]
    brief = outcome.brief()  # the validate task's XCom
    assert json.loads(json.dumps(brief)) == brief
    assert brief["warnings"] == [] and set(brief["data_docs"]) == set(TABLES)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corrupted_batch_is_quarantined(
    ws: Workspace, clean_batch: Batch, corrupt: Callable[[Batch], str]
) -> None:
    batch = copy(clean_batch)
    where = corrupt(batch)
    land(ws, batch)
    outcome = validate_batch(ws, DAY)

    assert not outcome.passed
    assert any(reason.startswith(f"{where}:") for reason in outcome.failures), outcome.failures
    quarantined = ws.quarantine_partition(DAY)
    assert outcome.quarantine_path == quarantined
    assert not ws.landing_partition(DAY).exists()
    assert {p.name for p in quarantined.glob("*.parquet")} == {f"{n}.parquet" for n in batch}
    reasons = (quarantined / "REASONS.md").read_text()
    assert where in reasons and str(ws.root) not in reasons
    assert all(str(page.relative_to(ws.root)) in reasons for page in outcome.pages.values())
    result = json.loads((quarantined / "validation.json").read_text())
    assert result["passed"] is False
    assert result["failures"] == outcome.failures
    assert json.loads(outcome.report_path.read_text()) == result
    assert trailing.history(ws, "2026-12-31", 14) == []  # a rejected batch leaves no statistics


def test_clean_parts_of_a_corrupted_batch_raise_no_reasons(
    ws: Workspace, clean_batch: Batch
) -> None:
    batch = copy(clean_batch)
    negative_amounts(batch)
    land(ws, batch)

    outcome = validate_batch(ws, DAY)

    assert outcome.failures == ["orders.amount: 3 values not between 0.01 and 20000 (e.g. -5.0)"]
    assert outcome.warnings == []


def test_the_data_docs_page_shows_the_failing_rows(ws: Workspace, clean_batch: Batch) -> None:
    batch = copy(clean_batch)
    negative_amounts(batch)
    land(ws, batch)

    outcome = validate_batch(ws, DAY)

    page = outcome.pages["orders"]
    assert page.is_file() and DAY in str(page)
    text = unescape(re.sub(r"<[^>]+>", " ", page.read_text()))
    bad = batch["orders"].loc[:2, "order_id"].tolist()
    assert all(order_id in text for order_id in bad), "failing rows are not named by key"
    assert "order_id" in text and "-5.0" in text


def test_fixed_batch_passes_after_quarantine(ws: Workspace, clean_batch: Batch) -> None:
    batch = copy(clean_batch)
    unknown_offer_coupon(batch)
    land(ws, batch)
    assert not validate_batch(ws, DAY).passed

    land(ws, clean_batch)
    outcome = validate_batch(ws, DAY)

    assert outcome.passed, outcome.failures
    assert ws.landing_partition(DAY).is_dir()
    assert json.loads(outcome.report_path.read_text())["passed"] is True
    assert (ws.quarantine_partition(DAY) / "SUPERSEDED.md").is_file()


def test_require_valid_raises_with_the_reasons(ws: Workspace, clean_batch: Batch) -> None:
    batch = copy(clean_batch)
    duplicate_order_ids(batch)
    land(ws, batch)

    with pytest.raises(QuarantinedBatch, match=r"orders\.order_id: 2 values duplicated") as err:
        require_valid(ws, DAY)

    assert err.value.outcome.quarantine_path == ws.quarantine_partition(DAY)
    assert str(err.value.outcome.pages["orders"]) in str(err.value)
    land(ws, clean_batch)
    assert require_valid(ws, DAY).passed


def test_nothing_landed_is_an_error_not_a_quarantine(ws: Workspace) -> None:
    with pytest.raises(FileNotFoundError, match=DAY):
        validate_batch(ws, DAY)


@pytest.mark.parametrize("name", list(TABLES))
def test_suites_cover_every_contract_column(ws: Workspace, name: str) -> None:
    suite = build_suite(TABLES[name], ws.params["validation"])
    columns = {e.column for e in suite.expectations if hasattr(e, "column")}
    assert columns == set(TABLES[name].column_names) | set(derived_columns(TABLES[name]))
    severities = {e.severity for e in suite.expectations}
    has_statistics = any(s.table == name for s in STATISTICS)
    assert severities == ({CRITICAL, WARNING} if has_statistics else {CRITICAL})


def test_statistics_summarise_contract_columns() -> None:
    for stat in STATISTICS:
        assert stat.column is None or stat.column in TABLES[stat.table].column_names


# -- rules across tables, in pandas --------------------------------------------------------------
def test_derived_columns_hold_the_offending_values(clean_batch: Batch) -> None:
    batch = copy(clean_batch)
    redeemed_without_offer(batch)  # order 0 now redeems the first coupon...
    redeemed_before_valid(batch)  # ... which is not valid yet
    unknown_session_user(batch)

    orders = derive(TABLES["orders"], batch, DAY)
    sessions = derive(TABLES["sessions"], batch, DAY)

    unknown = sessions["user_id not in users.user_id"].dropna()
    assert unknown.tolist() == [10**9]
    outside = orders["coupon_id outside its valid_from..valid_to"].dropna()
    assert len(outside) and outside.nunique() == 1
    absent = orders["coupon_id not in offers for the same user_id"].dropna()
    assert absent.index.tolist() == [0]
    assert orders["user_id not in users.user_id"].isna().all()


def test_derived_rules_stay_silent_on_mistyped_columns(clean_batch: Batch) -> None:
    batch = copy(clean_batch)
    batch["sessions"]["user_id"] = batch["sessions"]["user_id"].astype(str)  # the dtype rule's
    batch["orders"]["ts"] = batch["orders"]["ts"].astype(str)

    sessions = derive(TABLES["sessions"], batch, DAY)
    orders = derive(TABLES["orders"], batch, DAY)

    assert sessions["user_id not in users.user_id"].isna().all()
    assert orders["coupon_id outside its valid_from..valid_to"].isna().all()


# -- the trailing window ------------------------------------------------------------------------
def test_bands_are_the_wider_of_sigmas_and_tolerance(ws: Workspace) -> None:
    cfg = ws.params["validation"]
    needed = int(cfg["min_trailing_days"])
    calm = [{"orders.mean_basket": 50.0, "orders.redemption_rate": 0.2} for _ in range(needed)]
    noisy = [{"orders.mean_basket": 50.0 + (10 if i % 2 else -10)} for i in range(needed + 1)]

    few = trailing.windows(calm[:-1], cfg)
    window = trailing.windows(calm, cfg)["orders.mean_basket"]
    rate = trailing.windows(calm, cfg)["orders.redemption_rate"]
    wide = trailing.windows(noisy, cfg)["orders.mean_basket"]

    assert few == {}  # fewer accepted batches than min_trailing_days: nothing is judged
    t = cfg["tolerance"]
    assert window.sd == 0 and window.bands[WARNING] == pytest.approx(
        (50 / (1 + t["mean_basket"]["warning"]), 50 * (1 + t["mean_basket"]["warning"]))
    )
    assert rate.bands[CRITICAL] == pytest.approx((0.0, 0.2 + t["redemption_rate"]["critical"]))
    k = cfg["sigmas"]["critical"]
    assert wide.bands[CRITICAL][1] == pytest.approx(max(50 + k * wide.sd, 50 * 2))


# -- the fault injector and the trailing window, on a world with accepted history ---------------
HISTORY_USERS = 2000  # big enough for a redemption rate with a tight daily spread


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Workspace, str, Batch]:
    """A workspace whose last `min_trailing_days` days were accepted, and the next day's clean
    batch (not landed). Tests land that day; rejected batches leave the history unchanged."""
    ws = make_workspace(tmp_path_factory.mktemp("history"), HISTORY_USERS)
    world = World(ws.params["world"])
    *past, day = days_from("2026-01-01", int(ws.params["validation"]["min_trailing_days"]) + 1)
    for d in past:
        land(ws, world.simulate_day(d), d)
        outcome = validate_batch(ws, d)
        assert outcome.passed and not outcome.warnings, (outcome.failures, outcome.warnings)
    return ws, day, world.simulate_day(day)


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_fault_is_quarantined_as_critical(history, name: str) -> None:
    ws, day, clean = history
    land(ws, FAULTS[name](clean, np.random.default_rng(0)), day)

    outcome = validate_batch(ws, day)

    assert not outcome.passed and outcome.quarantine_path == ws.quarantine_partition(day)
    for target in FAULT_TARGETS[name]:
        assert any(r.startswith(f"{target}:") for r in outcome.failures), outcome.failures
    assert not outcome.notes  # the statistics were judged, not skipped
    if name == "redemption_spike":  # rows valid one by one: the trailing window catches it
        assert any(
            r.startswith("orders.coupon_id: redemption rate") and "critical band" in r
            for r in outcome.failures
        ), outcome.failures


def test_mild_drift_warns_and_the_batch_goes_through(history) -> None:
    ws, day, clean = history
    cfg = ws.params["validation"]
    window = trailing.windows(trailing.history(ws, day, cfg["trailing_days"]), cfg)
    warn_hi = window["orders.mean_basket"].bands[WARNING][1]
    critical_hi = window["orders.mean_basket"].bands[CRITICAL][1]
    drifted = copy(clean)
    orders = drifted["orders"]
    orders["amount"] = orders["amount"] * (warn_hi + critical_hi) / 2 / orders["amount"].mean()
    orders["amount"] = orders["amount"].round(2)
    land(ws, drifted, day)

    outcome = require_valid(ws, day)

    assert outcome.passed and outcome.failures == []
    assert len(outcome.warnings) == 1, outcome.warnings
    assert outcome.warnings[0].startswith("orders.amount: mean basket")
    assert "warning band" in outcome.warnings[0]
    assert json.loads(outcome.report_path.read_text())["warnings"] == outcome.warnings
    assert outcome.brief()["warnings"] == outcome.warnings
    assert ws.landing_partition(day).is_dir()


def test_a_spike_beyond_the_critical_band_is_quarantined(history) -> None:
    ws, day, clean = history
    cfg = ws.params["validation"]
    window = trailing.windows(trailing.history(ws, day, cfg["trailing_days"]), cfg)
    spiked = copy(clean)
    orders = spiked["orders"]
    factor = window["orders.mean_basket"].bands[CRITICAL][1] * 1.2 / orders["amount"].mean()
    orders["amount"] = (orders["amount"] * factor).round(2)
    land(ws, spiked, day)

    outcome = validate_batch(ws, day)

    assert not outcome.passed
    basket = [r for r in outcome.failures + outcome.warnings if "mean basket" in r]
    assert len(basket) == 1, basket  # the warning band is not reported beside the critical one
    assert basket[0] in outcome.failures and "critical band" in basket[0]
    assert basket[0].startswith("orders.amount: mean basket")
    assert not (ws.validation_reports / "statistics" / f"{day}.json").exists()


# -- a month of clean days ------------------------------------------------------------------------
def test_thirty_clean_days_are_neither_rejected_nor_warned_about(tmp_path) -> None:
    ws = make_workspace(tmp_path, 400)
    world = World(ws.params["world"])
    needed = int(ws.params["validation"]["min_trailing_days"])
    rejected, warned = {}, {}
    for i, day in enumerate(days_from("2026-01-01", 30)):
        land(ws, world.simulate_day(day), day)
        outcome = validate_batch(ws, day)
        if not outcome.passed:
            rejected[day] = outcome.failures
        if outcome.warnings:
            warned[day] = outcome.warnings
        assert bool(outcome.notes) == (i < needed), (day, outcome.notes)

    assert rejected == {}
    assert warned == {}
    assert len(trailing.history(ws, "2026-12-31", 100)) == 30
