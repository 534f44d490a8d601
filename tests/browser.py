"""A real browser for the pages a reviewer reads (issue #18): Debian's headless Chromium
driven through Selenium and the system chromedriver (`apt-get install chromium
chromium-driver`; nothing is downloaded). Tests that use the `browser` fixture skip, saying
why, where either is missing; .ci/run installs both.

Each page a test checks can also be saved as a PNG: with $COUPONFLOW_SCREENSHOTS naming a
folder (`make screenshots` sets docs/screenshots), `screenshot` writes it there.

The Airflow 3 UI is a React app: nothing is on the page when `get` returns, so every check
waits for the element it needs (`wait_for`), never a fixed time.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from couponflow.config import Workspace

SCREENSHOTS_ENV = "COUPONFLOW_SCREENSHOTS"
WAIT_S = 90.0  # a page's first render on a busy 2-core machine; a pass takes ~2 s
WIDTH, HEIGHT = 1400, 900


def missing() -> str | None:
    """Why no browser can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install: the dev extra)"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "no chromium on PATH: apt-get install chromium chromium-driver"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH: apt-get install chromium-driver"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium under the system chromedriver, in a profile of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    profile = tempfile.mkdtemp(prefix="couponflow-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
        "--lang=en-GB",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, found: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    """The first truthy `found(driver)` within `timeout`, or a failure naming `what` with
    the page's text as it was."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d: Any) -> Any:
        try:
            return found(d)
        except WebDriverException:  # not there yet, or re-rendered under us
            return None

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(attempt)
    except TimeoutException:
        pytest.fail(f"{what}: not on {driver.current_url} after {timeout:.0f} s; page: "
                    f"{page_text(driver)[:1500]!r}")  # fmt: skip


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(driver.find_element(By.TAG_NAME, "body").text.split())


def visible(driver: Any, css: str) -> Any:
    """The first displayed element matching `css`, or None."""
    from selenium.webdriver.common.by import By

    return next((e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None)


def network_resources(driver: Any) -> list[str]:
    """Every resource the page loaded from anywhere but this machine."""
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )  # fmt: skip
    local = ("file:", "data:", "blob:", "http://127.0.0.1", "http://localhost")
    return [url for url in urls if not url.startswith(local)]


def screenshot(driver: Any, name: str, height: int | None = None) -> Path | None:
    """Save the page as `<$COUPONFLOW_SCREENSHOTS>/<name>.png` when that is set, the window
    `height` pixels tall (the page's own height, up to 2400, by default)."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if not folder:
        return None
    if height is None:
        height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, max(HEIGHT, min(int(height), 2400)))
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, HEIGHT)
    return path


# -- the Airflow UI ---------------------------------------------------------------------------
@contextmanager
def airflow_ui(ws: Workspace) -> Iterator[str]:
    """`airflow api-server` over the workspace's metadata (what `make airflow` serves; the
    runs `couponflow run` made are there), every visitor an admin so no login stands in
    the way; its base URL. Stopped, with everything it started, on exit."""
    from couponflow.airflow_services import AirflowServices, service_env
    from couponflow.processes import free_port

    port = free_port()
    env = service_env(
        ws,
        port,
        {"reviewer": uuid.uuid4().hex},
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__WORKERS": "1",
            "COUPONFLOW_INGEST_SCHEDULE": "none",
        },
    )
    services = AirflowServices(env, ws.root / "logs" / "airflow")
    services.start("api-server")
    try:
        services.wait_healthy(env["AIRFLOW__API__BASE_URL"])
        yield env["AIRFLOW__API__BASE_URL"]
    finally:
        services.stop()


def run_id_of(ws: Workspace, dag_id: str, day: str) -> str:
    """The id of `dag_id`'s run for `day` in the workspace's metadata database."""
    with sqlite3.connect(ws.root / "airflow" / "airflow.db") as db:
        (run_id,) = db.execute(
            "select run_id from dag_run where dag_id = ? and logical_date like ?"
            " order by id desc limit 1",
            (dag_id, f"{day}%"),
        ).fetchone()
    return run_id


def open_run_in_two_clicks(driver: Any, base_url: str, dag_id: str, run_id: str) -> dict:
    """From the DAG's grid, as a reviewer does: click 1 on the run's bar opens the run (its
    note's first line under the header), click 2 on the note opens it whole. What each
    showed, and the grid's colour of each task of the run."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/dags/{dag_id}")
    bar = wait_for(
        driver,
        lambda d: visible(d, f'a[href="/dags/{dag_id}/runs/{run_id}/"]'),
        f"the grid's bar of run {run_id}",
    )
    # the task cells come from a request of their own, after the runs' bars
    colours = wait_for(driver, lambda d: grid_colours(d, run_id), f"the grid's cells of {run_id}")
    bar.click()  # click 1
    header = wait_for(
        driver,
        lambda d: (
            visible(d, 'button[aria-label="Edit note"]')
            and run_id in d.current_url
            and d.find_element(By.XPATH, '//button[@aria-label="Edit note"]/..').text
        ),
        "the run's note under its header",
    )
    driver.find_element(By.CSS_SELECTOR, 'button[aria-label="Edit note"]').click()  # click 2
    dialog = wait_for(
        driver,
        lambda d: next(
            (
                e
                for e in d.find_elements(By.CSS_SELECTOR, '[role="dialog"][data-state="open"]')
                if e.is_displayed() and "Note" in e.text and opaque(d, e)
            ),
            None,
        ),
        "the note's dialog, opened",
    )
    return {"header": " ".join(header.split()), "note": dialog.text, "colours": colours}


def opaque(driver: Any, element: Any) -> bool:
    """Whether `element` and everything around it has finished fading in."""
    return driver.execute_script(
        "let e = arguments[0];"
        "for (; e; e = e.parentElement) if (getComputedStyle(e).opacity !== '1') return false;"
        "return true;",
        element,
    )


def grid_colours(driver: Any, run_id: str) -> dict[str, str]:
    """Each task's badge colour in the run's grid column."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f'a[id^="grid-{run_id}-"]')
    if not any(cell.get_attribute("id").endswith("-summary") for cell in cells):
        return {}  # not all drawn yet: the last task's cell is the summary's
    return {
        cell.get_attribute("id").removeprefix(f"grid-{run_id}-"): cell.find_element(
            By.CSS_SELECTOR, '[data-testid="task-state-badge"]'
        ).value_of_css_property("background-color")
        for cell in cells
    }


# -- Data Docs and Swagger --------------------------------------------------------------------
def data_docs_rows(driver: Any, index: Path) -> list[dict[str, str]]:
    """The Data Docs index opened as a file with the browser's network switched off: its
    validation results table, a dict per row by column title (a table drawn by scripts
    from a CDN would not be there)."""
    from selenium.webdriver.common.by import By

    def results(d: Any) -> Any:
        for table in d.find_elements(By.TAG_NAME, "table"):
            titles = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
            rows = table.find_elements(By.CSS_SELECTOR, "tr")
            if "Run Name" in titles and len(rows) > 1:
                return titles, rows
        return None

    offline = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": True})
    try:
        driver.get(index.as_uri())
        titles, rows = wait_for(driver, results, "the validation results table")
        cells = [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        return [dict(zip(titles, row, strict=True)) for row in cells if row]
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": False})


def swagger_operations(driver: Any, url: str) -> list[str]:
    """The operations Swagger UI lists at `url`, as `METHOD /path`."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    blocks = wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary"),
        "Swagger's operations",
    )
    out = []
    for block in blocks:
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text
        out.append(f"{method} {path}".strip())
    return out


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session's browser tests, or a skip saying what is
    missing."""
    if reason := missing():
        pytest.skip(reason)
    with chromium() as driver:
        yield driver
