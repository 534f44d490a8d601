"""How much incremental profit the recommender's policy earns, in truth, against the oracle.

Seeds a workspace of the default simulated world (or another scale), runs the real
training stages (`dvc repro`: dataset, train, budget, evaluate, gate, report) and prints
every policy's true incremental profit on the evaluation day at the day's budget, the
oracle policy's at the same budget, each one's share of it and the challenger's lead
with its interval.

It also prints the ceiling any learner faces: a gradient-boosting model fitted on the
*true* incremental profit and cost of every (user, coupon) from the observable inputs
alone, on half of the users, then budgeted on the other half. What the oracle earns
beyond that ceiling comes from traits no data in the log reveals.

    python benchmarks/bench_policy.py [--users 3000] [--history-days 14] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from couponflow.cli import seed_history
from couponflow.config import Workspace
from couponflow.landing import offline_days, read_offline
from couponflow.logs import quiet_libraries
from couponflow.model import encode_pairs
from couponflow.oracle import Truth
from couponflow.policy import allocate, eligible, with_control
from couponflow.workspace import init_workspace
from training.evaluate import population, simulated_truth
from training.pipeline import repro


def observable_ceiling(ws: Workspace, day: pd.Timestamp, seed: int = 0) -> dict[str, float]:
    """True incremental profit of a policy learned from the truth itself, observable
    inputs only, judged on users it never saw, against the oracle on those users."""
    from feature_repo.store import coupon_stats_at, open_store

    date = str(day.date())
    coupons = coupon_stats_at(open_store(ws), read_offline(ws, "coupons", [date]), day)
    arms = with_control(eligible(coupons, day))
    budget_per_user = float(ws.params["policy"]["budget_per_user"])
    users, everyone = population(ws, day, arms, budget_per_user, 30, None)
    truth = simulated_truth(ws, day, users, arms)
    n, m = truth.gain.shape
    x = encode_pairs(everyone.users, arms).reshape(n, m, -1)
    learn = np.random.default_rng(seed).random(n) < 0.5
    judge = ~learn

    def fitted(target: np.ndarray) -> np.ndarray:
        model = HistGradientBoostingRegressor(max_iter=300, max_leaf_nodes=31, random_state=seed)
        model.fit(x[learn, 1:].reshape(-1, x.shape[2]), target[learn, 1:].ravel())
        out = np.zeros((judge.sum(), m))
        out[:, 1:] = model.predict(x[judge, 1:].reshape(-1, x.shape[2])).reshape(-1, m - 1)
        return out

    value, cost = fitted(truth.gain), np.maximum(fitted(truth.cost), 1e-9)
    cost[:, 0] = 0.0
    budget = budget_per_user * judge.sum()
    chosen, _ = allocate(value, cost, budget)
    rows = np.arange(judge.sum())
    t = truth.truth
    half = Truth(
        t.day,
        t.users[judge],
        t.coupon_ids,
        *(a[judge] for a in (t.p_purchase, t.spend, t.cost, t.profit)),
    )
    best, _ = truth.oracle.policy_value(half, budget)
    gain = float(truth.gain[judge][rows, chosen].sum())
    return {
        "ceiling": gain,
        "oracle": best.incremental_profit,
        "share": gain / best.incremental_profit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--history-days", type=int, default=14)
    parser.add_argument("--workspace", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    quiet_libraries()
    root = args.workspace or Path(tempfile.mkdtemp(prefix="bench-policy-")) / "ws"
    ws = init_workspace(
        root, {"world.n_users": args.users, "world.history_days": args.history_days}
    )
    started = time.perf_counter()
    if not offline_days(ws):
        seed_history(ws)
    seeded = time.perf_counter()
    result = repro(ws, offline_days(ws)[-1])
    trained = time.perf_counter()
    evaluation = result["evaluation"]
    oracle = evaluation["oracle"]
    last_day = evaluation["days"][-1]
    print(
        f"\n{args.users} users, {args.history_days} days of history, evaluated on "
        f"{', '.join(evaluation['days'])}: seeding {seeded - started:.0f} s, dvc repro "
        f"{trained - seeded:.0f} s (workspace {root})"
    )
    print(
        f"budget {oracle['budget']:.0f}; oracle policy earns "
        f"{oracle['oracle_policy']:.1f} spending {oracle['oracle_cost']:.1f}\n"
    )
    print(f"{'policy':<18}{'true profit':>12}{'of oracle':>11}{'true cost':>11}{'offers':>8}"
          f"   challenger's lead (90% interval over users)")  # fmt: skip
    for name, p in oracle["policies"].items():
        lead = oracle["challenger_lead"].get(name)
        lead_text = (
            f"{lead['value']:+8.1f} [{lead['low']:+.1f}, {lead['high']:+.1f}]" if lead else ""
        )
        print(
            f"{name:<18}{p['incremental_profit']:>12.1f}{p['share_of_oracle']:>11.1%}"
            f"{p['true_cost']:>11.1f}{p['offers']:>8.0f}   {lead_text}"
        )
    gate = result["gate"]
    print(f"\ngate: {'PROMOTE' if gate['promote'] else 'REFUSE'}")
    for check in gate["checks"]:
        print(f"  [{'x' if check['passed'] else ' '}] {check['check']}: {check['detail']}")
    ceiling = observable_ceiling(ws, pd.Timestamp(last_day))
    print(
        f"\nobservable ceiling on half the users: {ceiling['ceiling']:.1f} of the oracle's "
        f"{ceiling['oracle']:.1f} ({ceiling['share']:.1%}), learned from the true profits"
    )
    print(json.dumps({"challenger_share": oracle["policies"]["challenger"]["share_of_oracle"],
                      "observable_ceiling_share": ceiling["share"]}))  # fmt: skip


if __name__ == "__main__":
    main()
