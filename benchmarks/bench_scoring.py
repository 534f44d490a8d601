"""Scoring throughput: a population's (user, arm) pairs through the ensemble and through the
gradient-boosting baselines, as the evaluate and budget stages score them.

- networks: `training.scoring.score_users` of `--users` users against the default
  catalogue's open coupons with an ensemble of `--members` networks (random weights: the
  time does not depend on them), with `couponflow.model.PIECE_ROWS` at its value and at
  "no pieces" (a whole chunk at once), on 1 and `--processes` processes;
- trees: a 200-tree gradient-boosting regressor (the baselines' settings) predicting the
  same pairs whole, a chunk at a time, and in pieces (`training.baselines.in_pieces`).

The variants alternate over `--rounds` rounds; each prints its median and whether its
answers are the same bits as the first variant's (to the bit for the processes and for
the trees in pieces; the networks' pieces round some scores otherwise, so not them).
Figures print; nothing is asserted.

    .venv/bin/python -m benchmarks.bench_scoring --users 55000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingRegressor

import couponflow.model as model
from couponflow.config import PROJECT_ROOT, load_params
from couponflow.cpu import load_aware_threads
from couponflow.features import COUPON_FEATURES, USER_FEATURES, default_user_features
from couponflow.model import ArmTable, CouponEnsemble, CouponNet, encode_pairs
from couponflow.policy import Scores, eligible, with_control
from couponflow.world.catalogue import Catalogue
from training.baselines import GB_PARAMS, in_pieces
from training.scoring import score_users

DAY = pd.Timestamp("2026-01-20")


def population(n_users: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Users with varied features and the default world's coupons open on DAY."""
    world = load_params(PROJECT_ROOT / "params.yaml")["world"]
    start = pd.Timestamp(world["start_date"])
    catalogue = Catalogue(int(world["seed"]), start, int(world["n_coupons"]),
                          int(world["drift"]["new_coupons_per_week"]))  # fmt: skip
    coupons = eligible(catalogue.on(DAY), DAY).assign(**{c: 1.0 for c in COUPON_FEATURES})
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.2, 2.0, (n_users, len(USER_FEATURES))).astype(np.float32)
    return np.stack([default_user_features()] * n_users) * scale, with_control(coupons)


def ensemble(members: int) -> CouponEnsemble:
    torch.manual_seed(0)
    net = CouponEnsemble([CouponNet() for _ in range(members)], credibility=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def alternate(variants: dict[str, Callable[[], object]], rounds: int, same: Callable) -> None:
    """Each variant once a round, in turn; then its median and whether it matched the first."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    answers: dict[str, object] = {}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            answers[name] = run()
            times[name].append(time.perf_counter() - started)
    first = answers[next(iter(variants))]
    for name, seconds in times.items():
        rounds_text = " / ".join(f"{s:.2f}" for s in seconds)
        print(f"  {name:<34} median {statistics.median(seconds):6.2f} s  ({rounds_text})"
              f"  same bits: {same(answers[name], first)}")  # fmt: skip


def same_scores(a: Scores, b: Scores) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in Scores.__dataclass_fields__)


def networks(users: np.ndarray, arms: pd.DataFrame, args: argparse.Namespace) -> None:
    net, pieces = ensemble(args.members), model.PIECE_ROWS

    def run(piece_rows: int, processes: int) -> Callable[[], Scores]:
        def scored() -> Scores:
            model.PIECE_ROWS = piece_rows
            try:
                return score_users(net, users, arms, 0.3, processes)
            finally:
                model.PIECE_ROWS = pieces

        return scored

    whole = 10**12  # a whole chunk in one pass
    print(f"networks: {len(users):,} users x {len(arms)} arms, {args.members} members")
    alternate({
        "pieces, 1 process": run(pieces, 1),
        "no pieces, 1 process": run(whole, 1),
        f"pieces, {args.processes} processes": run(pieces, args.processes),
    }, args.rounds, same_scores)  # fmt: skip


def trees(users: np.ndarray, arms: pd.DataFrame, args: argparse.Namespace) -> None:
    pairs = encode_pairs(users, ArmTable.from_frame(arms)).astype(np.float64)
    rng = np.random.default_rng(1)
    fitted = rng.choice(len(pairs), min(len(pairs), 50_000), replace=False)
    target = pairs[fitted, : len(USER_FEATURES)].sum(axis=1) + rng.normal(size=len(fitted))
    regressor = HistGradientBoostingRegressor(**{**GB_PARAMS, "early_stopping": False})
    with load_aware_threads() as threads:
        regressor.fit(pairs[fitted], target)
        step = model.USERS_PER_CHUNK * len(arms)

        def chunked() -> np.ndarray:
            return np.concatenate(
                [regressor.predict(pairs[i : i + step]) for i in range(0, len(pairs), step)]
            )

        print(f"trees: {len(pairs):,} pairs, {regressor.n_iter_} trees, {threads} threads")
        alternate({
            "in pieces": lambda: in_pieces(regressor.predict, pairs),
            "a chunk of users at a time": chunked,
            "whole": lambda: regressor.predict(pairs),
        }, args.rounds, np.array_equal)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=55_000, help="users scored")
    parser.add_argument("--members", type=int, default=5, help="networks in the ensemble")
    parser.add_argument("--processes", type=int, default=2, help="scoring processes to compare")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    args = parser.parse_args()
    if args.users < 1 or args.members < 1 or args.processes < 1 or args.rounds < 1:
        parser.error("--users, --members, --processes and --rounds must be at least 1")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    users, arms = population(args.users)
    networks(users, arms, args)
    trees(users, arms, args)


if __name__ == "__main__":
    main()
