"""Wall time and peak memory of the training stages on a month of history at N events a day.

    .venv/bin/python -m benchmarks.bench_history [--events 1000000 | --users N]
        [--days 34] [--simulated 3] [--epochs 1 [3 ...]] [--keep DIR] [--min-free-gb 6]

The question (issue #19): does a training window's worth of big days fit in memory? The
DVC stages `dataset` and `train` (`python -m training.dataset`, `python -m training.train`)
are run in a seeded workspace as `dvc repro` runs them (in the workspace root, the project
on PYTHONPATH, $COUPONFLOW_HOME set; training.pipeline / couponflow.workspace.dvc), each
in its own process, and each reports its wall time and peak RSS: VmHWM of every Python
process it runs (a sitecustomize hook put first on PYTHONPATH, as in bench_daily_run),
and the RSS of the whole process tree sampled every 0.2 s (the process and its children).

History tiled from simulated days. Simulating a month at 1M events a day takes about an
hour here, so the workspace gets `--simulated` days (default 3) from the real path,
`couponflow.seeding.seed_history`: the world simulator, the validation, the offline
store, the features published exactly as the pipeline writes them. The history is then
extended to `--days` offline days (default: the training window, model.training_days + 1
+ evaluation.days, plus the first day, which has no features) by copying those
partitions to the later dates, day d0 + i a copy of simulated day d0 + (i mod simulated):
every table of the offline store (users, coupons, sessions, offers, orders) and every
feature view's partition, each timestamp (ts, valid_from / valid_to, event_timestamp)
moved by the same whole number of days, the per-day ids (session_id, offer_id,
order_id) suffixed with the new date so they stay unique, schemas and per-day volumes
unchanged (checked). The copy is a valid input for the stages: an offer on day D meets
the user's and coupon's feature rows stamped at D 00:00 (partition D - 1, inside the
views' 7-day ttl) and its labels in the orders of D, shifted together; the user ids, the
catalogue and the feature values repeat with the days they were copied from, so the
figures measure the size of the work, not a model worth keeping.

Memory does not grow with epochs (the arrays are built once; an epoch walks them in
batches): the default is `--epochs 1`, and `--epochs 1 3` trains twice on the same
table to show it. The machine may be shared: a stage that leaves less than
`--min-free-gb` of memory available is killed with its children and reported with its
sampled peak. `--keep DIR` keeps the workspace there and reuses it: a seeded workspace
is not seeded again, days already tiled are not copied again. Results: docs/scaling.md
("Training").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from benchmarks.process_log import PROCESS_LOG_ENV, exits_between, hooked_env
from couponflow.config import HOME_ENV, Workspace

# What a copied day changes: the per-day ids of each table, and its timestamp columns.
DAY_IDS = {"sessions": "session_id", "offers": "offer_id", "orders": "order_id"}
TIMES = {"sessions": ["ts"], "offers": ["ts"], "orders": ["ts"],
         "coupons": ["valid_from", "valid_to"], "users": []}  # fmt: skip
FEATURE_TIMES = ["event_timestamp"]
TILED_RECORD = "bench-history.json"  # in the workspace: which days are simulated, which copied


def workspace(root: Path, name: str, n_users: int, simulated: int) -> Workspace:
    """The workspace `name` under `root`, created if absent (params.yaml's defaults,
    world.n_users and world.history_days = the simulated days)."""
    from couponflow.workspace import init_workspace

    path = root / name
    if (path / "params.yaml").exists():
        return Workspace(path)
    overrides: dict[str, Any] = {"world.n_users": n_users, "world.history_days": simulated}
    return init_workspace(path, overrides)


def seed(ws: Workspace) -> tuple[list[str], float]:
    """The simulated days (seeded through the pipeline's own path unless already there)
    and the seconds seeding took now (0 when reused)."""
    from couponflow.landing import offline_days
    from couponflow.seeding import seed_history

    record = ws.root / "logs" / TILED_RECORD
    if record.exists():
        return json.loads(record.read_text())["simulated"], 0.0
    wanted = int(ws.params["world"]["history_days"])
    started = time.perf_counter()
    if len(offline_days(ws)) < wanted:
        seed_history(ws)
    days = offline_days(ws)[:wanted]
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"simulated": days}))
    return days, time.perf_counter() - started


def shifted(table: pa.Table, times: list[str], ids: str | None, days: int, date: str) -> pa.Table:
    """`table` moved `days` days later: each of `times` shifted, `ids` suffixed with the
    new `date`; the schema (pandas metadata included) kept as it was."""
    columns = []
    for field in table.schema:
        column = table.column(field.name)
        if field.name in times:
            delta = pa.scalar(days * 86_400 * 10**9, pa.duration("ns")).cast(
                pa.duration(field.type.unit)
            )
            column = pc.add(column, delta).cast(field.type)
        elif field.name == ids:
            column = pc.binary_join_element_wise(column, f"~{date}", "").cast(field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


def _copy_partition(source: Path, target: Path, times: list[str], ids: str | None,
                    days: int, date: str) -> int:  # fmt: skip
    """One partition file copied `days` later (written whole, then moved into place, as
    landing.write_partition does); its rows."""
    table = pq.read_table(source)
    moved = shifted(table, times, ids, days, date)
    if moved.schema != table.schema or moved.num_rows != table.num_rows:
        raise AssertionError(f"{source}: the copy changed the schema or the rows")
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(moved, target.with_name(target.name + ".tmp"))
    target.with_name(target.name + ".tmp").replace(target)
    return moved.num_rows


def tile(ws: Workspace, simulated: list[str], total: int) -> dict[str, int]:
    """Extend the offline store and the feature views to `total` days: day d0 + i is a
    copy of simulated[i mod len(simulated)] moved (d0 + i) - source days. Returns the
    rows of the newest copied day per table (the same as its source's)."""
    from feature_repo.store import VIEWS

    start = pd.Timestamp(simulated[0])
    rows: dict[str, int] = {}
    for i in range(len(simulated), total):
        date = str((start + pd.Timedelta(days=i)).date())
        source = simulated[i % len(simulated)]
        days = (pd.Timestamp(date) - pd.Timestamp(source)).days
        parts = [(ws.offline / name, TIMES[name], DAY_IDS.get(name)) for name in TIMES]
        parts += [(ws.features / view, FEATURE_TIMES, None) for view in VIEWS]
        for folder, times, ids in parts:
            target = folder / f"date={date}" / "part.parquet"
            if target.exists():
                continue  # tiled by an earlier run (--keep)
            rows[folder.name] = _copy_partition(
                folder / f"date={source}" / "part.parquet", target, times, ids, days, date
            )
    return rows


def stage_env(ws: Workspace, hooks: Path, log: Path) -> dict[str, str]:
    """The environment `dvc repro` gives a stage (couponflow.workspace.dvc), with the
    hook that logs each Python process's resources first on PYTHONPATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return hooked_env({**os.environ, HOME_ENV: str(ws.root), "PATH": path}, hooks, log)


def run_stage(ws: Workspace, stage: str, env: dict[str, str], min_free_gb: float) -> dict:
    """`python -m training.<stage>` in the workspace root, its tree's RSS sampled; its wall
    time, the largest VmHWM of its processes, the sampled peak and when it came, the
    load after it, its last output line (or why it failed)."""
    log = Path(env[PROCESS_LOG_ENV])
    out = ws.root / "logs" / f"bench-history-{stage}.log"
    started, sampled, peak_at, failed = time.time(), 0.0, 0.0, None
    with open(out, "w") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", f"training.{stage}"], cwd=ws.root, env=env,
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        while process.poll() is None:
            time.sleep(0.2)
            with suppress(psutil.NoSuchProcess):
                tree = psutil.Process(process.pid)
                rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
                if rss / 2**20 > sampled:
                    sampled, peak_at = rss / 2**20, time.time() - started
            if psutil.virtual_memory().available < min_free_gb * 2**30:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                failed = f"killed: less than {min_free_gb} GB of memory left available"
    ended = time.time()
    text = out.read_text().strip().splitlines()
    if failed is None and process.returncode != 0:
        failed = f"failed ({out}): {(text or ['no output'])[-1][-300:]}"
    ran = exits_between(log, started, ended + 1)
    return {
        "stage": stage,
        "seconds": ended - started,
        "vmhwm_mb": max((r["rss_mb"] for r in ran), default=math.nan),
        "sampled_mb": sampled,
        "peak_at_s": peak_at,
        "load": os.getloadavg(),
        "said": (text or [""])[-1],
        "failed": failed,
    }


def set_epochs(ws: Workspace, epochs: int) -> None:
    """model.epochs in the workspace's own params.yaml (the bench's workspace)."""
    params = yaml.safe_load(ws.params_file.read_text())
    params["model"]["epochs"] = epochs
    ws.params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def window_rows(ws: Workspace) -> tuple[list[str], int]:
    """The training window's days and the logged offers in them (the dataset's input)."""
    from training.dataset import window

    days = window(ws)
    offers = sum(
        pq.read_metadata(ws.offline / "offers" / f"date={d}" / "part.parquet").num_rows
        for d in days
    )
    return days, offers


def print_stage(r: dict[str, Any], label: str) -> None:
    loads = " ".join(f"{v:.2f}" for v in r["load"])
    print(
        f"{label:<16} {r['seconds']:>8.1f} {r['vmhwm_mb']:>10.0f} {r['sampled_mb']:>10.0f} "
        f"{r['peak_at_s']:>8.0f}  {loads}  {r['failed'] or r['said']}",
        flush=True,
    )


def run_stages(
    ws: Workspace, root: Path, epochs: list[int], min_free_gb: float, offers: int
) -> list[dict[str, Any]]:
    """The dataset stage, then the train stage once per count of `epochs`, printed as they
    end; the dataset's result carries the training table's rows."""
    env = stage_env(ws, root / "hooks", ws.root / "logs" / "bench-history-processes.jsonl")
    print(f"{'stage':<16} {'wall s':>8} {'VmHWM MB':>10} {'tree MB':>10} {'peak at':>8}  "
          f"load 1/5/15 min  output")  # fmt: skip
    results = [run_stage(ws, "dataset", env, min_free_gb)]
    print_stage(results[0], "dataset")
    if results[0]["failed"] is None:
        table = pq.read_metadata(ws.training_set / "offers.parquet")
        results[0]["rows"] = table.num_rows
        missing = offers - table.num_rows
        print(f"training table: {table.num_rows:,} rows x {table.num_columns} columns "
              f"({missing:,} offers without a feature row)", flush=True)  # fmt: skip
        for count in epochs:
            set_epochs(ws, count)
            results.append({**run_stage(ws, "train", env, min_free_gb), "epochs": count})
            print_stage(results[-1], f"train {count} epoch{'s' * (count > 1)}")
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--events", type=int, help="events a day (default 1,000,000)")
    scale.add_argument("--users", type=int, help="world.n_users instead of --events")
    parser.add_argument("--days", type=int, help="offline days in all (default: window + 1)")
    parser.add_argument("--simulated", type=int, default=3, help="days simulated, then tiled")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1], help="a train run each")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the workspace here")
    parser.add_argument(
        "--min-free-gb", type=float, default=6.0, help="kill a stage leaving less available"
    )
    args = parser.parse_args(argv)
    if args.users:
        n_users, name = args.users, f"users-{args.users}"
    else:
        from benchmarks.bench_world import events_per_user

        events = args.events or 1_000_000
        n_users, name = math.ceil(events / events_per_user()), f"events-{events}"
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-history-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the start")  # fmt: skip
    try:
        ws = workspace(root, name, n_users, args.simulated)
        simulated, seeded_s = seed(ws)
        model, evaluation = ws.params["model"], ws.params["evaluation"]
        total = args.days or int(model["training_days"]) + 1 + int(evaluation["days"]) + 1
        started = time.perf_counter()
        copied = tile(ws, simulated, total)
        tiled_s = time.perf_counter() - started
        days, offers = window_rows(ws)
        print(
            f"{n_users:,} users; {len(simulated)} days simulated ({simulated[0]} .. "
            f"{simulated[-1]}, {seeded_s:.0f} s now), history tiled from them to {total} "
            f"days ({tiled_s:.0f} s now; a copied day's rows: "
            f"{', '.join(f'{k} {v:,}' for k, v in copied.items()) or 'already there'}); "
            f"window {days[0]} .. {days[-1]} ({len(days)} days): {offers:,} offers; "
            f"workspace {ws.root}",
            flush=True,
        )
        return run_stages(ws, root, args.epochs, args.min_free_gb, offers)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
