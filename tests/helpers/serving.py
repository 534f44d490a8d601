"""Asking a running server, for the tests of the live service."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from couponflow.config import Workspace
from couponflow.landing import offline_days
from serving.deploy.server import Server


def recommend(server: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/recommend", json=body, timeout=10)


def noon_after(ws: Workspace, days: int) -> datetime:
    """Noon `days` after the catalogue's day: a day of its own for the budget, so a test
    spending it leaves the other tests' day alone."""
    return datetime.fromisoformat(offline_days(ws)[-1]) + timedelta(days=days, hours=12)


def metric(text: str, name: str) -> float:
    """The value of one sample of the Prometheus text `text` (summed over workers)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not in /metrics"
    return sum(values)
