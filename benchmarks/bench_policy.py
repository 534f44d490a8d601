"""How much incremental profit the recommender's policy earns, in truth, over several seeded
worlds: the real training stages (`dvc repro`: dataset, train, budget, evaluate, gate,
report) on a workspace seeded through validation and the feature store, judged by the
world's oracle on the evaluation day at the day's budget.

Per seed and then as medians it prints every policy's true incremental profit, its share
of the oracle policy's and of the observable ceiling's, the Spearman correlation of the
challenger's estimated gain with the true gain over every (user, coupon) pair, and the
predicted against the true purchase lift per hidden segment (what the network believes a
coupon does to a sure thing, a persuadable, a lost cause and a sleeping dog).

With `model.refit` (the default) the model that ships has been fitted on the judged days;
every figure above is of its held-out twin, the weights the evaluation judges. The shipped
refit is judged on the day after the log, new to both, beside its twin on the same users:
the "tomorrow" columns (what shipping the refit instead of the twin earns, in truth).

The observable ceiling is what any learner faces: a gradient-boosting model fitted on the
*true* incremental profit and cost of every (user, coupon) from the observable inputs
alone, on half of the users, then budgeted on the other half. What the oracle earns beyond
it comes from traits no data in the log reveals.

    python -m benchmarks.bench_policy [--users 20000] [--history-days 14] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from benchmarks.bench_uplift import ceiling_share, judge, judged_day, lift_by_segment
from benchmarks.simulated import SimulatedLog
from couponflow.artefacts import MODEL_WEIGHTS
from couponflow.config import Workspace
from couponflow.landing import load_offline, offline_days
from couponflow.logs import quiet_libraries
from couponflow.model import CouponEnsemble, load_model
from couponflow.policy import score
from couponflow.seeding import seed_history
from couponflow.workspace import init_workspace
from couponflow.world import SEGMENTS, World
from training.pipeline import repro


@dataclass(frozen=True)
class SeedResult:
    """One seeded world's figures."""

    seed: int
    oracle: float  # the oracle policy's true incremental profit at the day's budget
    ceiling_share: float  # the observable ceiling's share of the oracle's (on half the users)
    profits: dict[str, float]  # each policy's true incremental profit
    spearman: float  # estimated vs true gain over (user, coupon) pairs
    lifts: dict[str, tuple[float, float]]  # segment -> (predicted, true) purchase lift, points
    promoted: bool
    # the day after the log's true profits: "oracle", "ceiling", "shipped", "judged twin"
    tomorrow: dict[str, float]
    seconds: float


def judge_seed(ws: Workspace, seed: int, started: float) -> SeedResult:
    """Train on the seeded workspace and judge the result against the world's truth."""
    result = repro(ws, offline_days(ws)[-1])
    evaluation, world = result["evaluation"], World(ws.params["world"])
    judged = evaluation["oracle"]
    assert judged is not None, "the evaluation judges simulated data by the oracle"
    # the newest judged day: the rank, lift and ceiling figures
    log = SimulatedLog(ws, world, offline_days(ws))
    day = judged_day(log, evaluation["days"][-1], ws.params)
    net, _ = load_model(ws.models / MODEL_WEIGHTS, judged=True)
    scores = score(net, day["users"], day["arms"], day["margin"])
    true_p = day["truth"].p_purchase[:, day["columns"]]
    predicted, true = (lift_by_segment(p, day["segment"]) for p in (scores.p_purchase, true_p))
    gain = day["gain"]
    return SeedResult(
        seed=seed,
        oracle=float(judged["oracle_policy"]),
        ceiling_share=ceiling_share(day, ws.params),
        profits={name: float(p["incremental_profit"]) for name, p in judged["policies"].items()},
        spearman=float(spearmanr(scores.expected_gain[:, 1:].ravel(), gain[:, 1:].ravel())[0]),
        lifts={name: (predicted[name], true[name]) for name in SEGMENTS},
        promoted=bool(result["gate"]["promote"]),
        tomorrow=judge_tomorrow(ws, world),
        seconds=time.perf_counter() - started,
    )


def judge_tomorrow(ws: Workspace, world: World) -> dict[str, float]:
    """The shipped model and its held-out twin on the day after the log (simulated into the
    offline store, after the stages), at the day's budget: true profits, the oracle's and
    the observable ceiling's (its share of the oracle's times the oracle's)."""
    tomorrow = str((pd.Timestamp(offline_days(ws)[-1]) + pd.Timedelta(days=1)).date())
    load_offline(ws, tomorrow, world.simulate_day(tomorrow))
    day = judged_day(SimulatedLog(ws, world, offline_days(ws)), tomorrow, ws.params)
    credibility = float(ws.params["model"].get("credibility") or 0.0)
    share = ceiling_share(day, ws.params)
    out = {"oracle": float(day["oracle"]), "ceiling": share * float(day["oracle"])}
    for name, judged in (("shipped", False), ("judged twin", True)):
        net, _ = load_model(ws.models / MODEL_WEIGHTS, judged=judged)
        out[name] = judge(cast(CouponEnsemble, net), credibility, day)["true_profit"]
    return out


def run_seed(root: Path, users: int, history_days: int, seed: int) -> SeedResult:
    """Seed a workspace of the world with this seed and judge the model trained on it."""
    started = time.perf_counter()
    ws = init_workspace(
        root / f"seed-{seed}",
        {"world.n_users": users, "world.history_days": history_days, "world.seed": seed},
    )
    if not offline_days(ws):
        seed_history(ws)
    return judge_seed(ws, seed, started)


def report(results: list[SeedResult]) -> dict[str, object]:
    """Print the per-seed table and the medians; return the medians as a dict."""
    names = list(results[0].profits)
    print(f"\n{'seed':>4} {'oracle':>8} {'ceiling':>8} " + " ".join(f"{n[:14]:>14}" for n in names)
          + f" {'spearman':>8} {'gate':>7} {'s':>5}")  # fmt: skip
    for r in results:
        cells = " ".join(f"{r.profits[n]:>14.1f}" for n in names)
        print(f"{r.seed:>4} {r.oracle:>8.1f} {r.ceiling_share:>8.1%} {cells} {r.spearman:>8.3f} "
              f"{'ship' if r.promoted else 'refuse':>7} {r.seconds:>5.0f}")  # fmt: skip
    ch = np.array([r.profits["challenger"] for r in results])
    oracle = np.array([r.oracle for r in results])
    ceiling = np.array([r.ceiling_share for r in results]) * oracle
    medians: dict[str, object] = {
        "challenger_profit": float(np.median(ch)),
        "challenger_positive_days": int((ch > 0).sum()),
        "share_of_oracle": float(np.median(ch / oracle)),
        "share_of_ceiling": float(np.median(ch / ceiling)),
        "spearman": float(np.median([r.spearman for r in results])),
        "beats_every_baseline_days": int(
            sum(
                all(
                    r.profits["challenger"] > v
                    for n, v in r.profits.items()
                    if n not in {"challenger", "champion"}
                )
                for r in results
            )  # fmt: skip
        ),
    }
    print("\ntomorrow (the day after the log), true profit (share of the oracle, of the ceiling)")
    for name in ("oracle", "ceiling", "shipped", "judged twin"):
        shown = "  ".join(
            f"{r.tomorrow[name]:+9.1f} ({r.tomorrow[name] / r.tomorrow['oracle']:+4.0%}, "
            f"{r.tomorrow[name] / r.tomorrow['ceiling']:+4.0%})"
            for r in results
        )
        print(f"  {name:<13} {shown}")
    for name in ("shipped", "judged twin"):
        key = f"tomorrow_{name.replace(' ', '_')}"
        for base in ("oracle", "ceiling"):
            medians[f"{key}_share_of_{base}"] = float(
                np.median([r.tomorrow[name] / r.tomorrow[base] for r in results])
            )
    print("\npredicted vs true purchase lift by hidden segment (points, mean over coupons)")
    for name in SEGMENTS:
        pairs = [r.lifts[name] for r in results]
        shown = "  ".join(f"{p:+.2f}/{t:+.2f}" for p, t in pairs)
        print(f"  {name:<13} {shown}")
    print("\nmedians over seeds:", json.dumps(medians))
    return medians


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, help="default: params.yaml world.n_users")
    parser.add_argument("--history-days", type=int, help="default: world.history_days")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    quiet_libraries()
    from couponflow.config import PROJECT_ROOT, load_params

    world = load_params(PROJECT_ROOT / "params.yaml")["world"]
    users = args.users or int(world["n_users"])
    days = args.history_days or int(world["history_days"])
    root = args.workspace or Path(tempfile.mkdtemp(prefix="bench-policy-"))
    print(f"{users} users, {days} days of history, seeds 1..{args.seeds} (workspaces in {root})")
    results = []
    for seed in range(1, args.seeds + 1):
        done = run_seed(root, users, days, seed)
        results.append(done)
        print(f"  seed {seed}: challenger {done.profits['challenger']:+.1f} of the oracle's "
              f"{done.oracle:+.1f} ({done.seconds:.0f} s)", flush=True)  # fmt: skip
    return report(results)


if __name__ == "__main__":
    main()
