"""How fast the orders table validates with its full suite, and how much memory it takes.

    .venv/bin/python -m benchmarks.bench_validation [--rows 100000 1000000] [--broken 0.5]

For each size a valid batch is built (N orders from N users, a catalogue of 20 coupons, one
offer per redemption) and the orders suite runs on it as the validate task runs it: contract
rules, the rules across tables (references, validity windows, offered coupons) and the
statistics against trailing bands, the money, time-order and identity rules (the order ids checked
against IDENTITY_DATES accepted days). Each size runs in a fresh process, so each peak resident set
size is that size's alone. "derive" is the pandas part (the derived columns of the rules across
tables), "gx" the Great Expectations run including it. Figures print; nothing is asserted.

`--broken SHARE` breaks that share of the orders twice (a negative amount, an unknown user) to
time a rejection: GX then collects the key of every failing row before keeping a sample of them,
a Python loop over the failing rows.

The whole validation step, every table, as the DAG's validate task runs it:

    .venv/bin/python -m benchmarks.bench_validation --events 1000000 [--history-days 3]
        [--key-days 30] [--rounds 5] [--root DIR] [--trees DIR ...]

A workspace at that many events a day (sessions + offers + orders; world.n_users scaled by
bench_world's calibration, as bench_daily_run does) gets `--history-days` simulated days
landed, validated and loaded into the offline store (no features: validation reads none), and
the next day landed; `--key-days N` adds accepted dates of random keys up to N (the rule across
days checks every accepted date: a month of them without simulating a month). Then each round
runs the DAG's validate task on that day in a fresh process, as an Airflow worker runs it
(bench_daily_run's child: the DAG file loaded, then `require_valid`): `process s` is the whole
process (start-up, Airflow and GX imported), `call s` the task callable. A batch that fails
stops the benchmark (it would leave landing). `--trees` alternates source trees round by round
(each run with its own PYTHONPATH, e.g. a checkout of the code before a change) on the same
workspace; `--root` keeps the workspace for later runs (seeding 1M events a day takes
minutes). Medians print last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from couponflow.config import PROJECT_ROOT, Workspace, load_params
from couponflow.contract import CATEGORIES, EVENTS, TABLES
from expectations import trailing
from expectations.suites import derive, suite_parameters
from expectations.validate import open_context, store_suite, validate_table

DAY = pd.Timestamp("2026-01-05")
N_COUPONS = 20
REDEEMED = 0.25  # share of orders redeeming a coupon, as in the simulated world
IDENTITY_DATES = 30  # accepted days whose order ids the batch is checked against


def _ids(prefix: str, n: int) -> pd.arrays.StringArray:
    return pd.array(np.char.add(prefix, np.arange(n).astype(str)), dtype="string")


def make_batch(n: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A valid batch around `n` orders: users, coupons and offers the orders' rules look up."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": np.arange(n, dtype="int64")})
    coupons = pd.DataFrame(
        {
            "coupon_id": _ids("C", N_COUPONS),
            "kind": "amount_off",  # the terms the money rules check each redemption against
            "value": 5.0,
            "min_spend": 0.0,
            "category": "all",
            "valid_from": DAY - pd.Timedelta(days=10),
            "valid_to": DAY + pd.Timedelta(days=20),
        }
    )
    user = rng.integers(0, n, n).astype("int64")
    redeemed = rng.random(n) < REDEEMED
    coupon = np.where(redeemed, rng.integers(0, N_COUPONS, n), -1)
    coupon_ids = np.append(coupons["coupon_id"].to_numpy(object), np.array([None], dtype=object))
    amount = np.round(rng.lognormal(np.log(50), 0.5, n), 2) + 0.01
    orders = pd.DataFrame(
        {
            "order_id": _ids("r", n),
            "user_id": user,
            "ts": DAY + pd.to_timedelta(rng.integers(6 * 3600, 86_400, n), unit="s"),
            "amount": amount,
            "category": pd.array(np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), n)]),
            "coupon_id": pd.array(coupon_ids[coupon], dtype="string"),
            "discount": np.where(redeemed, np.minimum(5.0, amount), 0.0),
        }
    )
    offered = orders[redeemed]
    offers = pd.DataFrame(
        {
            "user_id": offered["user_id"].to_numpy(),
            "coupon_id": offered["coupon_id"].array,
            "ts": DAY + pd.Timedelta(hours=1),  # before the orders: the time-order rule runs
        }
    )
    return {
        "users": users,
        "coupons": coupons,
        "offers": offers,
        "orders": TABLES["orders"].conform(orders),
    }


def trailing_bands(orders: pd.DataFrame, cfg: dict[str, Any]) -> dict[str, Any]:
    """Bands from a fortnight of accepted batches like this one (within a few percent)."""
    today = {
        "orders.volume": len(orders),
        "orders.redemption_rate": orders["coupon_id"].notna().mean(),
        "orders.mean_basket": orders["amount"].mean(),
    }
    past = [{k: v * (1 + 0.03 * (-1) ** i) for k, v in today.items()} for i in range(14)]
    return {sid: w.bands for sid, w in trailing.windows(past, cfg).items()}


def identity_index(n: int, dates: int = IDENTITY_DATES) -> dict[str, Any]:
    """The ids of `dates` accepted days of n orders each, as the rule across days gets them
    (expectations.rules.KeyIndex; none before that rule existed)."""
    try:
        from expectations.rules import ACCEPTED, KeyIndex, key_hashes
    except ImportError:
        return {}
    past = {f"d{d}": key_hashes(pd.Series(_ids(f"{d}-r", n))) for d in range(dates)}
    return {ACCEPTED.format("orders"): KeyIndex(past)}


def remember_keys(batch: dict[str, Any]) -> None:
    """What an accepted batch costs besides: the hashes of its keys for the days after it
    (made once, by the rule across days, where the code keeps them under HASHES)."""
    try:
        from expectations.rules import batch_key_hashes
    except ImportError:
        try:
            from expectations.rules import key_hashes
        except ImportError:
            return
        key_hashes(batch["orders"]["order_id"])
        return
    batch_key_hashes(batch, TABLES["orders"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(n: int, broken: float) -> dict[str, Any]:
    """One size, in this process: build the batch, then validate the orders table."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    day = str(DAY.date())
    batch = make_batch(n)
    values = suite_parameters(day, trailing_bands(batch["orders"], params["validation"]))
    hit = np.random.default_rng(1).random(n) < broken
    batch["orders"].loc[hit, "amount"] = -1.0
    batch["orders"].loc[hit, "user_id"] += n  # past the last user
    baseline = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as root:
        (Path(root) / "params.yaml").write_text(yaml.safe_dump(params))
        context = open_context(Workspace(Path(root)))
        suite = store_suite(context, TABLES["orders"], params["validation"])
        accepted = identity_index(n)
        batch.update(accepted)
        try:  # where the rule across days leaves the hashes it made, as validate passes it
            from expectations.rules import HASHES

            batch[HASHES] = {}
        except ImportError:
            pass
        t0 = time.perf_counter()
        derive(TABLES["orders"], batch, day)
        t1 = time.perf_counter()
        result = validate_table(context, suite, batch, day, values)
        t2 = time.perf_counter()
        remember_keys(batch)
        t3 = time.perf_counter()
    return {
        "rows": n,
        "expectations": len(result.results),
        "failed": [
            r.expectation_config.type if r.expectation_config else "?"
            for r in result.results
            if not r.success
        ],
        "derive_s": t1 - t0,
        "gx_s": t2 - t1,
        "keys_s": t3 - t2,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
    }


def events_workspace(
    events: int, history_days: int, root: Path, key_days: int = 0
) -> tuple[Workspace, str]:
    """A workspace at `events` a day with `history_days` accepted days (landed, validated, in
    the offline store) and the next day landed; reused when `root` already holds it. With
    `key_days` beyond the history, the rule across days also meets that many accepted dates'
    keys: random hashes of a day's size each, as `validate` keeps them (a month at 1M events
    a day without simulating one)."""
    from benchmarks.bench_world import events_per_user
    from couponflow.landing import load_offline, next_days, read_batch, write_batch
    from couponflow.workspace import init_workspace
    from couponflow.world import World
    from expectations.validate import require_valid

    path = root / f"events-{events}-history-{history_days}"
    if key_days > history_days:
        path = path.with_name(f"{path.name}-keys-{key_days}")
    ready = path / "bench-day.txt"
    if ready.exists():
        return Workspace(path), ready.read_text().strip()
    shutil.rmtree(path, ignore_errors=True)
    n_users = math.ceil(events / events_per_user())
    ws = init_workspace(path, {"world.n_users": n_users, "world.history_days": history_days})
    world = World(ws.params["world"])  # one world for every day: its first day replays the past
    start = pd.Timestamp(ws.params["world"]["start_date"])
    for i in range(history_days):
        day = str((start + pd.Timedelta(days=i)).date())
        write_batch(ws.landing_partition(day), world.simulate_day(day))
        require_valid(ws, day)
        load_offline(ws, day, read_batch(ws.landing_partition(day)))
    day = next_days(ws, 1)[0]
    batch = world.simulate_day(day)
    write_batch(ws.landing_partition(day), batch)
    rng = np.random.default_rng(0)
    for i in range(key_days - history_days):  # dates before the history: keys only
        date = str((start - pd.Timedelta(days=i + 1)).date())
        for name in EVENTS:
            folder = ws.validation_reports / "keys" / name  # validate's `_keys_folder`
            folder.mkdir(parents=True, exist_ok=True)
            keys = rng.integers(0, 2**63, len(batch[name]), dtype=np.int64).astype(np.uint64)
            np.save(folder / f"{date}.npy", np.unique(keys))
    print(
        f"workspace {path}: {n_users:,} users, {history_days} accepted days "
        f"({max(key_days, history_days)} dates of keys), {day} landed: "
        + ", ".join(f"{name} {len(frame):,}" for name, frame in batch.items()),
        flush=True,
    )
    ready.write_text(day)
    return ws, day


def validate_task(ws: Workspace, day: str, tree: Path) -> dict[str, Any]:
    """The DAG's validate task on `day`, in a fresh process running `tree`'s code; its peak
    RSS is the process's own (VmHWM at exit, through bench_daily_run's sitecustomize hook:
    ru_maxrss would inherit this process's peak, the seeding's, across fork + exec)."""
    from benchmarks.process_log import exits_between, hooked_env
    from couponflow.airflow_local import airflow_env

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as scratch:
        hooks, exits = Path(scratch) / "hooks", Path(scratch) / "exits.jsonl"
        env = hooked_env(airflow_env(ws) | {"PYTHONPATH": ""}, hooks, exits, code=tree)
        out, upstream = Path(scratch) / "out.json", Path(scratch) / "in.json"
        upstream.write_text("null")
        cmd = [sys.executable, "-m", "benchmarks.bench_daily_run", "--child"]
        cmd += ["validate", "--day", day, "--out", str(out), "--upstream", str(upstream)]
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        ended = time.perf_counter()
        if done.returncode != 0:
            raise SystemExit(
                f"validate failed with {tree}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
        result = json.loads(out.read_text())
        peaks = [r["rss_mb"] for r in exits_between(exits, 0, math.inf)]
    return {
        "process_s": ended - started,
        "call_s": result["call_s"],
        "peak_mb": max(peaks, default=math.nan),
        "rows": result["result"]["rows"],
        "warnings": result["result"]["warnings"],
        "load": os.getloadavg()[0],
    }


def whole_step(
    events: int, history_days: int, key_days: int, rounds: int, root: Path, trees: list[Path]
) -> None:
    """Time the validate task at `events` a day, `rounds` times per tree, trees alternating."""
    ws, day = events_workspace(events, history_days, root, key_days)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"{'round':>5} {'tree':<40} {'process s':>9} {'call s':>7} {'peak MB':>8} {'load':>5}")
    times: dict[Path, list[dict[str, Any]]] = {tree: [] for tree in trees}
    for i in range(rounds):
        for tree in trees:
            r = validate_task(ws, day, tree)
            times[tree].append(r)
            print(
                f"{i + 1:>5} {str(tree)[-40:]:<40} {r['process_s']:>9.2f} {r['call_s']:>7.2f} "
                f"{r['peak_mb']:>8.0f} {r['load']:>5.2f}",
                flush=True,
            )
    rows = ", ".join(f"{name} {n:,}" for name, n in times[trees[0]][0]["rows"].items())
    print(f"{day} at {events:,} events a day ({rows}); median of {rounds} rounds:")
    for tree, found in times.items():
        process = statistics.median(r["process_s"] for r in found)
        call = statistics.median(r["call_s"] for r in found)
        load = statistics.median(r["load"] for r in found)
        peak = max(r["peak_mb"] for r in found)
        print(
            f"  {tree}: process {process:.2f} s, call {call:.2f} s, peak RSS {peak:.0f} MB "
            f"(load {load:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--broken", type=float, default=0.0, help="share of orders to break")
    parser.add_argument("--events", type=int, help="time the whole validate task at this scale")
    parser.add_argument("--history-days", type=int, default=3, help="accepted days before it")
    parser.add_argument(
        "--key-days", type=int, default=0, help="dates of accepted keys, padded past the history"
    )
    parser.add_argument("--rounds", type=int, default=5, help="validate runs per tree")
    parser.add_argument("--root", type=Path, help="keep the workspace here (default: removed)")
    parser.add_argument("--trees", type=Path, nargs="+", default=[PROJECT_ROOT])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # rows, run in-process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.broken)))
        return
    if args.events:
        root = args.root or Path(tempfile.mkdtemp(prefix="bench-validation-"))
        try:
            trees = [tree.resolve() for tree in args.trees]
            whole_step(args.events, args.history_days, args.key_days, args.rounds, root, trees)
        finally:
            if args.root is None:
                shutil.rmtree(root, ignore_errors=True)
        return

    print(
        f"{'rows':>10} {'rules':>6} {'derive s':>9} {'gx s':>7} {'keys s':>7} {'rows/s':>9} "
        f"{'peak MB':>8} {'base MB':>8}  failed"
    )
    for n in args.rows:
        cmd = [sys.executable, "-m", "benchmarks.bench_validation", "--child", str(n)]
        cmd += ["--broken", str(args.broken)]
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
        done = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT
        )
        r = json.loads(done.stdout.splitlines()[-1])
        print(
            f"{r['rows']:>10,} {r['expectations']:>6} {r['derive_s']:>9.2f} {r['gx_s']:>7.2f} "
            f"{r['keys_s']:>7.2f} "
            f"{r['rows'] / r['gx_s']:>9,.0f} {r['peak_rss_mb']:>8.0f} "
            f"{r['baseline_rss_mb']:>8.0f}  {', '.join(r['failed']) or 'none'}"
        )


if __name__ == "__main__":
    main()
