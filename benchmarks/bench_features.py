"""Feature-store figures: materialisation users per second and one user's online read
latency (p50, p99), on the SQLite online store and on Redis, for each way of writing.

Each store and writer gets a throwaway workspace holding one day of synthetic feature
rows shaped exactly like the real views (every user's USER_FEATURES, a catalogue's
COUPON_FEATURES), published where the pipeline publishes them; then the pipeline's own
calls run in a process of their own: `apply_definitions`, `materialise_day` into the empty
store, `materialise_day` again (the daily case: every known user rewritten),
`online_user_features`. `--writers bulk feast` compares feature_repo/bulk.py's write with
Feast's stock one (`features.online_write`); `--rounds` alternates them and prints medians.
Redis runs under a Feast project of its own whose keys are removed afterwards.

    .venv/bin/python -m benchmarks.bench_features --users 100000 --writers bulk feast
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
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
    """Apply, materialise DAY into the empty store (timed), again over the rows it holds
    (timed: a daily run rewrites every known user), then time `reads` online reads."""
    from feature_repo.store import (
        apply_definitions,
        materialise_day,
        online_user_features,
        open_store,
    )

    os.environ[HOME_ENV] = str(ws.root)
    store = open_store(ws)
    apply_definitions(store)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        materialise_day(store, DAY)
        seconds.append(time.perf_counter() - started)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
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
    if store.config.online_store.type.endswith(("redis", "RedisOnlineStore")):
        store.teardown()
    return {
        "first_s": seconds[0],
        "again_s": seconds[1],
        "users_per_s": users / seconds[0],
        "again_users_per_s": users / seconds[1],
        "values_per_s": (users * len(USER_FEATURES) + coupons * len(COUPON_FEATURES)) / seconds[0],
        "peak_gb": peak_gb,
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
    parser.add_argument(
        "--writers",
        nargs="+",
        default=["bulk"],
        choices=["bulk", "feast"],
        help="features.online_write: feature_repo/bulk.py's write, or Feast's stock one",
    )
    parser.add_argument("--rounds", type=int, default=1, help="each variant, alternated")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    args = parser.parse_args()
    quiet_libraries()

    print(
        f"{args.users:,} users x {len(USER_FEATURES)} features + {args.coupons} coupons x "
        f"{len(COUPON_FEATURES)} stats, one day; {args.reads:,} single-user online reads"
    )
    print(
        f"{'round':>5} {'store':7} {'writer':6} {'first':>8} {'users/s':>9} {'rewrite':>8} "
        f"{'users/s':>9} {'values/s':>11} {'peak GB':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'load':>5}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-features-"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for round_ in range(args.rounds):
            for kind in args.stores:
                if kind == "redis" and not redis_reachable(args.redis):
                    if round_ == 0:
                        print(f"{'':5} {kind:7} skipped: nothing listens on {args.redis}")
                    continue
                for writer in args.writers if round_ % 2 == 0 else args.writers[::-1]:
                    settings = {"online_store": kind, "redis": args.redis, "online_write": writer}
                    if kind == "redis":
                        settings["project"] = f"couponflow_bench_{uuid.uuid4().hex[:8]}"
                    root = scratch / f"{kind}-{writer}-{round_}"
                    ws = workspace(root, args.users, args.coupons, **settings)
                    r = run_apart(ws, args.users, args.coupons, args.reads)
                    shutil.rmtree(root, ignore_errors=True)
                    results.setdefault((kind, writer), []).append(r)
                    print(row(str(round_ + 1), kind, writer, r), flush=True)
        if args.rounds > 1:
            for (kind, writer), runs in results.items():
                median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
                print(row("med", kind, writer, median))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def row(label: str, kind: str, writer: str, r: dict[str, float]) -> str:
    return (
        f"{label:>5} {kind:7} {writer:6} {r['first_s']:>7.1f}s {r['users_per_s']:>9,.0f} "
        f"{r['again_s']:>7.1f}s {r['again_users_per_s']:>9,.0f} {r['values_per_s']:>11,.0f} "
        f"{r['peak_gb']:>7.2f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['load']:>5.1f}"
    )


def run_apart(ws: Workspace, users: int, coupons: int, reads: int) -> dict[str, float]:
    """`measure` in a process of its own (its peak memory is its own), with the 1-minute
    load average at its end."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(measure, (ws, users, coupons, reads))
    return {**result, "load": os.getloadavg()[0]}


if __name__ == "__main__":
    main()
