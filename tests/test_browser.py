"""Two of the pages a reviewer reads, in a real browser (issue #18; tests/browser.py): the
Data Docs index opened from disk with the browser's network off, and the service's Swagger
page at its documented path, /docs. The Airflow UI's check needs a pipeline run and lives
with it (tests/test_pipeline_e2e.py). `make screenshots` saves each page as a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.deploy.server import Server
from tests.browser import data_docs_rows, network_resources, screenshot, swagger_operations

pytestmark = pytest.mark.browser


def test_data_docs_show_their_results_with_the_network_off(browser, tmp_path: Path) -> None:
    """A real GX build over a clean day and a failing one: the index, read from disk with no
    network, lists each table's result, the failing ones as Failed."""
    from couponflow.world import World
    from expectations.validate import validate_batch
    from tests.helpers.batches import DAY, land, make_workspace, negative_amounts

    ws = make_workspace(tmp_path, 300)
    world = World(ws.params["world"])
    land(ws, world.simulate_day(DAY))
    assert validate_batch(ws, DAY).passed
    bad_day = "2026-01-04"
    batch = world.simulate_day(bad_day)
    negative_amounts(batch)
    land(ws, batch, bad_day)
    outcome = validate_batch(ws, bad_day)
    assert not outcome.passed

    rows = data_docs_rows(browser, outcome.data_docs)
    screenshot(browser, "data-docs-index")
    by_run = {(row["Run Name"], row["Asset Name"]): row["Status"] for row in rows}
    assert by_run[(f"landing-{bad_day}", "orders")].endswith("Failed"), rows
    assert by_run[(f"landing-{DAY}", "orders")].endswith("Success"), rows
    assert {asset for _, asset in by_run} >= {"users", "orders", "offers", "coupons"}, rows
    assert network_resources(browser) == []


def test_swagger_lists_the_endpoints_an_app_calls(browser, server: Server) -> None:
    """The service's API documentation at /docs (the runbook's path) lists its routes,
    drawn by Swagger UI from the server itself: nothing from a CDN."""
    operations = swagger_operations(browser, f"{server.base_url}/docs")
    screenshot(browser, "swagger")
    assert operations[:2] == ["POST /recommend", "POST /feedback"], operations
    assert {"GET /livez", "GET /readyz", "GET /metrics"} <= set(operations), operations
    assert network_resources(browser) == []
