"""DVC stage `train`: fit the CouponNet on logged offers, weighting each by its inverse
logging propensity so the heuristic's choices and the randomised slice both count without
bias. Early-stops on the last training day; the newest `evaluation.days` are kept for
evaluation. With `model.refit` the same recipe then trains again on every day but the newest
(early stopping on it): that refit ships, and the held-out twin the evaluation judges is
saved beside it in model.pt.

On a machine with several GPUs it trains data-parallel on all of them (one process per
GPU, DistributedDataParallel over NCCL); `model.processes` sets the count (on the CPU too,
over gloo: how the tests exercise the same path without a GPU). On the CPU the ensemble's
members train side by side instead, one forked process per idle core
(`model.member_processes`): each member is one thread's work, so a second core otherwise
waits.

The trainer works on arrays (`TrainingArrays`), not on the coupon table, so any data set
encoded as [user block | arm block] trains the same way (the Hillstrom check does).

Run from the workspace root: `python -m training.train`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from couponflow.artefacts import MODEL_RECORD, MODEL_WEIGHTS
from couponflow.config import PROJECT_ROOT, ModelParams, Workspace
from couponflow.cpu import learner_threads
from couponflow.evaluation import refit_line
from couponflow.features import COUPON_FEATURES, USER_FEATURES
from couponflow.model import (
    N_ARM_INPUTS,
    N_USER_INPUTS,
    CouponEnsemble,
    CouponNet,
    Recommender,
    encode,
    save_model,
    torch_threads,
)
from couponflow.processes import free_port  # the process group's rendezvous
from couponflow.records import EnsembleLog, EpochLoss, FitLog, ModelRecord, RefitRecord

EVAL_CHUNK = 65_536  # rows per forward pass when scoring the validation day
TARGETS = ("purchased", "log_amount", "redeemed", "offered", "weight")  # packed in this order


def split_days(table: pd.DataFrame, evaluation_days: int = 1) -> tuple[list, pd.Timestamp, list]:
    """Time split: (training days, early-stopping day, evaluation days). The newest
    `evaluation_days` days are judged (params `evaluation.days`), fewer when the log is
    short: at least one training day and the early-stopping day come first, so the model
    never sees an outcome it is judged on."""
    days = sorted(table["day"].unique())
    if len(days) < 3:
        raise ValueError(f"need at least 3 days of labelled offers, have {len(days)}")
    k = max(1, min(int(evaluation_days), len(days) - 2))
    return days[: -k - 1], days[-k - 1], days[-k:]


def inverse_propensity_weights(propensity: np.ndarray, max_weight: float) -> np.ndarray:
    """1 / propensity clipped at `max_weight` (a rare arm must not dominate the loss),
    then scaled to mean 1 so the learning rate means the same whatever the logging policy."""
    weight = np.minimum(1.0 / np.asarray(propensity, dtype=np.float64), max_weight)
    return (weight / weight.mean()).astype(np.float32)


def stabilised_weights(arm: pd.Series, propensity: np.ndarray, max_weight: float) -> np.ndarray:
    """Each row's arm share in the log over its logging propensity (clipped at
    `max_weight`, scaled to mean 1): within an arm the rows are reweighted as if the arm
    had been given at random, which undoes the logging policy's confounding, while each
    arm keeps the weight its rows have. Plain inverse propensities give every arm the
    whole population's weight, so "no coupon" (half the rows) carried 6 % of the loss
    beside a dozen coupons and the network never pinned down what shoppers do without one.
    """
    labels = arm.astype(object).where(arm.notna(), "").to_numpy()
    share = pd.Series(labels).map(pd.Series(labels).value_counts(normalize=True)).to_numpy()
    weight = np.minimum(share / np.asarray(propensity, dtype=np.float64), max_weight)
    return (weight / weight.mean()).astype(np.float32)


@dataclass(frozen=True)
class TrainingArrays:
    """Encoded inputs (n, n_user + n_arm) and the per-row targets and weights, float32.

    `log_amount` counts only where `purchased`; `redeemed` only where `offered`.
    """

    x: np.ndarray
    purchased: np.ndarray
    log_amount: np.ndarray
    redeemed: np.ndarray
    offered: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        for f in fields(self):
            value = np.asarray(getattr(self, f.name), dtype=np.float32)
            if len(value) != len(self.x):
                raise ValueError(f"{f.name} has {len(value)} rows, x has {len(self.x)}")
            object.__setattr__(self, f.name, value)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: np.ndarray) -> TrainingArrays:
        """The rows at `rows`, in that order (repeats allowed: a bootstrap resample)."""
        if (packed := getattr(self, "_packed", None)) is not None:
            return TrainingArrays.from_packed(packed[rows])
        return TrainingArrays(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def from_table(cls, table: pd.DataFrame, max_weight: float) -> TrainingArrays:
        """Arrays of a training table (training.dataset): one row per logged offer."""
        return cls(
            **_inputs_and_outcomes(table),
            weight=stabilised_weights(
                table["coupon_id"], table["propensity"].to_numpy(), max_weight
            ),
        )

    @classmethod
    def from_packed(cls, packed: np.ndarray) -> TrainingArrays:
        """Arrays that are views of one (n, inputs + len(TARGETS)) float32 array laid out
        as `packed()` returns it: no copy is made, and `packed()` and `take` use it."""
        d = packed.shape[1] - len(TARGETS)
        targets = {t: packed[:, d + i] for i, t in enumerate(TARGETS)}
        arrays = cls(x=packed[:, :d], **targets)
        object.__setattr__(arrays, "_packed", packed)
        return arrays

    @classmethod
    def from_parquet(
        cls, path: Path, days: list, max_weight: float, batch_rows: int = 262_144
    ) -> TrainingArrays:
        """`from_table` of the rows of `days` in the training table at `path`, the same
        arrays, built a batch of rows at a time straight into one packed array: the table
        itself is never in memory (at 1M users a month is ~18M rows of 69 columns), only
        its `day` and `coupon_id` columns. The weights' arm shares and mean are over all
        the rows, as `stabilised_weights` takes them."""
        file = pq.ParquetFile(path)
        columns = file.read(columns=["day", "coupon_id"]).to_pandas()
        keep = columns["day"].isin(days).to_numpy()
        arm = columns["coupon_id"][keep]
        labels = arm.astype(object).where(arm.notna(), "")
        share = labels.value_counts(normalize=True)
        del columns, arm, labels
        d = N_USER_INPUTS + N_ARM_INPUTS
        packed = np.empty((int(keep.sum()), d + len(TARGETS)), dtype=np.float32)
        weight = np.empty(len(packed), dtype=np.float64)
        at, seen = 0, 0
        for batch in file.iter_batches(batch_size=batch_rows, columns=TABLE_COLUMNS):
            rows = keep[seen : seen + batch.num_rows]
            seen += batch.num_rows
            if not rows.any():
                continue
            frame = batch.to_pandas()[rows]
            end = at + len(frame)
            arrays = _inputs_and_outcomes(frame)
            packed[at:end, :d] = arrays.pop("x")
            for i, target in enumerate(TARGETS[:-1]):
                packed[at:end, d + i] = arrays[target]
            labels = frame["coupon_id"].astype(object).where(frame["coupon_id"].notna(), "")
            weight[at:end] = np.minimum(
                labels.map(share).to_numpy() / frame["propensity"].to_numpy(np.float64),
                max_weight,
            )
            at = end
        packed[:, -1] = weight / weight.mean()
        return cls.from_packed(packed)

    def packed(self) -> torch.Tensor:
        """One (n, inputs + len(TARGETS)) tensor, inputs then TARGETS, so a batch is a
        single gather (the arrays' own memory when they are views of one, `from_packed`)."""
        if (packed := getattr(self, "_packed", None)) is not None:
            return torch.from_numpy(packed)
        return torch.from_numpy(np.hstack([self.x, *(getattr(self, t)[:, None] for t in TARGETS)]))


# The training table's columns the arrays are built from.
TABLE_COLUMNS = [*USER_FEATURES, "coupon_id", "kind", "value", "min_spend", "category",
                 *COUPON_FEATURES, "purchased", "amount", "redeemed", "propensity"]  # fmt: skip


def _inputs_and_outcomes(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The encoded inputs and the outcomes of training-table rows, float32 (no weights)."""
    return {
        "x": encode(table[USER_FEATURES].to_numpy(np.float32), table),
        "purchased": table["purchased"].to_numpy(np.float32),
        "log_amount": np.log(table["amount"].clip(lower=1.0).to_numpy(np.float32)),
        "redeemed": table["redeemed"].to_numpy(np.float32),
        "offered": table["coupon_id"].notna().to_numpy(np.float32),
    }


def loss_fn(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the three heads' losses; amount only where a purchase happened,
    redemption only where a coupon was offered. `targets` holds the TARGETS columns."""
    purchased, log_amount, redeemed, offered, w = targets.unbind(1)
    out = out.float()
    purchase = F.binary_cross_entropy_with_logits(out[:, 0], purchased, weight=w)
    bought = purchased * w
    amount = (bought * (out[:, 1] - log_amount) ** 2).sum() / bought.sum().clamp(min=1)
    offered = offered * w
    redeem = F.binary_cross_entropy_with_logits(out[:, 2], redeemed, reduction="none")
    redeem = (offered * redeem).sum() / offered.sum().clamp(min=1)
    return purchase + 0.5 * amount + redeem


def output_prior(data: TrainingArrays) -> np.ndarray:
    """The base head's starting outputs: the weighted purchase logit, mean log amount and
    redemption logit of `data`. Starting at the data's level, the base network spends its
    first steps on who buys rather than on reaching a log amount near 4, so it does not
    leave the users' main effects to the coupon term."""

    def mean(values: np.ndarray, weight: np.ndarray) -> float:
        return float((values * weight).sum() / max(weight.sum(), 1e-9))

    def logit(p: float) -> float:
        p = min(max(p, 1e-4), 1 - 1e-4)
        return float(np.log(p / (1 - p)))

    w = data.weight
    return np.array(
        [
            logit(mean(data.purchased, w)),
            mean(data.log_amount, data.purchased * w),
            logit(mean(data.redeemed, data.offered * w)),
        ],
        dtype=np.float32,
    )


def pick_device(cfg: ModelParams) -> torch.device:
    """cfg `device` when set, else CUDA when present (the same code then trains with mixed
    precision), else the CPU."""
    return torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))


def cpu_threads(cfg: ModelParams) -> int:
    """Torch threads for CPU training: `threads` from cfg, default 1.

    A batch's matrices (batch_size x hidden) are too small for threads to share well, and
    on a busy machine extra threads spin against other jobs: on the 2-core development
    machine with one other busy process, 2 threads trained at ~50k samples/s, 1 at ~450k.
    """
    return int(cfg.get("threads") or 1)


def _valid_loss(net: CouponNet, valid: torch.Tensor, d: int) -> float:
    """The validation loss over every row (outputs in chunks, the loss on them all)."""
    net.eval()
    with torch.inference_mode():
        out = torch.cat(
            [net(valid[i : i + EVAL_CHUNK, :d]) for i in range(0, len(valid), EVAL_CHUNK)]
        )
        return float(loss_fn(out, valid[:, d:]))


def data_parallel_processes(cfg: ModelParams) -> int:
    """Training processes: `processes` from cfg, else one per visible GPU on CUDA, else 1."""
    if processes := cfg.get("processes"):
        return int(processes)
    return max(torch.cuda.device_count(), 1) if pick_device(cfg).type == "cuda" else 1


def fit(
    train: TrainingArrays,
    valid: TrainingArrays,
    cfg: ModelParams,
    n_user: int = N_USER_INPUTS,
    n_arm: int = N_ARM_INPUTS,
    sample: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[CouponNet, FitLog]:
    """Train a CouponNet(n_user, n_arm, cfg hidden) with Adam, early-stopping on `valid`,
    on `train`'s rows at `sample` when given (a bootstrap resample: the same as fitting
    `train.take(sample)`, without copying the rows in one process).

    cfg: seed, hidden, epochs, batch_size, lr, patience; optional device, threads (CPU) and
    processes (data-parallel; default every GPU). The same data and seed give the same
    weights on the same device, thread and process count, on any Intel CPU with AVX2 (MKL's
    AVX2 branch, couponflow/__init__.py). Returns the best network (on
    the CPU, in eval mode) and its FitLog (samples_per_second: training rows x epochs over
    the whole call). `progress`: show the per-epoch bar.
    """
    world = data_parallel_processes(cfg)
    if world == 1:
        with torch_threads(cpu_threads(cfg)):
            return _fit(train, valid, cfg, n_user, n_arm, sample=sample, progress=progress)
    if sample is not None:
        train = train.take(sample)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rank0.pt"
        torch.multiprocessing.spawn(
            _fit_rank,
            args=(world, free_port(), train, valid, cfg, n_user, n_arm, result),
            nprocs=world,
        )
        state, log = cast(
            tuple[dict[str, torch.Tensor], FitLog], torch.load(result, weights_only=False)
        )
    net = _network(state, n_user, n_arm, cfg)
    seconds = time.perf_counter() - started
    rows = log["history"][-1]["rows"]
    return net, {**log, "seconds": round(seconds, 3), "samples_per_second": round(rows / seconds)}


def _fit_rank(
    rank: int,
    world: int,
    port: int,
    train: TrainingArrays,
    valid: TrainingArrays,
    cfg: ModelParams,
    n_user: int,
    n_arm: int,
    result: Path,
) -> None:
    """One data-parallel process: its share of every epoch's batches; rank 0 saves the
    best weights and the log to `result`."""
    cuda = pick_device(cfg).type == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        if cuda:
            torch.cuda.set_device(rank)
        with torch_threads(cpu_threads(cfg)):
            net, log = _fit(train, valid, cfg, n_user, n_arm, rank, world)
        if rank == 0:
            torch.save((net.state_dict(), log), result)
    finally:
        dist.destroy_process_group()


def _epoch_order(
    gen: torch.Generator, n: int, resample: torch.Tensor | None, rank: int, world: int
) -> torch.Tensor:
    """This rank's rows of one epoch: its slice of a permutation of the `n` rows, mapped
    through `resample` (rows of the training arrays) when given."""
    per_rank = n // world
    order = torch.randperm(n, generator=gen)[rank * per_rank : (rank + 1) * per_rank]
    return order if resample is None else resample[order]


def rows_per_check(cfg: ModelParams, rows_per_rank: int, world: int = 1) -> int:
    """A rank's training rows between two checks on the early-stopping day: its whole epoch,
    or `check_rows` (shared by the ranks) in whole batches when the epoch is longer, so the
    steps are an epoch's steps whichever it is and only the checks come more often."""
    every, whole = cfg.get("check_rows"), max(rows_per_rank, 1)
    if not every or rows_per_rank <= int(every) // world:
        return whole
    batch = int(cfg["batch_size"])
    return max(batch, int(every) // world // batch * batch)


@dataclass
class EarlyStopping:
    """The best weights so far by the loss on the early-stopping day, and whether
    `patience` checks have passed without beating it."""

    patience: int
    best: float = float("inf")
    best_check: int = -1
    best_epoch: int = -1
    state: dict[str, torch.Tensor] | None = None
    history: list[EpochLoss] = field(default_factory=list)

    def stale(self, net: nn.Module, epoch: int, rows: int, loss: float) -> bool:
        """Record a check of `net` after `rows` training rows; True once `patience`
        checks have passed since the best."""
        self.history.append({"epoch": epoch, "rows": rows, "valid_loss": loss})
        if loss < self.best - 1e-5:
            self.best, self.best_check, self.best_epoch = loss, len(self.history) - 1, epoch
            self.state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            return False
        return len(self.history) - 1 - self.best_check >= self.patience


def _checks(
    gen: torch.Generator,
    n: int,
    resample: torch.Tensor | None,
    rank: int,
    world: int,
    epochs: int,
    per_check: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, this rank's rows to train on before the next check): each epoch's order
    (`_epoch_order`) in pieces of `per_check` rows, one piece when the epoch fits."""
    for epoch in range(epochs):
        for piece in _epoch_order(gen, n, resample, rank, world).split(per_check):
            yield epoch, piece


def _outcomes_at(train: TrainingArrays, rows: np.ndarray) -> TrainingArrays:
    """`train`'s targets at `rows` with no inputs (x has no columns): what the output
    prior reads, without copying the inputs."""
    targets = {t: getattr(train, t)[rows] for t in TARGETS}
    return TrainingArrays(x=np.empty((len(rows), 0), dtype=np.float32), **targets)


def _rank_device(cfg: ModelParams, rank: int, world: int) -> torch.device:
    """The configured device; with CUDA and `world` > 1, this rank's own GPU."""
    device = pick_device(cfg)
    return torch.device("cuda", rank) if device.type == "cuda" and world > 1 else device


def _initial_net(
    train: TrainingArrays,
    cfg: ModelParams,
    n_user: int,
    n_arm: int,
    sample: np.ndarray | None = None,
) -> CouponNet:
    """The untrained network: seeded weights, the output bias at the outcomes' prior (of
    `train`'s rows at `sample`, when given)."""
    prior = train if sample is None else _outcomes_at(train, sample)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only its generator matters
        torch.manual_seed(int(cfg["seed"]))
        net = CouponNet(n_user, n_arm, int(cfg["hidden"]))
    with torch.no_grad():
        # _mlp ends in a Linear layer; its first three outputs are the heads'
        cast(nn.Linear, net.base[-1]).bias[:3].copy_(torch.from_numpy(output_prior(prior)))
    return net


def _epoch(
    model: nn.Module,
    data: torch.Tensor,
    order: torch.Tensor,
    d: int,
    bs: int,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    use_amp: bool,
) -> None:
    """One pass over this rank's rows in `order`, a batch of `bs` a step (AMP on CUDA)."""
    for start in range(0, len(order), bs):
        batch = data.index_select(0, order[start : start + bs])
        with torch.autocast(data.device.type, dtype=torch.float16, enabled=use_amp):
            out = model(batch[:, :d])
        loss = loss_fn(out, batch[:, d:])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def _fit(
    train: TrainingArrays,
    valid: TrainingArrays,
    cfg: ModelParams,
    n_user: int,
    n_arm: int,
    rank: int = 0,
    world: int = 1,
    sample: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[CouponNet, FitLog]:
    """One process's training loop: with `world` > 1 the network is wrapped in DDP and this
    `rank` takes its slice of each epoch's permutation (as many batches as every rank, or
    the all-reduce would wait); with `sample`, `train.take(sample)`'s batches, no copy."""
    d = n_user + n_arm
    if train.x.shape[1] != d or valid.x.shape[1] != d:
        raise ValueError(f"inputs have {train.x.shape[1]} columns, layout says {n_user}+{n_arm}")
    started = time.perf_counter()
    device = _rank_device(cfg, rank, world)
    use_amp = device.type == "cuda"
    net = _initial_net(train, cfg, n_user, n_arm, sample).to(device)
    model: nn.Module = net
    if world > 1:
        model = DistributedDataParallel(net, device_ids=[rank] if device.type == "cuda" else None)
    data, held_out = train.packed().to(device), valid.packed().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))  # same order, every rank
    resample, n = (None, len(data)) if sample is None else (torch.as_tensor(sample), len(sample))
    per_check = rows_per_check(cfg, n // world, world)
    stopping, rows = EarlyStopping(int(cfg.get("patience", 3))), 0
    bar = tqdm(total=int(cfg["epochs"]) * -(-(n // world) // per_check), desc="train",
               unit="epoch" if per_check >= n // world else "check", leave=False,
               disable=rank > 0 or not progress)  # fmt: skip
    for epoch, piece in _checks(gen, n, resample, rank, world, int(cfg["epochs"]), per_check):
        model.train()
        _epoch(model, data, piece.to(device), d, int(cfg["batch_size"]), opt, scaler, use_amp)
        rows += len(piece) * world
        val_loss = _valid_loss(net, held_out, d)  # the same weights on every rank: one verdict
        bar.update()
        bar.set_postfix(valid_loss=f"{val_loss:.4f}")
        if stopping.stale(net, epoch, rows, val_loss):
            break
    bar.close()
    if stopping.state is None:
        raise ValueError("the validation loss was never finite: check the inputs and weights")
    net = net.cpu()
    net.load_state_dict(stopping.state)
    net.eval()
    seconds = time.perf_counter() - started
    return net, {
        "device": device.type,
        "threads": torch.get_num_threads(),
        "processes": world,
        "epochs_run": stopping.history[-1]["epoch"] + 1,
        "best_epoch": stopping.best_epoch,
        "history": stopping.history,
        "seconds": round(seconds, 3),
        "samples_per_second": round(rows / seconds),
    }


def bootstrap_users(users: np.ndarray, seed: int) -> np.ndarray:
    """Row indices of a bootstrap resample of the shoppers (all rows of each drawn
    shopper, as often as drawn): a user's days are not independent, so resampling rows
    would understate how much the fit depends on who happened to be in the log."""
    users = np.asarray(users)
    distinct, inverse = np.unique(users, return_inverse=True)
    draws = np.bincount(
        np.random.default_rng(seed).integers(0, len(distinct), len(distinct)),
        minlength=len(distinct),
    )
    return np.repeat(np.arange(len(users)), draws[inverse])


def member_processes(cfg: ModelParams) -> int:
    """How many of the ensemble's members train at once, each in its own process: on the
    CPU without data-parallel ranks, `member_processes` from cfg, else one per core while the
    load leaves one idle (couponflow.cpu), each of `threads` threads; never more than the
    members, and one in a daemonic process (which may not have children). A member's
    answer does not depend on it (tests/test_model.py)."""
    members = int(cfg.get("members") or 1)
    if (
        members == 1
        or pick_device(cfg).type != "cpu"
        or data_parallel_processes(cfg) > 1
        or multiprocessing.current_process().daemon
    ):
        return 1
    wanted = cfg.get("member_processes") or learner_threads() // cpu_threads(cfg)
    return max(1, min(int(wanted), members))


# What a forked member process trains on: set in the parent just before the fork and read
# in the children, so the training arrays are shared (copy on write), never pickled or
# copied. A forked child holds none of the parent's other threads: it runs torch on its
# `threads` and nothing else that could wait on a lock one of them held.
_MEMBER_INPUTS: tuple[TrainingArrays, TrainingArrays, np.ndarray, ModelParams, int, int]


def _fit_member(i: int, progress: bool = True) -> tuple[CouponNet, FitLog]:
    """Member `i` of the ensemble `_MEMBER_INPUTS` describes, with its own seed: on every
    training row, or with cfg `bootstrap` each member but the first on a bootstrap resample
    of the shoppers."""
    train, valid, users, cfg, n_user, n_arm = _MEMBER_INPUTS
    resample = i > 0 and bool(cfg.get("bootstrap"))
    sample = bootstrap_users(users, seed=i) if resample else None  # gathered, not copied
    seeded: ModelParams = {**cfg, "seed": int(cfg["seed"]) + i}
    return fit(train, valid, seeded, n_user, n_arm, sample, progress=progress)


def _fit_member_weights(i: int) -> tuple[dict[str, np.ndarray], FitLog]:
    """`_fit_member` in a forked process: the weights as arrays (a plain pickle, no
    shared-memory handles) and the log; no progress bar, as two would share the terminal."""
    net, log = _fit_member(i, progress=False)
    return {k: v.numpy() for k, v in net.state_dict().items()}, log


def fit_ensemble(
    train: TrainingArrays,
    valid: TrainingArrays,
    train_users: np.ndarray,
    cfg: ModelParams,
    n_user: int = N_USER_INPUTS,
    n_arm: int = N_ARM_INPUTS,
) -> tuple[CouponEnsemble, EnsembleLog]:
    """`cfg["members"]` networks (default 1) of the input layout `n_user` + `n_arm`, each
    from its own seed on every training row (a deep ensemble), or with `cfg["bootstrap"]`
    each but the first on a bootstrap resample of the shoppers; the ensemble discounts
    gains by `cfg["credibility"]` standard deviations across them. `member_processes(cfg)`
    of them train at once, the same weights as one after another. The log sums seconds and
    rows over the members; `wall_seconds` is the whole call."""
    global _MEMBER_INPUTS
    started = time.perf_counter()
    n, at_once = int(cfg.get("members") or 1), member_processes(cfg)
    _MEMBER_INPUTS = (train, valid, train_users, cfg, n_user, n_arm)
    bar = {"desc": "ensemble", "unit": "member", "total": n, "leave": False, "disable": n == 1}
    try:
        if at_once == 1:
            fitted = list(tqdm(map(_fit_member, range(n)), **bar))
        else:
            # fork: the children inherit the arrays; each trains on `threads` threads
            with multiprocessing.get_context("fork").Pool(at_once) as pool:
                weights = list(tqdm(pool.imap(_fit_member_weights, range(n)), **bar))
            fitted = []
            for arrays, log in weights:
                state = {k: torch.from_numpy(v) for k, v in arrays.items()}
                fitted.append((_network(state, n_user, n_arm, cfg), log))
    finally:
        del _MEMBER_INPUTS  # the parent's reference to the arrays
    members, logs = [net for net, _ in fitted], [log for _, log in fitted]
    seconds = sum(log["seconds"] for log in logs)
    rows = sum(log["samples_per_second"] * log["seconds"] for log in logs)
    first = logs[0]
    summary: EnsembleLog = {  # the first member's keys in their order, then the ensemble's
        "device": first["device"],
        "threads": first["threads"],
        "processes": first["processes"],
        "epochs_run": [log["epochs_run"] for log in logs],
        "best_epoch": [log["best_epoch"] for log in logs],
        "history": first["history"],
        "seconds": round(seconds, 3),
        "samples_per_second": round(rows / max(seconds, 1e-9)),
        "members": n,
        "member_processes": at_once,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    return CouponEnsemble(members, float(cfg.get("credibility") or 0.0)), summary


def _network(
    state: dict[str, torch.Tensor], n_user: int, n_arm: int, cfg: ModelParams
) -> CouponNet:
    """A CouponNet holding `state`'s weights, in eval mode: what another process trained."""
    net = CouponNet(n_user, n_arm, int(cfg["hidden"]))
    net.load_state_dict(state)
    return net.eval()


def ensemble_loss(net: Recommender, data: TrainingArrays) -> float:
    """The members' mean validation loss on `data` (a single network's own)."""
    members = list(net.members) if isinstance(net, CouponEnsemble) else [net]
    packed, d = data.packed(), data.x.shape[1]
    return float(np.mean([_valid_loss(cast(CouponNet, m), packed, d) for m in members]))


def refit(
    path: Path, users: pd.DataFrame, judged: CouponEnsemble, judged_version: str, cfg: ModelParams
) -> tuple[CouponEnsemble, RefitRecord]:
    """The recipe of `judged` fitted again on the table at `path` (`users`: its day and
    user_id columns) up to the day before the newest, early stopping on the newest: the model that
    ships, one day staler than the data instead of `evaluation.days` + 1 (the harness
    earned about twice the true profit so, docs/world.md). The newest day is new to both
    models, so it also checks the refit: one that fits it worse than the held-out `judged`
    twin does is not the candidate, the twin is."""
    days = sorted(users["day"].unique())
    max_weight = float(cfg["max_stabilised_weight"])
    train = TrainingArrays.from_parquet(path, days[:-1], max_weight)
    valid = TrainingArrays.from_parquet(path, days[-1:], max_weight)
    fitting_users = users.loc[users["day"].isin(days[:-1]), "user_id"].to_numpy()
    net, log = fit_ensemble(train, valid, fitting_users, cfg)
    loss, judged_loss = ensemble_loss(net, valid), ensemble_loss(judged, valid)
    record: RefitRecord = {
        "judged_version": judged_version,
        "train_rows": len(train),
        "early_stopping_day": str(pd.Timestamp(days[-1]).date()),
        "newest_day_loss": round(loss, 6),
        "judged_newest_day_loss": round(judged_loss, 6),
        "shipped": loss <= judged_loss,
        "epochs_run": log["epochs_run"],
        "seconds": log["seconds"],
    }
    return (net if record["shipped"] else judged), record


def code_commit() -> str:
    """The project's git commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_version(net: torch.nn.Module, last_day: str) -> str:
    """`<newest data day>-<hash of the weights>`: the same data and seed, the same version."""
    weights = b"".join(v.numpy().tobytes() for v in net.state_dict().values())
    return f"{last_day.replace('-', '')}-{hashlib.sha256(weights).hexdigest()[:8]}"


def data_version(ws: Workspace) -> dict[str, str]:
    """What the model learned from: the DVC hashes of the versioned data (`dvc add` runs
    before `dvc repro`) and a hash of the training table itself, so a model can be traced
    to its data with `dvc checkout` at the workspace commit that holds those hashes."""
    version = {}
    for name in ("offline", "features"):
        tracked = ws.root / "data" / f"{name}.dvc"
        if tracked.exists():
            version[name] = yaml.safe_load(tracked.read_text())["outs"][0]["md5"]
    table = (ws.training_set / "offers.parquet").read_bytes()
    version["training_set"] = hashlib.sha256(table).hexdigest()[:16]
    return version


def main() -> None:
    ws = Workspace(Path.cwd())
    path = ws.training_set / "offers.parquet"
    # The table's day and user columns alone: the arrays are read from the file a batch at
    # a time (TrainingArrays.from_parquet), so the stage never holds the whole table.
    table = pd.read_parquet(path, columns=["day", "user_id"])
    cfg = ws.params["model"]
    train_days, stop_day, eval_days = split_days(
        table, int(ws.params.get("evaluation", {}).get("days", 1))
    )
    max_weight = float(cfg["max_stabilised_weight"])
    train = TrainingArrays.from_parquet(path, train_days, max_weight)
    valid = TrainingArrays.from_parquet(path, [stop_day], max_weight)
    train_users = table.loc[table["day"].isin(train_days), "user_id"].to_numpy()
    judged, log = fit_ensemble(train, valid, train_users, cfg)
    train_rows, valid_rows = len(train), len(valid)
    del train, valid  # the refit builds its own arrays: never two sets in memory
    data_days = sorted(str(pd.Timestamp(d).date()) for d in table["day"].unique())
    net, refitted = judged, None
    if cfg.get("refit"):
        net, refitted = refit(path, table, judged, model_version(judged, data_days[-1]), cfg)
    version = model_version(net, data_days[-1])
    meta: ModelRecord = {
        "version": version,
        **net.layout(),
        "data_days": data_days,
        "train_rows": train_rows,
        "valid_rows": valid_rows,
        "early_stopping_day": str(pd.Timestamp(stop_day).date()),
        "evaluation_day": str(pd.Timestamp(eval_days[-1]).date()),
        "evaluation_days": [str(pd.Timestamp(d).date()) for d in eval_days],
        "params": cfg,
        "data_version": data_version(ws),
        "code_commit": code_commit(),
        **log,
        "refit": refitted,
    }
    save_model(net, ws.models / MODEL_WEIGHTS, meta, judged=None if net is judged else judged)
    (ws.models / MODEL_RECORD).write_text(json.dumps(meta, indent=2))
    print(
        f"model {version}: {log['members']} members, {log['epochs_run']} epochs on "
        f"{log['device']}, {log['samples_per_second']:,} samples/s"
    )
    if candidate := refit_line(meta):  # the run report's and the run summary's words
        print(candidate)


if __name__ == "__main__":
    main()
