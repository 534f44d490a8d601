"""Data Docs that render with no network: GX's pages load Bootstrap, jQuery,
bootstrap-table, Font Awesome and Vega from CDNs, and its index draws its tables of
validation results with bootstrap-table, so offline it showed two links and no results.

After each build (expectations.validate), `make_offline` rewrites the site's pages in
place: every script and stylesheet from the internet goes, the index's tables are written
out as plain HTML tables (each row linking its page, as the clickable rows did), inline
scripts that need jQuery go, and a small stylesheet of our own (static/styles/offline.css)
lays the pages out. Everything a page shows is then in the page; rewriting a page twice
changes nothing.
"""

from __future__ import annotations

import ast
import html
import os
import re
from pathlib import Path

STYLESHEET = "static/styles/offline.css"
MARK = "<!-- couponflow: offline -->"
EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
EXTERNAL_LINK = re.compile(r"<link[^>]*\bhref=\"https?://[^\"]*\"[^>]*/?>\s*", re.I)
EXTERNAL_IMAGE = re.compile(r"<img[^>]*\bsrc=\"https?://[^\"]*\"[^>]*/?>", re.I)
EXTERNAL_CSS_URL = re.compile(r"url\(['\"]?https?://[^)]*\)", re.I)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>.*?</script>\s*", re.I | re.S)
TABLE = re.compile(r"<table\s+id=\"(?P<id>[^\"]+)\"(?P<attrs>[^>]*)>\s*</table>", re.I | re.S)
TABLE_INIT = re.compile(
    r"\$\('#(?P<id>[^']+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*columns: (?P<columns>.*?),"
    r"\n\s*data: (?P<data>.*?),\n\s*toolbar",
    re.S,
)
TOOLBAR = re.compile(r"<div id=\"[^\"]*-toolbar\"[^>]*>.*?</div>\s*", re.S)
CSS = """/* couponflow: Data Docs laid out without Bootstrap (expectations/offline_docs.py) */
body { font-family: system-ui, sans-serif; margin: 0 1.5rem; color: #222; }
.container-fluid, .row { display: block; }
nav, .navbar { padding: .5rem 0; border-bottom: 1px solid #ddd; margin-bottom: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
.card { border: 1px solid #ddd; border-radius: 4px; margin: 0 0 1rem; padding: .5rem 1rem; }
.collapse:not(.show) { display: block; }
.cooltip .top, .tooltip, .d-none { display: none; }
.fas, .fa { font-style: normal; }
.fa-check-circle::before { content: "\\2714"; color: #1a7f37; }
.fa-times::before, .fa-times-circle::before { content: "\\2716"; color: #cf222e; }
.fa-exclamation-triangle::before { content: "\\26A0"; color: #9a6700; }
.text-success { color: #1a7f37; } .text-danger { color: #cf222e; }
"""


def make_offline(site: Path) -> list[Path]:
    """Rewrite every page of the Data Docs site at `site` to need nothing from the network;
    the pages rewritten."""
    (site / STYLESHEET).parent.mkdir(parents=True, exist_ok=True)
    (site / STYLESHEET).write_text(CSS)
    done = []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        if MARK in text:
            continue
        stylesheet = os.path.relpath(site / STYLESHEET, page.parent)
        page.write_text(offline_page(text, stylesheet), encoding="utf-8")
        done.append(page)
    return done


def offline_page(text: str, stylesheet: str) -> str:
    """One page without network resources; its bootstrap-tables as HTML tables."""
    tables = {m["id"]: _table(m["columns"], m["data"]) for m in TABLE_INIT.finditer(text)}
    text = TABLE.sub(lambda m: tables.get(m["id"], m[0]), text)
    for pattern in (EXTERNAL_SCRIPT, EXTERNAL_LINK, INLINE_SCRIPT, TOOLBAR):
        text = pattern.sub("", text)
    text = EXTERNAL_IMAGE.sub("", text)
    text = EXTERNAL_CSS_URL.sub("none", text)
    head = f'{MARK}\n<link rel="stylesheet" type="text/css" href="{html.escape(stylesheet)}"/>\n'
    return text.replace("</head>", head + "</head>", 1)


def _table(columns: str, data: str) -> str:
    """A bootstrap-table's columns and rows (Python literals in GX's page) as a table;
    each row's first cell links the row's page."""
    try:
        cols, rows = ast.literal_eval(columns), ast.literal_eval(data)
    except (ValueError, SyntaxError):
        return "<p>(this table could not be drawn offline)</p>"
    head = "".join(f"<th>{html.escape(str(c.get('title', c['field'])))}</th>" for c in cols)
    body = []
    for row in rows:
        cells = []
        for i, col in enumerate(cols):
            value = str(row.get(col["field"], ""))
            if col["field"] == "validation_success" and row.get("_validation_success_text"):
                value += f" {row['_validation_success_text']}"
            link = row.get("_table_row_link_path")
            if i == 0 and link and "<a " not in value:
                value = f'<a href="{html.escape(link)}">{value.strip() or "open"}</a>'
            cells.append(f"<td>{value.strip()}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
