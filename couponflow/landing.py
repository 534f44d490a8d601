"""The landing zone and the offline store: parquet partitions by date.

A batch lands as `landing/date=D/<table>.parquet`; once validated it is copied to
`offline/<table>/date=D/part.parquet`. Writing a partition replaces it whole, so
re-running a date never duplicates rows.

The service lands its decisions and the outcomes reported about them as JSON lines under
`landing/feedback/date=D/` (serving.runtime.feedback writes them); `read_feedback` reads
them back for the DAG's readout (training/served.py) and tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from couponflow.config import Workspace
from couponflow.contract import TABLES, normalise


def write_batch(partition: Path, batch: dict[str, pd.DataFrame]) -> None:
    """Write one day's tables into a partition folder, replacing what was there."""
    tmp = partition.with_name(partition.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, frame in batch.items():
        frame.to_parquet(tmp / f"{name}.parquet", index=False)
    shutil.rmtree(partition, ignore_errors=True)
    tmp.rename(partition)


def read_batch(partition: Path) -> dict[str, pd.DataFrame]:
    """Read every table of a partition (a missing table reads as absent, not empty), lossless
    encodings of contract tables converted to the contract's types (`contract.normalise`:
    the validator judged the batch so converted, and the offline store keeps it so)."""
    batch = {}
    for path in sorted(partition.glob("*.parquet")):
        frame = pd.read_parquet(path)
        batch[path.stem] = normalise(TABLES[path.stem], frame)[0] if path.stem in TABLES else frame
    return batch


def write_partition(frame: pd.DataFrame, folder: Path) -> None:
    """Replace a date partition's `part.parquet` atomically, so a reader never sees half a
    file and a re-run leaves exactly one copy of the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "part.parquet.tmp", index=False)
    (folder / "part.parquet.tmp").replace(folder / "part.parquet")


def load_offline(ws: Workspace, day: str, batch: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Append a validated batch to the offline store; returns rows written per table."""
    rows = {}
    for name in TABLES:
        frame = TABLES[name].conform(batch[name])
        write_partition(frame, ws.offline / name / f"date={day}")
        rows[name] = len(frame)
    return rows


def offline_days(ws: Workspace) -> list[str]:
    """The dates present in the offline store, oldest first."""
    return sorted(p.name.removeprefix("date=") for p in (ws.offline / "offers").glob("date=*"))


def next_days(ws: Workspace, n: int) -> list[str]:
    """The n dates after the newest one in the offline store."""
    last = pd.Timestamp(offline_days(ws)[-1])
    return [str((last + pd.Timedelta(days=i)).date()) for i in range(1, n + 1)]


def read_offline(ws: Workspace, table: str, days: list[str]) -> pd.DataFrame:
    """One table over several dates (absent dates are skipped)."""
    parts = [ws.offline / table / f"date={d}" / "part.parquet" for d in days]
    frames = [pd.read_parquet(p) for p in parts if p.exists()]
    if not frames:
        return TABLES[table].empty()
    return TABLES[table].conform(pd.concat(frames, ignore_index=True))


def land_simulated_day(ws: Workspace, day: str) -> dict[str, int]:
    """Deliver `day`'s batch to the landing zone from the simulator, unless a batch for that
    date is already there (delivered by upstream apps, or a fixed batch re-landed by hand)."""
    from couponflow.world import World

    partition = ws.landing_partition(day)
    if not partition.exists():
        write_batch(partition, World(ws.params["world"]).simulate_day(day))
    return {p.stem: len(pd.read_parquet(p)) for p in sorted(partition.glob("*.parquet"))}


def feedback_area(ws: Workspace) -> Path:
    """Where decisions and outcome events land, by date."""
    return ws.landing / "feedback"


def read_feedback(ws: Workspace, day: str, kind: str) -> list[dict[str, Any]]:
    """Every landed `kind` (decisions or events) row of `day`, for the DAG and tests: every
    process's file, named by host and pid or (older versions) by pid alone."""
    folder = feedback_area(ws) / f"date={day}"
    return [
        json.loads(line)
        for path in sorted(folder.glob(f"{kind}-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
