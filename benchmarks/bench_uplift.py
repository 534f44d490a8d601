"""Which way of learning the coupon effect earns money, judged on the truth: the trainer's
designs side by side over seeded simulated worlds (benchmarks/simulated.py: the project's
feature code without the tools), each budgeted by the shared allocation on everyone known
on the day after the training days, and scored by the world's oracle.

Designs (all through training.train.fit and the shared policy maths):
- `ipw`: every logged offer weighted by its inverse propensity, clipped at 100 (the old
  trainer);
- `stabilised`: every offer weighted by its arm's share over its propensity, clipped at 10
  (the trainer's weighting);
- `randomised`: only the exploration and holdout slices, unweighted (randomised, so
  unconfounded, but a third of the rows);
- `ensemble`: `stabilised` as the trainer's ensemble (`model.members`, `model.bootstrap`), each
  coupon's gain discounted by `--credibility` standard deviations across them (the
  trainer's default);
- `revealed`: `ensemble` with each shopper's hidden segment given as four more inputs, in
  training and in scoring. No deployable learner has it; it measures what the noise of
  the outcomes alone allows at this scale, beside the observable ceiling (which learns
  from the noise-free true gains).

Per design it prints the true incremental profit at the day's budget, its share of the
oracle's (and per seed the observable ceiling's: benchmarks/ceiling.py), the Spearman
correlation of the estimated gain with the true gain over every (user, coupon) pair and the
offers made; with `--tradeoff`, the ensemble's true profit and offers at several
credibility levels (profit against the risk of a wrong offer).

    python -m benchmarks.bench_uplift [--users 20000] [--days 15] [--seeds 1 2 3]
        [--gap 5] [--train-days 15] [--bootstrap]

`--gap` and `--train-days` separate the two ways the real stages' model sees less than
the harness's: it stops training `evaluation.days` + 1 days before the day it is judged
on (a staler model), and so trains on fewer days.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from benchmarks.ceiling import observable_ceiling, observable_lift_by_segment
from benchmarks.simulated import SimulatedLog, population, simulate, training_table
from couponflow.config import PROJECT_ROOT, ModelParams, Params, load_params
from couponflow.logs import quiet_libraries
from couponflow.model import (
    N_ARM_INPUTS,
    N_USER_INPUTS,
    ArmTable,
    CouponEnsemble,
    CouponNet,
    encode_pairs,
    predict_members,
)
from couponflow.oracle import Oracle
from couponflow.policy import Scores, allocate, score, scores_of_members, user_cap_mask
from couponflow.world import SEGMENTS
from training.train import (
    TrainingArrays,
    fit,
    fit_ensemble,
    inverse_propensity_weights,
)

DESIGNS = ("ipw", "stabilised", "randomised", "ensemble", "revealed")
RANDOMISED = ("explore", "holdout")


def with_segment(x: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Input rows with the one-hot hidden segment inserted after the user block."""
    onehot = np.eye(len(SEGMENTS), dtype=np.float32)[segment]
    return np.hstack([x[:, :N_USER_INPUTS], onehot, x[:, N_USER_INPUTS:]])


class Revealed(CouponEnsemble):
    """An ensemble whose members also read the hidden segment of the users being scored
    (`scores_of` inserts it into their pair inputs)."""


def scores_of(net: CouponEnsemble, world: dict) -> Scores:
    """The shared `score` of the judged day's users; a `Revealed` ensemble's members read
    each user's hidden segment beside the user block (rows come a user's arms at a time)."""
    if not isinstance(net, Revealed):
        return score(net, world["users"], world["arms"], world["margin"])
    table = ArmTable.from_frame(world["arms"])
    m = len(table.control)
    x = with_segment(encode_pairs(world["users"], table), np.repeat(world["segment"], m))
    return scores_of_members(predict_members(net, x, per_user=m), table, world["margin"], net)


def arrays(table: pd.DataFrame, design: str) -> TrainingArrays:
    """The training arrays of `table` as `design` weights them (the trainer's own
    stabilised weights unless the design says otherwise)."""
    base = TrainingArrays.from_table(table, 10.0)
    if design == "ipw":
        return replace(
            base, weight=inverse_propensity_weights(table["propensity"].to_numpy(), 100.0)
        )
    if design == "randomised":
        return replace(base, weight=np.ones(len(table), dtype=np.float32))
    return base


def train(
    table: pd.DataFrame, design: str, cfg: ModelParams, credibility: float, segment: np.ndarray
) -> CouponEnsemble:
    """One design's model on the table's days but the last (early stopping on the last);
    `segment` maps a user id to its hidden segment (read by `revealed` only)."""
    if design == "randomised":
        table = table[table["slice"].isin(RANDOMISED)]
    days = sorted(table["day"].unique())
    fitting, stopping = table[table["day"].isin(days[:-1])], table[table["day"] == days[-1]]
    train_arrays, valid_arrays = arrays(fitting, design), arrays(stopping, design)
    if design == "revealed":
        train_arrays = replace(
            train_arrays, x=with_segment(train_arrays.x, segment[fitting["user_id"]])
        )
        valid_arrays = replace(
            valid_arrays, x=with_segment(valid_arrays.x, segment[stopping["user_id"]])
        )
        net, _ = fit_ensemble(train_arrays, valid_arrays, fitting["user_id"].to_numpy(), cfg,
                              N_USER_INPUTS + len(SEGMENTS), N_ARM_INPUTS)  # fmt: skip
        members = [cast(CouponNet, member) for member in net.members]
        return Revealed(members)
    if design == "ensemble":
        net, _ = fit_ensemble(train_arrays, valid_arrays, fitting["user_id"].to_numpy(),
                              {**cfg, "credibility": credibility})  # fmt: skip
        return net
    single, _ = fit(train_arrays, valid_arrays, cfg)
    return CouponEnsemble([single])


def lift_by_segment(p_purchase: np.ndarray, segment: np.ndarray) -> dict[str, float]:
    """Mean purchase lift of a coupon over none per hidden segment, in points."""
    lifts = {}
    for k, name in enumerate(SEGMENTS):
        mine = segment == k
        lifts[name] = round(float(100 * (p_purchase[mine, 1:] - p_purchase[mine, :1]).mean()), 2)
    return lifts


def judge(net: CouponEnsemble, credibility: float, world: dict) -> dict[str, float]:
    """True profit, share of the oracle, rank correlation and offers of `net`'s policy."""
    net.credibility = credibility
    s = scores_of(net, world)
    value = s.incremental_profit.copy()
    value[user_cap_mask(world["users"], world["cap"]), 1:] = -np.inf
    chosen, _ = allocate(value, s.expected_cost, world["budget"])
    gain = world["gain"]
    true = float(gain[np.arange(len(chosen)), chosen].sum())
    rho = spearmanr(s.expected_gain[:, 1:].ravel(), gain[:, 1:].ravel())[0]
    return {
        "true_profit": round(true, 1),
        "share_of_oracle": round(true / world["oracle"], 3),
        "spearman": round(float(rho), 3),
        "offers": int((chosen > 0).sum()),
        "lift_pt": lift_by_segment(s.p_purchase, world["segment"]),
    }  # fmt: skip


def trained_days(days: list[str], gap: int = 0, train_days: int | None = None) -> list[str]:
    """The days the designs learn from, early stopping on the last: every simulated day
    but the first (no features yet) and the judged last, less the `gap` days before the
    judged one; only the newest `train_days` of them when given."""
    trained = days[1 : len(days) - 1 - gap]
    return trained[-train_days:] if train_days else trained


def judged_day(log: SimulatedLog, day: str, params: Params) -> dict:
    """What `judge` reads about `day`: everyone known on it (ids, features, the day's arms),
    the budget and cap, each (user, arm)'s true gain and the oracle policy's profit; with the
    day's `truth`, the arms' `columns` and the pairs' model inputs (users, arms, inputs) in
    it for the other figures."""
    ids, users_x, arms = population(log, day)
    oracle = Oracle(log.world)
    truth = oracle.truth(day, ids)
    columns = truth.arm_index(list(arms["coupon_id"]))
    budget = float(params["policy"]["budget_per_user"]) * len(ids)
    best, _ = oracle.policy_value(truth, budget)
    return {
        "users": users_x, "arms": arms, "margin": float(log.world.margin),
        "cap": int(params["policy"]["max_offers_7d"]), "budget": budget,
        "gain": truth.incremental_profit[:, columns], "oracle": best.incremental_profit,
        "segment": log.world.population_on(day).segment[ids],
        "truth": truth, "columns": columns,
        "pairs": encode_pairs(users_x, arms).reshape(len(ids), len(arms), -1),
    }  # fmt: skip


def ceiling_share(day: dict, params: Params) -> float:
    """The observable ceiling's share of the oracle's true profit on a `judged_day`."""
    cost = day["truth"].cost[:, day["columns"]]
    budget = float(params["policy"]["budget_per_user"])
    return observable_ceiling(day["gain"], cost, day["pairs"], budget)


def one_world(root: Path, users: int, days: int, seed: int, args: argparse.Namespace) -> dict:
    """Every design on one seeded world."""
    started = time.perf_counter()
    log = simulate(root / f"seed-{seed}", {"world.n_users": users, "world.seed": seed}, days)
    table = training_table(log, trained_days(log.days, args.gap, args.train_days))
    params = log.ws.params
    world = judged_day(log, log.days[-1], params)
    p, pairs = world["truth"].p_purchase[:, world["columns"]], world["pairs"]
    cfg = cast(ModelParams, {**params["model"], "epochs": args.epochs,
                             "bootstrap": args.bootstrap})  # fmt: skip
    ceiling = ceiling_share(world, params)
    out: dict = {
        "seed": seed,
        "oracle": round(world["oracle"], 1),
        "ceiling_share": round(ceiling, 3),
        "true_lift_pt": lift_by_segment(p, world["segment"]),
        "observable_lift_pt": observable_lift_by_segment(
            p[:, 1:] - p[:, :1], pairs[:, 1:], world["segment"], SEGMENTS
        ),
    }
    segment = log.world.population_on(log.days[-1]).segment
    for design in args.designs:
        net = train(table, design, cfg, args.credibility, segment)
        credibility = args.credibility if design in ("ensemble", "revealed") else 0.0
        out[design] = judge(net, credibility, world)
        if design == "ensemble" and args.tradeoff:
            out["tradeoff"] = {z: judge(net, z, world) for z in args.tradeoff}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    params = load_params(PROJECT_ROOT / "params.yaml")
    world = params["world"]
    parser.add_argument("--users", type=int, default=int(world["n_users"]))
    parser.add_argument("--days", type=int, default=int(world["history_days"]) + 1,
                        help="days simulated: the last is judged, the others train")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    parser.add_argument("--credibility", type=float,
                        default=float(params["model"]["credibility"]))  # fmt: skip
    parser.add_argument("--tradeoff", type=float, nargs="*", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--bootstrap", action=argparse.BooleanOptionalAction,
                        default=bool(params["model"].get("bootstrap")),
                        help="the ensemble's members on resamples of the shoppers "
                        "(default: model.bootstrap)")  # fmt: skip
    parser.add_argument("--gap", type=int, default=0,
                        help="days between the last trained day and the judged one, not "
                        "trained on (the real stages hold out evaluation.days + 1)")  # fmt: skip
    parser.add_argument("--train-days", type=int, default=None,
                        help="train on only this many newest days before the gap "
                        "(early stopping on the last; default: all)")  # fmt: skip
    args = parser.parse_args(argv)
    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="bench-uplift-"))
    results = []
    for seed in args.seeds:
        results.append(one_world(root, args.users, args.days, seed, args))
        print(json.dumps(results[-1]), flush=True)
    print(
        f"\n{args.users} users, {args.days} days (gap {args.gap}, trained on "
        f"{args.train_days or 'all'} days); true profit (share of oracle) per seed"
    )
    cells = "  ".join(f"{r['oracle']:+8.1f} ({r['ceiling_share']:+.0%})" for r in results)
    print(f"  {'oracle':<11} {cells}   (observable ceiling's share in brackets)")
    for design in args.designs:
        cells = "  ".join(f"{r[design]['true_profit']:+8.1f} ({r[design]['share_of_oracle']:+.0%})"
                          for r in results)  # fmt: skip
        rho = np.median([r[design]["spearman"] for r in results])
        print(f"  {design:<11} {cells}   median spearman {rho:.3f}")
    return results


if __name__ == "__main__":
    main()
