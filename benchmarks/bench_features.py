"""Feature-store figures: materialisation rows per second and one user's online read
latency (p50, p99), on the SQLite online store and on Redis.

Each store gets a throwaway workspace holding one day of synthetic feature rows shaped
exactly like the real views (every user's USER_FEATURES, a catalogue's COUPON_FEATURES),
published where the pipeline publishes them; then the pipeline's own calls run:
`apply_definitions`, `materialise_day`, `online_user_features`. Redis runs under a Feast
project of its own whose keys are removed afterwards.

    .venv/bin/python benchmarks/bench_features.py --users 100000 --reads 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from couponflow.config import HOME_ENV, PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.features import COUPON_FEATURES, USER_FEATURES, day_end
from couponflow.logs import quiet_libraries

DAY = "2026-01-31"


def synthetic_rows(names: list[str], keys: np.ndarray, key: str, seed: int) -> pd.DataFrame:
    """Feature rows for `keys` stamped at the end of DAY, as `publish_features` writes them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.gamma(1.0, 5.0, (len(keys), len(names))).astype("float32"), columns=names
    )
    frame.insert(0, key, keys)
    frame["event_timestamp"] = day_end(DAY).tz_localize("UTC")
    return frame


def workspace(root: Path, users: int, coupons: int, **features: str) -> Workspace:
    """A workspace whose features folder holds DAY's partitions of both batch views."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    for name, value in features.items():
        set_param(params, f"features.{name}", value)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ws = Workspace(root)
    parts = {
        "user_activity": synthetic_rows(USER_FEATURES, np.arange(users), "user_id", 0),
        "coupon_stats": synthetic_rows(
            COUPON_FEATURES, np.array([f"C{i:03d}" for i in range(coupons)]), "coupon_id", 1
        ),
    }
    for view, frame in parts.items():
        target = ws.features / view / f"date={DAY}"
        target.mkdir(parents=True)
        frame.to_parquet(target / "part.parquet", index=False)
    return ws


def measure(ws: Workspace, users: int, coupons: int, reads: int) -> dict[str, float]:
    """Apply, materialise DAY (timed), then time `reads` online reads of random users."""
    from feature_repo.store import (
        apply_definitions,
        materialise_day,
        online_user_features,
        open_store,
    )

    os.environ[HOME_ENV] = str(ws.root)
    store = open_store(ws)
    apply_definitions(store)
    started = time.perf_counter()
    materialise_day(store, DAY)
    seconds = time.perf_counter() - started
    rng = np.random.default_rng(2)
    for user in rng.integers(0, users, 50):  # warm the registry cache and the connection
        online_user_features(store, int(user))
    latencies = []
    for user in rng.integers(0, users, reads):
        tick = time.perf_counter()
        vector = online_user_features(store, int(user))
        latencies.append(time.perf_counter() - tick)
        assert vector is not None
    ms = np.array(latencies) * 1000
    if store.config.online_store.type == "redis":
        store.teardown()
    return {
        "seconds": seconds,
        "rows_per_s": (users + coupons) / seconds,
        "values_per_s": (users * len(USER_FEATURES) + coupons * len(COUPON_FEATURES)) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def redis_reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--coupons", type=int, default=20)
    parser.add_argument("--reads", type=int, default=2_000, help="online reads timed per store")
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--redis", default="127.0.0.1:6379")
    args = parser.parse_args()
    quiet_libraries()

    print(
        f"{args.users:,} users x {len(USER_FEATURES)} features + {args.coupons} coupons x "
        f"{len(COUPON_FEATURES)} stats, one day; {args.reads:,} single-user online reads"
    )
    print(
        f"{'store':8} {'materialise':>12} {'rows/s':>10} {'values/s':>11} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'mean ms':>8}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        for kind in args.stores:
            if kind == "redis" and not redis_reachable(args.redis):
                print(f"{kind:8} skipped: nothing listens on {args.redis}")
                continue
            settings = {"online_store": kind, "redis": args.redis}
            if kind == "redis":
                settings["project"] = f"couponflow_bench_{uuid.uuid4().hex[:8]}"
            ws = workspace(scratch / kind, args.users, args.coupons, **settings)
            r = measure(ws, args.users, args.coupons, args.reads)
            print(
                f"{kind:8} {r['seconds']:>11.1f}s {r['rows_per_s']:>10,.0f} "
                f"{r['values_per_s']:>11,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['mean_ms']:>8.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
