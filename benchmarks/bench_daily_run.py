"""Wall time and peak memory of one daily run, stage by stage, at 100k and 1M events a day.

    .venv/bin/python -m benchmarks.bench_daily_run [--events 100000 1000000]
        [--history-days 6 3] [--default-gate] [--min-free-gb 3] [--root DIR]

For each target of events per day (sessions + offers + orders) a fresh workspace gets
world.n_users scaled to it (bench_world's calibration) and its history seeded by
`couponflow.seeding.seed_history` (timed, reported apart: it is set-up, not the daily run).
Then the DAGs' own task callables (dags/coupon_pipeline.py, taken from the DAG objects)
run for the next day in DAG order, each in a fresh process as an Airflow worker runs a
task: land, validate, load_offline_store, features, train, then the gate's short circuit
and, when it promotes, build_bento, check_candidate, release. `process s` is the whole
process (interpreter start-up and imports included), `call s` from loading the DAG file
(Airflow imported, ~2 s) to the task callable's return.

The train task is `training.pipeline.repro`; its parts are timed from inside: every
Python process started under the benchmark records its command, wall time and peak RSS
(VmHWM) when it exits, through a sitecustomize put first on PYTHONPATH, so each DVC stage
(`python -m training.<stage>`) and each `dvc add/repro/push` reports itself without a
change to the pipeline; `dvc outside stages` is the rest of `dvc repro` (its start-up,
hashing and caching outputs, dvc.lock). `peak MB` is the task process's own, `child MB`
the largest of the processes it waited for (the DVC stages, the BentoML steps); the bento
servers run detached and are not counted.

To time the release path whatever the gate decides, the benchmark lowers the gate's bars
in its own workspaces (`--default-gate` keeps them: the release path then runs only if
the gate promotes). The front door gets a free port, not serving.port, so it never meets
another deployment's, and every server started is stopped at the end
(serving.deploy.deployment.stop_deployment). The machine may be shared: a task that leaves less
than `--min-free-gb` of memory available is killed with its children, reported with the
time it ran and its sampled peak, and the run goes on where the inputs allow (a killed
`features` has already written the day's offline features the training reads). The
features task's result splits it into publishing and materialising, printed with the
materialise's rows/s. The 1-minute load average is printed after each task; under load
every time is an upper bound. Figures print; nothing is asserted. Results:
docs/scaling.md.
"""

from __future__ import annotations

import argparse
import importlib.util
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

import psutil
from tqdm import tqdm

from benchmarks.bench_world import events_per_user
from benchmarks.process_log import exits_between, hooked_env
from couponflow.config import PROJECT_ROOT, Workspace

RELEASE_TASKS = ("build_bento", "check_candidate", "release")
TASKS = ("land", "validate", "load_offline_store", "features", "train", "gate", *RELEASE_TASKS)
STAGES = ("dataset", "train", "budget", "evaluate", "gate", "report")
OPEN_GATE = {  # every bar the gate can hold a challenger to, lowered to nothing
    "gate.min_auc": 0.0,
    "gate.max_ece": 1.0,
    "gate.min_coupon_evidence": 0,
    "gate.min_lift_over_champion": -1e9,
    "gate.max_auc_regression": 1.0,
    "gate.max_log_loss_regression": 1e9,
    "gate.min_lift_over_baselines": -1e9,
}
PROCESS_LOG = "bench-processes.jsonl"  # in the workspace's logs folder
# name, process s, call s, peak MB, children's peak MB, load, why it failed (or "")
Row = tuple[str, float, float, float, float, float, str]


DAGS = ("coupon_ingest", "coupon_features", "coupon_retrain")


def dag_task(name: str) -> Any:
    """The callable behind task `name` of the day's DAGs (dags/coupon_pipeline.py), as
    Airflow calls it. Outside a task run there is no asset event to tag with the day, so
    that one call is skipped: the benchmark times the work, Airflow does the triggering."""
    spec = importlib.util.spec_from_file_location(
        "coupon_pipeline", PROJECT_ROOT / "dags" / "coupon_pipeline.py"
    )
    assert spec is not None and spec.loader is not None  # the file is in the checkout
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__dict__["_announce"] = lambda asset, day: None
    for dag_id in DAGS:
        dag = getattr(module, dag_id)()
        if name in dag.task_ids:
            return dag.get_task(name).python_callable
    raise KeyError(f"no task {name} in {DAGS}")


def run_child(task: str, day: str, upstream: Any) -> dict[str, Any]:
    """In the child process: one task (or `seed`) for the workspace in $COUPONFLOW_HOME."""
    from couponflow.logs import quiet_libraries

    quiet_libraries()
    ws = Workspace.from_env()
    started = time.perf_counter()
    if task == "seed":
        from couponflow.seeding import seed_history

        result: Any = seed_history(ws)
    elif task in RELEASE_TASKS:  # each takes its upstream task's result, as XCom passes it
        result = dag_task(task)(upstream)
    else:
        result = dag_task(task)(ds=day)
    return {"call_s": time.perf_counter() - started, "result": result}


def child_env(ws: Workspace, hooks: Path, process_log: Path) -> dict[str, str]:
    from couponflow.airflow_local import airflow_env

    env = airflow_env(ws) | {"BENTOML_HOME": str(ws.root / "bentoml")}
    return hooked_env(env, hooks, process_log)


def run_step(
    ws: Workspace,
    task: str,
    day: str,
    upstream: Any,
    env: dict[str, str],
    bar: tqdm,
    min_free_gb: float,
) -> dict[str, Any]:
    """One task in a fresh process, the bar ticking meanwhile: its result (or why it
    failed), times, the load after it, and the exit records of the Python processes that
    ran within it. A task that leaves less than `min_free_gb` of memory available on the
    machine is killed with its children: the machine is shared."""
    logs = ws.root / "logs"
    out, log, passed = (logs / f"bench-{task}{end}" for end in (".json", ".log", "-in.json"))
    passed.write_text(json.dumps(upstream, default=str))  # the upstream task's XCom
    cmd = [sys.executable, "-m", "benchmarks.bench_daily_run", "--child", task, "--day", day]
    cmd += ["--out", str(out), "--upstream", str(passed)]
    bar.set_postfix_str(task)
    started, sampled_mb, failed = time.time(), 0.0, None
    # the elapsed time ticks each second on a terminal; in a log file each tick is a line
    tick_every, ticked = (1 if sys.stderr.isatty() else 60), started
    with open(log, "w") as fh:
        process = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        while process.poll() is None:
            time.sleep(1)
            if time.time() - ticked >= tick_every:  # a slow sample must not skip the tick
                bar.refresh()
                ticked = time.time()
            with suppress(psutil.NoSuchProcess):
                tree = psutil.Process(process.pid)
                rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
                sampled_mb = max(sampled_mb, rss / 2**20)
            if psutil.virtual_memory().available < min_free_gb * 2**30:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                failed = f"killed: less than {min_free_gb} GB of memory left available"
    ended = time.time()
    if failed is None and process.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        failed = f"failed ({log}): {tail[0][-200:]}"
    ran = exits_between(logs / PROCESS_LOG, started, ended)
    own = [r["rss_mb"] for r in ran if r["pid"] == process.pid]
    under = [r for r in ran if r["pid"] != process.pid]
    return {
        **(json.loads(out.read_text()) if failed is None else {"call_s": math.nan}),
        "failed": failed,
        "process_s": ended - started,
        "load": os.getloadavg()[0],
        "rss_mb": own[0] if own else sampled_mb,  # a killed task's peak: sampled, its tree's
        "children_rss_mb": max((r["rss_mb"] for r in under), default=math.nan),
        "processes": under,
    }


def train_parts(processes: list[dict[str, Any]]) -> list[Row]:
    """The train task's parts from its processes' exit records: dvc add, repro and push,
    each DVC stage, and what `dvc repro` spent outside the stages."""
    parts: list[Row] = []
    for r in processes:
        script = Path(r["argv"][0])
        if script.parent.name == "training" and script.stem in STAGES:
            name = f"  stage {script.stem}"
        elif script.parent.name == "dvc" and len(r["argv"]) > 1:
            name = f"  dvc {r['argv'][1]}"
        else:
            continue
        parts.append((name, r["end"] - r["start"], math.nan, r["rss_mb"], math.nan, math.nan, ""))
    order = {f"  dvc {verb}": i for i, verb in enumerate(("add", "repro", "push"))}
    parts.sort(key=lambda part: order.get(part[0], 1.5))  # the stages inside repro
    repro = [part[1] for part in parts if part[0] == "  dvc repro"]
    if repro:
        stages = sum(part[1] for part in parts if part[0].startswith("  stage"))
        nan = math.nan
        parts.append(("  dvc outside stages", repro[0] - stages, nan, nan, nan, nan, ""))
    return parts


def _scale_workspace(
    events: int, n_users: int, history_days: int | None, open_gate: bool, root: Path
) -> tuple[Workspace, dict[str, str]]:
    """A fresh workspace for one scale, and the environment its steps' processes run in
    (the sitecustomize hook that logs each process's resources)."""
    from couponflow.processes import free_port
    from couponflow.workspace import init_workspace

    overrides: dict[str, Any] = {"world.n_users": n_users, "serving.port": free_port()}
    if history_days:
        overrides["world.history_days"] = history_days
    overrides |= OPEN_GATE if open_gate else {}
    ws = init_workspace(root / f"events-{events}", overrides)
    (ws.root / "logs").mkdir(exist_ok=True)
    return ws, child_env(ws, root / "hooks", ws.root / "logs" / PROCESS_LOG)


def scale(
    events: int, history_days: int | None, open_gate: bool, root: Path, min_free_gb: float
) -> None:
    """Seed a workspace for `events` a day and time one daily run on it; print the rows.
    A failed step is reported and the run goes on where its inputs allow (a killed
    `features` still leaves the day's offline features the training reads)."""
    from couponflow.landing import next_days, offline_days

    n_users = math.ceil(events / events_per_user())
    ws, env = _scale_workspace(events, n_users, history_days, open_gate, root)
    days = int(ws.params["world"]["history_days"])
    print(
        f"\n{events:,} events/day: {n_users:,} users, {days} history days, gate "
        f"{'bars lowered' if open_gate else 'as in params.yaml'}; workspace {ws.root}",
        flush=True,
    )
    rows: list[Row] = []
    with tqdm(total=1 + len(TASKS), desc=f"{events:,}/day", unit="step", leave=False) as bar:
        try:
            seeded = run_step(ws, "seed", "", None, env, bar, min_free_gb)
            bar.update()
            print(
                f"seeding {days} days (set-up, not part of the daily run): "
                f"{seeded['process_s']:.0f} s, peak RSS {seeded['rss_mb']:.0f} MB, "
                f"load {seeded['load']:.1f}{'; ' + seeded['failed'] if seeded['failed'] else ''}",
                flush=True,
            )
            if not offline_days(ws):
                return  # nothing seeded, nothing to run a day on
            day = next_days(ws, 1)[0]
            upstream: Any = None
            for task in TASKS:
                if task == "gate":  # the DAG's short circuit, on the train task's result
                    promote = upstream is not None and bool(upstream["gate"]["promote"])
                    bar.update(1 if promote else 1 + len(RELEASE_TASKS))
                    decision = "PROMOTE" if promote else "REFUSE" if upstream else "none"
                    print(f"{day}: gate decision {decision}{judged(upstream)}", flush=True)
                    if not promote:
                        break
                    continue
                r = run_step(ws, task, day, upstream, env, bar, min_free_gb)
                bar.update()
                rows.append((task, r["process_s"], r["call_s"], r["rss_mb"],
                             r["children_rss_mb"], r["load"], r["failed"] or ""))  # fmt: skip
                rows += train_parts(r["processes"]) if task == "train" else []
                if task == "features" and r.get("result"):
                    print_materialised(r["result"])
                upstream = r.get("result")
                if r["failed"] and task in RELEASE_TASKS:
                    break
        finally:
            from serving.deploy.deployment import stop_deployment

            stop_deployment(ws)  # whatever the release path started
    print_rows(rows)


def judged(result: dict[str, Any] | None) -> str:
    """What the evaluate stage judged, " on N of M logged decisions", from the train task's
    result (N < M above `evaluation.decision_sample`); "" without one."""
    evaluation = (result or {}).get("evaluation") or {}
    if "decisions" not in evaluation:
        return ""
    logged = evaluation.get("logged_decisions") or evaluation["decisions"]
    return f" on {evaluation['decisions']:,} of {logged:,} logged decisions"


def print_materialised(done: dict[str, dict[str, Any]]) -> None:
    """The features task's own split, per day: publishing the rows, then Feast's
    materialise into the online store, with its rows (users and coupons) per second."""
    for day, f in done.items():
        rows, seconds = f["users"] + f["coupons"], f["seconds"]
        print(
            f"{day}: features published in {seconds['publish']:.0f} s; {rows:,} rows "
            f"materialised in {seconds['materialise']:.0f} s, "
            f"{rows / max(seconds['materialise'], 0.1):,.0f} rows/s",
            flush=True,
        )


def print_rows(rows: list[Row]) -> None:
    print(f"{'task':<22} {'process s':>9} {'call s':>7} {'peak MB':>8} {'child MB':>8} {'load':>5}")
    for name, *figures, note in rows:
        cells = [
            " " * width if math.isnan(v) else f"{v:>{width}.{digits}f}"
            for v, width, digits in zip(figures, (9, 7, 8, 8, 5), (1, 1, 0, 0, 1), strict=True)
        ]
        print(f"{name:<22} {' '.join(cells)}  {note}".rstrip())
    total = sum(row[1] for row in rows if not row[0].startswith(" "))
    label = "daily run" + (", cut short" if any(row[6] for row in rows) else "")
    print(f"{label:<22} {total:>9.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--history-days", type=int, nargs="+", help="per scale; default: params.yaml's"
    )
    parser.add_argument("--default-gate", action="store_true", help="keep the gate's bars")
    parser.add_argument(
        "--min-free-gb", type=float, default=3.0, help="kill a task leaving less available"
    )
    parser.add_argument("--root", type=Path, help="keep the workspaces here (default: removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a task, run in-process
    parser.add_argument("--day", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        done = run_child(args.child, args.day, json.loads(args.upstream.read_text()))
        args.out.write_text(json.dumps(done, default=str))
        return

    root = args.root or Path(tempfile.mkdtemp(prefix="bench-daily-"))
    history = args.history_days or [None] * len(args.events)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    try:
        for events, days in zip(args.events, history, strict=True):
            scale(events, days, not args.default_gate, root, args.min_free_gb)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
