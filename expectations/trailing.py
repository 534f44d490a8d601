"""The trailing window of accepted batches: what each accepted batch measured, and the bands a
new batch's statistics must fall in.

Every accepted batch leaves `statistics/<day>.json` beside the validation reports, with the
values GX observed for `expectations.suites.STATISTICS`; a rejected batch leaves none (and
removes one an earlier acceptance of that date left), so quarantined data never widens a band.
A batch of day D is compared with the last `trailing_days` accepted batches before D, so
re-validating a date always meets the same history.

A band is the wider of `mean ± sigmas * sd` and the statistic's tolerance floor (`mean / (1 + t)`
to `mean * (1 + t)` for volume and basket, which scale with the marketplace; `mean ± t` for
shares), cut at 0 below (no statistic is negative). The floor keeps a short or unusually calm
window from turning noise into alarms; the sd term widens the band for a statistic that is noisy
by nature (a small world's daily redemption rate, weekly seasonality in volume). Beyond the
warning band a batch is accepted with a warning (drift); beyond the wider critical band it is
quarantined (a spike no drift explains).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from great_expectations.expectations.metadata_types import FailureSeverity

from couponflow.config import Workspace
from expectations.suites import BANDS, STATISTICS


@dataclass(frozen=True)
class Window:
    """One statistic over the trailing accepted batches, and the bands a new value must meet."""

    days: int
    mean: float
    sd: float
    bands: dict[FailureSeverity, tuple[float, float]]

    def describe(self) -> str:
        return f"mean {self.mean:.4g}, sd {self.sd:.3g} over {self.days} accepted batches"


def _folder(ws: Workspace) -> Path:
    return ws.validation_reports / "statistics"


def history(ws: Workspace, day: str, n: int) -> list[dict[str, float]]:
    """The statistics of the last `n` accepted batches before `day`, oldest first."""
    earlier = sorted(p for p in _folder(ws).glob("*.json") if p.stem < day)[-n:] if n else []
    return [json.loads(p.read_text()) for p in earlier]


def record(ws: Workspace, day: str, statistics: dict[str, float] | None) -> None:
    """Keep an accepted batch's statistics; `None` (a rejected batch) forgets the date's."""
    path = _folder(ws) / f"{day}.json"
    if statistics is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(statistics, indent=2))


def reference(ws: Workspace, day: str, cfg: dict[str, Any]) -> tuple[list[str], list[dict]]:
    """The fixed reference period before `day`: the dates and statistics of the first
    `reference_days` accepted batches (on or after `reference_from` when set, to re-baseline
    after a shift everyone agreed on). Unlike the trailing window it does not follow a slow
    drift, so a drift that widens the trailing band still leaves this band."""
    start = str(cfg.get("reference_from") or "")
    days = sorted(p for p in _folder(ws).glob("*.json") if start <= p.stem < day)
    days = days[: int(cfg.get("reference_days", 0))]  # none configured (an older workspace): none
    return [p.stem for p in days], [json.loads(p.read_text()) for p in days]


def trailing_days(ws: Workspace, day: str, n: int) -> list[str]:
    """The dates `history` reads."""
    return [p.stem for p in sorted(_folder(ws).glob("*.json")) if p.stem < day][-n:] if n else []


def windows(
    past: list[dict[str, float]], cfg: dict[str, Any], tolerance: str = "tolerance"
) -> dict[str, Window]:
    """Each statistic's window over `past`; none for a statistic with fewer than
    `min_trailing_days` values (its checks are skipped). `cfg`: params' `validation`;
    `tolerance`: the key of its tolerances (`reference_tolerance` for the reference period)."""
    found: dict[str, Window] = {}
    for stat in STATISTICS:
        values = np.array([p[stat.id] for p in past if p.get(stat.id) is not None], dtype=float)
        if len(values) < max(int(cfg["min_trailing_days"]), 2):
            continue
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        bands = {}
        for severity in BANDS:
            spread = float(cfg["sigmas"][severity.value]) * sd
            t = float(cfg.get(tolerance, cfg["tolerance"])[stat.name][severity.value])
            lo, hi = (mean / (1 + t), mean * (1 + t)) if stat.relative else (mean - t, mean + t)
            bands[severity] = (max(min(mean - spread, lo), 0.0), max(mean + spread, hi))
        found[stat.id] = Window(len(values), mean, sd, bands)
    return found
