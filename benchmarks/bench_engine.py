"""`features.engine`: local vs ray (Ray's local mode) on the point-in-time join and on
materialisation, seconds and peak memory.

A throwaway workspace holds `--days` days of synthetic feature partitions of both views
(every user's row each day, as `publish_features` writes them) and entity rows shaped as
the dataset stage's: `--offers` a user on each of the last 3 days at a random time of
the day, a coupon each (a tenth "no coupon"). Each variant runs in a process of its own,
alternated `--rounds` times: `historical_features` over the entity rows, then
`materialise_day` of the last day into a fresh online store. Peak memory is the largest
resident set of the process and its children together (Ray's raylet and workers are its
children in local mode; their shared object store pages count once per process that
touched them, so Ray's figure is an upper bound), sampled every 0.1 s. Ray's start-up
(`ray.init`) is timed apart.

    .venv/bin/python benchmarks/bench_engine.py --users 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

from couponflow.config import HOME_ENV, PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.features import COUPON_FEATURES, USER_FEATURES, day_end

START = pd.Timestamp("2026-01-01")


def build(root: Path, users: int, coupons: int, days: int, offers: float) -> pd.DataFrame:
    """The base workspace's partitions under `root`, and the entity rows."""
    rng = np.random.default_rng(0)
    dates = [(START + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]
    ids = np.array([f"C{i:03d}" for i in range(coupons)], dtype=object)
    for view, names, keys, key in (
        ("user_activity", USER_FEATURES, np.arange(users), "user_id"),
        ("coupon_stats", COUPON_FEATURES, ids, "coupon_id"),
    ):
        for date in dates:
            frame = pd.DataFrame(
                rng.gamma(1.0, 5.0, (len(keys), len(names))).astype("float32"), columns=names
            )
            frame.insert(0, key, keys)
            frame["event_timestamp"] = day_end(date).tz_localize("UTC")
            target = root / "data" / "features" / view / f"date={date}"
            target.mkdir(parents=True)
            frame.to_parquet(target / "part.parquet", index=False)
    rows = []
    for date in dates[-3:]:
        n = int(users * offers)
        at = pd.Timestamp(date) + pd.to_timedelta(rng.uniform(0, 86_400, n), unit="s")
        coupon = rng.choice(ids, n).astype(object)
        coupon[rng.random(n) < 0.1] = None
        rows.append(
            pd.DataFrame(
                {
                    "user_id": rng.integers(0, users, n),
                    "coupon_id": coupon,
                    "event_timestamp": at.tz_localize("UTC"),
                    "kind": np.where(pd.isna(coupon), None, "percent"),
                    "value": 10.0,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def workspace(base: Path, root: Path, **features: object) -> Workspace:
    shutil.copytree(base, root)
    params = load_params(PROJECT_ROOT / "params.yaml")
    for name, value in features.items():
        set_param(params, f"features.{name}", value)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Workspace(root)


class PeakMemory:
    """The largest summed resident set of this process and its descendants."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    ws: Workspace, entities: pd.DataFrame, last: str, cpus: int, steps: list[str]
) -> dict[str, float]:
    """Join the entity rows (timed, peak), then materialise the last day (timed, peak);
    a step left out of `steps` reads as NaN."""
    from feature_repo.store import (
        apply_definitions,
        historical_features,
        materialise_day,
        open_store,
    )

    os.environ[HOME_ENV] = str(ws.root)
    nan = float("nan")
    out = dict.fromkeys(["init_s", "join_s", "join_gb", "join_nan", "mat_s", "mat_gb"], nan)
    out["init_s"] = 0.0
    if ws.params["features"].get("engine") == "ray":
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        out["init_s"] = time.perf_counter() - started
    store = open_store(ws)
    apply_definitions(store)
    if "join" in steps:
        with PeakMemory() as peak:
            started = time.perf_counter()
            table = historical_features(store, entities)
            out["join_s"] = time.perf_counter() - started
        out["join_gb"] = peak.peak / 2**30
        out["join_nan"] = float(table[USER_FEATURES[0]].isna().mean())
    if "materialise" in steps:
        with PeakMemory() as peak:
            started = time.perf_counter()
            materialise_day(store, last)
            out["mat_s"] = time.perf_counter() - started
        out["mat_gb"] = peak.peak / 2**30
    return out


def run_apart(
    ws: Workspace, entities: pd.DataFrame, last: str, cpus: int, steps: list[str]
) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(measure, (ws, entities, last, cpus, steps))
    return {**result, "load": os.getloadavg()[0]}


VARIANTS = {
    "local": {"engine": "local"},
    "ray": {"engine": "ray"},
    "ray-feast": {"engine": "ray", "online_write": "feast"},  # Feast's own write on Ray
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--coupons", type=int, default=20)
    parser.add_argument("--days", type=int, default=10, help="feature partitions kept")
    parser.add_argument("--offers", type=float, default=1.0, help="entity rows a user a day")
    parser.add_argument("--cpus", type=int, default=2, help="Ray's CPUs (local mode)")
    parser.add_argument("--variants", nargs="+", default=["local", "ray"], choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=1, help="each variant, alternated")
    parser.add_argument(
        "--steps", nargs="+", default=["join", "materialise"], choices=["join", "materialise"]
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        entities = build(scratch / "base", args.users, args.coupons, args.days, args.offers)
        last = (START + pd.Timedelta(days=args.days - 1)).strftime("%Y-%m-%d")
        print(f"{args.users:,} users, {args.days} days kept, {len(entities):,} entity rows")
        print("round variant   ray.init    join  join GB  NaN share  materialise  mat GB  load")
        results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
        for i in range(args.rounds):
            for variant in args.variants:
                ws = workspace(scratch / "base", scratch / f"{variant}-{i}", **VARIANTS[variant])
                r = run_apart(ws, entities, last, args.cpus, args.steps)
                results[variant].append(r)
                print(row(str(i + 1), variant, r))
                shutil.rmtree(ws.root, ignore_errors=True)
        if args.rounds > 1:
            for variant, runs in results.items():
                median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                print(row("median", variant, median))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def row(label: str, variant: str, r: dict[str, float]) -> str:
    return (
        f"{label:>5} {variant:9} {r['init_s']:>7.1f}s {r['join_s']:>6.1f}s {r['join_gb']:>8.2f} "
        f"{r['join_nan']:>10.3f} {r['mat_s']:>11.1f}s {r['mat_gb']:>7.2f} {r['load']:>5.1f}"
    )


if __name__ == "__main__":
    main()
