"""Landing-zone validation with real Great Expectations: a clean simulated day passes, each kind
of corruption fails with a reason naming table and column and is quarantined whole, and a fixed
re-landed batch passes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable

import pandas as pd
import pytest
import yaml

from couponflow.config import PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.contract import TABLES
from couponflow.landing import write_batch
from couponflow.world import World
from expectations.suites import build_suite
from expectations.validate import QuarantinedBatch, require_valid, validate_batch

DAY = "2026-01-03"
Batch = dict[str, pd.DataFrame]


@pytest.fixture(scope="module")
def clean_batch() -> Batch:
    """One simulated day of a 300-user world (simulated once, copied per test)."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", 300)
    return World(params["world"]).simulate_day(DAY)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """A workspace of its own, with the project's params and a 300-user world."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    params = load_params(tmp_path / "params.yaml")
    set_param(params, "world.n_users", 300)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return Workspace(tmp_path)


def land(ws: Workspace, batch: Batch) -> None:
    write_batch(ws.landing_partition(DAY), batch)


def copy(batch: Batch) -> Batch:
    return {name: frame.copy() for name, frame in batch.items()}


# -- corruptions: each returns the `table.column` its reason must name -------------------------
def null_order_users(b: Batch) -> str:
    b["orders"]["user_id"] = b["orders"]["user_id"].astype("Int64")
    b["orders"].loc[:1, "user_id"] = pd.NA
    return "orders.user_id"


def negative_amounts(b: Batch) -> str:
    b["orders"].loc[:2, "amount"] = -5.0
    return "orders.amount"


def unknown_offer_coupon(b: Batch) -> str:
    b["offers"].loc[0, "coupon_id"] = "C999"
    return "offers.coupon_id"


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


CORRUPTIONS: list[Callable[[Batch], str]] = [
    null_order_users,
    negative_amounts,
    unknown_offer_coupon,
    missing_column,
    renamed_column,
    timestamps_outside_day,
    duplicate_order_ids,
    wrong_dtype,
    missing_table,
]


def test_clean_batch_passes(ws: Workspace, clean_batch: Batch) -> None:
    land(ws, clean_batch)
    outcome = validate_batch(ws, DAY)

    assert outcome.passed, outcome.failures
    assert outcome.failures == []
    assert outcome.rows == {name: len(frame) for name, frame in clean_batch.items()}
    assert ws.landing_partition(DAY).is_dir()
    assert not ws.quarantine_partition(DAY).exists()
    assert outcome.data_docs.is_file() and outcome.data_docs.name == "index.html"
    report = json.loads(outcome.report_path.read_text())
    assert outcome.report_path == ws.validation_reports / f"{DAY}.json"
    assert report["passed"] is True
    assert set(report["results"]) == set(TABLES)
    assert all(result["success"] for result in report["results"].values())
    stored_suites = {p.stem for p in (ws.root / "gx" / "expectations").glob("*.json")}
    assert stored_suites == set(TABLES)


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
    assert where in (quarantined / "REASONS.md").read_text()
    result = json.loads((quarantined / "validation.json").read_text())
    assert result["passed"] is False
    assert result["failures"] == outcome.failures
    assert json.loads(outcome.report_path.read_text()) == result


def test_clean_parts_of_a_corrupted_batch_raise_no_reasons(
    ws: Workspace, clean_batch: Batch
) -> None:
    batch = copy(clean_batch)
    negative_amounts(batch)
    land(ws, batch)

    failures = validate_batch(ws, DAY).failures

    assert failures == ["orders.amount: 3 values not between 0.01 and 20000 (e.g. -5.0)"]


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
    land(ws, clean_batch)
    assert require_valid(ws, DAY).passed


def test_nothing_landed_is_an_error_not_a_quarantine(ws: Workspace) -> None:
    with pytest.raises(FileNotFoundError, match=DAY):
        validate_batch(ws, DAY)


@pytest.mark.parametrize("name", list(TABLES))
def test_suites_cover_every_contract_column(ws: Workspace, name: str) -> None:
    suite = build_suite(TABLES[name], ws.params["validation"])
    columns = {e.column for e in suite.expectations if hasattr(e, "column")}
    assert columns == set(TABLES[name].column_names)
