"""How fast the simulated world generates a day, and how much memory it takes.

    .venv/bin/python -m benchmarks.bench_world [--events 100000 1000000] [--oracle]

For each target of events per day (sessions + offers + orders) the world is scaled by
n_users (calibrated on a small pilot world) and measured in a fresh process, so each peak
resident set size is that scale's alone. "first day" is a fresh World's first batch, which
also replays the logging policy over the fatigue window; "next day" is the following date,
as a daily DAG run would produce it. Figures print; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from typing import Any

from couponflow.config import PROJECT_ROOT, load_params
from couponflow.world import World

DAY = "2026-01-05"
EVENTS = ("sessions", "offers", "orders")
BUDGET_PER_USER = load_params(PROJECT_ROOT / "params.yaml")["policy"]["budget_per_user"]


def world_cfg(n_users: int) -> dict[str, Any]:
    cfg = load_params(PROJECT_ROOT / "params.yaml")["world"]
    cfg["n_users"] = n_users
    return cfg


def events_per_user(pilot_users: int = 20_000) -> float:
    batch = World(world_cfg(pilot_users)).simulate_day(DAY)
    return sum(len(batch[t]) for t in EVENTS) / pilot_users


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(n_users: int, oracle: bool) -> dict[str, float]:
    """One scale, in this process: build the world, then two consecutive days."""
    baseline = peak_rss_mb()
    t0 = time.perf_counter()
    world = World(world_cfg(n_users))
    t1 = time.perf_counter()
    first = world.simulate_day(DAY)
    t2 = time.perf_counter()
    second = world.simulate_day("2026-01-06")
    t3 = time.perf_counter()
    result = {
        "n_users": n_users,
        "events_first": sum(len(first[t]) for t in EVENTS),
        "events_next": sum(len(second[t]) for t in EVENTS),
        "init_s": t1 - t0,
        "first_day_s": t2 - t1,
        "next_day_s": t3 - t2,
        "baseline_rss_mb": baseline,
    }
    if oracle:
        from couponflow.oracle import Oracle

        t4 = time.perf_counter()
        judge = Oracle(world)
        truth = judge.truth("2026-01-06")
        value, _ = judge.policy_value(truth, budget=BUDGET_PER_USER * len(truth.users))
        result["oracle_s"] = time.perf_counter() - t4
        result["oracle_value"] = value.incremental_profit
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--oracle", action="store_true", help="also time the oracle policy")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # n_users, run in-process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.oracle)))
        return

    rate = events_per_user()
    print(f"calibration: {rate:.3f} events per user per day (pilot of 20,000 users)")
    header = (
        f"{'target':>10} {'n_users':>10} {'events':>10} {'init s':>7} {'day 1 s':>8} "
        f"{'events/s':>10} {'next day s':>10} {'events/s':>10} {'peak MB':>8} {'base MB':>8}"
    )
    print(header + ("  oracle s" if args.oracle else ""))
    for target in args.events:
        n_users = math.ceil(target / rate)
        cmd = [sys.executable, "-m", "benchmarks.bench_world", "--child", str(n_users)]
        cmd += ["--oracle"] if args.oracle else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=PROJECT_ROOT)
        r = json.loads(done.stdout)
        line = (
            f"{target:>10,} {n_users:>10,} {r['events_first']:>10,} {r['init_s']:>7.2f} "
            f"{r['first_day_s']:>8.2f} {r['events_first'] / r['first_day_s']:>10,.0f} "
            f"{r['next_day_s']:>10.2f} {r['events_next'] / r['next_day_s']:>10,.0f} "
            f"{r['peak_rss_mb']:>8.0f} {r['baseline_rss_mb']:>8.0f}"
        )
        print(line + (f"  {r['oracle_s']:>8.2f}" if args.oracle else ""))


if __name__ == "__main__":
    main()
