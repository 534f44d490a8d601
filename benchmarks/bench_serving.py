"""Latency of the live endpoint under an open-loop load, on loopback against a real bento.

Builds a workspace (a simulated world with `--coupons` coupons open, its features in the
online store, the trained model's stand-in: an untrained network of the real shape, whose
scoring costs the same), packs and serves the bento with the configured workers, then
sends requests at a constant rate. Latency is measured from each request's *scheduled*
send time, so a server that falls behind shows it (a closed loop would hide the queue).
The same load is sent to a trivial endpoint of the same server (`/livez`) so the
framework's own cost can be told apart from ours: in `--rounds` rounds, each a window of
/recommend then one of /livez, so both see the same state of the machine (a shared
virtual machine's speed drifts over minutes: one configuration's p99 has spanned 4-30 ms
across runs) and the same luck of connections to workers, which each round draws anew.
The targets are judged on the median round. The load generator is benchmarks/
loadgen.py (lean, so it takes little of the two cores from the server).

Printed per configuration: each round's p99s and their difference, then, of the median
round: p50/p95/p99 and throughput; the bare in-process p99 of one
feature lookup and of scoring, back to back and cache-cold; the mean latency split into
the decision's stages (from the service's own `couponflow_decision_stage_seconds`) and
the rest (framework, queueing, network); and where the CPU went: the workers' CPU per
request, each worker's share of it, and the load generator's.

    python -m benchmarks.bench_serving [--rate 200] [--seconds 15] [--rounds 3]
                                       [--coupons 50 200] [--online-store sqlite redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import httpx
import numpy as np
import pandas as pd
import psutil

from benchmarks.loadgen import Request, open_loop
from couponflow.config import Workspace
from couponflow.logs import quiet_libraries

if TYPE_CHECKING:
    from serving.deploy.server import Server

N_USERS = 2_000
HOST = "127.0.0.1"
STAGE_SAMPLE = re.compile(
    r'couponflow_decision_stage_seconds_(sum|count)\{.*stage="(\w+)".*\} (\S+)'
)
DAYS = 3


def build_workspace(root: Path, coupons: int, online_store: str) -> Workspace:
    """A small world whose catalogue has `coupons` standing coupons, seeded through the
    pipeline's own path (land, validate, offline store, features), with a model and its
    budget plan in ws.models."""
    from couponflow.artefacts import POLICY_FILE
    from couponflow.model import CouponNet, save_model
    from couponflow.records import ModelRecord
    from couponflow.seeding import seed_history
    from couponflow.workspace import init_workspace
    from training.budget import make_plan

    ws = init_workspace(
        root,
        {
            "world.n_users": N_USERS,
            "world.n_coupons": coupons,
            "world.history_days": DAYS,
            "world.drift.new_coupons_per_week": 0,
            "features.online_store": online_store,
            "features.project": f"bench{coupons}{online_store}",
        },
    )
    seed_history(ws)
    version = f"bench-{coupons}-{online_store}"
    # an untrained network: its record needs only the version the service reports
    save_model(CouponNet(), ws.models / "model.pt", cast(ModelRecord, {"version": version}))
    (ws.models / "model.json").write_text(json.dumps({"version": version}))
    make_plan(ws).write(ws.models / POLICY_FILE)
    return ws


def cpu_seconds(processes: list[psutil.Process]) -> list[float]:
    """User + system CPU time of each process so far."""
    return [sum(proc.cpu_times()[:2]) for proc in processes]


def stage_seconds(server: Server) -> dict[str, tuple[float, float]]:
    """Per stage of a decision, (seconds summed, decisions) from the service's metrics."""
    sums: dict[str, list[float]] = {}
    for line in httpx.get(f"{server.base_url}/metrics", timeout=10.0).text.splitlines():
        match = STAGE_SAMPLE.match(line)
        if match:
            kind, stage, value = match.groups()
            sums.setdefault(stage, [0.0, 0.0])[kind == "count"] += float(value)
    return {stage: (total, count) for stage, (total, count) in sums.items()}


def measured(server: Server, requests: list[Request], rate: float, seconds: float) -> dict:
    """open_loop's figures plus where the CPU went: the server's workers' CPU per request
    (and each worker's share of it: keep-alive connections stay with the worker that
    accepted them) and the load generator's own, which shares the same cores."""
    workers = server.workers()
    stages_before = stage_seconds(server)
    before, load_before = cpu_seconds(workers), time.process_time()
    result = asyncio.run(open_loop(HOST, server.port, requests, rate, seconds))
    used = np.subtract(cpu_seconds(workers), before)
    stages = {
        stage: 1000
        * (total - stages_before.get(stage, (0.0, 0.0))[0])
        / max(count - stages_before.get(stage, (0.0, 0.0))[1], 1)
        for stage, (total, count) in stage_seconds(server).items()
    }
    per_request = 1000 / result["requests"]
    return {
        **result,
        "server_cpu_ms": float(used.sum()) * per_request,
        "worker_shares": [float(x) for x in used / max(used.sum(), 1e-9)],
        "load_cpu_ms": (time.process_time() - load_before) * per_request,
        "stage_ms": stages,  # mean per decision; empty for /livez
    }


def bare_cost_ms(ws: Workspace, samples: int = 300, warm_up: int = 30) -> dict[str, float]:
    """In-process p99 of one online feature lookup, and of scoring every open arm for one
    user, both as the service does them (its reader, its prepared arms): the work a
    request cannot avoid. The first `warm_up` rounds are not timed (torch and SQLite warm
    up over the first calls, which would otherwise be the p99).

    Measured twice: back to back ("hot", the target's bare cost), and with the caches
    evicted before each call ("cold", ~8 MB touched and a dict walked), as a server worker
    runs them, between other requests, the other worker and the load generator."""
    import torch

    from couponflow.landing import offline_days, read_offline
    from couponflow.model import load_model
    from couponflow.policy import Arms, score
    from feature_repo.store import OnlineUserReader, online_coupon_stats, open_store

    torch.set_num_threads(1)  # as each server worker scores (serving.recommender)
    store = open_store(ws)
    user_features = OnlineUserReader(store)
    net, _ = load_model(ws.models / "model.pt")
    day = offline_days(ws)[-1]
    catalogue = online_coupon_stats(store, read_offline(ws, "coupons", [day]))
    arms = Arms.of(catalogue).open(pd.Timestamp(day))
    clutter, other = np.ones(1_000_000), {i: str(i) for i in range(50_000)}
    out: dict[str, float] = {"arms": len(arms.coupon_ids) - 1}
    for kind in ("hot", "cold"):
        lookups, scorings = [], []
        for _ in range(warm_up + samples):
            if kind == "cold":
                clutter.sum(), sum(len(v) for v in other.values())
            user = random.randrange(N_USERS)
            t0 = time.perf_counter()
            features = user_features(user)
            t1 = time.perf_counter()
            assert features is not None, f"user {user} has no online features"
            score(net, features[None, :], arms, 0.3)
            t2 = time.perf_counter()
            lookups.append(t1 - t0)
            scorings.append(t2 - t1)
        for name, times in (("lookup", lookups), ("scoring", scorings)):
            out[f"{name}_{kind}_p99"] = float(np.percentile(np.array(times[warm_up:]) * 1000, 99))
    return out


def _print_rows(rows: list[tuple], rate: float, n_rounds: int, seconds: float) -> None:
    """Each (store, coupons) setting's figures: rounds, the median round, bare costs."""
    print(f"\nopen loop at {rate:.0f} req/s, {n_rounds} rounds of {seconds:.0f} s "
          f"windows, 2 cores shared with the load generator")  # fmt: skip
    for store, arms, rounds, ours, trivial, bare, extra, bound in rows:
        each = ", ".join(
            f"{mine['p99']:.1f}-{livez['p99']:.1f}={mine['p99'] - livez['p99']:.1f}"
            for mine, livez in rounds
        )
        print(f"{store:>6} {arms:>4} coupons: rounds' p99 /recommend-/livez (ms): {each}")
        print(
            f"{'':>19}median round: /recommend p50 {ours['p50']:.1f} p95 {ours['p95']:.1f}"
            f" p99 {ours['p99']:.1f} ms ({ours['throughput']:.0f} req/s, {ours['failures']} "
            f"failed); /livez p99 {trivial['p99']:.1f} ms; ours less trivial {extra:.1f} ms vs"
            f" 3x bare {bound:.1f} ms"
        )
        print(
            f"{'':>19}bare p99, hot: lookup {bare['lookup_hot_p99']:.2f} + scoring "
            f"{bare['scoring_hot_p99']:.2f} ms; cache-cold: lookup {bare['lookup_cold_p99']:.2f}"
            f" + scoring {bare['scoring_cold_p99']:.2f} ms"
        )
        parts = ", ".join(
            f"{stage} {ms:.2f} ({ms / ours['mean']:.0%})" for stage, ms in ours["stage_ms"].items()
        )
        rest = ours["mean"] - sum(ours["stage_ms"].values())
        print(
            f"{'':>19}/recommend mean {ours['mean']:.2f} ms: {parts}; the framework, queueing"
            f" and the network {rest:.2f} ({rest / ours['mean']:.0%})"
        )
        for name, run in (("/recommend", ours), ("/livez", trivial)):
            shares = "/".join(f"{share:.0%}" for share in run["worker_shares"])
            print(
                f"{'':>19}{name}: server CPU {run['server_cpu_ms']:.2f} ms a request (workers"
                f" {shares}), load generator {run['load_cpu_ms']:.2f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0, help="each window's length")
    parser.add_argument("--rounds", type=int, default=3, help="windows of each endpoint")
    parser.add_argument("--coupons", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--online-store", nargs="+", default=["sqlite"])
    args = parser.parse_args()
    quiet_libraries()
    from couponflow.processes import free_port
    from serving.deploy.bento import build_bento, store_model
    from serving.deploy.server import start_server

    rows = []
    for online_store in args.online_store:
        for coupons in args.coupons:
            root = Path(tempfile.mkdtemp(prefix="bench-serving-")) / "ws"
            ws = build_workspace(root, coupons, online_store)
            bare = bare_cost_ms(ws)
            bento = build_bento(ws, store_model(ws, ws.models))
            recommend = [
                Request.post_json(
                    HOST, "/recommend", {"user_id": random.randrange(N_USERS), "k": 1}
                )
                for _ in range(1000)
            ]
            livez = [Request.get(HOST, "/livez")]
            with start_server(ws, bento, free_port()) as server:
                asyncio.run(open_loop(HOST, server.port, recommend, args.rate, 2.0))  # warm up
                rounds = [
                    (
                        measured(server, recommend, args.rate, args.seconds),
                        measured(server, livez, args.rate, args.seconds),
                    )
                    for _ in range(args.rounds)
                ]
            rounds.sort(key=lambda pair: pair[0]["p99"] - pair[1]["p99"])
            ours, trivial = rounds[len(rounds) // 2]
            extra = ours["p99"] - trivial["p99"]
            bound = 3 * (bare["lookup_hot_p99"] + bare["scoring_hot_p99"])
            rows.append((online_store, bare["arms"], rounds, ours, trivial, bare, extra, bound))
    _print_rows(rows, args.rate, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
