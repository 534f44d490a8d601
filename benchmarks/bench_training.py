"""Training throughput: samples per second end to end (encode a ~1M-row training table into
arrays, then fit) and the bare forward + backward rate of the network, on the CPU and on a
GPU when one is present.

The table is shaped like training.dataset's: the simulator's logged offers (labelled by
`label_offers`, joined to their coupons) over three days, two to train on and one to
early-stop on, with synthetic user features and coupon stats (gamma draws, as in
bench_features) standing in for the Feast join, which is not what is measured here. A
small fit runs first so torch's one-time start-up (well under a second, paid once per
training run) is not spread over the first configuration.

- end to end: training rows x epochs / (TrainingArrays.from_table of both days + fit);
- fit: the figure fit logs into model.json (packing, copies, validation passes included);
- forward + backward: the same steps on contiguous slices of one packed tensor, no
  shuffling, gathering or validation: the ceiling the data path is measured against.

With `--members N`, the ensemble the train stage fits (training.train.fit_ensemble, N
members, each from its own seed) is then timed on the CPU with its members
one by one and side by side (`model.member_processes` 1 and each count of `--processes`),
alternated over `--rounds` rounds: the wall time, its median, and whether the weights
were the same.

Figures print; nothing is asserted.

    .venv/bin/python -m benchmarks.bench_training --rows 1000000 --epochs 3 --threads 1 2
    .venv/bin/python -m benchmarks.bench_training --rows 400000 --members 5 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import cast

import numpy as np
import pandas as pd
import torch

from couponflow.config import PROJECT_ROOT, ModelParams, load_params
from couponflow.features import COUPON_FEATURES, USER_FEATURES
from couponflow.model import CouponNet, torch_threads
from training.dataset import label_offers
from training.train import TrainingArrays, fit, fit_ensemble, loss_fn

DAYS = ("2026-01-05", "2026-01-06", "2026-01-07")


def training_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """About `rows` logged offers on the first two days of DAYS, and the third day's."""
    from couponflow.world import World

    cfg = load_params(PROJECT_ROOT / "params.yaml")["world"]
    cfg["n_users"] = int(rows / (2 * float(cfg["offers_per_user"])))
    world = World(cfg)
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        rng.gamma(1.0, 5.0, (world.users_on(DAYS[-1]), len(USER_FEATURES))).astype("float32"),
        columns=USER_FEATURES,
    )
    parts = []
    for day in DAYS:
        batch = world.simulate_day(day)
        offers = label_offers(batch["offers"], batch["orders"], world.margin)
        coupons = batch["coupons"].copy()
        stats = rng.gamma(1.0, 5.0, (len(coupons), len(COUPON_FEATURES))).astype("float32")
        coupons[COUPON_FEATURES] = stats
        offers = offers.merge(coupons, on="coupon_id", how="left")
        parts.append(
            pd.concat([offers, users.iloc[offers["user_id"]].reset_index(drop=True)], axis=1)
        )
    return pd.concat(parts, ignore_index=True)


def bare_rate(data: torch.Tensor, cfg: ModelParams, device: torch.device) -> float:
    """Samples/s of forward + loss + backward + Adam step alone, one pass over `data`."""
    torch.manual_seed(0)
    net = CouponNet(hidden=int(cfg["hidden"])).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg["lr"]), fused=True)
    d, bs = net.n_user + net.n_arm, int(cfg["batch_size"])
    batches = [data[i : i + bs] for i in range(0, len(data), bs)]
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    started = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            out = net(batch[:, :d])
        loss = loss_fn(out, batch[:, d:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return len(data) / (time.perf_counter() - started)


def ensemble_rounds(
    train_table: pd.DataFrame,
    valid_table: pd.DataFrame,
    cfg: ModelParams,
    processes: list[int],
    rounds: int,
) -> None:
    """Print the wall time of fitting `cfg`'s ensemble on the CPU with each count of member
    processes (1 first), alternated round by round, their medians, and whether every count
    gave the first's weights."""
    max_weight = float(cfg["max_stabilised_weight"])
    train = TrainingArrays.from_table(train_table, max_weight)
    valid = TrainingArrays.from_table(valid_table, max_weight)
    users = train_table["user_id"].to_numpy()
    walls: dict[int, list[float]] = {n: [] for n in processes}
    reference, same = None, True
    for _ in range(rounds):
        for n in processes:
            net, log = fit_ensemble(train, valid, users, {**cfg, "member_processes": n})
            walls[n].append(log["wall_seconds"])
            weights = [v for m in net.members for v in m.state_dict().values()]
            reference = reference or weights
            same = same and all(torch.equal(a, b) for a, b in zip(reference, weights, strict=True))
            print(f"  {n} member process(es): {log['wall_seconds']:.1f} s")
    members = int(cfg.get("members") or 1)
    for n in processes:
        print(
            f"ensemble of {members}, {n} at once: median {statistics.median(walls[n]):.1f} s "
            f"wall over {rounds} round(s)"
        )
    print(f"same weights at every count: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows, about")
    parser.add_argument("--epochs", type=int, default=3, help="epochs, no early stopping")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="CPU threads")
    parser.add_argument("--batch-size", type=int, nargs="+", help="default: params.yaml's")
    parser.add_argument("--members", type=int, help="also time an ensemble of this many")
    parser.add_argument("--processes", type=int, nargs="+", default=[2],
                        help="member processes set against one by one (default 2)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="alternated ensemble rounds")
    args = parser.parse_args()
    params = load_params(PROJECT_ROOT / "params.yaml")["model"]

    started = time.perf_counter()
    table = training_table(args.rows)
    valid_table = table[table["day"] == pd.Timestamp(DAYS[-1])]
    train_table = table[table["day"] < pd.Timestamp(DAYS[-1])]
    print(
        f"table: {len(train_table):,} training + {len(valid_table):,} validation offers "
        f"(built in {time.perf_counter() - started:.1f} s, not timed); "
        f"{args.epochs} epochs; torch {torch.__version__}"
    )
    print(
        f"{'device':>6} {'threads':>7} {'batch':>6} {'encode s':>8} {'fit s':>6} "
        f"{'end to end/s':>12} {'fit/s':>9} {'fwd+bwd/s':>9}"
    )
    small = TrainingArrays.from_table(valid_table.head(10_000), 20.0)
    fit(small, small, cast(ModelParams, {**params, "epochs": 1, "device": "cpu"}))  # warm-up
    devices = [("cpu", t) for t in args.threads]
    devices += [("cuda", 1)] if torch.cuda.is_available() else []
    for device, threads in devices:
        for bs in args.batch_size or [int(params["batch_size"])]:
            cfg = cast(
                ModelParams,
                {**params, "epochs": args.epochs, "patience": args.epochs, "batch_size": bs,
                 "device": device, "threads": threads},
            )  # fmt: skip
            tick = time.perf_counter()
            max_weight = float(cfg["max_stabilised_weight"])
            train = TrainingArrays.from_table(train_table, max_weight)
            valid = TrainingArrays.from_table(valid_table, max_weight)
            encode_s = time.perf_counter() - tick
            _, log = fit(train, valid, cfg)
            total = encode_s + log["seconds"]
            with torch_threads(threads):
                bare = bare_rate(train.packed().to(device), cfg, torch.device(device))
            print(
                f"{device:>6} {threads:>7} {bs:>6} {encode_s:>8.2f} {log['seconds']:>6.2f} "
                f"{len(train) * log['epochs_run'] / total:>12,.0f} "
                f"{log['samples_per_second']:>9,} {bare:>9,.0f}"
            )
    if args.members:
        ensemble = {**params, "epochs": args.epochs, "patience": args.epochs, "device": "cpu",
                    "members": args.members}  # fmt: skip
        processes = [1, *args.processes]
        ensemble_rounds(
            train_table, valid_table, cast(ModelParams, ensemble), processes, args.rounds
        )


if __name__ == "__main__":
    main()
