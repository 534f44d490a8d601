"""Data Docs that render with no network (issue #18): a real GX build over one failing
batch, then every page checked for resources from the internet and the index for its
results written out in the page."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest

from expectations.offline_docs import MARK, make_offline, offline_page
from expectations.validate import validate_batch
from tests.helpers.batches import DAY, land, make_workspace, negative_amounts

pytestmark = pytest.mark.integration  # Great Expectations builds Data Docs

LOADED_FROM_NETWORK = re.compile(
    r"<(script|link|img)[^>]*\b(src|href)=\"https?://|url\(['\"]?https?://", re.I
)


def text_of(page: Path) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page.read_text())).split())


def test_a_built_site_needs_nothing_from_the_network(tmp_path: Path) -> None:
    from couponflow.config import load_params
    from couponflow.world import World

    ws = make_workspace(tmp_path, 300)
    params = load_params(ws.params_file)
    batch = World(params["world"]).simulate_day(DAY)
    negative_amounts(batch)
    land(ws, batch)
    outcome = validate_batch(ws, DAY)
    assert not outcome.passed

    site = outcome.data_docs.parent
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 1 + 2 * 5  # the index, a page per suite and per table's result
    for page in pages:
        html = page.read_text()
        assert MARK in html, page
        assert not LOADED_FROM_NETWORK.search(html), (page, LOADED_FROM_NETWORK.search(html))
        assert "bootstrapTable" not in html and "<script" not in html, page
    index = text_of(outcome.data_docs)
    # the index's results, which bootstrap-table drew from a CDN, are in the page itself
    assert f"landing-{DAY}" in index and "Failed" in index and "Success" in index
    assert (site / "static" / "styles" / "offline.css").is_file()
    linked = re.findall(r'href="(validations/[^"]+\.html)"', outcome.data_docs.read_text())
    assert linked and all((site / link).is_file() for link in linked)
    assert "order_id" in text_of(outcome.pages["orders"])  # the failing rows, still named
    assert make_offline(site) == []  # already done: nothing to rewrite


def test_a_page_loses_its_cdn_resources_and_keeps_its_content() -> None:
    page = """<html><head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap.min.css"/>
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<style>.logo { background: url('https://assets.example/logo.png') no-repeat; }</style>
</head><body><h1>orders</h1>
<div id="t-toolbar" class="ml-1"><button>Clear Filters</button></div>
<table
  id="t"
  class="table-sm"
>
</table>
<script>
  $('#t').bootstrapTable(
    Object.assign(
      {
        columns: COLUMNS,
        data: DATA,
        toolbar: '#t-toolbar'
      },
      {'search': 'true'}
    )
  );
</script>
</body></html>"""
    columns = [
        {"field": "validation_success", "title": "Status"},
        {"field": "run_name", "title": "Run Name"},
    ]
    data = [
        {
            "validation_success": '<i class="fas fa-times text-danger"></i>',
            "_validation_success_text": "Failed",
            "run_name": "landing-2026-01-07",
            "_table_row_link_path": "validations/orders.html",
        }
    ]  # as GX writes them: Python literals
    page = page.replace("COLUMNS", repr(columns)).replace("DATA", repr(data))
    done = offline_page(page, "static/styles/offline.css")
    assert not LOADED_FROM_NETWORK.search(done) and "<script" not in done
    assert "Clear Filters" not in done and "<h1>orders</h1>" in done
    assert '<a href="validations/orders.html">' in done
    assert "<th>Run Name</th>" in done and "<td>landing-2026-01-07</td>" in done
    assert "Failed" in done and 'href="static/styles/offline.css"' in done
