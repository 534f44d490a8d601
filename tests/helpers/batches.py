"""Simulated batches in workspaces of their own, for the data gate's tests (validation,
bad input, Data Docs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from couponflow.config import PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.landing import write_batch

DAY = "2026-01-03"
Batch = dict[str, pd.DataFrame]


def make_workspace(root: Path, n_users: int) -> Workspace:
    """A workspace of its own, with the project's params and an `n_users` world."""
    root.mkdir(parents=True, exist_ok=True)
    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", n_users)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Workspace(root)


def days_from(start: str, n: int) -> list[str]:
    return [str((pd.Timestamp(start) + pd.Timedelta(days=i)).date()) for i in range(n)]


def land(ws: Workspace, batch: Batch, day: str = DAY) -> None:
    write_batch(ws.landing_partition(day), batch)


def copy(batch: Batch) -> Batch:
    return {name: frame.copy() for name, frame in batch.items()}


def negative_amounts(b: Batch) -> str:
    b["orders"].loc[:2, "amount"] = -5.0
    return "orders.amount"
