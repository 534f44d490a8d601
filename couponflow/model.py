"""The recommender network and its inputs.

For a user and an arm (a coupon, or "no coupon") it estimates P(purchase), the expected
order amount if they buy, and P(redeem). One encoding of (user, arm) serves training,
offline evaluation and the live service.

The network is uplift-aware: its outputs are `base(user) + (1 - is_control) * delta(user,
arm)`. The coupon's effect is a term of its own, learned from the difference between
offered and not-offered users, rather than a small difference between two large
predictions; and a network that has learned nothing about a coupon predicts no effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from couponflow.contract import ALL_CATEGORIES, CATEGORIES, COUPON_KINDS
from couponflow.features import COUPON_FEATURES, USER_FEATURES, WINDOWED_COUNTS, relative_value
from couponflow.records import Layout, ModelInputs, ModelRecord, SavedModelMeta

ARM_FEATURES: list[str] = [
    "is_control",
    *[f"kind_{k}" for k in COUPON_KINDS],
    "value_scaled",
    "min_spend_scaled",
    "site_wide",
    "category_affinity",
    "relative_value",
]
# Inputs are [user block | arm block]: the squashed USER_FEATURES, then ARM_FEATURES (column
# 0 of the arm block is `is_control`) and the squashed COUPON_FEATURES of the arm.
N_USER_INPUTS = len(USER_FEATURES)
N_ARM_INPUTS = len(ARM_FEATURES) + len(COUPON_FEATURES)
N_INPUTS = N_USER_INPUTS + N_ARM_INPUTS
_AFFINITY = np.array([USER_FEATURES.index(f"affinity_{c}") for c in CATEGORIES])
_BASKET = USER_FEATURES.index("avg_basket_30d")
_OBSERVED = USER_FEATURES.index("observed_days_30d")
_WINDOWED = np.array([USER_FEATURES.index(f) for f in WINDOWED_COUNTS])
_WINDOW = np.array(list(WINDOWED_COUNTS.values()), dtype=np.float32)


def _codes(values: pd.Series, labels: tuple[str, ...]) -> np.ndarray:
    """Each value's position in `labels`, -1 for a missing or other value (vectorised).
    The few distinct values are looked up, not every row: on pandas' string dtype, looking
    up 315,000 rows took 100-170 ms, factorising them first 26-33 ms."""
    rows, distinct = pd.factorize(values)
    lookup = pd.Index(list(labels)).get_indexer(pd.Index(distinct, dtype=object))
    return np.append(lookup, -1)[rows].astype(np.int64)  # a missing value's row is -1


def _squash(counts: np.ndarray, out: np.ndarray) -> None:
    """Counts, amounts and rates on one scale, written into `out`: log(1 + x), negatives
    read as 0."""
    np.maximum(counts, 0.0, out=out)
    np.log1p(out, out=out)


def _per_full_window(users: np.ndarray) -> np.ndarray:
    """User features with each windowed count scaled to a full window: x w / min(w, days
    observed). Without it a model trained on the first weeks of a store meets counts larger
    than any it saw once the windows fill (measured: the uplift's rank correlation with the
    truth 0.35 with 14 days of history, 0.6 once the windows were full)."""
    observed = np.clip(users[:, _OBSERVED : _OBSERVED + 1], 1.0, None)
    scaled = users.copy()
    scaled[:, _WINDOWED] *= _WINDOW / np.minimum(_WINDOW, observed)
    return scaled


@dataclass(frozen=True)
class ArmTable:
    """The user-independent part of the arm inputs, one row per arm, computed once from a
    coupons frame (a null `coupon_id` is "no coupon"): scoring many users against one
    catalogue then only indexes these arrays instead of building a frame per pair."""

    control: np.ndarray  # bool
    kind: np.ndarray  # code in COUPON_KINDS, -1 for none
    kind_name: np.ndarray  # object, "" for none (what relative_value reads)
    value: np.ndarray
    min_spend: np.ndarray
    category: np.ndarray  # code in CATEGORIES, -1 for site-wide or none
    site_wide: np.ndarray  # bool, False for "no coupon"
    stats: np.ndarray  # (rows, len(COUPON_FEATURES)) squashed, zeros for "no coupon"

    @classmethod
    def from_frame(cls, coupons: pd.DataFrame, with_stats: bool = True) -> ArmTable:
        """From the coupon columns and, `with_stats`, COUPON_FEATURES (required then)."""
        control = coupons["coupon_id"].isna().to_numpy()
        stats = np.zeros((len(coupons), len(COUPON_FEATURES)), dtype=np.float32)
        if with_stats:
            stats = coupons[COUPON_FEATURES].astype("float64").fillna(0.0).to_numpy(np.float32)
            stats[control] = 0.0
            _squash(stats, stats)
        return cls(
            control=control,
            kind=_codes(coupons["kind"], COUPON_KINDS),
            kind_name=coupons["kind"].astype("string").fillna("").to_numpy(dtype=object),
            value=coupons["value"].fillna(0).to_numpy(dtype=np.float32),
            min_spend=coupons["min_spend"].fillna(0).to_numpy(dtype=np.float32),
            category=_codes(coupons["category"], CATEGORIES),
            site_wide=(coupons["category"] == ALL_CATEGORIES).fillna(False).to_numpy(bool)
            & ~control,
            stats=stats,
        )

    def take(self, rows: np.ndarray) -> ArmTable:
        """The arms at `rows`, in that order (repeats allowed)."""
        return ArmTable(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def _encode(user_features: np.ndarray, arms: ArmTable, per_user: int = 1) -> np.ndarray:
    """Inputs of users and arms, (len(arms), N_INPUTS) float32: row i pairs arm i with user
    i // per_user (row-aligned pairs when 1; user-major pairs of every arm with `per_user`
    arms). Each user is squashed once, however many arms it is paired with."""
    users = np.asarray(user_features, dtype=np.float32)
    out = np.zeros((len(arms.control), N_INPUTS), dtype=np.float32)
    squashed = _per_full_window(users)
    _squash(squashed, squashed)
    out.reshape(len(users), per_user, N_INPUTS)[:, :, :N_USER_INPUTS] = squashed[:, None, :]
    paired = users if per_user == 1 else np.repeat(users, per_user, axis=0)
    _arm_features(paired, arms, out[:, N_USER_INPUTS : N_USER_INPUTS + len(ARM_FEATURES)])
    out[:, N_USER_INPUTS + len(ARM_FEATURES) :] = arms.stats
    return out


def _arm_features(user_features: np.ndarray, arms: ArmTable, block: np.ndarray) -> None:
    """ARM_FEATURES of row-aligned users and arms, written into `block`."""
    n = len(arms.control)
    block[:, 0] = arms.control
    coupon = np.flatnonzero(arms.kind >= 0)
    block[coupon, 1 + arms.kind[coupon]] = 1.0
    block[:, 5] = arms.value / 20.0
    block[:, 6] = arms.min_spend / 100.0
    block[:, 7] = arms.site_wide
    affinity = user_features[np.arange(n), _AFFINITY[np.maximum(arms.category, 0)]]
    block[:, 8] = np.where(arms.control, 0.0, np.where(arms.category >= 0, affinity, 1.0))
    block[:, 9] = relative_value(arms.kind_name, arms.value, user_features[:, _BASKET])


def encode_arms(user_features: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
    """ARM_FEATURES alone, (n, len(ARM_FEATURES)), of row-aligned users and coupons (no
    coupon stats needed): what Feast's on-demand view is checked against."""
    block = np.zeros((len(coupons), len(ARM_FEATURES)), dtype=np.float32)
    _arm_features(user_features, ArmTable.from_frame(coupons, with_stats=False), block)
    return block


def encode(user_features: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
    """The network's input rows, (n, N_INPUTS) float32: [user block | arm block], the
    user in row i of `user_features` paired with the coupon in row i of `coupons`.

    `coupons` must carry COUPON_FEATURES (NaN for a coupon without a record yet); "no
    coupon" rows get zeros for them, so the arm block of the control is all zeros except
    `is_control`.
    """
    return _encode(user_features, ArmTable.from_frame(coupons))


def encode_pairs(user_features: np.ndarray, arms: pd.DataFrame | ArmTable) -> np.ndarray:
    """Inputs of every (user, arm) pair, user-major (row u * m + a): what scoring a
    catalogue needs, without a frame per pair. Pass an `ArmTable` to reuse one."""
    table = arms if isinstance(arms, ArmTable) else ArmTable.from_frame(arms)
    n, m = len(user_features), len(table.control)
    return _encode(user_features, table if n == 1 else table.take(np.tile(np.arange(m), n)), m)


USERS_PER_CHUNK = 20_000  # ~50 MB of pair inputs with a dozen arms (~200 bytes a pair)


def user_chunks(n_users: int) -> list[slice]:
    """Consecutive slices of at most USERS_PER_CHUNK users covering `n_users` (one empty
    slice for none). Scoring a whole population pairs every user with every arm
    (`encode_pairs`): at a million users those inputs alone are ~3 GB, so offline scoring
    goes a chunk at a time."""
    step = USERS_PER_CHUNK
    return [slice(lo, lo + step) for lo in range(0, max(n_users, 1), step)]


def _mlp(n_inputs: int, hidden: int, n_outputs: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_outputs),
    )


# How the coupon's effect on the purchase logit is built; saved with the weights, so a
# model of another build is refused rather than read against the wrong modules.
EFFECT = "sensitivity x appeal - aversion + delta"
APPEAL_HIDDEN = 16  # the arm block is a dozen inputs: a narrow network is enough
_SENSITIVITY_START = -2.0  # softplus: ~0.13, a small response to begin with


class CouponNet(nn.Module):
    """(purchase logit, log amount, redeem logit) = base(user) + (1 - is_control) *
    effect(user, arm).

    The coupon's effect on the purchase logit is built as a response is in marketing:
    how much this shopper moves for a saving, `sensitivity(user) >= 0`, times how much this
    offer appeals to them, `appeal(arm) >= 0` (the arm block holds the coupon's terms, its
    value against the shopper's basket and their affinity for its category), less how much
    being sent a coupon puts them off, `aversion(user)`; plus `delta(user, arm)`, a
    free-form term for what that form misses (a coupon that helps some shoppers and not
    others of the same sensitivity). The two user terms are two more outputs of `base`,
    so each is learned from every coupon shoppers like this one received, not from each
    (user, coupon) cell apart: with `delta` alone the network put the same small term on
    every hidden segment (docs/world.md). `delta` also gives the amount and redemption
    heads' effects. Before training no coupon changes anything: `delta` starts at zero and
    the aversion at exactly the sensitivity times the appeal.
    """

    def __init__(
        self, n_user: int = N_USER_INPUTS, n_arm: int = N_ARM_INPUTS, hidden: int = 64
    ) -> None:
        super().__init__()
        self.n_user, self.n_arm, self.hidden = n_user, n_arm, hidden
        self.base = _mlp(n_user, hidden, n_outputs=5)  # the 3 heads, sensitivity, aversion
        self.appeal = _mlp(n_arm, APPEAL_HIDDEN, n_outputs=1)
        self.delta = _mlp(n_user + n_arm, hidden, n_outputs=3)
        base, appeal, delta = (cast(nn.Linear, m[-1]) for m in (self.base, self.appeal, self.delta))
        with torch.no_grad():
            for last in (appeal, delta):
                last.weight.zero_()
                last.bias.zero_()
            base.weight[3:].zero_()
            start = F.softplus(torch.tensor(_SENSITIVITY_START)) * F.softplus(torch.tensor(0.0))
            base.bias[3:] = torch.stack([torch.tensor(_SENSITIVITY_START), start])

    def layout(self) -> Layout:
        """What it takes to rebuild this network: input block sizes and width."""
        return {"n_user": self.n_user, "n_arm": self.n_arm, "hidden": self.hidden,
                "effect": EFFECT}  # fmt: skip

    def forward(self, x: torch.Tensor, per_user: int = 1) -> torch.Tensor:
        """Outputs of input rows; with `per_user`, rows come in blocks of that many arms
        of one user (`encode_pairs`), and `base`, which reads only the user, runs once a
        block rather than once a row (scoring a catalogue: half the network's work)."""
        n = self.n_user
        user = self.base(x[::per_user, :n])
        sensitivity, aversion = F.softplus(user[:, 3:4]), user[:, 4:5]
        appeal = F.softplus(self.appeal(x[:, n:])).view(-1, per_user)
        delta = self.delta(x)
        purchase = (sensitivity * appeal - aversion).view(-1, 1) + delta[:, :1]
        treated = 1.0 - x[:, n : n + 1]
        effect = treated * torch.cat([purchase, delta[:, 1:]], dim=1)
        return (user[:, None, :3] + effect.view(-1, per_user, 3)).view(-1, 3)


class CouponEnsemble(nn.Module):
    """Several CouponNets, each from its own seed (training.train.fit_ensemble): their mean
    is the estimate, their spread the uncertainty the policy discounts a coupon's gain by
    (`credibility` standard deviations; see couponflow.policy.score). A single network
    estimates with the same confidence where the log is rich and where it holds three
    rows; the members agree where the log pins a gain down and disagree where it is thin."""

    def __init__(self, members: list[CouponNet], credibility: float = 0.0) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.credibility = float(credibility)
        first = members[0]
        self.n_user, self.n_arm, self.hidden = first.n_user, first.n_arm, first.hidden

    def layout(self) -> Layout:
        return {**cast(CouponNet, self.members[0]).layout(), "members": len(self.members),
                "credibility": self.credibility}  # fmt: skip

    def member_outputs(
        self, x: torch.Tensor, per_user: int = 1, members: range | None = None
    ) -> torch.Tensor:
        """(members, rows, 3): every member's outputs, or those of `members` (a member's
        outputs do not depend on which others run with it)."""
        chosen = self.members if members is None else [self.members[i] for i in members]
        return torch.stack([m(x, per_user) for m in chosen])

    def forward(self, x: torch.Tensor, per_user: int = 1) -> torch.Tensor:
        """The members' mean outputs (what prediction metrics judge)."""
        return self.member_outputs(x, per_user).mean(dim=0)


Recommender = CouponNet | CouponEnsemble


def _heads(out: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "p_purchase": 1.0 / (1.0 + np.exp(-out[..., 0])),
        "amount": np.exp(np.clip(out[..., 1], -5.0, 10.0)),
        "p_redeem": 1.0 / (1.0 + np.exp(-out[..., 2])),
    }


# Threads of a scoring pass. MKL's reproducible branch (couponflow/__init__.py) rounds the
# same product differently with another number of threads (30,000 users scored with 3 threads
# differed from 1 and 2), and a stage's default is the machine's core count: scores, and with
# them the budget's multiplier and every decision, would follow the machine. One, as the
# service scores (serving.runtime.recommender); OpenMP over busy cores was slower anyway.
SCORING_THREADS = 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads, then give the caller back its own setting
    (nothing changes where it is already so: the service's request threads score on one)."""
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


# Rows a scoring pass runs through the network at once (whole users' blocks of them). A
# chunk of users (`user_chunks`) is hundreds of thousands of pair rows: each layer's output
# then is ~100 MB, written to fresh pages and read back from memory; a few thousand rows
# stay in the caches. Scoring 20,000 users x 25 arms went from 0.37 to 0.15 s a network
# (one thread, docs/scaling.md). Fixed, not tuned to the machine: the rounding of a row
# can follow how many rows it is run with (MKL's kernels), and scores must not.
PIECE_ROWS = 8192


def row_pieces(n_rows: int, per_user: int = 1) -> list[slice]:
    """Consecutive slices of at most PIECE_ROWS rows (at least one user's block of
    `per_user`, never split) covering `n_rows`: what a network or a tree model is given at
    once (`_in_pieces`, `training.baselines.in_pieces`)."""
    step = max(1, PIECE_ROWS // per_user) * per_user
    return [slice(lo, lo + step) for lo in range(0, max(n_rows, 1), step)]


def _in_pieces(
    forward: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, per_user: int
) -> torch.Tensor:
    """`forward(x, per_user)` a piece of rows at a time (`row_pieces`), joined along the
    rows (the next-to-last dimension)."""
    pieces = row_pieces(len(x), per_user)
    if len(pieces) == 1:
        return forward(x, per_user)
    return torch.cat([forward(x[rows], per_user) for rows in pieces], -2)


def predict(net: Recommender, inputs: np.ndarray, per_user: int = 1) -> dict[str, np.ndarray]:
    """P(purchase), expected amount given purchase, and P(redeem), on the CPU, of input
    rows (`per_user`: see CouponNet.forward); an ensemble's mean outputs. The same on every
    machine: see `SCORING_THREADS` and `PIECE_ROWS`."""
    with torch_threads(SCORING_THREADS), torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        return _heads(_in_pieces(net, x, per_user).numpy())


def predict_members(
    net: Recommender, inputs: np.ndarray, per_user: int = 1, members: range | None = None
) -> dict[str, np.ndarray]:
    """As `predict`, each head (members, rows): one member for a single network; with
    `members`, those of the ensemble only."""
    with torch_threads(SCORING_THREADS), torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        if isinstance(net, CouponEnsemble):
            outputs = partial(net.member_outputs, members=members)
            return _heads(_in_pieces(outputs, x, per_user).numpy())
        return _heads(_in_pieces(net, x, per_user).numpy()[None])


def member_count(net: Recommender) -> int:
    """How many networks answer for `net`: an ensemble's members, else one."""
    return len(net.members) if isinstance(net, CouponEnsemble) else 1


def _inputs() -> ModelInputs:
    """The feature lists and block sizes a saved model was trained on."""
    return {
        "user_features": USER_FEATURES,
        "coupon_features": COUPON_FEATURES,
        "arm_features": ARM_FEATURES,
        "n_user": N_USER_INPUTS,
        "n_arm": N_ARM_INPUTS,
    }


def save_model(
    net: Recommender, path: Path, record: ModelRecord, judged: Recommender | None = None
) -> None:
    """Save weights with what is needed to rebuild and trust them; `judged`, when `net` is
    a refit (training.train), is the held-out twin the evaluation judged, kept beside it so
    a champion is judged next time by weights that never saw the days it is judged on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: SavedModelMeta = {**record, **_inputs(), **net.layout()}
    blob = {"state_dict": net.state_dict(), "meta": meta}
    if judged is not None:
        if judged.layout() != net.layout():
            raise ValueError("the held-out twin must have the refit's layout")
        blob["judged_state_dict"] = judged.state_dict()
    torch.save(blob, path)


def load_model(path: Path, judged: bool = False) -> tuple[Recommender, SavedModelMeta]:
    """Load a saved model for inference (with `judged`, the held-out twin the evaluation
    judges, which is the model itself when it was not refitted); refuses one built on
    another feature list or input layout (an older model's weights would be read against
    the wrong columns) or with another coupon-effect build (its weights would not fit)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    meta: SavedModelMeta = blob["meta"]
    if {k: meta.get(k) for k in _inputs()} != _inputs():
        raise ValueError(f"{path} was trained on a different feature list")
    if meta.get("effect") != EFFECT:
        raise ValueError(
            f"{path} builds the coupon effect as {meta.get('effect', 'a free-form network')!r}"
            f", this code as {EFFECT!r}: retrain it"
        )
    members = [
        CouponNet(meta["n_user"], meta["n_arm"], int(meta["hidden"]))
        for _ in range(int(meta.get("members", 1)))
    ]
    net: Recommender = members[0]
    if "members" in meta:
        net = CouponEnsemble(members, float(meta["credibility"]))
    state = blob.get("judged_state_dict", blob["state_dict"]) if judged else blob["state_dict"]
    net.load_state_dict(state)
    net.eval()
    return net, meta
