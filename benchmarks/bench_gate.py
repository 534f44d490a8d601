"""The gate measured as a classifier: how often it ships a policy that truly loses money
(false pass) and how often it ships the oracle's own policy (power).

Each case is a seeded simulated world (benchmarks/simulated.py: the project's feature code,
no Airflow or Feast): `--train-days` days to train on, one early-stopping day, then the
`evaluation.days` days the gate judges. Candidates of known true lead go through the real
code path (training.evaluate's cross-fitted reward model, `judge`, `build_report`, and
training.gate's `decide` on the typed report, as a first model against "no coupon"):

- `oracle`: the oracle policy at the same budget (the best any policy can do);
- `trained`: the ensemble the train stage would fit on the training days
  (`training.train.fit_ensemble`, the trainer's stabilised weights and `model.members`);
- `shuffled`: the trained network's scores given to the wrong users;
- `biggest`: everyone gets the biggest coupon (no budget);
- `buy_anyway`: coupons for the shoppers most likely to buy without one.

A false pass ships a candidate whose true lead over no coupon on the judged decisions
(oracle) is <= 0; power is the oracle policy's pass rate. It also prints the standard
error and the minimum detectable effect of the oracle's lead, to read how power scales.

    python -m benchmarks.bench_gate [--cases 40] [--users 3000] [--train-days 4]
        [--eval-days 3] [--rows all|randomised] [--confidence 0.9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from benchmarks.simulated import SimulatedLog, population, simulate, training_table
from couponflow.config import GateParams
from couponflow.evaluation import NO_COUPON
from couponflow.features import USER_FEATURES
from couponflow.logs import quiet_libraries
from couponflow.model import Recommender
from couponflow.oracle import Oracle
from training.evaluate import (
    Decisions,
    EvalDay,
    ModelPolicy,
    Priced,
    RewardModel,
    build_report,
    decide_days,
    judge,
    logged_arm_index,
    prediction_report,
    price,
)
from training.gate import decide
from training.train import TrainingArrays, fit_ensemble, split_days

CANDIDATES = ("oracle", "trained", "shuffled", "biggest", "buy_anyway")


@dataclass
class Fixed(Priced):
    """A policy whose choices ignore the budget (e.g. everyone gets the biggest coupon)."""

    arms: np.ndarray

    def decide(self, budget: float) -> Decisions:
        return Decisions(self.arms, 0.0, self.value, self.cost)


@dataclass
class TruthDay(EvalDay):
    """A judged day with the truth the candidates are built from: the true cost of every
    arm and P(purchase) without a coupon (set by `eval_days`)."""

    true_cost: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    p0: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Outcome:
    seed: int
    candidate: str
    promote: bool
    true_lead: float
    estimate: float
    low: float
    se: float
    mde: float
    failed: str


def eval_days(log: SimulatedLog, table: pd.DataFrame, days: list, oracle: Oracle) -> list[TruthDay]:
    """The judged days: logged rows, arms, prorated budget and the truth of every arm, with
    the true cost and P(purchase) without a coupon kept for the candidates built from it."""
    per_user = float(log.ws.params["policy"]["budget_per_user"])
    out = []
    for day in days:
        date = str(pd.Timestamp(day).date())
        ids, _, arms = population(log, date)
        rows = table[table["day"] == day].reset_index(drop=True)
        logged = logged_arm_index(rows["coupon_id"], arms)
        rows, logged = rows[logged >= 0].reset_index(drop=True), logged[logged >= 0]
        budget = per_user * len(ids) * len(rows) / max((table["day"] == day).sum(), 1)
        truth = oracle.truth(pd.Timestamp(date), rows["user_id"].to_numpy())
        column = truth.arm_index(list(arms["coupon_id"]))
        users = rows[USER_FEATURES].to_numpy(np.float32)
        out.append(
            TruthDay(date, rows, users, arms, logged, budget,
                     true_gain=truth.incremental_profit[:, column],
                     true_cost=truth.cost[:, column], p0=truth.p_purchase[:, 0])
        )  # fmt: skip
    return out


def candidates(
    days: list[TruthDay], net: Recommender, margin: float, cap: int, seed: int
) -> dict[str, list[Priced]]:
    """Every candidate priced on every judged day, and no coupon."""
    rng = np.random.default_rng(seed)
    model = ModelPolicy("trained", net, "trained", margin)
    priced: dict[str, list[Priced]] = {k: [] for k in (*CANDIDATES, NO_COUPON)}
    for d in days:
        assert d.true_gain is not None  # eval_days sets it
        n, m = d.true_gain.shape
        trained = price(model, d.users, d.arms, cap)
        priced["trained"].append(trained)
        priced["oracle"].append(Priced(d.true_gain.copy(), d.true_cost))
        perm = rng.permutation(n)
        priced["shuffled"].append(Priced(trained.value[perm], trained.cost[perm]))
        biggest = 1 + trained.cost[:, 1:].argmax(axis=1)
        priced["biggest"].append(Fixed(trained.cost + 1.0, trained.cost, biggest))
        favour = np.zeros((n, m))
        favour[:, 1:] = d.p0[:, None] * 10.0
        priced["buy_anyway"].append(Priced(favour, trained.cost))
        none = np.full((n, m), -1.0)
        none[:, 0] = 0.0
        priced[NO_COUPON].append(Priced(none, trained.cost))
    return priced


def run_case(seed: int, args: argparse.Namespace, gate: GateParams) -> list[Outcome]:
    n_days = 1 + args.train_days + 1 + args.eval_days  # the first day only warms features up
    with tempfile.TemporaryDirectory() as tmp:
        log = simulate(Path(tmp), {"world.seed": seed, "world.n_users": args.users}, n_days)
        table = training_table(log)
        params = log.ws.params
        train_days, stop_day, judged_days = split_days(table, args.eval_days)
        # As the train stage trains its challenger: stabilised weights at the trainer's
        # clip, `model.members` networks as `model.bootstrap` says.
        weight = float(params["model"]["max_stabilised_weight"])
        fitting = table[table["day"].isin(train_days)]
        net, _ = fit_ensemble(
            TrainingArrays.from_table(fitting, weight),
            TrainingArrays.from_table(table[table["day"] == stop_day], weight),
            fitting["user_id"].to_numpy(),
            params["model"],
        )
        truth_days = eval_days(log, table, judged_days, Oracle(log.world))
        days: list[EvalDay] = list(truth_days)
        margin = float(params["world"]["margin"])
        cap = int(params["policy"]["max_offers_7d"])
        priced = candidates(truth_days, net, margin, cap, seed)
        before = table[table["day"] < judged_days[0]]
        q = RewardModel(int(params["evaluation"]["reward_model_folds"])).predict(before, days)
        decided = decide_days(days, priced)
        judged = judge(days, decided, q, args.confidence, args.bootstrap, args.rows)
        pooled = pd.concat([d.rows for d in days], ignore_index=True)
        users = np.concatenate([d.users for d in days])
        out = []
        for name in CANDIDATES:
            trained = name == "trained"
            predictions = {name: prediction_report(net, users, pooled)[0]} if trained else {}
            kinds = {n: "candidate" for n in priced} | {NO_COUPON: "baseline"}
            report = build_report(judged, name, {}, kinds, None, predictions)
            verdict = decide(report, gate)
            lead = report.leads[NO_COUPON]
            assert lead.true is not None  # the judged days carry the truth (eval_days)
            failed = "; ".join(c["check"] for c in verdict["checks"] if not c["passed"])
            out.append(
                Outcome(
                    seed,
                    name,
                    verdict["promote"],
                    lead.true,
                    lead.estimate.value,
                    lead.estimate.low,
                    lead.se,
                    lead.mde,
                    failed,
                )
            )
        return out


def main() -> None:
    from couponflow.config import PROJECT_ROOT, load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    params = load_params(PROJECT_ROOT / "params.yaml")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--users", type=int, default=int(params["world"]["n_users"]))
    parser.add_argument("--train-days", type=int, default=4)
    parser.add_argument("--eval-days", type=int, default=int(params["evaluation"]["days"]))
    parser.add_argument("--rows", default=str(params["evaluation"]["rows"]))
    parser.add_argument("--confidence", type=float, default=params["evaluation"]["confidence"])
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--csv", type=Path, help="write every case's outcome here")
    args = parser.parse_args()
    quiet_libraries()
    outcomes = bench(args, params["gate"])
    if args.csv:
        outcomes.to_csv(args.csv, index=False)


def bench(args: argparse.Namespace, gate: GateParams) -> pd.DataFrame:
    """Run the cases and print the figures; returns every case's outcome."""
    started = time.perf_counter()
    rows: list[Outcome] = []
    seeds = range(args.first_seed, args.first_seed + args.cases)
    # A case is a minute or more: a line a case, or one a minute into a log.
    interval = 0.5 if sys.stderr.isatty() else 60.0
    with tqdm(seeds, desc="bench_gate", unit="case", mininterval=interval) as progress:
        for seed in progress:
            rows += run_case(seed, args, gate)
            losing = [o for o in rows if o.true_lead <= 0]
            progress.set_postfix(
                false_passes=f"{sum(o.promote for o in losing)}/{len(losing)}",
                oracle_passes=sum(o.promote for o in rows if o.candidate == "oracle"),
                refresh=False,
            )
    frame = pd.DataFrame([o.__dict__ for o in rows])
    wall = time.perf_counter() - started
    print(
        f"bench_gate: {args.cases} cases x {len(CANDIDATES)} candidates, {args.users} users, "
        f"{args.train_days} training days, {args.eval_days} judged days, rows {args.rows}, "
        f"confidence {args.confidence}; {wall:.0f} s"
    )
    summarise(frame)
    return frame


def summarise(frame: pd.DataFrame) -> dict[str, float]:
    losing = frame["true_lead"] <= 0
    false_pass = float(frame.loc[losing, "promote"].mean()) if losing.any() else float("nan")
    power = float(frame.loc[frame["candidate"] == "oracle", "promote"].mean())
    print(
        f"false-pass rate {false_pass:.1%} ({int(frame.loc[losing, 'promote'].sum())} of "
        f"{int(losing.sum())} truly losing candidates shipped); power {power:.1%} (oracle)"
    )
    print(
        f"{'candidate':<11} {'pass':>6} {'true lead':>10} {'estimate':>9} {'SE':>7} "
        f"{'MDE':>7} {'lead>0':>7}  most common refusal"
    )
    for name, g in frame.groupby("candidate", sort=False):
        reasons = g.loc[~g["promote"], "failed"].str.split("; ").explode().value_counts()
        print(
            f"{name:<11} {g['promote'].mean():>6.0%} {g['true_lead'].mean():>+10.4f} "
            f"{g['estimate'].mean():>+9.4f} {g['se'].mean():>7.4f} {g['mde'].mean():>7.4f} "
            f"{(g['true_lead'] > 0).mean():>7.0%}  {reasons.index[0] if len(reasons) else ''}"
        )
    return {"false_pass": false_pass, "power": power}


if __name__ == "__main__":
    main()
